"""Unit tests for the FedIT and Local strategies and the WeightedSum they build on."""

from __future__ import annotations

import pytest
import torch

from common.chunking import Role
from common.config import RunConfig
from common.errors import ConfigError
from common.schema import TensorSpec, UploadSpec
from coordinator.aggregation import WeightedSum
from coordinator.strategies import STRATEGIES, Download, create_strategy
from coordinator.strategies.base import flatten, unflatten
from coordinator.strategies.fedit import FedIT
from coordinator.strategies.local import Local

A = "q.lora_A.weight"
B = "q.lora_B.weight"


def schema(dtype: str = "float32") -> dict[int, dict[str, TensorSpec]]:
    return {layer: {A: TensorSpec(A, (2, 2), dtype), B: TensorSpec(B, (2, 1), dtype)} for layer in (0, 1)}


def fedit(dtype: str = "float32") -> FedIT:
    strategy = create_strategy(RunConfig(strategy="fedit"), schema(dtype))
    assert isinstance(strategy, FedIT)
    return strategy


# Worker X (1 example) and worker Y (3 examples); per layer, values chosen so the mean is exact.
X = {
    0: {A: torch.tensor([[1.0, 2.0], [3.0, 4.0]]), B: torch.tensor([[8.0], [-4.0]])},
    1: {A: torch.tensor([[0.0, 0.0], [0.0, 4.0]]), B: torch.tensor([[2.0], [2.0]])},
}
Y = {
    0: {A: torch.tensor([[5.0, 6.0], [7.0, 8.0]]), B: torch.tensor([[0.0], [4.0]])},
    1: {A: torch.tensor([[4.0, 8.0], [-4.0, 0.0]]), B: torch.tensor([[6.0], [-2.0]])},
}
# (1*X + 3*Y) / 4, by hand
MEAN = {
    0: {A: [[4.0, 5.0], [6.0, 7.0]], B: [[2.0], [2.0]]},
    1: {A: [[3.0, 6.0], [-3.0, 1.0]], B: [[5.0], [-1.0]]},
}


def as_lists(downloads: list[Download]) -> dict[int, dict[str, list]]:
    return {d.layer: {name: t.tolist() for name, t in d.tensors.items()} for d in downloads}


# -- FedIT --------------------------------------------------------------------------------------


def test_registry() -> None:
    assert STRATEGIES["fedit"] is FedIT and STRATEGIES["local"] is Local
    assert isinstance(create_strategy(RunConfig(strategy="local"), schema()), Local)
    with pytest.raises(ConfigError, match="unknown strategy 'fedavg'"):
        create_strategy(RunConfig(strategy="fedavg"), schema())


def test_fedit_uploads_a_and_b_of_every_layer() -> None:
    s = fedit()
    assert s.upload_spec("w", 1) == UploadSpec((0, 1), lora_a=True, lora_b=True)
    assert s.num_layers == 2
    assert s.all_layers() == (0, 1)


def test_fedit_downloads_nothing_before_the_first_round_closes() -> None:
    s = fedit()
    assert s.downloads("w", 1) == []
    assert s.state() == {}


def test_fedit_weighted_mean_matches_hand_computation() -> None:
    s = fedit()
    s.begin_round(1, {"x": 1, "y": 3})
    s.accumulate("x", 1, X, 1.0)
    s.accumulate("y", 1, Y, 3.0)
    assert s.downloads("x", 2) == []  # nothing changes before close_round

    s.close_round(1)

    downloads = s.downloads("x", 2)
    assert [(d.layer, d.role, d.share_key) for d in downloads] == [(0, Role.CLUSTER, "global"), (1, Role.CLUSTER, "global")]
    assert as_lists(downloads) == MEAN
    for d in downloads:
        for t in d.tensors.values():
            assert t.dtype == torch.float32
    assert as_lists(s.downloads("y", 2)) == MEAN  # every worker gets the same global adapter


def test_fedit_accumulation_order_does_not_matter() -> None:
    s = fedit()
    s.accumulate("y", 1, Y, 3.0)
    s.accumulate("x", 1, X, 1.0)
    s.close_round(1)
    assert as_lists(s.downloads("x", 2)) == MEAN


def test_fedit_does_not_alias_uploaded_tensors() -> None:
    s = fedit()
    x = {layer: {n: t.clone() for n, t in ts.items()} for layer, ts in X.items()}
    s.accumulate("x", 1, x, 1.0)
    x[0][A].fill_(100.0)  # the caller reuses its buffers after the push
    s.accumulate("y", 1, Y, 3.0)
    s.close_round(1)
    assert as_lists(s.downloads("x", 2)) == MEAN
    assert X[0][A].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_fedit_single_worker_mean_is_its_update() -> None:
    s = fedit()
    s.accumulate("x", 1, X, 7.0)
    s.close_round(1)
    assert as_lists(s.downloads("x", 2)) == {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in X.items()}


def test_fedit_round_without_pushes_keeps_previous_global() -> None:
    s = fedit()
    s.accumulate("x", 1, X, 1.0)
    s.accumulate("y", 1, Y, 3.0)
    s.close_round(1)
    s.begin_round(2, {"x": 1, "y": 3})
    s.close_round(2)  # nobody pushed
    assert as_lists(s.downloads("x", 3)) == MEAN


def test_fedit_next_round_starts_from_fresh_sums() -> None:
    s = fedit()
    s.accumulate("x", 1, X, 1.0)
    s.accumulate("y", 1, Y, 3.0)
    s.close_round(1)
    s.accumulate("y", 2, Y, 2.0)  # round 2: only y pushes; round 1's sums must not leak in
    s.close_round(2)
    assert as_lists(s.downloads("x", 3)) == {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in Y.items()}


