"""A userspace latency proxy for system tests (the test kernel has no netem).

    python tests/system/delay_proxy.py --listen 127.0.0.1:0 --upstream 10.213.7.10:50051 --delay 0.05 [--port-file F]

Accepts TCP connections on LISTEN, opens one upstream connection for each and forwards bytes in both
directions, holding every chunk for DELAY seconds before it is written on (order is kept; a chunk's
delay does not add to the next one's, so it is latency, not a bandwidth limit). Half-closes are passed
on. With port 0 the bound port goes to --port-file (written atomically) and to stdout. SIGTERM or
SIGINT stops it with exit code 0 after printing the byte counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

CHUNK = 64 << 10
QUEUE_CHUNKS = 256  # back-pressure: at most this many chunks in flight per direction


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], delay_s: float) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.connections = 0
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool, peers: list[asyncio.StreamWriter]
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            try:
                while True:
                    data = await reader.read(CHUNK)
                    await queue.put((loop.time() + self.delay_s, data))
                    if not data:
                        return
            except (ConnectionError, OSError):
                await queue.put((loop.time(), b""))

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if not writer.is_closing() and writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)

        reading = asyncio.create_task(read())
        try:
            await write()
        except (ConnectionError, OSError):
            for peer in peers:  # a broken side breaks the whole connection
                peer.transport.abort()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await reading

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = client_writer.get_extra_info("peername")
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            print(f"delay_proxy: upstream {self.upstream} refused {peer}: {exc}", flush=True)
            client_writer.transport.abort()
            return
        print(f"delay_proxy: accepted {peer} -> {self.upstream[0]}:{self.upstream[1]}", flush=True)
        peers = [client_writer, up_writer]
        await asyncio.gather(
            self._pump(client_reader, up_writer, True, peers),
            self._pump(up_reader, client_writer, False, peers),
            return_exceptions=True,
        )
        for w in peers:
            w.close()


async def serve(listen: tuple[str, int], upstream: tuple[str, int], delay_s: float, port_file: Path | None) -> int:
    proxy = DelayProxy(upstream, delay_s)
    server = await asyncio.start_server(proxy.handle, *listen)
    port = server.sockets[0].getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, port_file)
    print(f"delay_proxy: {listen[0]}:{port} -> {upstream[0]}:{upstream[1]}, {delay_s * 1000:.0f} ms per chunk", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(
        f"delay_proxy: stopped after {proxy.connections} connections, {proxy.bytes_up} bytes up, {proxy.bytes_down} bytes down",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="delay_proxy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", type=_split, required=True, help="HOST:PORT to accept on (port 0 = any)")
    parser.add_argument("--upstream", type=_split, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each chunk is held, per direction")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    args = parser.parse_args(argv)
    if args.delay < 0:
        parser.error("--delay must be >= 0")
    return asyncio.run(serve(args.listen, args.upstream, args.delay, args.port_file))


if __name__ == "__main__":
    sys.exit(main())
