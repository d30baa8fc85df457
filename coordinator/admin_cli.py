"""`fedtree admin status|workers|tree|rounds|wait|export|evict|pause|resume|rebuild`: the operator CLI.

    fedtree admin tree [--config admin.yaml] [--coordinator HOST:PORT] [--token T] [--json]
    fedtree admin wait [--round N] [--timeout S]     # progress lines until round N closes (default: the run is done)

Connection settings (coordinator, token, TLS files, server name) come from a YAML file (--config or
$FEDTREE_ADMIN_CONFIG), then FEDTREE_ADMIN__* environment variables (FEDTREE_ADMIN__COORDINATOR,
FEDTREE_ADMIN__TOKEN, FEDTREE_ADMIN__TLS__CA, ...; the older FEDTREE_ADMIN_TOKEN too), then flags
(common/config.py AdminClientConfig). Output is a human-readable table by default and the Admin
API's JSON (MessageToJson) with --json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToJson

from common.admin_types import FilePiece
from common.config import ADMIN_ENV_PREFIX, AdminClientConfig, load_config
from common.errors import ConfigError, FedtreeError, InvalidArgument
from common.exit_codes import ExitCode
from common.grpc_options import CHANNEL_OPTIONS
from common.tls import secure_channel
from coordinator.auth import bearer
from coordinator.file_chunks import receive_files
from coordinator.tree import ClientTree, Merge
from coordinator.tree.render import dendrogram
from proto.fedtree.v1 import admin_pb2 as apb
from proto.fedtree.v1 import admin_pb2_grpc as apb_grpc

COMMANDS = ("status", "workers", "tree", "rounds", "wait", "export", "evict", "pause", "resume", "rebuild")
WAIT_POLL_S = 2.0  # how often `wait` asks for the status
# Deadline of an export: one adapter written and streamed (other calls: AdminClientConfig.timeout_s).
EXPORT_TIMEOUT_S = 120.0


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render_status(s: apb.GetStatusResponse) -> str:
    deadline = f"in {s.deadline_unix - time.time():.0f} s" if s.deadline_unix else "-"
    rows = [
        ["run", s.run_id],
        ["strategy", s.strategy],
        ["phase", apb.Phase.Name(s.phase).removeprefix("PHASE_").lower()],
        ["round", f"{s.current_round or '-'} (last closed {s.last_closed_round} of {s.rounds})"],
        ["quorum", f"{s.pushes}/{s.quorum} pushes" if s.current_round else "-"],
        ["deadline", deadline],
        ["left", f"~{s.remaining_s:.0f} s (from each waited-for worker's last round)" if s.HasField("remaining_s") else "-"],
        ["workers", str(s.workers)],
    ]
    return "\n".join(f"{k:<9} {v}" for k, v in rows)


def _headline(metric_maps: list[Any]) -> str:
    """The metric a table leads with: accuracy, or ROUGE-1 for a generation (causal_lm) run."""
    if any("accuracy" in m for m in metric_maps):
        return "accuracy"
    return "rouge1" if any("rouge1" in m for m in metric_maps) else "accuracy"


def render_workers(w: apb.ListWorkersResponse) -> str:
    now = time.time()
    metric = _headline([x.last_metrics for x in w.workers])
    rows = [
        [
            x.worker_id,
            apb.WorkerState.Name(x.state).removeprefix("WORKER_STATE_").lower(),
            x.activity,
            x.address or "-",
            f"{now - x.last_heartbeat_unix:.0f} s ago" if x.last_heartbeat_unix else "-",
            str(x.rounds_done),
            f"{x.bytes_sent / 1e6:.2f} MB",
            f"{x.bytes_received / 1e6:.2f} MB",
            f"{x.last_metrics[metric]:.3f}" if metric in x.last_metrics else "-",
        ]
        for x in w.workers
    ]
    return _table(["worker", "state", "activity", "address", "last seen", "rounds", "sent", "received", metric], rows)


def render_tree(t: apb.GetTreeResponse) -> str:
    if not t.built:
        return f"strategy {t.strategy}: no client tree (yet): it is built after warmup by tree/cluster strategies"
    lines = [f"strategy {t.strategy}: built after round {t.built_round}" + (" (rebuild pending)" if t.rebuild_pending else "")]
    if t.leaves:
        tree = ClientTree(tuple(t.leaves), tuple(Merge(m.left, m.right, m.distance, m.size) for m in t.merges), t.linkage)
        hanging: dict[int, list[str]] = {}
        for late in t.late_joiners:
            if late.placed_round and late.anchor >= 0:
                hanging.setdefault(late.anchor, []).append(f"{late.worker_id} (late, placed round {late.placed_round})")
        dashed = " (┄┄ late joiners, under the deepest tree cluster they joined)" if hanging else ""
        lines += ["", f"client tree ({t.linkage} linkage){dashed}:", *("  " + x for x in dendrogram(tree, hanging))]
    lines += ["", "which workers share an adapter, per layer (shallow -> deep):"]
    for layer in t.layers:
        groups = "  ".join("{" + " ".join(c.workers) + "}" for c in layer.clusters)
        lams = ", ".join(f"{w}={v:.2f}" for w, v in sorted(layer.lambdas.items()))
        lines.append(
            f"  layer {layer.layer:>2}: {layer.cluster_count} cluster(s)  {groups}" + (f"   lambda: {lams}" if lams else "")
        )
    if t.late_joiners:
        lines += ["", "late joiners (placed without moving anyone; distance = mean to the cluster joined, deepest layer):"]
        lines += ["  " + render_late(late) for late in t.late_joiners]
    return "\n".join(lines)


def render_late(late: apb.LateJoiner) -> str:
    """One late joiner: where it was placed (and from which layer it has its own branch), or its warmup."""
    if not late.placed_round:
        return f"{late.worker_id}: in its own warmup, {late.warmup_rounds_done}/{late.late_warmup_rounds} rounds pushed"
    clusters = " ".join(str(p.cluster) + ("*" if p.new_branch else "") for p in late.layers)
    line = (
        f"{late.worker_id}: placed after round {late.placed_round}, distance {late.distance:.4g}, clusters per layer [{clusters}]"
    )
    if late.new_branch_from >= 0:
        p = late.layers[late.new_branch_from]
        line += f"; its own branch (*) from layer {p.layer} (nearest cluster at {p.distance:.4g} > threshold {p.threshold:.4g})"
    return line


def render_rounds(r: apb.GetRoundsResponse) -> str:
    metric = _headline([x.mean_metrics for x in r.rounds])
    generation = metric == "rouge1"  # a causal_lm run: ROUGE-2/L and the task score beside ROUGE-1

    def last_column(x: Any) -> str:
        if generation:
            return " ".join(f"{k}={x.mean_metrics[k]:.3f}" for k in ("rouge2", "rougeL", "task_score") if k in x.mean_metrics)
        return " ".join(f"{w}={a:.2f}" for w, a in sorted(x.accuracy.items()))

    rows = [
        [
            str(x.round),
            str(x.pushes),
            f"{x.duration_s:.1f} s",
            f"{x.bytes / 1e6:.2f} MB",
            f"{x.mean_metrics[metric]:.3f}" if metric in x.mean_metrics else "-",
            last_column(x),
        ]
        for x in r.rounds
    ]
    head = ["mean rouge1", "other means"] if generation else ["mean acc", "accuracy per worker"]
    return _table(["round", "pushes", "duration", "bytes", *head], rows)


def save_files(chunks: Iterable[apb.FileChunk], to: Path) -> list[str]:
    """Check a FileChunk stream (order, totals, sha256 per file) and write its files under `to`;
    nothing is written unless the whole stream checks out. Returns the paths written."""
    files = receive_files(FilePiece(c.path, c.index, c.total, c.data, c.sha256) for c in chunks)
    root = to.resolve()
    targets = {path: (to / path).resolve() for path in files}
    for path, target in targets.items():
        if root not in target.parents:
            raise InvalidArgument(f"refusing to write outside {to}: {path}")
    to.mkdir(parents=True, exist_ok=True)
    for path, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[path])
    return sorted(files)


def export(stub: apb_grpc.AdminStub, worker: str, to: Path, md: Any) -> str:
    stream = stub.ExportAdapter(apb.ExportAdapterRequest(worker_id=worker), timeout=EXPORT_TIMEOUT_S, metadata=md)
    return f"wrote {', '.join(save_files(stream, to))} for {worker} to {to}"


def wait(stub: apb_grpc.AdminStub, md: Any, round: int | None, timeout_s: float, call_timeout_s: float) -> str:
    """Print a line whenever the run's progress changes; return once `round` has closed (None: the
    run is done). Raises TimeoutError after `timeout_s`."""
    give_up = time.monotonic() + timeout_s
    shown = ""
    while True:
        try:
            s = stub.GetStatus(apb.GetStatusRequest(), timeout=call_timeout_s, metadata=md)
        except grpc.RpcError as exc:  # not up yet, or restarting: a waiting operator waits on
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            line = f"coordinator not reachable ({exc.code().name}): still waiting"
            if line != shown:
                print(line, flush=True)
                shown = line
            if time.monotonic() > give_up:
                raise TimeoutError(line) from None
            time.sleep(WAIT_POLL_S)
            continue
        target = s.rounds if round is None else round
        finished = s.phase == apb.PHASE_DONE if round is None else s.last_closed_round >= round
        line = progress_line(s)
        if line != shown:
            print(line, flush=True)
            shown = line
        if finished:
            return f"round {target} closed" if round is not None else f"run {s.run_id} done ({s.rounds} rounds)"
        if time.monotonic() > give_up:
            raise TimeoutError(f"still at: {line} after {timeout_s:.0f} s")
        time.sleep(WAIT_POLL_S)


def progress_line(s: apb.GetStatusResponse) -> str:
    """One line of `wait`: phase, round, pushes and the round's estimated time left (when there is one)."""
    phase = apb.Phase.Name(s.phase).removeprefix("PHASE_").lower()
    if not s.current_round:
        return f"{phase}: last closed round {s.last_closed_round} of {s.rounds}, {s.workers} worker(s) joined"
    left = f", ~{round(s.remaining_s, -1):.0f} s left" if s.HasField("remaining_s") else ""  # to 10 s: a line per change
    return f"{phase}: round {s.current_round} of {s.rounds}, {s.pushes}/{s.quorum} pushes{left}"