def test_fedit_state_round_trip() -> None:
    s = fedit()
    s.accumulate("x", 1, X, 1.0)
    s.accumulate("y", 1, Y, 3.0)
    s.close_round(1)

    state = s.state()
    assert sorted(state) == [
        "global/0/q.lora_A.weight",
        "global/0/q.lora_B.weight",
        "global/1/q.lora_A.weight",
        "global/1/q.lora_B.weight",
    ]
    assert state["global/1/q.lora_B.weight"].tolist() == [[5.0], [-1.0]]

    restored = fedit()
    restored.load_state({k: v.clone() for k, v in state.items()})
    assert as_lists(restored.downloads("x", 2)) == MEAN


def test_fedit_load_state_ignores_other_prefixes() -> None:
    s = fedit()
    s.load_state({"global/0/" + A: torch.ones(2, 2), "other/0/" + A: torch.zeros(2, 2)})
    assert list(s.global_adapter) == [0]
    assert s.global_adapter[0][A].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_fedit_bf16_averaged_in_float32_returned_as_bf16() -> None:
    s = fedit("bfloat16")
    x = {0: {A: torch.full((2, 2), 1.015625, dtype=torch.bfloat16), B: torch.full((2, 1), 2.0, dtype=torch.bfloat16)}}
    y = {0: {A: torch.full((2, 2), 1.0078125, dtype=torch.bfloat16), B: torch.full((2, 1), 6.0, dtype=torch.bfloat16)}}
    s.accumulate("x", 1, x, 1.0)
    s.accumulate("y", 1, y, 3.0)
    assert s._pending.sums[0][A].dtype == torch.float32  # accumulator is float32

    s.close_round(1)

    (d,) = s.downloads("x", 2)
    assert d.tensors[A].dtype == torch.bfloat16
    assert d.tensors[B].dtype == torch.bfloat16
    # float32: (1.015625 + 3 * 1.0078125) / 4 = 1.009765625 -> bf16 1.0078125.
    # Doing the arithmetic in bf16 instead gives 1.015625 (3 * 1.0078125 rounds to 3.03125).
    assert d.tensors[A].float().tolist() == [[1.0078125, 1.0078125], [1.0078125, 1.0078125]]
    naive = (x[0][A] * 1 + y[0][A] * 3) / 4
    assert naive[0, 0].item() == 1.015625
    assert d.tensors[B].float().tolist() == [[5.0], [5.0]]


def test_fedit_fp16_returned_as_fp16() -> None:
    s = fedit("float16")
    s.accumulate("x", 1, {0: {A: torch.full((2, 2), 1.0, dtype=torch.float16)}}, 1.0)
    s.accumulate("y", 1, {0: {A: torch.full((2, 2), 3.0, dtype=torch.float16)}}, 1.0)
    s.close_round(1)
    (d,) = s.downloads("x", 2)
    assert d.tensors[A].dtype == torch.float16
    assert d.tensors[A].tolist() == [[2.0, 2.0], [2.0, 2.0]]


# -- Local --------------------------------------------------------------------------------------


def test_local_uploads_and_downloads_nothing() -> None:
    s = create_strategy(RunConfig(strategy="local"), schema())
    spec = s.upload_spec("w", 1)
    assert spec == UploadSpec(layers=(), lora_a=False, lora_b=False)
    assert spec.empty
    assert s.downloads("w", 1) == []
    s.begin_round(1, {"w": 5})
    assert s.accumulate("w", 1, X, 1.0) is None
    s.close_round(1)
    assert s.downloads("w", 2) == []
    assert s.state() == {}


# -- WeightedSum and flatten --------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.0, -1.0, -0.5])
def test_weighted_sum_rejects_non_positive_weight(weight: float) -> None:
    ws = WeightedSum()
    with pytest.raises(ValueError, match="weight must be positive"):
        ws.add(0, {A: torch.ones(2, 2)}, weight)
    assert ws.sums == {} and ws.weights == {}


def test_weighted_sum_per_layer_weights() -> None:
    ws = WeightedSum()
    ws.add(0, {A: torch.tensor([2.0])}, 1.0)
    ws.add(0, {A: torch.tensor([6.0])}, 1.0)
    ws.add(1, {A: torch.tensor([10.0])}, 0.5)
    assert ws.layers() == [0, 1]
    assert ws.weights == {0: 2.0, 1: 0.5}
    means = ws.means()
    assert means[0][A].tolist() == [4.0]
    assert means[1][A].tolist() == [10.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_take_means_equals_means_and_reuses_the_sums(dtype: torch.dtype) -> None:
    ws = WeightedSum()
    ws.add(0, {A: torch.tensor([2.0, 4.0], dtype=dtype)}, 1.0)
    ws.add(0, {A: torch.tensor([6.0, 1.0], dtype=dtype)}, 3.0)
    ws.add(1, {A: torch.tensor([10.0], dtype=dtype)}, 0.5)
    expected, sum_ptr = ws.means(), ws.sums[0][A].data_ptr()
    taken = ws.take_means()
    assert {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in taken.items()} == {
        layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in expected.items()
    }
    assert taken[0][A].dtype == dtype and ws.sums == {} and ws.weights == {}
    assert (taken[0][A].data_ptr() == sum_ptr) == (dtype == torch.float32)  # a float32 mean is the sum itself


def test_flatten_unflatten() -> None:
    flat = flatten(X, "global")
    assert sorted(flat) == ["global/0/" + A, "global/0/" + B, "global/1/" + A, "global/1/" + B]
    back = unflatten(flat, "global")
    assert {layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in back.items()} == {
        layer: {n: t.tolist() for n, t in ts.items()} for layer, ts in X.items()
    }
    assert unflatten({"g/0/a/b.c": torch.zeros(1)}, "g")[0].keys() == {"a/b.c"}
