"""The accuracy benchmark's report: paired differences per seed and lambda curves (pure functions)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.accuracy_presets import PRESETS, Federation, RunResult  # noqa: E402
from bench.accuracy_report import lambda_table, paired  # noqa: E402

FED = Federation("t", ("a", "b"), 1, 0.5, ("local", "fedit", "fedtree"))
TASKS = {"c0": "a", "c1": "b"}


def _run(method: str, seed: int, accs: list[float], lambdas: dict[int, dict[str, dict[int, float]]] | None = None) -> RunResult:
    acc = {r + 1: {"c0": a, "c1": a} for r, a in enumerate(accs)}
    return RunResult(method, seed, "t", acc, TASKS, 1.0, lambdas=lambdas or {})


def test_paired_difference_per_seed_against_best_baseline() -> None:
    results = [
        _run("local", 0, [0.5, 0.6]),
        _run("local", 1, [0.5, 0.7]),
        _run("fedit", 0, [0.4, 0.5]),
        _run("fedit", 1, [0.4, 0.5]),
        _run("fedtree", 0, [0.5, 0.65]),
        _run("fedtree", 1, [0.5, 0.6]),
    ]
    lines = "\n".join(paired(results, FED, "last"))
    assert "| local (best baseline) | +5.0 | -10.0 | -2.5 | 1/2 |" in lines
    assert "| fedit | +15.0 | +10.0 | +12.5 | 2/2 |" in lines


def test_lambda_table_skips_pinned_layers() -> None:
    lams = {3: {"c0": {0: 1.0, 5: 0.6}, "c1": {0: 1.0, 5: 0.8}}}
    lines = lambda_table([_run("fedtree", 0, [0.5, 0.5, 0.5], lams)], FED)
    assert lines[1] == "| round | layer 5 |"
    assert lines[3] == "| 3 | 0.700 |"


def test_presets_follow_the_protocols() -> None:
    tasks = PRESETS["quick"].federations[0]
    assert len(tasks.tasks) >= 3 and tasks.clients_per_task >= 4 and tasks.alpha == 0.5
    skew = PRESETS["skew"].federations[0]
    assert len(skew.tasks) == 1 and skew.n_clients >= 12
    full = PRESETS["full"]
    assert len(full.seeds) == 3 and all("local" in f.methods and "fedtree" in f.methods for f in full.federations)
    assert {f.name for f in full.federations} == {"tasks", "skew"}
    assert any(f.alpha is None for f in PRESETS["tasks"].federations)


def test_report_block_is_replaced_in_place(tmp_path: Path) -> None:
    from bench.accuracy import write_report

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    write_report("first", doc, "quick")
    doc.write_text(doc.read_text() + "\nafter\n")
    write_report("second", doc, "quick")
    text = doc.read_text()
    assert "first" not in text and text.count("second") == 1 and text.count("## accuracy — preset `quick`") == 1
    assert text.startswith("# Benchmarks\n\nintro\n") and text.endswith("\nafter\n")
