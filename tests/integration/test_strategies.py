"""Every strategy runs 2 rounds end to end (real coordinator, in-process workers, tiny BERT)."""

from __future__ import annotations

import pytest
import torch
from test_federation import TRAIN, _run_all, _worker

from common.exit_codes import ExitCode
from coordinator.strategies import STRATEGIES

LABELS = [("sports", "tech"), ("sports", "tech"), ("food", "tech"), ("food", "tech")]
QUERY_A, QUERY_B = "attention.self.query.lora_A.weight", "attention.self.query.lora_B.weight"


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_runs_two_rounds(strategy, coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(strategy=strategy, rounds=2, min_workers=4, train=TRAIN, fedtree={"warmup_rounds": 1})
    workers = [
        _worker(coord, tiny_model_dir, client_data(f"{strategy}{i}", LABELS[i]), tmp_path / f"o{i}", f"s{i}") for i in range(4)
    ]
    assert _run_all(workers) == [ExitCode.OK] * 4
    engine = coord.engine
    assert engine.done and engine.last_closed == 2 and sorted(engine.store.evaluations()) == [1, 2]
    layers = [w.lm.layers() for w in workers]
    same = {name: all(torch.equal(layers[0][1][name], other[1][name]) for other in layers[1:]) for name in (QUERY_A, QUERY_B)}
    # What ends up shared after the final pull, per strategy:
    expected = {
        "fedit": (True, True),
        "ffa": (True, True),  # A frozen at the shared init, B averaged
        "fedsa": (True, False),
        "fedper": (False, False),  # layer 1 of 2 is personal (L_s = 1)
        "local": (False, False),
        "fedalt": (False, False),
        "flat": (False, False),  # two clusters of two
        "indep": (False, False),
        "fedtree": (False, False),
    }[strategy]
    if strategy in ("flat", "indep", "fedtree"):
        assert engine.strategy.assignment, "clusters were built after warmup"
    assert (same[QUERY_A], same[QUERY_B]) == expected or strategy in ("flat", "indep", "fedtree"), same
    if strategy == "ffa":
        assert all(not p.requires_grad for n, p in workers[0].lm.params[0].items() if "lora_A" in n)
    if strategy == "fedper":
        shared0 = all(torch.equal(layers[0][0][QUERY_B], other[0][QUERY_B]) for other in layers[1:])
        assert shared0, "layer 0 is shared under fedper"
    if strategy == "fedalt":
        assert workers[0].alt is not None and float(workers[0].alt.external[0][QUERY_B].abs().sum()) > 0


def test_fedit_with_client_side_dp(coordinator_factory, tiny_model_dir, client_data, tmp_path):
    coord = coordinator_factory(
        strategy="fedit", rounds=2, min_workers=2, train=TRAIN, privacy={"clip_norm": 0.01, "noise_multiplier": 0.0}
    )
    workers = [_worker(coord, tiny_model_dir, client_data(f"dp{i}"), tmp_path / f"o{i}", f"dp{i}") for i in range(2)]
    assert _run_all(workers) == [ExitCode.OK] * 2
    pushes = coord.engine.store.pushes(1)
    assert all(p["metrics"]["update_norm"] > 0.01 for p in pushes.values())  # the raw updates were larger ...
    # ... but each worker's clipped delta from the shared starting point has norm <= clip_norm,
    # so the mean of two of them is within clip_norm of the start (B starts at 0 for everyone)
    b = coord.engine.store.load_checkpoint(1)
    total = sum(float(t.pow(2).sum()) for k, t in b.items() if "lora_B" in k) ** 0.5
    assert total <= 0.01 + 1e-6
