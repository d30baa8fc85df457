"""Separate "hosts" for system tests: Linux network namespaces on a private bridge.

Each host is a namespace `ft-<hex>-<name>` with lo up and one veth (`eth0`) whose peer is enslaved
to a bridge `br0` that lives in its own namespace `ft-<hex>-br`. Addresses come from a private
10.213.<random>.0/24 that exists only inside these namespaces: the veth pairs are created directly
in their namespaces, and nothing is configured in the root namespace (its links, addresses, routes
and firewall are never touched; iptables/tc run inside a host's own namespace).

    net = Network.create(["coord", "w0"])
    proc = net["w0"].run(["python", "-c", "..."], stdout=...)  # `ip netns exec ft-<hex>-w0 ...`
    rate_limit(net["w0"], "2mbit"); drop(net["w0"], 0.01)
    net.close()  # kills what run() started, deletes the namespaces (the veths and bridge go with them)

Needs root and a working `ip netns` (Debian iproute2; iptables for drop()). `unavailable()` says
why not. Namespace groups whose creating process is gone are removed by `cleanup_stale()`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "ft-"
NETNS_DIR = Path("/run/netns")
# who created which namespace group: <hex> -> "<pid> <start time>"; a dead owner = stale group
REGISTRY = Path("/run/fedtree-netns") if Path("/run").is_dir() else Path(tempfile.gettempdir()) / "fedtree-netns"
HOST_DEV = "eth0"
BRIDGE = "br0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _must(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def unavailable() -> str | None:
    """None when namespaces can be made here, else why not (for pytest.skip)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the netns tests as root)"
    for tool in ("ip", "tc", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (Debian packages iproute2 and iptables; see the Makefile's APT_PACKAGES)"
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    try:
        veth = _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if veth.returncode != 0:
            return f"cannot create veth pairs in a namespace: {veth.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "b0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge in a namespace: {bridge.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot


def _owner_alive(tag: str) -> bool:
    try:
        pid_s, start = (REGISTRY / tag).read_text().split()
    except (OSError, ValueError):
        return False
    return _proc_start(int(pid_s)) == start


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_ns_pids(ns: str) -> None:
    """SIGKILL what still runs inside `ns` (only processes that this module's users started there)."""
    out = _ip("netns", "pids", ns, check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _delete_ns(names: Iterable[str]) -> list[str]:
    errors = []
    for ns in names:
        _kill_ns_pids(ns)
        res = _ip("netns", "del", ns, check=False)
        if res.returncode != 0 and (NETNS_DIR / ns).exists():
            errors.append(f"{ns}: {res.stderr.strip()}")
    return errors


def cleanup_stale() -> list[str]:
    """Delete `ft-<hex>-*` namespaces (and leftover probes) whose creating process is gone."""
    stale: list[str] = []
    for ns in _namespaces():
        if not ns.startswith(PREFIX):
            continue
        tag = ns[len(PREFIX) :].split("-", 1)[0]
        if tag == "probe" or not _owner_alive(tag):
            stale.append(ns)
    _delete_ns(stale)
    if REGISTRY.is_dir():
        live = {ns[len(PREFIX) :].split("-", 1)[0] for ns in _namespaces() if ns.startswith(PREFIX)}
        for entry in REGISTRY.iterdir():
            if entry.name not in live and not _owner_alive(entry.name):
                entry.unlink(missing_ok=True)
    return stale


@dataclass
class Host:
    name: str
    ns: str
    addr: str  # this host's IPv4 address on the test subnet
    dev: str = HOST_DEV  # its veth inside the namespace
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def run(self, cmd: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Popen `cmd` inside this host's namespace (`ip netns exec`, which execs the command, so the
        Popen's pid is the command's). It gets its own session so teardown can kill its whole group."""
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], **popen_kwargs)
        self.procs.append(proc)
        return proc

    def check(self, *cmd: str) -> str:
        """Run a short command in the namespace and return its stdout; raise on failure."""
        return _must(["ip", "netns", "exec", self.ns, *cmd])


@dataclass
class Network:
    tag: str
    subnet: ipaddress.IPv4Network
    bridge_ns: str
    hosts: dict[str, Host]

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @classmethod
    def create(cls, names: Sequence[str]) -> Network:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be distinct and non-empty: {names}")
        tag = secrets.token_hex(3)
        subnet = ipaddress.IPv4Network(f"10.213.{secrets.randbelow(256)}.0/24")
        REGISTRY.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        (REGISTRY / tag).write_text(f"{pid} {_proc_start(pid)}")  # before any namespace: never stale while we live
        net = cls(tag, subnet, f"{PREFIX}{tag}-br", {})
        try:
            _must(["ip", "netns", "add", net.bridge_ns])
            _must(["ip", "-n", net.bridge_ns, "link", "set", "lo", "up"])
            _must(["ip", "-n", net.bridge_ns, "link", "add", BRIDGE, "type", "bridge"])
            _must(["ip", "-n", net.bridge_ns, "link", "set", BRIDGE, "up"])
            for i, name in enumerate(names):
                host = Host(name, f"{PREFIX}{tag}-{name}", str(subnet.network_address + 10 + i))
                net.hosts[name] = host
                port = f"v{i}-{name}"[:15]  # the bridge side of the veth
                _must(["ip", "netns", "add", host.ns])
                _must(["ip", "-n", host.ns, "link", "set", "lo", "up"])
                # both ends are created directly in their namespaces: nothing appears in the root one
                _must(
                    [
                        "ip",
                        "link",
                        "add",
                        HOST_DEV,
                        "netns",
                        host.ns,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        port,
                        "netns",
                        net.bridge_ns,
                    ]
                )
                _must(["ip", "-n", net.bridge_ns, "link", "set", port, "master", BRIDGE])
                _must(["ip", "-n", net.bridge_ns, "link", "set", port, "up"])
                _must(["ip", "-n", host.ns, "addr", "add", f"{host.addr}/{subnet.prefixlen}", "dev", HOST_DEV])
                _must(["ip", "-n", host.ns, "link", "set", HOST_DEV, "up"])
        except BaseException:
            net.close()
            raise
        return net

    def kill_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM every process run() started (and its group), then SIGKILL what is left."""
        procs = [p for h in self.hosts.values() for p in h.procs if p.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def close(self) -> None:
        """Kill the processes, delete the namespaces (veths and bridge go with them), forget the tag."""
        try:
            self.kill_all()
        finally:
            errors = _delete_ns([h.ns for h in self.hosts.values()] + [self.bridge_ns])
            (REGISTRY / self.tag).unlink(missing_ok=True)
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))


# -- link degradation (inside the host's own namespace) ----------------------------------------


def rate_limit(host: Host, rate: str = "2mbit", burst: str = "32kbit", latency: str = "400ms") -> None:
    """Token-bucket limit on what `host` sends over its veth."""
    host.check("tc", "qdisc", "add", "dev", host.dev, "root", "tbf", "rate", rate, "burst", burst, "latency", latency)


def drop(host: Host, probability: float = 0.01) -> None:
    """Drop this fraction of the packets `host` receives (iptables of the host's namespace only)."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must be in (0, 1): {probability}")
    host.check("iptables", "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", str(probability), "-j", "DROP")


def dropped_packets(host: Host) -> int:
    """Packets the drop() rules of `host` have dropped so far."""
    out = host.check("iptables", "-L", "INPUT", "-v", "-n", "-x")
    return sum(int(line.split()[0]) for line in out.splitlines() if "statistic" in line and "DROP" in line)


PARTITION_COMMENT = "fedtree-partition"


def partition(host: Host) -> None:
    """Cut `host` off silently: drop everything it sends or receives on its veth (no RST, no ICMP),
    like a severed link. Loopback inside the namespace keeps working. `heal()` undoes it."""
    for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
        host.check("iptables", "-I", chain, "1", flag, host.dev, "-m", "comment", "--comment", PARTITION_COMMENT, "-j", "DROP")


def heal(host: Host) -> None:
    """Remove the rules `partition()` added."""
    for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
        host.check("iptables", "-D", chain, flag, host.dev, "-m", "comment", "--comment", PARTITION_COMMENT, "-j", "DROP")
