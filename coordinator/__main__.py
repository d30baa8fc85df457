"""`python -m coordinator [--config FILE]`: run a coordinator until the run is done or a signal.

`python -m coordinator export --state-dir DIR --worker ID --to OUT`: a worker's adapter from the state.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from common.config import COORDINATOR_ENV_PREFIX, CoordinatorConfig, load_config
from common.errors import ConfigError, FedtreeError
from common.exit_codes import ExitCode
from common.logging_setup import configure_logging

log = logging.getLogger("coordinator")


def export_main(argv: list[str]) -> int:
    """`python -m coordinator export --state-dir DIR --worker ID --to OUT`: a worker's adapter as a
    PEFT directory, from the coordinator's state (cluster/external experts and reported lambdas).
    It only reads the state, so it is safe to run against a live coordinator's directory."""
    parser = argparse.ArgumentParser(prog="fedtree-coordinator export", description=export_main.__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--to", type=Path, required=True)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    from coordinator.export import write_adapter
    from coordinator.state_view import StateView

    if not (args.state_dir / "state.db").exists():
        print(f"fedtree-coordinator export: no state in {args.state_dir}", file=sys.stderr)
        return ExitCode.CONFIG
    try:  # read-only: safe against the state of a live coordinator, which it never changes
        with StateView.open(args.state_dir) as view:
            out = write_adapter(view, args.worker, args.to)
            last = view.last_closed
    except FedtreeError as exc:
        print(f"fedtree-coordinator export: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    print(f"wrote PEFT adapter of {args.worker} after round {last} to {out}")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fedtree-coordinator", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML config file (CoordinatorConfig)")
    parser.add_argument("--port", type=int, help="override the gRPC port")
    parser.add_argument("--state-dir", type=Path, help="override the state directory")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once serving (for port 0)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"port": args.port, "state_dir": args.state_dir}.items() if v is not None}
    try:
        config = load_config(CoordinatorConfig, args.config, COORDINATOR_ENV_PREFIX, overrides=overrides)
    except ConfigError as exc:
        print(f"fedtree-coordinator: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    configure_logging(config.log_level, config.log_json, name="coordinator")

    from coordinator.server import Coordinator  # heavy imports after the config is known good

    if config.torch_threads:  # see CoordinatorConfig.torch_threads and docs/BENCHMARKS.md (transfer)
        import torch

        torch.set_num_threads(config.torch_threads)

    try:
        coordinator = Coordinator(config)
    except FedtreeError as exc:  # a bad config, or a state directory it cannot resume from
        log.error("%s", exc)
        return ExitCode.CONFIG
    port = coordinator.start()
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signalled.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.is_set():
        if coordinator.engine.wait_done(timeout=0.5):
            log.info("run complete; serving DONE for %.0f s before exit", config.linger_s)
            stop.wait(config.linger_s)
            break
    coordinator.stop()
    return ExitCode.SIGNAL if signalled else ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
