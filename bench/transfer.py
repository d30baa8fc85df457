"""Transfer benchmark: one round trip of an adapter set to 2 workers, no training.

The server streams the payload down to each of 2 workers, each worker pushes it back; the time
is from the first worker's first byte requested to the last worker's push acknowledged. Three
ways, one after the other in the same run on the same machine:

  fedtree  the real path: coordinator process (FedIT) + 2 light worker processes using the real
           client (bench/transfer_fedtree.py); a LLaMA-7B-like adapter (32 blocks x q/v x A, B).
  raw      a minimal grpcio stream of the same number of bytes in 1 MiB chunks, identity
           serializers (bench/transfer_raw.py): the ceiling.
  Flower   flwr 1.39 in its own virtualenv: SuperLink + 2 SuperNodes, a ServerApp that sends the
           payload, a ClientApp that echoes it (bench/transfer_flower.py, bench/flower_echo).

Throughput = 2 workers x 2 directions x payload / seconds. Each cell is the fastest of --repeats
round trips (the machine is shared: noise only ever adds time); CPU = CPU seconds of the server and
both workers (all threads) in that round trip, the less load-dependent measure. For fp32 payloads fedtree also runs
with run.wire_dtype = bf16 (half the bytes on the wire, float32 on arrival). Peak RSS (VmHWM) of
the fedtree coordinator (and what it held idle before the workers came) and of a worker. Flower
runs up to 256 MiB.

    python bench/transfer.py            # 8, 64, 256, 1024 MiB x fp32, bf16   (make bench-transfer)
    python bench/transfer.py --quick    # 8 MiB only; Flower only if its virtualenv exists
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import transfer_fedtree  # noqa: E402
import transfer_flower  # noqa: E402
import transfer_raw  # noqa: E402
from transfer_fedtree import Payload  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CTX = mp.get_context("spawn")
FLOWER_MAX_MIB = 256  # Flower's round trip is already 15-20 s at 256 MiB; 1 GiB would hold the machine for minutes
MIB = 1 << 20

# Copies of each payload byte made by fedtree's own code (gRPC's copies into and out of its
# buffers are not counted: the raw stream makes them too), counted along the code path.
COPIES = (
    ("push, worker", "2 (safetensors save; frame)", "1 (frame from the tensors' memory, common/framing.py)"),
    ("push, coordinator", "2 (reassembly join; safetensors load)", "1 (into a reused layer buffer; decode is a view)"),
    ("pull, coordinator", "0 per worker (2 per round, shared)", "0 per worker (1 per round, shared)"),
    ("pull, worker", "2 (reassembly join; safetensors load)", "1 (into a reused layer buffer; decode is a view)"),
    ("round trip per worker", "6 copies, 3 sha256 passes", "3 copies, 3 BLAKE3 passes (hashed as chunks land)"),
)


@dataclass
class Cell:
    seconds: float | None = None
    ok: bool = True
    note: str = ""
    cpu: float | None = None  # CPU seconds of server + both workers in the fastest round trip
    coord_rss: int | None = None  # peak RSS of the coordinator process (bytes)
    coord_idle_rss: int | None = None  # its RSS after start, before any worker
    worker_rss: int | None = None  # the larger peak RSS of the two workers

    def mbps(self, nbytes: int) -> float | None:
        return None if self.seconds is None else 4 * nbytes / (1 << 20) / self.seconds


def _fastest(results: Any, workers: int, repeats: int) -> tuple[float, float, bool]:
    """(wall, CPU) of the fastest repeat over the workers' records (repeat, start, end, ok,
    own CPU, server CPU at start, server CPU at end); wall = last end - first start."""
    spans: dict[int, list[tuple[float, float, float, float, float]]] = {}
    ok = True
    for _ in range(workers * repeats):
        i, start, end, good, cpu, s0, s1 = results.get(timeout=1800)
        ok = ok and good
        if i >= 0:
            spans.setdefault(i, []).append((start, end, cpu, s0, s1))
    rounds = [
        (max(r[1] for r in s) - min(r[0] for r in s), sum(r[2] for r in s) + max(r[4] for r in s) - min(r[3] for r in s))
        for s in spans.values()
    ]
    wall, cpu = min(rounds)
    return wall, cpu, ok


def run_fedtree(payload: Payload, repeats: int, run_extra: dict[str, Any] | None = None) -> Cell:
    with tempfile.TemporaryDirectory(prefix="fedtree-transfer-") as tmp:
        coord, target = transfer_fedtree.start_coordinator(Path(tmp), rounds=1 + repeats, run_extra=run_extra)
        idle_rss = transfer_fedtree.rss(coord.pid)
        results = CTX.Queue()
        procs = [
            CTX.Process(target=transfer_fedtree.worker, args=(target, coord.pid, f"w{i}", payload, results)) for i in range(2)
        ]
        try:
            for p in procs:
                p.start()
            wall, cpu, ok = _fastest(results, 2, repeats)
            finals = [results.get(timeout=600) for _ in procs]  # each worker's final echo check and peak RSS
            ok = ok and all(f[3] for f in finals)
            worker_rss = int(max(f[1] for f in finals))
            coord_rss = transfer_fedtree.peak_rss(coord.pid)
            for p in procs:
                p.join(60)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            coord.terminate()
            coord.wait(30)
    return Cell(wall, ok, cpu=cpu, coord_rss=coord_rss, coord_idle_rss=idle_rss, worker_rss=worker_rss)


def run_raw(nbytes: int, repeats: int) -> Cell:
    ports, stop, results, barrier = CTX.Queue(), CTX.Event(), CTX.Queue(), CTX.Barrier(2)
    server = CTX.Process(target=transfer_raw.serve, args=(nbytes, ports, stop))
    server.start()
    port, pid = ports.get(timeout=60)
    target = f"127.0.0.1:{port}"
    clients = [CTX.Process(target=transfer_raw.client, args=(target, pid, nbytes, repeats, barrier, results)) for _ in range(2)]
    try:
        for c in clients:
            c.start()
        wall, cpu, ok = _fastest(results, 2, repeats)
        for c in clients:
            c.join(60)
    finally:
        stop.set()
        server.join(30)
        for p in (*clients, server):
            if p.is_alive():
                p.kill()
    return Cell(wall, ok, cpu=cpu)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 MiB only; Flower only if its virtualenv already exists")
    parser.add_argument("--sizes", type=int, nargs="+", help="payload sizes in MiB (default 8 64 256 1024; --quick: 8)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="round trips per cell (fastest reported)")
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower column")
    parser.add_argument("--no-wire", action="store_true", help="skip the bf16-on-the-wire fedtree column")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([8] if args.quick else [8, 64, 256, 1024])
    repeats = 2 if args.quick and args.repeats == 3 else args.repeats

    flower_off = "--no-flower" if args.no_flower else transfer_flower.ensure_venv(create=not args.quick)
    if flower_off:
        print(f"Flower column skipped: {flower_off}")
    bf16_note = "" if flower_off else transfer_flower.bf16_verdict()

    rows = []
    wires: dict[tuple[int, str], Cell] = {}
    for mib in sizes:
        for name in args.dtypes:
            payload = Payload(mib, DTYPES[name])
            print(f"... {mib} MiB {name}: fedtree", file=sys.stderr, flush=True)
            fed = run_fedtree(payload, repeats)
            print(f"... {mib} MiB {name}: raw grpc", file=sys.stderr, flush=True)
            raw = run_raw(payload.nbytes, repeats)
            wire = Cell(note="-")
            if name == "fp32" and not args.no_wire:
                print(f"... {mib} MiB {name}: fedtree, bf16 on the wire", file=sys.stderr, flush=True)
                wire = run_fedtree(payload, repeats, {"wire_dtype": "bf16"})
            wires[(mib, name)] = wire
            flower = "not run" if flower_off else ("cannot (see below)" if name != "fp32" else "not run (> 256 MiB)")
            rows.append((mib, name, payload, fed, raw, Cell(note=flower)))
    if not flower_off:
        fp32_sizes = sorted({mib for mib, name, *_ in rows if name == "fp32" and mib <= FLOWER_MAX_MIB})
        with transfer_flower.flower_cluster() as cluster:
            for mib in fp32_sizes:
                print(f"... {mib} MiB fp32: Flower", file=sys.stderr, flush=True)
                try:
                    got = cluster.run(mib, repeats)
                    timed = [r for r in got if r["round"] > 0]
                    cell = Cell(min(r["seconds"] for r in timed), all(r["ok"] for r in got))
                    cell.note = f"1 KiB warm-up round {got[0]['seconds']:.1f} s"
                except (RuntimeError, TimeoutError) as exc:
                    cell = Cell(note=f"failed: {exc}")
                for i, row in enumerate(rows):
                    if row[0] == mib and row[1] == "fp32":
                        rows[i] = (*row[:5], cell)

    print()
    print(
        "| payload | dtype | fedtree s | fedtree MB/s | raw grpc s | raw grpc MB/s | fedtree / raw throughput | "
        "fedtree CPU s | raw CPU s | raw / fedtree CPU | Flower s | Flower MB/s | Flower / fedtree time | "
        "fedtree bf16-wire s | coordinator peak RSS MiB (idle) | worker peak RSS MiB | echo ok |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mib, name, payload, fed, raw, flw in rows:
        n = payload.nbytes
        share = None if fed.seconds is None or raw.seconds is None else 100 * raw.seconds / fed.seconds
        speedup = None if flw.seconds is None or fed.seconds is None else flw.seconds / fed.seconds
        cpu_share = None if not fed.cpu or raw.cpu is None else 100 * raw.cpu / fed.cpu
        flw_s = _fmt(flw.seconds, ".2f") if flw.seconds is not None else flw.note
        print(
            f"| {mib} MiB | {name} | {_fmt(fed.seconds, '.3f')} | {_fmt(fed.mbps(n), '.0f')} | {_fmt(raw.seconds, '.3f')} | "
            f"{_fmt(raw.mbps(n), '.0f')} | {_fmt(share, '.0f')}% | {_fmt(fed.cpu, '.2f')} | {_fmt(raw.cpu, '.2f')} | "
            f"{_fmt(cpu_share, '.0f')}% | {flw_s} | {_fmt(flw.mbps(n), '.0f')} | "
            f"{_fmt(speedup, '.1f')}{'x' if speedup else ''} | {_fmt(wires[(mib, name)].seconds, '.3f')} | "
            f"{_mib(fed.coord_rss)} ({_mib(fed.coord_idle_rss)}) | {_mib(fed.worker_rss)} | "
            f"{'yes' if fed.ok and raw.ok and flw.ok and wires[(mib, name)].ok else 'NO'} |"
        )
    notes = [f"{mib} MiB Flower: {flw.note}" for mib, name, _, _, _, flw in rows if name == "fp32" and flw.note != "not run"]
    for note in notes:
        print(f"- {note}")
    if bf16_note:
        print(f"- Flower bf16: {bf16_note}")
    print(f"- MB = MiB (2^20 bytes); payload = {transfer_fedtree.LAYERS} blocks x q/v x LoRA A+B, rank sized to the payload")
    print()
    print("Copies of each payload byte by fedtree's own code (gRPC's own copies, which the raw stream makes too, not counted):")
    print()
    print("| path | before (main at ccd5465) | now |")
    print("|---|---|---|")
    for path, before, now in COPIES:
        print(f"| {path} | {before} | {now} |")
    return 0 if all(r[3].ok and r[4].ok and r[5].ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
