"""Worker hardware settings on the CPU: device resolution, bf16/fp16 precision, quantisation errors,
gradient checkpointing. GPU-only paths are exercised where a GPU (and bitsandbytes) exists."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from tinyllama import write_prompt_data

from common.config import DataConfig, LoraConfig, TrainConfig, WorkerConfig
from common.errors import ConfigError
from common.schema import schema_of
from worker import device as device_mod
from worker.causal import evaluate_causal, train_causal
from worker.data import Example
from worker.device import Hardware, resolve_device, resolve_hardware
from worker.local_data import PromptData, load_any_data
from worker.model import build_model, head_rows
from worker.quantize import bitsandbytes_available, check_quantization, quantization_config
from worker.train import evaluate, train_local

LORA = LoraConfig(rank=2, alpha=4.0, target_modules=("query", "value"))
KEYS = ("t/a", "t/b")
IDS = {"a": 0, "b": 1}
EXAMPLES = [Example(f"text number {i} about {'sports' if i % 2 else 'tech'}", "ab"[i % 2]) for i in range(12)]
TRAIN = TrainConfig(local_steps=2, batch_size=4, max_seq_length=16, learning_rate=1e-2)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as CI sees it, also where a GPU happens to be present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)


# -- device ------------------------------------------------------------------------------------


def test_auto_resolves_to_cpu_without_an_accelerator(no_gpu: None) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_hardware(WorkerConfig()).device == torch.device("cpu")


def test_auto_prefers_cuda_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_fails_with_a_clear_message(no_gpu: None, spec: str) -> None:
    with pytest.raises(ConfigError, match=rf"worker.device is {spec} but torch .* has no CUDA GPU here.*set device: cpu"):
        resolve_device(spec)


def test_cuda_index_beyond_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"only 1 CUDA GPU\(s\) are visible"):
        resolve_device("cuda:3")


def test_mps_unavailable_and_bad_device(no_gpu: None) -> None:
    with pytest.raises(ConfigError, match="mps"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="device"):
        WorkerConfig(device="gpu")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The entry point installs its own root handler: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cuda_worker_fails_at_start_without_a_gpu(
    no_gpu: None, root_logging: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`fedtree-worker` with device cuda on this machine: exit code 2 and the reason, before any
    data, model or coordinator is touched."""
    from worker.__main__ import main

    cfg = tmp_path / "worker.yaml"
    cfg.write_text(yaml.safe_dump({"device": "cuda", "insecure": True, "output_dir": str(tmp_path / "out")}))
    assert main(["--config", str(cfg)]) == 2  # the entry point's handler logs to stderr
    assert "worker.device is cuda but torch" in capfd.readouterr().err


# -- quantisation -------------------------------------------------------------------------------


def test_quantisation_config_errors() -> None:
    with pytest.raises(ValueError, match="computes in 16 bits"):
        WorkerConfig(quantization="4bit")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        WorkerConfig(quantization="8bit", precision="bf16", device="cpu")
    assert WorkerConfig(quantization="4bit", precision="bf16", device="cuda").quantization == "4bit"


def test_quantisation_fails_clearly_where_bitsandbytes_cannot_run(monkeypatch: pytest.MonkeyPatch, no_gpu: None) -> None:
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        check_quantization(torch.device("cpu"), "4bit")
    monkeypatch.setattr("worker.quantize.bitsandbytes_available", lambda: False)
    with pytest.raises(ConfigError, match=r"needs the bitsandbytes package.*fedtree\[qlora\]"):
        check_quantization(torch.device("cuda", 0), "8bit")
    check_quantization(torch.device("cpu"), "none")
    # auto resolves to the CPU here: the worker refuses 4bit at start
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve_hardware(WorkerConfig(quantization="4bit", precision="bf16"))


def test_build_model_refuses_a_quantised_base_on_the_cpu(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        build_model(tiny_model_dir, KEYS, LORA, 0, True, hardware=Hardware(torch.device("cpu"), "bf16", "4bit"))


def test_qlora_recipe() -> None:
    cfg = quantization_config("4bit", torch.bfloat16, ("classifier", "score"))
    assert cfg is not None
    d = cfg.to_dict()  # type: ignore[attr-defined]
    assert d["load_in_4bit"] and d["bnb_4bit_quant_type"] == "nf4" and d["bnb_4bit_use_double_quant"]
    assert d["bnb_4bit_compute_dtype"] == "bfloat16" and d["llm_int8_skip_modules"] == ["classifier", "score"]
    assert quantization_config("8bit", torch.float16).to_dict()["load_in_8bit"]  # type: ignore[union-attr]
    assert quantization_config("none", torch.float32) is None


@pytest.mark.skipif(not (torch.cuda.is_available() and bitsandbytes_available()), reason="needs a CUDA GPU and bitsandbytes")
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantised_base_trains_on_a_gpu(tiny_llama_dir: Path, tmp_path: Path, quantization: str) -> None:
    data = load_any_data(DataConfig(dir=write_prompt_data(tmp_path / "d")))
    assert isinstance(data, PromptData)
    lora = LoraConfig(rank=2, alpha=4.0, target_modules=("q_proj", "v_proj"))
    ref = build_model(tiny_llama_dir, (), lora, 0, False, "causal_lm")
    hw = Hardware(torch.device("cuda", 0), "bf16", quantization, True)  # type: ignore[arg-type]
    lm = build_model(tiny_llama_dir, (), lora, 0, False, "causal_lm", hw)
    assert lm.fingerprint == ref.fingerprint
    metrics = train_causal(lm, data.train, TRAIN, seed=1, progress=False)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for named in lm.layers().values() for t in named.values())


# -- precision --------------------------------------------------------------------------------


