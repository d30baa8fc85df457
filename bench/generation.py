"""Generation (causal_lm) parts of the accuracy benchmark: the reasoning-gym federation, a peak-RSS
sampler, and the ROUGE / task-score table. Used by bench/accuracy.py's `generation*` presets."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path
from typing import Any

from worker.data.reasoning import FAMILIES, reasoning_federation, write_prompt_partitions

GENERATION_TASKS = tuple(FAMILIES)  # chain_sum, word_sequence_reversal, syllogism, spell_backward
METRICS = ("rouge1", "rouge2", "rougeL", "task_score")


def write_federation(tasks: tuple[str, ...], per_task: int, train: int, val: int, seed: int, out: Path) -> dict[str, str]:
    """Write the reasoning-gym client directories; return client id -> task."""
    parts = reasoning_federation(tasks, per_task, train, val, seed)
    write_prompt_partitions(parts, out)
    return {p.client_id: p.task for p in parts}


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples this process's resident set every `period_s` while in use; `.peak` in bytes."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.period_s)

    def __enter__(self) -> PeakRss:
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def metric_table(results: list[Any], methods: tuple[str, ...], tasks: tuple[str, ...]) -> str:
    """Last round: mean ROUGE-1/2/L and task score over clients per method, per task ROUGE-1,
    wall time and peak RSS (workers are threads of one process: the peak covers all of them)."""
    head = ["method", *(f"{t} R-1" for t in tasks), "ROUGE-1", "ROUGE-2", "ROUGE-L", "task score", "time", "peak RSS"]
    out = [
        "**last round, all generation metrics** (%, unweighted mean over clients; task score = reasoning-gym's own "
        "`score_answer`; peak RSS of the benchmark process holding every worker)\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for method in methods:
        for r in (r for r in results if r.method == method):
            last = r.metrics[max(r.metrics)]
            per_task = [statistics.fmean(m.get("rouge1", 0.0) for c, m in last.items() if r.client_task[c] == t) for t in tasks]
            means = [statistics.fmean(m.get(k, 0.0) for m in last.values()) for k in METRICS]
            cells = [f"{100 * v:.1f}" for v in per_task + means]
            rss = f"{r.peak_rss / 2**30:.1f} GiB ({r.peak_rss / 2**30 / max(len(last), 1):.2f} per worker)"
            out.append("| " + " | ".join([method, *cells, f"{r.seconds / 60:.1f} min", rss]) + " |")
    return "\n".join(out) + "\n"
