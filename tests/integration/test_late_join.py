"""Late joiners through the real coordinator and workers on the tiny BERT (bench/late_join.py's code).

A planted federation (wordnet_pos, fortunes x 2 label-skew subgroups x 2 clients); one client of
wordnet_pos is held back and joins after the tree is built, and so does a client of a task nobody
else has (wordnet_verb_supersense: other labels, other glosses). Both run their own warmup (late_warmup_rounds = warmup_rounds = 2) and are
placed after round 4; round 5 they pull cluster + external experts. Then the coordinator restarts
on its state directory, and the placements are still there (Admin GetTree, the CLI's view, the
experts pulled). The model has no dropout, so the run is repeatable; as in test_tree_recovery.py
the random tiny model separates the tasks on seed 0 (the tree: {client-0, 2, 3} | {client-4..7}).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.late_join import LateOutcome, Settings, run_late_federation, with_its_task  # noqa: E402
from common.config import CoordinatorConfig  # noqa: E402
from coordinator.admin_cli import render_tree  # noqa: E402
from coordinator.server import Coordinator  # noqa: E402
from coordinator.strategies.fedtree import FedTree  # noqa: E402
from coordinator.tree import ClientTree  # noqa: E402
from worker.data.planted import PlantedClient, planted_federation  # noqa: E402

pytestmark = [pytest.mark.corpora]

SETTINGS = Settings(
    seed=0, warmup_rounds=2, rounds=5, local_steps=4, train_size=32, val_size=8, fedtree={"tau": -1.0}
)  # tau -1: split wherever the silhouette is positive
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ADMIN = "adm"
LIKE = "client-1"  # wordnet_pos, skew subgroup 0: its partner client-0 is in the tree
UNLIKE = "unlike"


@pytest.fixture(scope="module")
def run(tiny_model_dir_no_dropout: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[LateOutcome, list[PlantedClient]]:
    import torch

    s = SETTINGS
    clients = planted_federation(("wordnet_pos", "fortunes"), 2, 2, s.train_size, s.val_size, s.concentration, s.seed)
    odd = planted_federation(("wordnet_verb_supersense",), 1, 1, s.train_size, s.val_size, s.concentration, s.seed)[0]
    clients.append(replace(odd, client_id=UNLIKE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = run_late_federation(
            clients, [LIKE, UNLIKE], "place", s, tmp_path_factory.mktemp("late"), tiny_model_dir_no_dropout
        )
    finally:
        torch.set_num_threads(threads)
    return outcome, clients


def test_late_joiner_lands_in_its_groups_cluster_and_nobody_moves(run: tuple[LateOutcome, list[PlantedClient]]) -> None:
    outcome, clients = run
    meta = outcome.meta
    tree = ClientTree.from_dict(meta["tree"])
    assert LIKE not in tree.leaves and UNLIKE not in tree.leaves and len(tree.leaves) == 7
    assert meta["placements"][LIKE]["round"] == 4 and meta["placements"][UNLIKE]["round"] == 4
    # in every layer where its task has clusters of its own, it is in one of them (and one such layer exists)
    assert with_its_task(meta, clients, LIKE) is True
    # the other workers' assignments are the tree's own cuts, unchanged by the placements
    for i, (layer, assignment) in enumerate(sorted(meta["assignment"].items(), key=lambda kv: int(kv[0]))):
        labels = tree.partition(meta["cuts"][i])
        assert {w: assignment[w] for w in tree.leaves} == dict(zip(tree.leaves, labels.tolist(), strict=True)), layer
    # both late joiners took part in every round from round 3 on and evaluated the mixed model after round 5
    assert {LIKE, UNLIKE} <= set(outcome.accuracy[5])


def test_a_late_joiner_with_unlike_data_gets_a_branch_of_its_own(run: tuple[LateOutcome, list[PlantedClient]]) -> None:
    outcome, _ = run
    meta = outcome.meta
    layers = meta["placements"][UNLIKE]["layers"]
    branched = [i for i, row in enumerate(layers) if row[4]]  # new_branch
    assert branched, layers
    deepest = meta["assignment"][str(len(layers) - 1)]
    assert [w for w, c in deepest.items() if c == deepest[UNLIKE]] == [UNLIKE]  # a singleton branch
    assert branched == list(range(branched[0], len(layers)))  # nested: kept in every deeper layer


@pytest.fixture(scope="module")
def restarted(run: tuple[LateOutcome, list[PlantedClient]]) -> Iterator[tuple[Coordinator, int]]:
    """A new coordinator on the run's state directory (restored from its last checkpoint, then
    resume(), as a restarted process does), with the Admin API and the dashboard on."""
    from coordinator.state import StateStore

    outcome, _ = run
    stored = StateStore(outcome.state_dir, read_only=True)
    raw = stored.get("config")
    stored.close()
    overrides = {"state_dir": str(outcome.state_dir), "admin_token": ADMIN, "port": 0, "dashboard_port": 0}
    coordinator = Coordinator(CoordinatorConfig.model_validate({**raw, **overrides}))
    port = coordinator.start()
    try:
        yield coordinator, port
    finally:
        coordinator.stop(grace=0.1)


def test_placements_survive_a_coordinator_restart(
    run: tuple[LateOutcome, list[PlantedClient]], restarted: tuple[Coordinator, int]
) -> None:
    from proto.fedtree.v1 import admin_pb2 as apb
    from proto.fedtree.v1 import admin_pb2_grpc as apb_grpc

    outcome, _ = run
    coordinator, port = restarted
    strategy = coordinator.engine.strategy
    assert isinstance(strategy, FedTree)
    assert {w: p.to_dict() for w, p in strategy.placements.items()} == outcome.meta["placements"]
    assert (outcome.state_dir / "tree-members" / "round-00002").is_dir()
    assert sorted(strategy.members.workers()) == sorted([*ClientTree.from_dict(outcome.meta["tree"]).leaves, LIKE, UNLIKE])
    assert strategy.downloads(LIKE, 6) and strategy.head_group(LIKE, 6) == strategy.head_group("client-0", 6)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        tree = apb_grpc.AdminStub(channel).GetTree(
            apb.GetTreeRequest(), metadata=(("authorization", f"Bearer {ADMIN}"),), timeout=10
        )
    late = {j.worker_id: j for j in tree.late_joiners}
    assert set(late) == {LIKE, UNLIKE} and late[LIKE].placed_round == 4 and late[LIKE].new_branch_from == -1
    assert late[UNLIKE].new_branch_from >= 0 and late[LIKE].anchor >= 0
    text = render_tree(tree)  # what `fedtree admin tree` prints
    assert f"┄┄ {LIKE} (late, placed round 4)" in text and f"{UNLIKE}: placed after round 4" in text


@pytest.mark.browser
def test_dashboard_draws_late_joiners_as_dashed_leaves(restarted: tuple[Coordinator, int]) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install the Debian package `chromium` (make install-system)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the `playwright` Python package is missing")
    coordinator, _ = restarted
    assert coordinator.dashboard is not None
    base = coordinator.dashboard.url.rstrip("/")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(base + "/")
            page.wait_for_url("**/login", timeout=15_000)
            page.fill("#token", ADMIN)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/", timeout=15_000)
            page.wait_for_function("document.querySelectorAll('#tree .leaf').length === 9", timeout=15_000)
            late = page.eval_on_selector_all("#tree .leaf.late", "els => els.map(e => e.dataset.worker)")
            assert sorted(late) == sorted([LIKE, UNLIKE])
            links = page.eval_on_selector_all("#tree path.late-link", "els => els.map(e => e.dataset.worker)")
            assert sorted(links) == sorted([LIKE, UNLIKE])
            cuts = page.eval_on_selector_all("#tree line.cut", "els => els.map(e => +e.dataset.clusters)")
            # one line per layer at the tree's own cut (the late joiner's own branch is no cut of the tree)
            assert cuts == sorted(coordinator.engine.strategy.cuts), cuts
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-late-join.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