def _weights(lm) -> dict[str, torch.dtype]:  # type: ignore[no-untyped-def]
    return {n: p.dtype for n, p in lm.model.named_parameters()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_base_float32_lora_same_start_same_fingerprint(tiny_model_dir: Path, precision: str) -> None:
    ref = build_model(tiny_model_dir, KEYS, LORA, 0, True)
    hw = Hardware(torch.device("cpu"), precision)  # type: ignore[arg-type]
    lm = build_model(tiny_model_dir, KEYS, LORA, 0, True, hardware=hw)
    dtypes = _weights(lm)
    query = "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert dtypes[query] == hw.dtype  # the frozen base in the worker's precision
    assert all(dtypes[n] == torch.float32 for n, p in lm.model.named_parameters() if p.requires_grad)  # master weights
    assert lm.fingerprint == ref.fingerprint
    assert schema_of(lm.layers()) == schema_of(ref.layers())
    for layer, named in ref.layers().items():  # bit-identical start
        for name, tensor in named.items():
            assert torch.equal(lm.layers()[layer][name], tensor)
    assert all(torch.equal(a, b) for a, b in zip(head_rows(lm, KEYS).values(), head_rows(ref, KEYS).values()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_and_evaluates(tiny_model_dir_no_dropout: Path, precision: str) -> None:
    ref = build_model(tiny_model_dir_no_dropout, KEYS, LORA, 0, True)
    hw = Hardware(torch.device("cpu"), precision)  # type: ignore[arg-type]
    lm = build_model(tiny_model_dir_no_dropout, KEYS, LORA, 0, True, hardware=hw)
    got = train_local(lm, EXAMPLES, IDS, TRAIN, seed=1, progress=False)
    want = train_local(ref, EXAMPLES, IDS, TRAIN, seed=1, progress=False)
    assert got["train_steps"] == want["train_steps"] == 2
    assert abs(got["train_loss"] - want["train_loss"]) < 0.05  # same training, 16-bit rounding
    assert 0.0 <= evaluate(lm, EXAMPLES, IDS, TRAIN)["accuracy"] <= 1.0
    upload, reference = lm.layers(), ref.layers()
    assert schema_of(upload) == schema_of(reference)  # float32 on the wire, as the run's schema says
    for layer, named in upload.items():
        for name, tensor in named.items():
            assert tensor.device.type == "cpu" and torch.isfinite(tensor).all()
            assert "lora_B" not in name or tensor.abs().sum() > 0  # it trained (B starts at zero)
            torch.testing.assert_close(tensor, reference[layer][name], atol=2e-2, rtol=0.1)


def test_bf16_causal_lm_trains_and_generates(tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = load_any_data(DataConfig(dir=write_prompt_data(tmp_path / "d", n_train=8, n_val=2)))
    assert isinstance(data, PromptData)
    lora = LoraConfig(rank=2, alpha=4.0, target_modules=("q_proj", "v_proj"))
    hw = Hardware(torch.device("cpu"), "bf16", gradient_checkpointing=True)
    lm = build_model(tiny_llama_dir, (), lora, 0, False, "causal_lm", hw)
    assert lm.fingerprint == build_model(tiny_llama_dir, (), lora, 0, False, "causal_lm").fingerprint
    metrics = train_causal(lm, data.train, TRAIN, seed=1, progress=False)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    from common.config import GenerationConfig

    scores = evaluate_causal(lm, data.val, TRAIN, GenerationConfig(max_new_tokens=4))
    assert "rouge1" in scores and torch.isfinite(torch.tensor(scores["loss"]))


def test_gradient_checkpointing_trains_the_same(tiny_model_dir_no_dropout: Path) -> None:
    plain = build_model(tiny_model_dir_no_dropout, KEYS, LORA, 0, True)
    ckpt = build_model(tiny_model_dir_no_dropout, KEYS, LORA, 0, True, hardware=Hardware(gradient_checkpointing=True))
    assert ckpt.model.base_model.model.is_gradient_checkpointing and not plain.model.base_model.model.is_gradient_checkpointing
    for lm in (plain, ckpt):
        train_local(lm, EXAMPLES, IDS, TRAIN, seed=1, progress=False)
    for layer, named in plain.layers().items():
        for name, tensor in named.items():
            torch.testing.assert_close(ckpt.layers()[layer][name], tensor, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_gpu_load_arguments(monkeypatch: pytest.MonkeyPatch, task: str) -> None:
    """What a CUDA 4-bit worker asks transformers for (the load itself needs a GPU): its dtype, the
    QLoRA config with the head kept out, and the weights placed on its device while loading."""
    from worker import model as model_mod

    seen: dict[str, object] = {}

    def fake(path: Path, **kwargs: object) -> str:
        seen.update(kwargs)
        return "loaded"

    for auto in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(model_mod, auto), "from_pretrained", fake)
    hw = Hardware(torch.device("cuda", 1), "bf16", "4bit")
    assert model_mod._load_base(Path("/models/x"), task, 3, hw) == "loaded"
    assert seen["dtype"] == torch.bfloat16 and seen["device_map"] == {"": "cuda:1"}
    qc = seen["quantization_config"].to_dict()  # type: ignore[attr-defined]
    assert qc["load_in_4bit"] and qc["bnb_4bit_compute_dtype"] == "bfloat16"
    assert qc["llm_int8_skip_modules"] == (None if task == "causal_lm" else ["classifier", "score"])
    if task == "classification":
        assert seen["num_labels"] == 3 and seen["ignore_mismatched_sizes"] is True
    seen.clear()
    model_mod._load_base(Path("/models/x"), task, 3, Hardware())  # the CPU: float32, no placement, no quantisation
    assert seen["dtype"] == torch.float32 and "device_map" not in seen and "quantization_config" not in seen
