"""`python -m worker [--config FILE]`: join a federation and train until the run is done.

`python -m worker export --output-dir DIR`: write the personalised PEFT adapter from the local checkpoint.
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
