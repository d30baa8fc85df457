"""Every strategy runs 2 rounds end to end (real coordinator, in-process workers, tiny BERT).

The strategies come from the registries (coordinator and worker halves, the same names): a new
strategy runs here without a line of this file; what it ends up sharing is checked for the
strategies documented below and, per cluster, for those with a client tree. README's worked
example of "Add a strategy" is registered for one test and run here too.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_federation import TRAIN, _run_all, _worker

from common.exit_codes import ExitCode
from coordinator.strategies import STRATEGIES
from worker.checkpoint import load_checkpoint
from worker.fedalt import MIXERS_FILE
from worker.strategies import WORKER_STRATEGIES

LABELS = [("sports", "tech"), ("sports", "tech"), ("food", "tech"), ("food", "tech")]
LAYER = 1  # the layer compared (fedper: the personal one)
QUERY_A, QUERY_B = "attention.self.query.lora_A.weight", "attention.self.query.lora_B.weight"
# Is QUERY_A / QUERY_B of LAYER one tensor for every worker after the final pull (True) or each
# worker's own (False)? Strategies with a client tree (tree_view) are checked per cluster instead.
DOCUMENTED = {
    "fedit": (True, True),
    "ffa": (True, True),  # A frozen at the shared init, B averaged
    "fedsa": (True, False),
    "fedper": (False, False),  # layer 1 of 2 is personal (L_s = 1)
    "local": (False, False),
    "fedalt": (False, False),  # own adapter never overwritten; the rest of world is a second one
}
Pairs = frozenset[tuple[int, int]]
TESTS = Path(__file__).resolve().parents[1]
# README "Add a strategy": its worked example, file by file, as kept in tests/
EXAMPLE = {
    "coordinator/strategies/fedavg_b.py": TESTS / "example_fedavg_b_coordinator.py",
    "worker/strategies/fedavg_b.py": TESTS / "example_fedavg_b_worker.py",
}


def test_both_halves_of_every_strategy_are_registered() -> None:
    assert set(STRATEGIES) == set(WORKER_STRATEGIES)


def equal_pairs(values: list[torch.Tensor]) -> Pairs:
    return frozenset((i, j) for i, j in itertools.combinations(range(len(values)), 2) if torch.equal(values[i], values[j]))


def expected_pairs(strategy: str, engine, worker_ids: list[str], name: str) -> Pairs:  # type: ignore[no-untyped-def]
    everyone = frozenset(itertools.combinations(range(len(worker_ids)), 2))
    view = engine.strategy.tree_view()
    if view is not None:  # the cluster expert of LAYER: shared exactly inside a cluster of LAYER
        assert view.built, "clusters were built after warmup"
        cluster_of = {w: c for c, members in enumerate(view.clusters[LAYER]) for w in members}
        pairs = frozenset((i, j) for i, j in everyone if cluster_of[worker_ids[i]] == cluster_of[worker_ids[j]])
        assert pairs, f"no cluster of layer {LAYER} has two members: the check would not see a pull"
        return pairs
    return everyone if DOCUMENTED[strategy][(QUERY_A, QUERY_B).index(name)] else frozenset()


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
    ids = [w.config.worker_id for w in workers]
    if strategy in DOCUMENTED or engine.strategy.tree_view() is not None:  # (a new strategy: the run above)
        for name in (QUERY_A, QUERY_B):
            got = equal_pairs([layer[LAYER][name] for layer in layers])
            assert got == expected_pairs(strategy, engine, ids, name), (name, sorted(got))
    if strategy == "ffa":
        assert all(not p.requires_grad for n, p in workers[0].lm.params[0].items() if "lora_A" in n)
    if strategy == "fedper":
        shared0 = all(torch.equal(layers[0][0][QUERY_B], other[0][QUERY_B]) for other in layers[1:])
        assert shared0, "layer 0 is shared under fedper"
    if strategy == "fedalt":
        check_fedalt_keeps_its_mixers(workers[0])


def check_fedalt_keeps_its_mixers(worker) -> None:  # type: ignore[no-untyped-def]
    """The rest of world arrived; the trained mixers are in the checkpoint and in the export."""
    mixer = worker.strategy.mixer
    assert float(mixer.external[0][QUERY_B].abs().sum()) > 0
    live = mixer.mixer_state()
    assert any(float(t.abs().sum()) > 0 for t in live.values()), "the mixers trained"
    restored = load_checkpoint(worker.out).strategy.mixer.mixer_state()  # what a restarted worker resumes
    exported = load_file(str(worker.out / "adapter" / MIXERS_FILE))
    for key, tensor in live.items():
        assert torch.equal(restored[key], tensor) and torch.equal(exported[key], tensor), key


def test_the_readme_example_is_the_tested_one() -> None:
    readme = (TESTS.parent / "README.md").read_text()
    for path, module in EXAMPLE.items():
        assert f"```python\n# {path}\n{module.read_text()}```" in readme, path


def test_the_readme_example_strategy_runs(monkeypatch, coordinator_factory, tiny_model_dir, client_data, tmp_path):
    """Registered in both registries (what README's two registry lines do), FedAvg-B federates:
    pushes carry B only, A stays each worker's, and each final B is the midpoint of the worker's
    own and the mean, so the workers' final Bs average to the coordinator's mean B."""
    from example_fedavg_b_coordinator import FedAvgB
    from example_fedavg_b_worker import FedAvgBWorker

    monkeypatch.setitem(STRATEGIES, FedAvgB.name, FedAvgB)
    monkeypatch.setitem(WORKER_STRATEGIES, FedAvgB.name, FedAvgBWorker)
    coord = coordinator_factory(strategy="fedavg-b", rounds=2, min_workers=2, train=TRAIN)
    workers = [_worker(coord, tiny_model_dir, client_data(f"b{i}", LABELS[2 * i]), tmp_path / f"o{i}", f"b{i}") for i in range(2)]
    assert _run_all(workers) == [ExitCode.OK] * 2
    engine = coord.engine
    assert engine.done and isinstance(engine.strategy, FedAvgB)
    mean = engine.strategy.global_adapter[LAYER]
    assert mean and all("lora_B" in name for name in mean)  # only B travelled
    final = [w.lm.layers()[LAYER] for w in workers]
    assert not torch.equal(final[0][QUERY_A], final[1][QUERY_A])
    assert not torch.equal(final[0][QUERY_B], final[1][QUERY_B])
    torch.testing.assert_close((final[0][QUERY_B] + final[1][QUERY_B]) / 2, mean[QUERY_B])


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
