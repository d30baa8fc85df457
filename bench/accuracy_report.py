"""The accuracy benchmark's report: per-task tables, paired differences per seed, cuts, lambda
curves, the plot and the docs/BENCHMARKS.md block."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.accuracy_presets import BASELINES, Federation, Preset, RunResult
from bench.generation import metric_table
from bench.report import write_block


def summarise(result: RunResult, tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{"best": {task: acc, ..., "mean": acc, "round": r}, "last": {...}} for one run."""

    def at(round: int) -> dict[str, float]:
        per = result.acc[round]
        row = {t: statistics.fmean(per[c] for c, task in result.client_task.items() if task == t) for t in tasks}
        row["mean"] = statistics.fmean(per.values())
        row["round"] = float(round)
        return row

    rounds = sorted(result.acc)
    best = max(rounds, key=lambda r: statistics.fmean(result.acc[r].values()))
    return {"best": at(best), "last": at(rounds[-1])}


def fmt_pct(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _score(results: list[RunResult], fed: Federation, method: str, which: str) -> dict[int, float]:
    """seed -> the run's mean accuracy (best or last round)."""
    return {r.seed: summarise(r, fed.tasks)[which]["mean"] for r in results if r.federation == fed.name and r.method == method}


def paired(results: list[RunResult], fed: Federation, which: str) -> list[str]:
    """fedtree minus the best baseline (by mean over seeds) and minus local, seed by seed."""
    if "fedtree" not in fed.methods:
        return []
    ours = _score(results, fed, "fedtree", which)
    baselines = {m: _score(results, fed, m, which) for m in fed.methods if m in BASELINES}
    baselines = {m: v for m, v in baselines.items() if v}
    if not ours or not baselines:
        return []
    best = max(baselines, key=lambda m: statistics.fmean(baselines[m].values()))
    out = [f"Paired difference, {which} round (accuracy points, fedtree minus the method, same seed = same clients and data):\n"]
    out.append("| versus | " + " | ".join(f"seed {s}" for s in sorted(ours)) + " | mean | seeds won |")
    out.append("|---|" + "---|" * (len(ours) + 2))
    for name in dict.fromkeys([best, "local", "fedalt", "flat", "fedit"]):
        if name not in baselines:
            continue
        diffs = [100 * (ours[s] - baselines[name][s]) for s in sorted(ours) if s in baselines[name]]
        label = f"{name} (best baseline)" if name == best else name
        won = sum(d > 0 for d in diffs)
        out.append(
            f"| {label} | " + " | ".join(f"{d:+.1f}" for d in diffs) + f" | {statistics.fmean(diffs):+.1f} | {won}/{len(diffs)} |"
        )
    out.append("")
    return out


def tables(results: list[RunResult], preset: Preset) -> str:
    out = []
    label = "ROUGE-1" if preset.task == "causal_lm" else "accuracy"
    for fed in preset.federations:
        if len(preset.federations) > 1:
            out.append(f"### {fed.describe()}\n")
        for which in ("best", "last"):
            header = ["method", *fed.tasks, "mean"] if len(fed.tasks) > 1 else ["method", "mean"]
            cols = header[1:]
            out.append(
                f"**{which} round** ({label} %, unweighted mean over clients; mean ± std over {len(preset.seeds)} seed(s))\n"
            )
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            for method in fed.methods:
                runs = [summarise(r, fed.tasks)[which] for r in results if r.method == method and r.federation == fed.name]
                if runs:
                    out.append("| " + " | ".join([method] + [fmt_pct([r[c] for r in runs]) for c in cols]) + " |")
            out.append("")
            out.extend(paired(results, fed, which))
        cut_lines = [
            f"- seed {r.seed}, {r.method}: {r.cuts}"
            + (f" (task ARI of the top split {r.tree_ari:.2f})" if r.tree_ari is not None else "")
            for r in results
            if r.federation == fed.name and r.method.startswith(("fedtree", "flat", "indep")) and r.cuts
        ]
        if cut_lines:
            out.append("Per-layer cluster counts chosen (layer 0 = shallowest):\n")
            out.extend(cut_lines)
            out.append("")
        lam = lambda_table(results, fed)
        if lam:
            out.extend(lam)
    if preset.task == "causal_lm":
        out.append(metric_table(results, preset.federations[0].methods, preset.federations[0].tasks))
    return "\n".join(out)


def _mean_lambdas(runs: list[RunResult]) -> dict[int, dict[int, float]]:
    """round -> layer -> mean lambda over clients (only split layers, lambda != 1) and seeds."""
    acc: dict[int, dict[int, list[float]]] = {}
    for r in runs:
        for rnd, per in r.lambdas.items():
            for lams in per.values():
                for layer, lam in lams.items():
                    if lam < 0.9999:
                        acc.setdefault(rnd, {}).setdefault(layer, []).append(lam)
    return {rnd: {layer: statistics.fmean(v) for layer, v in sorted(per.items())} for rnd, per in sorted(acc.items())}


def lambda_table(results: list[RunResult], fed: Federation) -> list[str]:
    runs = [r for r in results if r.federation == fed.name and r.method == "fedtree"]
    means = _mean_lambdas(runs)
    if not means:
        return []
    layers = sorted({layer for per in means.values() for layer in per})
    out = ["fedtree lambda = sigmoid(theta) after each round's training, mean over clients and seeds (split layers only):\n"]
    out.append("| round | " + " | ".join(f"layer {layer}" for layer in layers) + " |")
    out.append("|---|" + "---|" * len(layers))
    for rnd, per in means.items():
        out.append(f"| {rnd} | " + " | ".join(f"{per[layer]:.3f}" if layer in per else "–" for layer in layers) + " |")
    out.append("")
    return out


def plot(results: list[RunResult], preset: Preset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feds = preset.federations
    fig, axes = plt.subplots(2, len(feds), figsize=(7 * len(feds), 9), squeeze=False)
    for col, fed in enumerate(feds):
        ax = axes[0][col]
        for method in fed.methods:
            runs = [r for r in results if r.method == method and r.federation == fed.name]
            if not runs:
                continue
            rounds = sorted(runs[0].acc)
            means = [statistics.fmean(statistics.fmean(r.acc[k].values()) for r in runs) for k in rounds]
            style = "-" if method.startswith("fedtree") else "--"
            width = 2 if method == "fedtree" else 1
            ax.plot(rounds, [100 * m for m in means], style, marker="o", markersize=3, label=method, linewidth=width)
        ax.axvline(preset.knobs.warmup_rounds + 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("round")
        ax.set_ylabel(f"mean validation {'ROUGE-1' if preset.task == 'causal_lm' else 'accuracy'} over clients (%)")
        ax.set_title(f"{fed.name}: {fed.n_clients} clients, {len(preset.seeds)} seed(s)")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        ax = axes[1][col]
        means = _mean_lambdas([r for r in results if r.federation == fed.name and r.method == "fedtree"])
        for layer in sorted({layer for per in means.values() for layer in per}):
            rounds = [rnd for rnd in means if layer in means[rnd]]
            ax.plot(rounds, [means[rnd][layer] for rnd in rounds], marker="o", markersize=3, label=f"layer {layer}")
        ax.set_xlabel("round")
        ax.set_ylabel("fedtree lambda (cluster weight), mean over clients")
        ax.set_title(f"{fed.name}: lambda per split layer")
        ax.grid(alpha=0.3)
        if means:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(report: str, doc: Path, preset_name: str) -> None:
    begin, end = f"<!-- accuracy:{preset_name}:begin -->", f"<!-- accuracy:{preset_name}:end -->"
    write_block(doc, begin, end, report, f"accuracy — preset `{preset_name}`")
