"""A multi-task generation federation from reasoning-gym (offline, procedurally generated).

Like the papers' FLAN setting, each client holds one task category, two clients per task by
default: arithmetic (chain_sum), string manipulation (word_sequence_reversal), logic
(syllogism) and spelling (spell_backward). Every client's examples come from its own seeded
generator, so clients of one task share the task but not the examples, and train and
validation never overlap. Each record keeps reasoning-gym's entry, so the worker scores its
generated answers with the dataset's own `score_answer` ("task_score") beside ROUGE.

    python -m worker.data.reasoning --out DIR [--tasks chain_sum,syllogism] [--clients-per-task 2] \\
        [--train-size 64] [--val-size 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.data.prompts import PromptExample, write_prompt_jsonl

log = logging.getLogger(__name__)

# family -> (kind, reasoning-gym config kept small: short prompts and answers for a 135M model on CPU)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "chain_sum": ("arithmetic", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
    "word_sequence_reversal": ("string manipulation", {"min_words": 3, "max_words": 5}),
    "syllogism": ("logic", {}),
    "spell_backward": ("spelling", {"min_word_len": 3, "max_word_len": 7}),
}
DEFAULT_TASKS = tuple(FAMILIES)


@dataclass
class PromptPartition:
    """One client's generation data: its task family and prompt/response splits."""

    client_id: str
    task: str
    train: list[PromptExample]
    val: list[PromptExample]


def _examples(task: str, size: int, seed: int) -> list[PromptExample]:
    import reasoning_gym

    extra = FAMILIES.get(task, ("", {}))[1]
    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **extra)
    out = []
    for i in range(size):
        entry = json.loads(json.dumps(dict(dataset[i]), default=str))  # plain JSON: it travels in the JSONL
        out.append(PromptExample(entry["question"], str(entry["answer"]), task, entry))
    return out


def reasoning_federation(
    tasks: Sequence[str] = DEFAULT_TASKS, clients_per_task: int = 2, train_size: int = 64, val_size: int = 16, seed: int = 0
) -> list[PromptPartition]:
    """`clients_per_task` clients per task family, client ids client-0.. in task order."""
    parts = []
    for t, task in enumerate(tasks):
        for k in range(clients_per_task):
            index = t * clients_per_task + k
            examples = _examples(task, train_size + val_size, zlib.crc32(f"{seed}/{task}/{k}".encode()))
            parts.append(PromptPartition(f"client-{index}", task, examples[:train_size], examples[train_size:]))
    return parts


def write_prompt_partitions(parts: Sequence[PromptPartition], out_dir: Path) -> list[Path]:
    """`out_dir/<client_id>/{train.jsonl,val.jsonl,meta.json}`; meta.json says task_type causal_lm."""
    dirs = []
    for part in parts:
        client_dir = Path(out_dir) / part.client_id
        write_prompt_jsonl(client_dir / "train.jsonl", part.train)
        write_prompt_jsonl(client_dir / "val.jsonl", part.val)
        meta = {
            "client_id": part.client_id,
            "task_type": "causal_lm",
            "task": part.task,
            "source": "reasoning_gym",
            "labels": [],
            "num_train": len(part.train),
            "num_val": len(part.val),
        }
        (client_dir / "meta.json").write_text(json.dumps(meta, indent=1))
        dirs.append(client_dir)
    return dirs


def _tasks(value: str) -> list[str]:
    import reasoning_gym

    tasks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in reasoning_gym.factory.DATASETS]
    if not tasks or unknown:
        raise argparse.ArgumentTypeError(f"unknown reasoning-gym task(s) {unknown or value!r}")
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.data.reasoning", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (one sub-dir per client)")
    parser.add_argument("--tasks", type=_tasks, default=list(DEFAULT_TASKS), help="comma-separated reasoning-gym datasets")
    parser.add_argument("--clients-per-task", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=64, help="training examples per client")
    parser.add_argument("--val-size", type=int, default=16, help="validation examples per client")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parts = reasoning_federation(args.tasks, args.clients_per_task, args.train_size, args.val_size, args.seed)
    write_prompt_partitions(parts, args.out)
    for part in parts:
        kind = FAMILIES.get(part.task, ("",))[0]
        print(f"{part.client_id}: {part.task:<24} {kind:<20} {len(part.train)} train / {len(part.val)} val")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
