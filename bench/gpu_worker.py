"""Worker hardware benchmark: training-step time and peak memory per device/precision/quantisation,
and a 2-worker federation on the accelerator.

Steps: `worker.train.optimise` (what a worker runs per round) on one causal LM with LoRA on
q_proj/v_proj, a fixed synthetic prompt set, micro-batch 8 x up to 128 tokens; 2 warm-up steps,
then the timed ones (CUDA synchronised). Settings: the CPU at fp32 (the baseline) and bf16, then, where
there is a CUDA GPU, fp32 / bf16 / fp16 and, where bitsandbytes imports, 8bit and 4bit (bf16
compute). Federation: an in-process coordinator and 2 workers on the best device (bf16; the second
in 4bit where bitsandbytes works), 2 fedit rounds: both must finish, with one fingerprint.

    python bench/gpu_worker.py                 # SmolLM2-135M-Instruct (worker/smollm.py), 20 timed steps
    python bench/gpu_worker.py --model DIR     # any local causal LM directory
    python bench/gpu_worker.py --quick         # 5 timed steps, 1 round
Prints a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.config import CoordinatorConfig, DataConfig, LoraConfig, RunConfig, TrainConfig, WorkerConfig  # noqa: E402
from worker.causal import encode_train  # noqa: E402
from worker.data.prompts import PromptExample  # noqa: E402
from worker.device import Hardware  # noqa: E402
from worker.model import build_model, default_model_path  # noqa: E402
from worker.quantize import bitsandbytes_available  # noqa: E402
from worker.train import optimise  # noqa: E402

WORDS = "cat dog sun moon red blue tree lake fish bird one two three four five six seven eight nine ten".split()
LORA = LoraConfig(rank=16, alpha=32.0, target_modules=("q_proj", "v_proj"))


def prompts(n: int, seed: int) -> list[PromptExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, 8)
        out.append(PromptExample("repeat these words in order: " + " ".join(words * 3), " ".join(words * 3)))
    return out


def settings() -> list[Hardware]:
    out = [Hardware(torch.device("cpu"), "fp32"), Hardware(torch.device("cpu"), "bf16")]
    if torch.cuda.is_available():
        gpu = torch.device("cuda", 0)
        out += [Hardware(gpu, "fp32"), Hardware(gpu, "bf16"), Hardware(gpu, "fp16")]
        if bitsandbytes_available():
            out += [Hardware(gpu, "bf16", "8bit"), Hardware(gpu, "bf16", "4bit")]
    return out


def time_steps(model: Path, hw: Hardware, steps: int) -> dict[str, object]:
    lm = build_model(model, (), LORA, 0, False, "causal_lm", hw)
    examples = prompts(64, 0)
    cfg = TrainConfig(local_steps=2, batch_size=8, max_seq_length=128, learning_rate=1e-4)

    tokenizer = lm.tokenizer

    def encode(batch: list[PromptExample]) -> dict[str, torch.Tensor]:
        return encode_train(tokenizer, batch, cfg.max_seq_length)

    optimise(lm, examples, encode, cfg, seed=0, progress=False)  # warm-up: kernels, allocator
    if hw.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    metrics = optimise(lm, examples, encode, cfg.model_copy(update={"local_steps": steps}), seed=1, progress=False)
    if hw.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / (1 << 20) if hw.device.type == "cuda" else None
    row = {"setting": hw.describe(), "step_s": seconds, "peak_mib": peak, "loss": metrics["train_loss"], "fp": lm.fingerprint}
    del lm
    if hw.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def federation(model: Path, workers_hw: list[dict[str, object]], rounds: int, tmp: Path) -> dict[str, object]:
    """An in-process coordinator and one worker per hardware setting: exit codes, rounds closed, fingerprints."""
    from coordinator.server import Coordinator
    from worker.runner import Worker

    train = TrainConfig(local_steps=4, batch_size=8, max_seq_length=128, learning_rate=1e-4)
    run = RunConfig(strategy="fedit", task="causal_lm", rounds=rounds, min_workers=len(workers_hw), lora=LORA, train=train)
    run = run.model_copy(update={"generation": run.generation.model_copy(update={"max_new_tokens": 8})})
    coord = Coordinator(
        CoordinatorConfig(host="127.0.0.1", port=0, state_dir=tmp / "state", run=run, long_poll_s=1.0, insecure=True)
    )
    coord.start()
    workers = []
    for i, hw in enumerate(workers_hw):
        data = tmp / f"data{i}"
        data.mkdir()
        for split, n in (("train", 32), ("val", 4)):
            (data / f"{split}.jsonl").write_text("".join(json.dumps(e.__dict__) + "\n" for e in prompts(n, 10 * i + len(split))))
        (data / "meta.json").write_text(json.dumps({"task_type": "causal_lm", "task": "repeat", "labels": []}))
        cfg = WorkerConfig(
            worker_id=f"w{i}",
            coordinator=f"127.0.0.1:{coord.port}",
            model_path=model,
            data=DataConfig(dir=data),
            output_dir=tmp / f"out{i}",
            progress=False,
            insecure=True,
            local_eval=False,
            **hw,  # type: ignore[arg-type]
        )
        workers.append(Worker(cfg))
    codes = [-1] * len(workers)
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda i=i: codes.__setitem__(i, workers[i].run_forever())) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    seconds = time.perf_counter() - start
    closed = coord.engine.last_closed
    coord.stop(grace=0.5)
    fingerprints = {w.lm.fingerprint for w in workers if w.lm is not None}
    return {
        "workers": [" ".join(str(v) for v in hw.values()) for hw in workers_hw],
        "codes": codes,
        "rounds_closed": closed,
        "one_fingerprint": len(fingerprints) == 1,
        "wall_s": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="local causal LM directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--quick", action="store_true", help="5 timed steps, 1 federation round")
    parser.add_argument("--no-federation", action="store_true", help="only the step timings")
    args = parser.parse_args()
    model = args.model or default_model_path("causal_lm")
    steps = 5 if args.quick else 20
    rows = [time_steps(model, hw, steps) for hw in settings()]
    cpu = rows[0]["step_s"]
    print(
        f"\n{platform.machine()}, torch {torch.__version__}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}"
    )
    print(f"model {model.name}, LoRA rank {LORA.rank} on q_proj/v_proj, micro-batch 8 x <=128 tokens, {steps} timed steps\n")
    print("| setting | step (s) | vs CPU fp32 | peak GPU memory (MiB) | mean loss |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        print(f"| {row['setting']} | {row['step_s']:.3f} | {cpu / row['step_s']:.1f}x | {peak} | {row['loss']:.3f} |")  # type: ignore[operator]
    print(f"\none fingerprint across settings: {len({r['fp'] for r in rows}) == 1}")
    if not args.no_federation:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        second: dict[str, object] = {"device": device, "precision": "bf16"}
        if device == "cuda" and bitsandbytes_available():
            second["quantization"] = "4bit"
        with tempfile.TemporaryDirectory() as tmp:
            result = federation(model, [{"device": device, "precision": "bf16"}, second], 1 if args.quick else 2, Path(tmp))
        print(f"federation: {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
