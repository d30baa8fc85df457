"""A tiny planted federation through the real coordinator and workers (bench/tree_recovery.py's code).

2 tasks (wordnet_pos, fortunes) x 2 label-skew subgroups x 2 clients; skew subgroup g of both
tasks concentrates on label indices {2g, 2g+1}. fedtree with rounds = warmup = 2 builds the tree
from every worker's uploaded adapters. Run twice on the tiny BERT: with name-keyed labels
(task/label head rows) and with the old colliding labelling (integer label names, no task
namespace: head row i shared by label i of both tasks).

What the name-keyed init fixes (fails with the old init): in B, clients of different tasks are no
longer pulled together by their skew. Measured on this setup (seed 0, 5 runs): other-task
same-skew / other-task other-skew mean B distance 1.01-1.06 name-keyed vs 0.54-0.55 index-keyed.

What the default distance (span of B's columns) gives: the task as the tree's top split and the
skew subgroups exactly below it. Measured on this setup (seed 0): B euclidean, cosine and BA split by
skew first (task ARI -0.17, subgroup ARI 1.0); A euclidean finds the tasks but not the subgroups
(subgroup ARI 0.22); B span both (1.0 / 1.0). With the old colliding labelling B span does not see
the tasks (task ARI -0.17): what it compares is which head rows the error reaches, so it needs
name-keyed rows. The model has no dropout, so the run is repeatable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.tree_recovery import Settings, run_federation  # noqa: E402
from bench.tree_recovery_analysis import Federation, analyse, skew_coupling  # noqa: E402

pytestmark = [pytest.mark.corpora]

FED = Federation("tasks", ("wordnet_pos", "fortunes"), subgroups_per_task=2)
SETTINGS = Settings(seed=0, warmup_rounds=2, local_steps=4, train_size=32, val_size=8)


@pytest.fixture(scope="module")
def runs(tiny_model_dir_no_dropout: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for labelling in ("name", "index"):
            outcome = run_federation(
                FED, labelling, "local", SETTINGS, tmp_path_factory.mktemp(labelling), tiny_model_dir_no_dropout
            )
            summary, variants = analyse(outcome)
            out[labelling] = {**summary, "variants": {v.variant: v for v in variants}}
        return out
    finally:
        torch.set_num_threads(threads)


def test_coordinator_tree_is_the_offline_one(runs: dict[str, dict]) -> None:
    for labelling in ("name", "index"):
        assert runs[labelling]["check"] == {"tree": True, "cuts": True}, labelling


def test_name_keyed_heads_remove_the_skew_coupling(runs: dict[str, dict]) -> None:
    name, index = skew_coupling(runs["name"]["pair_means"]), skew_coupling(runs["index"]["pair_means"])
    assert index < 0.75, runs["index"]["pair_means"]  # old init: same skew of another task is much closer
    assert name > 0.9, runs["name"]["pair_means"]  # new: skew no longer couples tasks


def test_the_default_span_of_b_finds_the_tasks_on_top_and_the_subgroups_below(runs: dict[str, dict]) -> None:
    tree = runs["name"]["coordinator"]  # the defaults: distance on B, metric span
    assert (tree.task_ari, tree.subgroup_ari) == (1.0, 1.0), (tree.top_split, tree.cuts)
    on_b = runs["name"]["variants"][("B", "euclidean")]  # the paper's distance splits by skew first here
    assert on_b.task_ari is not None and on_b.task_ari < 1.0, on_b.top_split
    assert on_b.subgroup_ari == 1.0  # ... and finds the subgroups exactly
    on_a = runs["name"]["variants"][("A", "euclidean")]  # the input side sees the tasks, not the skews
    assert on_a.task_ari == 1.0 and on_a.subgroup_ari is not None and on_a.subgroup_ari < 1.0


def test_span_sees_tasks_only_through_name_keyed_head_rows(runs: dict[str, dict]) -> None:
    old = runs["index"]["variants"][("B", "span")]  # head row i shared by label i of both tasks
    assert old.task_ari is not None and old.task_ari < 1.0, old.top_split
