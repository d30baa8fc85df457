"""ServerApp: send a float32 payload to every SuperNode, wait for the echoes, time each round.

Writes one JSON line per round to the file named by the run config's `out`:
{"round": i, "seconds": s, "bytes": n, "ok": true}. Round 0 is a 1-KiB warm-up.
"""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def payload(total_bytes: int, tensors: int) -> ArrayRecord:
    """`tensors` float32 arrays summing to `total_bytes` (LoRA-shaped: rows x 4096)."""
    per = max(1, total_bytes // 4 // tensors)
    rng = np.random.default_rng(0)
    return ArrayRecord([rng.standard_normal(per, dtype=np.float32).reshape(-1, 16) for _ in range(tensors)])


def round_trip(grid: Grid, nodes: list[int], record: ArrayRecord) -> tuple[float, bool]:
    msgs = [Message(content=RecordDict({"p": record}), message_type="train", dst_node_id=n) for n in nodes]
    start = time.perf_counter()
    replies = list(grid.send_and_receive(msgs))
    seconds = time.perf_counter() - start
    ok = len(replies) == len(nodes) and all(r.has_content() for r in replies)
    if ok:
        sent = record.to_numpy_ndarrays()
        ok = all(np.array_equal(a, b) for r in replies for a, b in zip(sent, r.content["p"].to_numpy_ndarrays()))
    return seconds, ok


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    want = int(cfg["nodes"])
    while len(nodes := sorted(grid.get_node_ids())) < want:
        time.sleep(0.2)
    nodes = nodes[:want]
    size = int(float(cfg["payload-mb"]) * (1 << 20))
    with open(str(cfg["out"]), "a") as out:
        warm, ok = round_trip(grid, nodes, payload(1024, 1))
        out.write(json.dumps({"round": 0, "seconds": warm, "bytes": 1024, "ok": ok}) + "\n")
        out.flush()
        record = payload(size, int(cfg["tensors"]))
        nbytes = record.count_bytes()
        for i in range(1, int(cfg["repeats"]) + 1):
            seconds, ok = round_trip(grid, nodes, record)
            out.write(json.dumps({"round": i, "seconds": seconds, "bytes": nbytes, "ok": ok}) + "\n")
            out.flush()
