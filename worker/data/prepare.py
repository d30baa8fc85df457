"""CLI: partition built-in corpora into per-client private data directories.

Example::

    python -m worker.data.prepare --out DIR --clients 4 --tasks wordnet_pos,bbc_news \\
        --train-size 200 --val-size 100 --alpha 0.5 --seed 0

Use ``--alpha none`` for IID (uniform) label proportions.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from worker.data.corpora import CORPORA
from worker.data.partition import ClientPartition, partition_federation, write_partitions

logger = logging.getLogger(__name__)


def _alpha(value: str) -> float | None:
    """Parse ``--alpha``: a positive float, or ``none`` for IID."""
    if value.strip().lower() in {"none", "iid", "inf"}:
        return None
    try:
        alpha = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha must be a positive number or 'none', got {value!r}") from None
    if alpha <= 0:
        raise argparse.ArgumentTypeError(f"alpha must be > 0, got {alpha}")
    return alpha


def _tasks(value: str) -> list[str]:
    """Parse ``--tasks``: a comma-separated list of built-in corpus names."""
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in CORPORA]
    if not tasks or unknown:
        raise argparse.ArgumentTypeError(f"unknown or empty task(s) {unknown or value!r}; valid: {', '.join(sorted(CORPORA))}")
    return tasks


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for the prepare CLI."""
    parser = argparse.ArgumentParser(prog="python -m worker.data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (one sub-dir per client)")
    parser.add_argument("--clients", type=int, required=True, help="number of clients")
    parser.add_argument("--tasks", type=_tasks, required=True, help=f"comma-separated: {','.join(CORPORA)}")
    parser.add_argument("--train-size", type=int, default=200, help="training examples per client")
    parser.add_argument("--val-size", type=int, default=100, help="validation examples per client")
    parser.add_argument("--alpha", type=_alpha, default=0.5, help="Dirichlet concentration, or 'none' for IID")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def format_table(partitions: Sequence[ClientPartition]) -> str:
    """Render a small client/task/label-count table."""
    rows = [("client", "task", "train", "val", "train label counts")]
    for part in partitions:
        counts = " ".join(f"{label}={n}" for label, n in part.label_counts("train").items())
        rows.append((part.client_id, part.task, str(len(part.train)), str(len(part.val)), counts))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns a process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logger.info("partitioning %s across %d clients (alpha=%s, seed=%d)", args.tasks, args.clients, args.alpha, args.seed)
    try:
        partitions = partition_federation(
            args.tasks, args.clients, args.train_size, args.val_size, alpha=args.alpha, seed=args.seed
        )
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    write_partitions(partitions, args.out)
    logger.info("wrote %d client directories under %s", len(partitions), args.out)
    print(format_table(partitions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
