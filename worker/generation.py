"""Scoring generated answers the way the papers do: ROUGE-1/2/L F-measure (Google's `rouge-score`
package, no stemming), plus a task's own answer scorer where the data names one (reasoning-gym)."""

from __future__ import annotations

import functools
import logging
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from worker.data.prompts import PromptExample

log = logging.getLogger(__name__)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure of predictions against references (pairwise)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {}
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = _scorer().score(ref, pred)  # score(target, prediction)
        for name in ROUGE_TYPES:
            sums[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in sums.items()}


@functools.cache
def _task_scorer(name: str) -> Callable[[str, dict[str, Any]], float] | None:
    try:
        import reasoning_gym
    except ImportError:
        log.warning("data names reasoning-gym scorers but reasoning-gym is not installed (pip install 'fedtree[generation]')")
        return None
    fn: Callable[[str, dict[str, Any]], float] = reasoning_gym.get_score_answer_fn(name)
    return fn


def task_score(predictions: Sequence[str], examples: Sequence[PromptExample]) -> float | None:
    """Mean of each example's own scorer (reasoning-gym's `score_answer`) over the examples that
    name one; None when none does (or reasoning-gym, an optional extra, is not installed)."""
    scores = []
    for pred, ex in zip(predictions, examples):
        scorer = _task_scorer(ex.scorer) if ex.scorer and ex.entry is not None else None
        if scorer is not None and ex.entry is not None:
            scores.append(float(scorer(pred, ex.entry)))
    return statistics.fmean(scores) if scores else None