def connection(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> AdminClientConfig:
    """Where and how to call: the config file, then FEDTREE_ADMIN__* (and the older
    FEDTREE_ADMIN_TOKEN), then the flags given on this command line."""
    environ = os.environ if environ is None else environ
    path = args.config or (Path(environ["FEDTREE_ADMIN_CONFIG"]) if environ.get("FEDTREE_ADMIN_CONFIG") else None)
    overrides: dict[str, Any] = {}
    if environ.get("FEDTREE_ADMIN_TOKEN"):
        overrides["token"] = environ["FEDTREE_ADMIN_TOKEN"]
    if args.coordinator:
        overrides["coordinator"] = args.coordinator
    if args.token:
        overrides["token"] = args.token
    tls = {k: v for k, v in {"ca": args.tls_ca, "cert": args.tls_cert, "key": args.tls_key}.items() if v is not None}
    if args.tls_server_name:
        tls["server_name"] = args.tls_server_name
    if tls:
        overrides["tls"] = tls
    return load_config(AdminClientConfig, path, ADMIN_ENV_PREFIX, environ, overrides)


def run(args: argparse.Namespace, conn: AdminClientConfig) -> str:
    md = bearer(conn.token) if conn.token else None
    with secure_channel(conn.coordinator, conn.tls, conn.tls is None, CHANNEL_OPTIONS) as channel:
        stub = apb_grpc.AdminStub(channel)
        reads: dict[str, tuple[Callable[..., Any], Any, Callable[[Any], str]]] = {
            "status": (stub.GetStatus, apb.GetStatusRequest(), render_status),
            "workers": (stub.ListWorkers, apb.ListWorkersRequest(), render_workers),
            "tree": (stub.GetTree, apb.GetTreeRequest(), render_tree),
            "rounds": (stub.GetRounds, apb.GetRoundsRequest(), render_rounds),
        }
        if args.command in reads:
            call, request, render = reads[args.command]
            reply = call(request, timeout=conn.timeout_s, metadata=md)
            return MessageToJson(reply) if args.json else render(reply)
        if args.command == "wait":
            return wait(stub, md, args.round, args.timeout, conn.timeout_s)
        if args.command == "export":
            return export(stub, args.worker, args.to, md)
        if args.command == "evict":
            stub.EvictWorker(apb.EvictWorkerRequest(worker_id=args.worker), timeout=conn.timeout_s, metadata=md)
            return f"evicted {args.worker}"
        if args.command in ("pause", "resume"):
            call = stub.Pause if args.command == "pause" else stub.Resume
            call(apb.PauseRequest() if args.command == "pause" else apb.ResumeRequest(), timeout=conn.timeout_s, metadata=md)
            return f"{args.command}d"
        reply = stub.RebuildTree(apb.RebuildTreeRequest(), timeout=conn.timeout_s, metadata=md)
        return f"the tree will be rebuilt from the uploads of round {reply.round}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedtree", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="group", required=True)
    admin = sub.add_parser("admin", help="inspect and steer a running coordinator")
    admin.add_argument("command", choices=COMMANDS)
    admin.add_argument("--config", type=Path, help="YAML connection settings (default: $FEDTREE_ADMIN_CONFIG); see README")
    admin.add_argument("--coordinator", help="HOST:PORT of the coordinator (default: localhost:50051)")
    admin.add_argument("--token", help="admin token (default: $FEDTREE_ADMIN_TOKEN or FEDTREE_ADMIN__TOKEN)")
    admin.add_argument("--json", action="store_true", help="print the Admin API's JSON")
    admin.add_argument("--worker", help="worker id (export, evict)")
    admin.add_argument("--tls-ca", type=Path, help="CA of the coordinator's certificate (TLS); plaintext without it")
    admin.add_argument("--tls-cert", type=Path, help="client certificate, when the coordinator requires one (mTLS)")
    admin.add_argument("--tls-key", type=Path, help="key of the client certificate")
    admin.add_argument("--tls-server-name", help="name in the coordinator's certificate, if not the host dialled")
    admin.add_argument("--to", type=Path, help="directory to write the adapter to (export)")
    admin.add_argument("--round", type=int, help="wait: until this round has closed (default: until the run is done)")
    admin.add_argument("--timeout", type=float, default=3600.0, help="wait: give up after this many seconds (exit 1)")
    args = parser.parse_args(argv)
    if args.command in ("export", "evict") and not args.worker:
        parser.error(f"{args.command} needs --worker")
    if args.command == "export" and not args.to:
        parser.error("export needs --to DIR")
    try:
        conn = connection(args)
    except ConfigError as exc:
        print(f"fedtree admin: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        print(run(args, conn))
    except grpc.RpcError as exc:
        print(f"fedtree admin {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return ExitCode.ERROR
    except FedtreeError as exc:  # e.g. an export stream that fails its checks
        print(f"fedtree admin {args.command}: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    except TimeoutError as exc:
        print(f"fedtree admin {args.command}: timed out: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
