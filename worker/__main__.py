"""`python -m worker [--config FILE]`: join a federation and train until the run is done.

`python -m worker export --output-dir DIR`: write the personalised PEFT adapter from the local checkpoint.
`python -m worker --plan [--config FILE] [--run-config COORDINATOR_YAML]`: adapter size, bytes on the
wire and estimated peak memory per precision/quantisation, before anything is loaded.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from common.config import WORKER_ENV_PREFIX, WorkerConfig, load_config
from common.errors import ConfigError
from common.exit_codes import ExitCode
from common.logging_setup import configure_logging

log = logging.getLogger("worker")


def export_main(argv: list[str]) -> int:
    """`python -m worker export --output-dir DIR [--to OUT]`: PEFT adapter from the local checkpoint."""
    parser = argparse.ArgumentParser(prog="fedtree-worker export", description=export_main.__doc__)
    parser.add_argument("--output-dir", type=Path, required=True, help="the worker's output directory")
    parser.add_argument("--to", type=Path, help="adapter directory to write (default: OUTPUT_DIR/adapter)")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    from worker.checkpoint import load_checkpoint
    from worker.export import export_adapter

    try:
        state = load_checkpoint(args.output_dir)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG
    out = export_adapter(
        state.lm,
        state.strategy,
        state.model_path,
        len(state.labels),
        state.run.lora,
        args.to or args.output_dir / "adapter",
        state.run.task,
    )
    print(f"wrote PEFT adapter of round {state.round} to {out}")
    return ExitCode.OK


def plan_main(config: WorkerConfig, run_config: Path | None) -> int:
    """`--plan`: print the memory plan of this worker's model in the run (no weights, no coordinator)."""
    from worker.plan import load_run_config, plan

    try:
        run = load_run_config(run_config)
        if config.model_path is None:
            from worker.model import default_model_path

            model_path = default_model_path(run.task)
        else:
            model_path = config.model_path
        print(plan(config, run, model_path))
    except ConfigError as exc:
        print(f"fedtree-worker: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fedtree-worker", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML config file (WorkerConfig)")
    parser.add_argument("--coordinator", help="override HOST:PORT of the coordinator")
    parser.add_argument("--worker-id", help="override the worker id")
    parser.add_argument("--data-dir", type=Path, help="override data.dir (a prepared partition)")
    parser.add_argument("--output-dir", type=Path, help="override the output directory")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the adapter size, the bytes per round on the wire and the estimated peak memory of each "
        "precision/quantisation for the configured model, then exit (reads config.json only, contacts nobody)",
    )
    parser.add_argument(
        "--run-config",
        type=Path,
        help="with --plan: the run to plan for (a coordinator YAML, its run: section; default: RunConfig's defaults)",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {
        k: v
        for k, v in {"coordinator": args.coordinator, "worker_id": args.worker_id, "output_dir": args.output_dir}.items()
        if v is not None
    }
    if args.data_dir is not None:
        overrides["data"] = {"dir": args.data_dir}
    try:
        config = load_config(WorkerConfig, args.config, WORKER_ENV_PREFIX, overrides=overrides)
    except ConfigError as exc:
        print(f"fedtree-worker: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.plan:
        return plan_main(config, args.run_config)
    configure_logging(config.log_level, config.log_json, name=config.worker_id)

    from worker.runner import Worker  # heavy imports (torch, transformers) after the config is good

    try:
        worker = Worker(config)
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (waits and retries end now, training at its next step)", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run_forever()


if __name__ == "__main__":
    raise SystemExit(main())
