"""Robust aggregation: the reducers on hand-made tensors, and FedIT / FedTree under one attacker."""

from __future__ import annotations

import pytest
import torch

from common.config import FedTreeConfig, RobustConfig, RunConfig, load_config
from common.errors import ConfigError
from common.schema import TensorSpec
from coordinator.robust import RobustBuffer, centered_clip, coordinate_median, reduce_group, trimmed_mean
from coordinator.strategies.fedit import FedIT
from coordinator.strategies.fedtree import FedTree

A, B = "q.lora_A.weight", "q.lora_B.weight"
SCHEMA = {layer: {A: TensorSpec(A, (2, 4), "float32"), B: TensorSpec(B, (4, 2), "float32")} for layer in range(2)}


def honest(k: int) -> dict[str, torch.Tensor]:
    """Honest updates sit around 1.0 with a small per-worker offset."""
    return {A: torch.full((2, 4), 1.0 + 0.01 * k), B: torch.full((4, 2), -1.0 - 0.01 * k)}


def scaled(update: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    return {name: t * factor for name, t in update.items()}


def test_coordinate_median_odd_and_even() -> None:
    stack = torch.tensor([[1.0, 9.0], [3.0, -1.0], [100.0, 2.0]])
    assert coordinate_median(stack).tolist() == [3.0, 2.0]
    assert coordinate_median(stack[:2]).tolist() == [2.0, 4.0]  # mean of the two middle values


def test_trimmed_mean_drops_both_ends_and_keeps_small_groups_whole() -> None:
    stack = torch.tensor([[1.0], [2.0], [3.0], [4.0], [1000.0]])
    assert trimmed_mean(stack, 0.2).tolist() == [3.0]  # drops 1 and 1000
    assert trimmed_mean(stack, 0.0).tolist() == [stack.mean().item()]
    assert trimmed_mean(stack[:2], 0.4).tolist() == [1.5]  # two members: nothing to trim
    assert trimmed_mean(stack[:3], 0.1).tolist() == [2.0]  # at least one each side from 3 members


def test_centered_clip_bounds_one_outlier() -> None:
    updates = [honest(k) for k in range(7)] + [scaled(honest(7), 100.0)]
    weights = [1.0] * 8
    plain = reduce_group(updates, weights, RobustConfig(method="mean"))
    clipped = centered_clip(updates, weights, clip_norm=None)
    honest_mean = reduce_group(updates[:7], weights[:7], RobustConfig(method="mean"))
    assert (plain[A] - honest_mean[A]).abs().max() > 10  # the attacker drags the mean
    assert (clipped[A] - honest_mean[A]).abs().max() < 0.05
    # a fixed bound: the outlier's pull is at most clip_norm / n in norm
    bounded = centered_clip(updates, weights, clip_norm=0.5)
    centre = coordinate_median(torch.stack([u[A] for u in updates]))
    assert (bounded[A] - centre).norm() <= 0.5 + 1e-6  # a mean of deltas each clipped to norm 0.5


def test_clip_leaves_agreeing_updates_alone() -> None:
    updates = [honest(0), honest(0), honest(0)]
    out = centered_clip(updates, [1.0, 2.0, 3.0], clip_norm=None)
    torch.testing.assert_close(out[B], honest(0)[B])


@pytest.mark.parametrize("method", ["clip", "median", "trimmed_mean"])
def test_every_robust_method_resists_a_scaled_and_a_sign_flipped_attacker(method: str) -> None:
    cfg = RobustConfig(method=method, trim_fraction=0.2)
    honest_mean = reduce_group([honest(k) for k in range(7)], [1.0] * 7, RobustConfig())
    for attack in (scaled(honest(7), 100.0), scaled(honest(7), -1.0)):
        out = reduce_group([honest(k) for k in range(7)] + [attack], [1.0] * 8, cfg)
        assert (out[A] - honest_mean[A]).abs().max() < 0.1, (method, out[A])


def test_buffer_streams_for_mean_and_buffers_otherwise() -> None:
    seen: list[tuple[int, int, float]] = []

    def sink(layer: int, group: int, tensors: dict[str, torch.Tensor], weight: float) -> None:
        seen.append((layer, group, weight))

    streaming = RobustBuffer(RobustConfig())
    streaming.add(sink, 0, 1, honest(0), 2.0)
    assert seen == [(0, 1, 2.0)]  # straight through, nothing held
    buffered = RobustBuffer(RobustConfig(method="median"))
    buffered.add(sink, 3, 0, honest(0), 1.0)
    buffered.add(sink, 3, 0, honest(1), 2.0)
    assert len(seen) == 1
    buffered.flush(sink)
    assert seen[1] == (3, 0, 3.0)  # one reduced update per (layer, group), weights summed
    buffered.flush(sink)
    assert len(seen) == 2  # flushed once


def test_buffer_keeps_the_arrival_dtype() -> None:
    out: dict[str, torch.Tensor] = {}
    buf = RobustBuffer(RobustConfig(method="trimmed_mean"))
    for k in range(3):
        buf.add(lambda *a: None, 0, 0, {A: honest(k)[A].to(torch.bfloat16)}, 1.0)
    buf.flush(lambda layer, group, tensors, weight: out.update(tensors))
    assert out[A].dtype == torch.bfloat16


def test_config_rejects_unknown_method_and_bad_fraction() -> None:
    with pytest.raises(ConfigError, match="robust.method"):
        load_config(RunConfig, overrides={"robust": {"method": "krum"}})
    with pytest.raises(ConfigError, match="trim_fraction"):
        load_config(RunConfig, overrides={"robust": {"trim_fraction": 0.5}})


# -- inside strategies --------------------------------------------------------------------------


def run_fedit(method: str) -> dict[int, dict[str, torch.Tensor]]:
    s = FedIT(RunConfig(strategy="fedit", robust=RobustConfig(method=method)), SCHEMA)
    for k in range(7):
        s.accumulate(f"w{k}", 1, {layer: honest(k) for layer in SCHEMA}, 10.0)
    s.accumulate("evil", 1, {layer: scaled(honest(7), 100.0) for layer in SCHEMA}, 10.0)
    s.close_round(1)
    return s.global_adapter


def test_fedit_median_ignores_the_attacker_and_mean_does_not() -> None:
    target = torch.full((2, 4), 1.03)
    assert (run_fedit("mean")[1][A] - target).abs().max() > 10
    assert (run_fedit("median")[1][A] - target).abs().max() < 0.02


def test_fedtree_reduces_robustly_inside_each_cluster() -> None:
    run = RunConfig(
        strategy="fedtree",
        fedtree=FedTreeConfig(warmup_rounds=1, fixed_k=2, metric="euclidean"),
        robust=RobustConfig(method="trimmed_mean", trim_fraction=0.25),
    )
    s = FedTree(run, SCHEMA)
    # two well-separated groups of 4; one member of group 0 is an attacker after the tree is built
    for k in range(8):
        sign = 1.0 if k < 4 else -1.0
        s.accumulate(f"w{k}", 1, {layer: scaled(honest(k), sign) for layer in SCHEMA}, 1.0)
    s.close_round(1)
    assert s.clusters()[1] == [["w0", "w1", "w2", "w3"], ["w4", "w5", "w6", "w7"]]
    for k in range(8):
        sign = 1.0 if k < 4 else -1.0
        update = scaled(honest(k), sign * (100.0 if k == 0 else 1.0))
        s.accumulate(f"w{k}", 2, {layer: update for layer in SCHEMA}, 1.0)
    s.close_round(2)
    expert = {d.role: d.tensors for d in s.downloads("w1", 3) if d.layer == 1}
    cluster_b = next(iter(expert.values()))[B]
    assert cluster_b.abs().max() < 1.1  # the x100 member was trimmed away inside its cluster
