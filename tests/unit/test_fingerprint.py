"""The base-model digest comes from the model's files as float32: independent of how a worker
loads them (precision, storage format, sharding), different for a different base model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.config import LoraConfig
from common.errors import ConfigError
from worker.device import Hardware
from worker.fingerprint import base_digest, weight_files
from worker.model import build_model

LORA = LoraConfig(rank=2, alpha=4.0)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_weights(model_dir: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    save_file({k: change(k, v).contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def test_same_files_same_digest_whatever_the_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    fp32 = build_model(tiny_model_dir, ("a", "b"), LORA, 0, True)
    bf16 = build_model(tiny_model_dir, ("a", "b", "c"), LORA, 0, True, hardware=Hardware(precision="bf16"))
    assert fp32.fingerprint == bf16.fingerprint
    moved = _copy(tiny_model_dir, tmp_path / "elsewhere")  # another site's copy of the same files
    assert build_model(moved, ("a",), LORA, 0, True).fingerprint == fp32.fingerprint


def test_a_different_base_model_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    ref = base_digest(tiny_model_dir)
    other = _copy(tiny_model_dir, tmp_path / "other")
    _rewrite_weights(other, lambda k, v: v + 1e-3 if k.endswith("query.weight") else v)
    assert base_digest(other) != ref
    config = _copy(tiny_model_dir, tmp_path / "config")
    cfg = json.loads((config / "config.json").read_text())
    (config / "config.json").write_text(json.dumps({**cfg, "layer_norm_eps": 1e-5}))
    assert base_digest(config) != ref
    fp32 = build_model(tiny_model_dir, ("a",), LORA, 0, True)
    assert build_model(other, ("a",), LORA, 0, True, hardware=Hardware(precision="bf16")).fingerprint != fp32.fingerprint
    assert build_model(tiny_model_dir, ("a",), LORA.model_copy(update={"rank": 4}), 0, True).fingerprint != fp32.fingerprint


def test_canonical_float32_view_of_the_stored_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    """bf16 values stored as bf16 or as float32, safetensors or .bin: one digest; the saved head
    and the label names (config) do not count."""
    as_fp32 = _copy(tiny_model_dir, tmp_path / "fp32")
    _rewrite_weights(as_fp32, lambda k, v: v.to(torch.bfloat16).float() if v.is_floating_point() else v)
    as_bf16 = _copy(tiny_model_dir, tmp_path / "bf16")
    _rewrite_weights(as_bf16, lambda k, v: v.to(torch.bfloat16) if v.is_floating_point() else v)
    cfg = json.loads((as_bf16 / "config.json").read_text())
    (as_bf16 / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16", "id2label": {"0": "x"}}))
    assert base_digest(as_fp32) == base_digest(as_bf16)
    as_bin = _copy(as_fp32, tmp_path / "bin")
    torch.save(load_file(str(as_bin / "model.safetensors")), as_bin / "pytorch_model.bin")
    (as_bin / "model.safetensors").unlink()
    assert weight_files(as_bin) == [as_bin / "pytorch_model.bin"]
    assert base_digest(as_bin) == base_digest(as_fp32)
    head = _copy(tiny_model_dir, tmp_path / "head")
    _rewrite_weights(head, lambda k, v: v * 2 if k.startswith("classifier.") else v)
    is_head = lambda name: name.startswith("classifier.")  # noqa: E731
    assert base_digest(head, skip=is_head) == base_digest(tiny_model_dir, skip=is_head)


def test_sharded_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    sharded = _copy(tiny_model_dir, tmp_path / "sharded")
    tensors = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / file), metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert len(weight_files(sharded)) == 2
    assert base_digest(sharded) == base_digest(tiny_model_dir)


def test_no_weights_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no model weights"):
        base_digest(tmp_path)
