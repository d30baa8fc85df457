"""Client-side DP on uploads: the delta is clipped to the norm, noise has the configured scale."""

from __future__ import annotations

import math

import torch

from worker.privacy import privatise


def layered(value: float) -> dict[int, dict[str, torch.Tensor]]:
    return {0: {"a": torch.full((10, 10), value)}, 1: {"b": torch.full((10, 10), value)}}


def norm_of_delta(out, ref) -> float:  # type: ignore[no-untyped-def]
    return math.sqrt(sum(float((out[layer][n] - ref[layer][n]).pow(2).sum()) for layer in out for n in out[layer]))


def test_large_update_is_clipped_to_the_norm() -> None:
    ref, update = layered(1.0), layered(3.0)  # delta 2 in 200 coordinates: norm 2*sqrt(200)
    out, norm = privatise(update, ref, clip_norm=1.5, noise_multiplier=0.0, generator=torch.Generator().manual_seed(0))
    assert math.isclose(norm, 2 * math.sqrt(200), rel_tol=1e-6)
    assert math.isclose(norm_of_delta(out, ref), 1.5, rel_tol=1e-5)
    # the direction is kept
    assert torch.allclose(out[0]["a"] - ref[0]["a"], torch.full((10, 10), 1.5 / math.sqrt(200)))


def test_small_update_is_not_scaled() -> None:
    ref, update = layered(1.0), layered(1.001)
    out, _ = privatise(update, ref, clip_norm=10.0, noise_multiplier=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[1]["b"], update[1]["b"])


def test_noise_has_the_configured_scale() -> None:
    ref = {0: {"a": torch.zeros(200, 200)}}
    out, _ = privatise(ref, ref, clip_norm=0.5, noise_multiplier=2.0, generator=torch.Generator().manual_seed(1))
    std = float(out[0]["a"].std())
    assert abs(std - 1.0) < 0.02  # sigma * C = 2.0 * 0.5
    again, _ = privatise(ref, ref, clip_norm=0.5, noise_multiplier=2.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[0]["a"], again[0]["a"])  # reproducible from the seed
