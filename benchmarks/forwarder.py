#!/usr/bin/env python3
"""SSH forwarder benchmark: the forwarder process (as the spawner uses it) side
by side with OpenSSH ControlMaster forwards and direct loopback, in one run.

Everything runs on this machine against a real OpenSSH server on loopback
(``/usr/sbin/sshd``, see ``outpostspawner.testing.sshd``). This process stands in
for the Hub: it asks the forwarder through the Hub-side client
(:class:`~outpostspawner.forwarder.supervisor.ForwarderSupervisor`) and runs a
small tornado app answering a JSON request. A bulk server, an HTTP server,
downloaders and request clients (standing in for the proxy) are processes of
their own. Measured:

- setup: latency of adding and removing a forward on an existing SSH connection;
- throughput through one forward with 1 and 8 parallel streams;
- request latency: small HTTP requests through a forward, on a new connection
  each and on one kept-alive connection;
- the Hub: latency of its API (the tornado app, asked by another process) and the
  lag of its event loop, idle and while 8 streams run at full speed;
- many forwards: 2,000 forwards to one node on one forwarder: time, whether all
  listen, the forwarder's memory, and removing them.

``python benchmarks/forwarder.py --help`` lists the options. The JSON report is
written to ``--results``, a Markdown summary to ``--markdown``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import asyncssh  # noqa: E402
from tornado import web  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.netutil import bind_sockets  # noqa: E402

from outpostspawner.forwarder.core import (  # noqa: E402
    Forwarder,
    ForwarderSettings,
    default_ciphers,
)
from outpostspawner.forwarder.options import ForwardSpec  # noqa: E402
from outpostspawner.forwarder.supervisor import (  # noqa: E402
    ForwarderSupervisor,
    SupervisorConfig,
)
from outpostspawner.testing.sshd import SSHD, TestSSHD, free_port  # noqa: E402

PATHS = ("direct", "forwarder", "openssh")
#: throughput also with OpenSSH using the cipher the forwarder prefers
THROUGHPUT_PATHS = (*PATHS, "openssh-gcm")
GCM = "aes128-gcm@openssh.com"
PATH_LABELS = {
    "direct": "direct loopback",
    "forwarder": "forwarder process",
    "openssh": "OpenSSH ControlMaster",
    "openssh-gcm": f"OpenSSH ControlMaster, Ciphers={GCM}",
}

# --- helper processes (each ends when its standard input closes) ---------------------

_EXIT_ON_EOF = """
import os, sys, threading
def _watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
"""

#: sends zeros to every connection until the peer closes it
BULK_SERVER = (
    _EXIT_ON_EOF
    + """
import socket
chunk = os.urandom(1 << 18)
srv = socket.create_server(("127.0.0.1", 0), backlog=256)
print(srv.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        try:
            while True:
                conn.sendall(chunk)
        except OSError:
            pass
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
)

#: answers every request with a small JSON body, keep-alive
HTTP_SERVER = (
    _EXIT_ON_EOF
    + """
import asyncio
BODY = b'{"status": "ok"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
    b"Content-Length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY)
)
class Responder(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
    def data_received(self, data):
        self.buf += data
        while b"\\r\\n\\r\\n" in self.buf:
            _, self.buf = self.buf.split(b"\\r\\n\\r\\n", 1)
            self.transport.write(RESPONSE)
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Responder, "127.0.0.1", 0, backlog=256)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
)

#: at START_AT connects and reads for SECONDS; prints bytes and seconds. With
#: "idle" it runs at the lowest CPU priority (SCHED_IDLE)
DOWNLOADER = """
import os, socket, sys, time
port, start_at, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
if sys.argv[4] == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
time.sleep(max(0.0, start_at - time.monotonic()))
t0 = time.monotonic()
end = t0 + seconds
n = 0
buf = bytearray(1 << 20)
with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        n += k
        if time.monotonic() >= end:
            break
print(n, time.monotonic() - t0, flush=True)
"""

#: N small HTTP requests, each on a new connection ("new") or all on one ("keepalive")
REQUESTER = """
import http.client, json, sys, time
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lat = []
conn = None
for i in range(n + 20):
    t = time.perf_counter()
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/status")
    conn.getresponse().read()
    if mode == "new":
        conn.close()
        conn = None
    lat.append(time.perf_counter() - t)
print(json.dumps(lat[20:]), flush=True)
"""

#: from START_AT, one request every INTERVAL for SECONDS on a kept-alive connection
HUB_PROBE = """
import http.client, json, sys, time
port, start_at, seconds, interval = (
    int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
conn.request("GET", "/hub/api/ping")
conn.getresponse().read()
time.sleep(max(0.0, start_at - time.monotonic()))
end = start_at + seconds
due = start_at
lat = []
while True:
    now = time.monotonic()
    if now >= end:
        break
    if due > now:
        time.sleep(due - now)
    t = time.perf_counter()
    conn.request("GET", "/hub/api/ping")
    conn.getresponse().read()
    lat.append(time.perf_counter() - t)
    due += interval
print(json.dumps(lat), flush=True)
"""


# --- small tools -------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def ms_summary(seconds: list[float]) -> dict:
    return {
        "n": len(seconds),
        "p50_ms": round(1000 * pct(seconds, 50), 3),
        "p95_ms": round(1000 * pct(seconds, 95), 3),
        "p99_ms": round(1000 * pct(seconds, 99), 3),
        "max_ms": round(1000 * max(seconds), 3) if seconds else None,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 when it is gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state on this machine (IPv4 and IPv6)."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def communicate(proc: asyncio.subprocess.Process, timeout: float) -> tuple[bytes, bytes]:
    """``proc.communicate()`` within ``timeout``; the process is killed if that fails."""
    try:
        return await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait_for(proc.wait(), 5)
        raise


async def command_output(*cmd: str, timeout: float = 10) -> tuple[str, str]:
    """stdout and stderr of a short command."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await communicate(proc, timeout)
    return out.decode(errors="replace"), err.decode(errors="replace")


#: command lines of other benchmarks (a pgrep pattern), see --others
OTHERS = "benchmarks/run.py"


async def other_load() -> list[str]:
    """Other benchmarks running now (they would distort the numbers)."""
    out, _ = await command_output("pgrep", "-af", OTHERS)
    # not this benchmark (nor a wrapper such as timeout, whose command line is ours)
    return [line for line in out.splitlines() if "benchmarks/forwarder.py" not in line]


class Helpers:
    """The helper processes; each gets a pipe as stdin and ends when it closes."""

    def __init__(self):
        self.procs: list[asyncio.subprocess.Process] = []

    async def start_server(self, script: str) -> tuple[int, int]:
        """Start a server script; its port and pid."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self.procs.append(proc)
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        return int(line), proc.pid

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(proc.wait(), 5)
        self.procs = []


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            parents[int(name)] = int(data[data.rfind(b")") + 2 :].split()[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return found


class Elsewhere:
    """The processes that stand in for other machines: the SSH node (sshd), the
    server behind it (bulk and HTTP servers) and the clients (downloaders). In
    a deployment they do not share the Hub's CPUs; here they run at the lowest
    CPU priority (SCHED_IDLE), so that the Hub competes only with what runs next
    to it: the forwarder process, or OpenSSH's ssh. ``set_priority("normal")``
    puts them on par with the Hub instead."""

    def __init__(self):
        self.pids: list[int] = []
        self.priority = "normal"

    def add(self, pid: int) -> None:
        self.pids.append(pid)

    def _apply(self, idle: bool) -> None:
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        for pid in self.pids:
            for p in [pid, *_descendants(pid)]:
                try:
                    tids = os.listdir(f"/proc/{p}/task")
                except OSError:
                    continue
                for tid in tids:
                    with contextlib.suppress(OSError):
                        os.sched_setscheduler(int(tid), policy, os.sched_param(0))

    async def set_priority(self, priority: str) -> None:
        await asyncio.to_thread(self._apply, priority == "idle")
        self.priority = priority


async def run_script(script: str, *args, timeout: float) -> str:
    """Run a helper script to its end; its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await communicate(proc, timeout)
    if proc.returncode:
        raise RuntimeError(f"helper exited with {proc.returncode}")
    return out.decode()


class LagMeter:
    """How late a 10 ms timer fires in this event loop."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, time.monotonic() - t - self.interval))

    def __enter__(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self._task.cancel()

    def report(self) -> dict:
        s = self.samples or [0.0]
        return {
            "lag_p50_ms": round(1000 * pct(s, 50), 3),
            "lag_p99_ms": round(1000 * pct(s, 99), 3),
            "lag_max_ms": round(1000 * max(s), 3),
        }


def _no_log(handler) -> None:
    pass


class _Ping(web.RequestHandler):
    def get(self):
        self.finish({"status": "ok", "time": time.time()})


class HubApp:
    """A small tornado app in this process, standing in for the Hub's API."""

    def __init__(self):
        self.server = HTTPServer(web.Application([(r"/hub/api/ping", _Ping)], log_function=_no_log))
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server.add_sockets(sockets)

    async def stop(self) -> None:
        self.server.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.server.close_all_connections(), 5)


# --- the three ways to the servers ----------------------------------------------------


def forward_spec(sshd, known_hosts: str, fid: str, listen_port: int, dest_port: int) -> dict:
    """A forward as the spawner sends it (see SSHForwardMixin._forward_add)."""
    return {
        "id": fid,
        "kind": "local",
        "ssh": {
            "host": sshd.host,
            "port": sshd.port,
            "username": sshd.username,
            "key": str(sshd.client_key),
            "options": {
                "ServerAliveInterval": 15.0,
                "ServerAliveCountMax": 3,
                "ConnectTimeout": 10.0,
                "StrictHostKeyChecking": "accept-new",
                "UserKnownHostsFile": known_hosts,
            },
        },
        "listen_host": "127.0.0.1",
        "listen_port": listen_port,
        "dest_host": "127.0.0.1",
        "dest_port": dest_port,
    }


class ForwarderPath:
    """The forwarder process through the Hub-side client, as the spawner uses it."""

    def __init__(self, sshd, known_hosts: str, log_path: Path):
        self.sshd = sshd
        self.known_hosts = known_hosts
        self.log_path = log_path
        # as the spawner configures it: default log level (INFO) and backoff
        self.backend = ForwarderSupervisor(SupervisorConfig())

    def spec(self, fid: str, dest_port: int, listen_port: int | None = None) -> dict:
        port = free_port() if listen_port is None else listen_port
        return forward_spec(self.sshd, self.known_hosts, fid, port, dest_port)

    async def start(self, spec: dict) -> float:
        """The first forward: starts the process and connects. Its log (stderr)
        goes to a file."""
        saved = os.dup(2)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        try:
            t = time.perf_counter()
            await self.add(spec)
            return time.perf_counter() - t
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    async def add(self, spec: dict) -> dict:
        forward, _ = await self.backend.add(spec, timeout=20.0, keep=False)
        return forward

    async def remove(self, spec: dict) -> None:
        await self.backend.remove(spec["id"], spec=spec)

    @property
    def pid(self) -> int:
        return self.backend.processes()[0].pid

    async def close(self) -> None:
        await self.backend.close()


class InProcessPath:
    """The forwarder's core in this event loop (a reference for the setup cost)."""

    def __init__(self, sshd, known_hosts: str):
        self.sshd = sshd
        self.known_hosts = known_hosts
        self.fw = Forwarder(ForwarderSettings(known_hosts=known_hosts))

    def spec(self, fid: str, dest_port: int) -> dict:
        return forward_spec(self.sshd, self.known_hosts, fid, free_port(), dest_port)

    async def add(self, spec: dict) -> dict:
        forward, _ = await self.fw.add(ForwardSpec.from_dict(spec), timeout=20.0)
        return forward

    async def remove(self, spec: dict) -> None:
        await self.fw.remove(spec["id"])

    async def close(self) -> None:
        await self.fw.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OpenSSHPath:
    """OpenSSH: one ControlMaster connection (``ssh -M -S ctl -fN``) and
    ``ssh -S ctl -O forward -L ...`` per forward. No shell is involved."""

    def __init__(self, sshd, workdir: Path, known_hosts: str, name: str = "openssh", extra=()):
        self.sshd = sshd
        self.ctl = str(workdir / f"ctl-{name}")
        self.log = workdir / f"ssh-master-{name}.log"
        self.master_pid = 0
        self.options = [
            "-F",
            "/dev/null",
            "-p",
            str(sshd.port),
            "-l",
            sshd.username,
            "-i",
            str(sshd.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=15",
            *extra,
        ]

    async def _ssh(self, *args: str, timeout: float = 20) -> str:
        proc = await asyncio.create_subprocess_exec(
            "ssh",
            *args,
            *self.options,
            self.sshd.host,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await communicate(proc, timeout)
        if proc.returncode:
            raise RuntimeError(f"ssh {args[:3]} failed: {err.decode(errors='replace')}")
        return err.decode(errors="replace")

    async def start(self) -> float:
        t = time.perf_counter()
        # with -f the first process exits once logged in; the master stays (and
        # keeps its stdout and stderr: a file, not a pipe)
        log = await asyncio.to_thread(open, self.log, "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                "ssh",
                "-M",
                "-S",
                self.ctl,
                "-fN",
                *self.options,
                self.sshd.host,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 5)
            raise
        elapsed = time.perf_counter() - t
        if code:
            raise RuntimeError(f"ssh -M failed ({code}); see {self.log}")
        out = await self._ssh("-S", self.ctl, "-O", "check")
        match = re.search(r"pid=(\d+)", out)
        self.master_pid = int(match.group(1)) if match else 0
        return elapsed

    def spec(self, fid: str, dest_port: int, listen_port: int | None = None) -> dict:
        return {"id": fid, "listen_port": listen_port or free_port(), "dest_port": dest_port}

    def _forward_arg(self, spec: dict) -> str:
        return f"127.0.0.1:{spec['listen_port']}:127.0.0.1:{spec['dest_port']}"

    async def add(self, spec: dict) -> dict:
        await self._ssh("-S", self.ctl, "-O", "forward", "-L", self._forward_arg(spec))
        return spec

    async def remove(self, spec: dict) -> None:
        await self._ssh("-S", self.ctl, "-O", "cancel", "-L", self._forward_arg(spec))

    @property
    def pid(self) -> int:
        return self.master_pid

    async def close(self) -> None:
        if not self.master_pid:
            return
        with contextlib.suppress(Exception):
            await self._ssh("-S", self.ctl, "-O", "exit", timeout=10)
        # the master is not our child (ssh -f detached it): poll until it is gone
        deadline = time.monotonic() + 5
        while _alive(self.master_pid) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if _alive(self.master_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.master_pid, signal.SIGKILL)
        self.master_pid = 0


# --- the measurements ----------------------------------------------------------------------


async def setup_round(path, dest_port: int, n: int) -> tuple[list[float], list[float]]:
    """``n`` adds on the existing connection (the forwards stay), then ``n``
    removes; their durations."""
    specs = []
    adds, removes = [], []
    for i in range(n):
        # a port that is free now (taken ports are never handed out)
        s = path.spec(f"setup-{i}", dest_port)
        specs.append(s)
        t = time.perf_counter()
        await path.add(s)
        adds.append(time.perf_counter() - t)
    for s in specs:
        t = time.perf_counter()
        await path.remove(s)
        removes.append(time.perf_counter() - t)
    return adds, removes


async def bench_setup(paths: dict, dest_port: int, n: int, rounds: int) -> dict:
    """A warm-up, then ``rounds`` rounds of ``n`` adds and removes per path, the
    paths taking turns; percentiles over all rounds."""
    times = {name: ([], []) for name in paths}
    for path in paths.values():
        await setup_round(path, dest_port, 10)
    for _ in range(rounds):
        for name, path in paths.items():
            adds, removes = await setup_round(path, dest_port, n)
            times[name][0].extend(adds)
            times[name][1].extend(removes)
    return {
        name: {"add": ms_summary(adds), "remove": ms_summary(removes)}
        for name, (adds, removes) in times.items()
    }


async def transfer(
    port: int, streams: int, seconds: float, pid: int | None, priority: str = "idle"
) -> dict:
    """``streams`` downloads at once for ``seconds``: aggregate MB/s, and the CPU
    of process ``pid`` (the SSH client) meanwhile."""
    start_at = time.monotonic() + 0.3 + 0.1 * streams
    jobs = asyncio.gather(
        *(
            run_script(DOWNLOADER, port, start_at, seconds, priority, timeout=seconds + 60)
            for _ in range(streams)
        )
    )
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = await jobs
    elapsed = time.monotonic() - start_at
    total = 0
    longest = 0.0
    for line in out:
        n, s = line.split()
        total += int(n)
        longest = max(longest, float(s))
    result = {"mb": total / 1e6, "seconds": longest, "mb_s": total / 1e6 / longest}
    if pid:
        result["client_cpu_pct"] = 100 * (cpu_seconds(pid) - cpu0) / elapsed
    return result


async def bench_throughput(ports: dict, pids: dict, streams: int, args) -> dict:
    result = {}
    for name in THROUGHPUT_PATHS:
        runs = []
        for _ in range(args.repeat):
            runs.append(await transfer(ports[name]["bulk"], streams, args.seconds, pids.get(name)))
        best = sorted(runs, key=lambda r: r["mb_s"])[len(runs) // 2]  # the median run
        result[name] = {
            "mb_s": round(best["mb_s"], 1),
            "mb_s_runs": [round(r["mb_s"], 1) for r in runs],
        }
        if "client_cpu_pct" in best:
            result[name]["client_cpu_pct"] = round(best["client_cpu_pct"])
    return result


async def bench_requests(ports: dict, n: int) -> dict:
    result = {}
    for name in PATHS:
        result[name] = {}
        for mode in ("new", "keepalive"):
            out = await run_script(REQUESTER, ports[name]["http"], n, mode, timeout=120)
            result[name][mode] = ms_summary(json.loads(out))
    return result


async def hub_window(
    hub: HubApp, seconds: float, load_port: int | None, streams: int, priority: str
) -> dict:
    """The Hub's API latency and loop lag over ``seconds``, with ``streams``
    downloads at full speed through ``load_port`` (None: idle)."""
    start_at = time.monotonic() + 0.3 + 0.1 * streams
    probe = run_script(HUB_PROBE, hub.port, start_at, seconds, 0.01, timeout=seconds + 60)
    jobs = [probe]
    if load_port is not None:
        jobs += [
            run_script(DOWNLOADER, load_port, start_at, seconds, priority, timeout=seconds + 60)
            for _ in range(streams)
        ]
    running = asyncio.gather(*jobs)
    # the loop lag of the window only, not of starting the helper processes
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    meter = LagMeter()
    with meter:
        await asyncio.sleep(seconds)
    out = await running
    api = ms_summary(json.loads(out[0]))
    mb = sum(int(line.split()[0]) for line in out[1:]) / 1e6
    return {"api": api, "loop": meter.report(), "load_mb_s": round(mb / seconds, 1)}


async def bench_hub(hub: HubApp, ports: dict, elsewhere: Elsewhere, args) -> dict:
    """Idle, then under each path's full-speed load, with the processes that stand
    in for other machines at the lowest CPU priority ("elsewhere") and at the
    Hub's ("same priority"); repeated, medians of the windows' percentiles."""
    conditions = [("idle", None)] + [(name, ports[name]["bulk"]) for name in PATHS]
    result: dict[str, dict] = {}
    for priority in ("idle", "normal"):
        await elsewhere.set_priority(priority)
        runs: dict[str, list[dict]] = {c: [] for c, _ in conditions}
        for _ in range(args.repeat):
            for cond, port in conditions:
                runs[cond].append(await hub_window(hub, args.seconds, port, 8, priority))
        key = "elsewhere" if priority == "idle" else "same_priority"
        result[key] = {}
        for cond, rs in runs.items():
            result[key][cond] = {
                "api_p50_ms": round(statistics.median(r["api"]["p50_ms"] for r in rs), 3),
                "api_p95_ms": round(statistics.median(r["api"]["p95_ms"] for r in rs), 3),
                "api_p99_ms": round(statistics.median(r["api"]["p99_ms"] for r in rs), 3),
                "lag_p50_ms": round(statistics.median(r["loop"]["lag_p50_ms"] for r in rs), 3),
                "lag_p99_ms": round(statistics.median(r["loop"]["lag_p99_ms"] for r in rs), 3),
                "lag_max_ms": round(max(r["loop"]["lag_max_ms"] for r in rs), 3),
                "load_mb_s": round(statistics.median(r["load_mb_s"] for r in rs), 1),
                "windows": rs,
            }
    await elsewhere.set_priority("idle")
    return result


async def http_through(port: int, timeout: float = 10) -> bool:
    """One request through a forward."""

    async def go() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            return head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(go(), timeout)


async def bench_many(fwd: ForwarderPath, dest_port: int, n: int) -> dict:
    """``n`` forwards to one node: add all, check they listen, memory, remove all."""
    pid = fwd.pid
    before = {"rss_kb": rss_kb(pid), "fds": open_fds(pid)}
    specs = []
    adds = []
    t_all = time.perf_counter()
    for i in range(n):
        s = fwd.spec(f"many-{i}", dest_port)
        specs.append(s)
        t = time.perf_counter()
        await fwd.add(s)
        adds.append(time.perf_counter() - t)
    add_total = time.perf_counter() - t_all
    ports = {s["listen_port"] for s in specs}
    listening = len(ports & listening_ports())
    listed = await fwd.backend.list()
    active = sum(1 for f in listed if f["id"].startswith("many-") and f["state"] == "active")
    sample = random.sample(sorted(ports), min(20, len(ports)))
    answered = 0
    for port in sample:
        with contextlib.suppress(Exception):
            answered += await http_through(port)
    full = {"rss_kb": rss_kb(pid), "fds": open_fds(pid)}
    removes = []
    t_all = time.perf_counter()
    for s in specs:
        t = time.perf_counter()
        await fwd.remove(s)
        removes.append(time.perf_counter() - t)
    remove_total = time.perf_counter() - t_all
    still = len(ports & listening_ports())
    after = {"rss_kb": rss_kb(pid), "fds": open_fds(pid)}
    return {
        "n": n,
        "add": ms_summary(adds),
        "add_total_s": round(add_total, 2),
        "listening": listening,
        "active": active,
        "sample_requests": f"{answered}/{len(sample)}",
        "remove": ms_summary(removes),
        "remove_total_s": round(remove_total, 2),
        "listening_after_remove": still,
        "forwarder_before": before,
        "forwarder_full": full,
        "forwarder_after_remove": after,
        "kb_per_forward": round((full["rss_kb"] - before["rss_kb"]) / n, 1),
    }


# --- the run ------------------------------------------------------------------------


async def machine() -> dict:
    try:
        cpuinfo = await asyncio.to_thread(Path("/proc/cpuinfo").read_text)
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    _, ssh_v = await command_output("ssh", "-V")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "openssh": ssh_v.strip(),
    }


def _cpu_busy() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


async def machine_busy(seconds: float = 2.0) -> float:
    """% of all CPUs busy over ``seconds`` (before anything of this run starts)."""
    busy0, total0 = await asyncio.to_thread(_cpu_busy)
    await asyncio.sleep(seconds)
    busy1, total1 = await asyncio.to_thread(_cpu_busy)
    return 100 * (busy1 - busy0) / max(1, total1 - total0)


async def negotiated_ciphers(sshd) -> dict:
    """The cipher each client gets from this sshd: the first of its preference
    that the server offers."""
    out, _ = await command_output(SSHD, "-T", "-f", str(sshd.config))
    server = next(
        (line.split()[1].split(",") for line in out.splitlines() if line.startswith("ciphers ")), []
    )
    out, _ = await command_output("ssh", "-G", "-F", "/dev/null", sshd.host)
    ssh = next(
        (line.split()[1].split(",") for line in out.splitlines() if line.startswith("ciphers ")), []
    )

    def first(client):
        return next((c for c in client if c in server), "unknown")

    return {
        "forwarder": first(default_ciphers() or ["chacha20-poly1305@openssh.com"]),
        "openssh": first(ssh),
        "openssh-gcm": GCM,
    }


async def wait_for_quiet(max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while await other_load():
        if time.monotonic() > deadline:
            print("another benchmark is still running; measuring anyway", file=sys.stderr)
            return
        print("another benchmark is running; waiting 30 s", file=sys.stderr, flush=True)
        await asyncio.sleep(30)


async def watch_others(seen: list[str]) -> None:
    """Note other benchmarks that start while this one runs."""
    while True:
        seen.extend(await other_load())
        await asyncio.sleep(5)


async def main(args) -> dict:
    await wait_for_quiet(args.wait_quiet)
    busy = await machine_busy()
    seen: list[str] = []
    watcher = asyncio.ensure_future(watch_others(seen))
    workdir = Path(tempfile.mkdtemp(prefix="forwarder-bench-"))
    helpers = Helpers()
    report: dict = {
        "settings": {
            k: getattr(args, k)
            for k in (
                "quick",
                "setup_ops",
                "seconds",
                "repeat",
                "requests",
                "many",
            )
        },
        "machine": await machine(),
    }
    paths: dict = {}
    hub = None
    try:
        elsewhere = Elsewhere()
        bulk_port, pid = await helpers.start_server(BULK_SERVER)
        elsewhere.add(pid)
        http_port, pid = await helpers.start_server(HTTP_SERVER)
        elsewhere.add(pid)
        sshd = await TestSSHD(workdir / "sshd").start()
        elsewhere.add(sshd.proc.pid)
        await elsewhere.set_priority("idle")
        try:
            known_hosts = str(workdir / "known_hosts")
            await asyncio.to_thread(Path(known_hosts).write_text, sshd.known_hosts_line)
            hub = HubApp()
            report["ciphers"] = await negotiated_ciphers(sshd)
            fwd = paths["forwarder"] = ForwarderPath(sshd, known_hosts, workdir / "forwarder.log")
            ossh = paths["openssh"] = OpenSSHPath(sshd, workdir, known_hosts)
            gcm = paths["openssh-gcm"] = OpenSSHPath(
                sshd, workdir, known_hosts, "openssh-gcm", ["-o", f"Ciphers={GCM}"]
            )
            inproc = paths["in-process"] = InProcessPath(sshd, known_hosts)

            first = {}
            ports = {"direct": {"bulk": bulk_port, "http": http_port}}
            # the forwards the transfers use; they also keep the connections up
            f_bulk, f_http = fwd.spec("bulk", bulk_port), fwd.spec("http", http_port)
            first["forwarder"] = await fwd.start(f_bulk)
            await fwd.add(f_http)
            ports["forwarder"] = {"bulk": f_bulk["listen_port"], "http": f_http["listen_port"]}
            first["openssh"] = await ossh.start()
            o_bulk, o_http = ossh.spec("bulk", bulk_port), ossh.spec("http", http_port)
            await ossh.add(o_bulk)
            await ossh.add(o_http)
            ports["openssh"] = {"bulk": o_bulk["listen_port"], "http": o_http["listen_port"]}
            await gcm.start()
            g_bulk = gcm.spec("bulk", bulk_port)
            await gcm.add(g_bulk)
            ports["openssh-gcm"] = {"bulk": g_bulk["listen_port"]}
            t = time.perf_counter()
            await inproc.add(inproc.spec("keep", http_port))
            first["in-process"] = time.perf_counter() - t
            report["first_connection_ms"] = {k: round(1000 * v, 1) for k, v in first.items()}
            for name in PATHS:
                if not await http_through(ports[name]["http"]):
                    raise RuntimeError(f"no answer through {name}")

            print("setup latency ...", file=sys.stderr, flush=True)
            report["setup"] = await bench_setup(
                {name: paths[name] for name in ("forwarder", "openssh", "in-process")},
                http_port,
                args.setup_ops,
                args.repeat,
            )
            await inproc.close()
            del paths["in-process"]

            pids = {"forwarder": fwd.pid, "openssh": ossh.pid, "openssh-gcm": gcm.pid}
            print("throughput ...", file=sys.stderr, flush=True)
            report["throughput"] = {
                f"{streams}": await bench_throughput(ports, pids, streams, args)
                for streams in (1, 8)
            }
            print("request latency ...", file=sys.stderr, flush=True)
            report["requests"] = await bench_requests(ports, args.requests)
            print("Hub API under load ...", file=sys.stderr, flush=True)
            report["hub"] = await bench_hub(hub, ports, elsewhere, args)
            print(f"{args.many} forwards ...", file=sys.stderr, flush=True)
            report["many"] = await bench_many(fwd, http_port, args.many)
        finally:
            for path in paths.values():
                with contextlib.suppress(Exception):
                    await path.close()
            if hub is not None:
                await hub.stop()
            await sshd.stop()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await helpers.stop()
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    report["other_load"] = f"{busy:.0f} % of the CPUs busy just before the run" + (
        "; another benchmark ran meanwhile" if seen else ", no other benchmark meanwhile"
    )
    report["other_benchmarks_seen"] = sorted(set(seen))
    report["goals"] = goals(report)
    return report


def goals(r: dict) -> list[dict]:
    out = []
    add = r["setup"]["forwarder"]["add"]["p50_ms"]
    out.append({"goal": "setup p50 <= 1 ms", "value": f"{add:.2f} ms", "met": add <= 1.0})
    for other, label in (("openssh", "default ciphers"), ("openssh-gcm", "same cipher")):
        for streams in ("1", "8"):
            t = r["throughput"][streams]
            ratio = t["forwarder"]["mb_s"] / t[other]["mb_s"]
            out.append(
                {
                    "goal": f"throughput, {streams} stream{'s' if streams != '1' else ''} "
                    f">= 0.7x OpenSSH ({label})",
                    "value": f"{ratio:.2f}x",
                    "met": ratio >= 0.7,
                }
            )
    for setting, label in (("elsewhere", "others elsewhere"), ("same_priority", "all on par")):
        h = r["hub"][setting]
        for key in ("api_p50_ms", "api_p95_ms"):
            ratio = h["forwarder"][key] / h["idle"][key]
            out.append(
                {
                    "goal": f"Hub API {key[4:7]} under full tunnel load <= 1.5x idle ({label})",
                    "value": f"{ratio:.2f}x",
                    "met": ratio <= 1.5,
                }
            )
    m = r["many"]
    ok = m["listening"] == m["n"] == m["active"] and m["listening_after_remove"] == 0
    out.append(
        {
            "goal": f"{m['n']} forwards on one forwarder",
            "value": f"{m['listening']} listening, {m['forwarder_full']['rss_kb'] / 1024:.0f} MB RSS",
            "met": ok,
        }
    )
    return out


# --- the Markdown summary --------------------------------------------------------------------


def markdown(r: dict, command: str) -> str:
    m = r["machine"]
    lines = [
        "# SSH forwarder benchmark: results",
        "",
        "The forwarder process as the spawner uses it (through the Hub-side client), "
        "OpenSSH ControlMaster forwards and direct loopback, measured in the same run by "
        "`benchmarks/forwarder.py` (see [README.md](README.md#ssh-forwarder-benchmark)).",
        "",
        "```console",
        f"$ {command}",
        "```",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, "
        f"asyncssh {m['asyncssh']}, {m['openssh']}. Ciphers negotiated with the sshd: "
        f"forwarder {r['ciphers']['forwarder']}, OpenSSH {r['ciphers']['openssh']} (each "
        "client's default preference); the throughput is also measured with OpenSSH on the "
        "forwarder's cipher. Other load on the machine while measuring: "
        f"{r['other_load']}.",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for g in r["goals"]:
        lines.append(f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else '**no**'} |")
    s = r["setup"]
    lines += [
        "",
        "## Forward setup on an existing connection",
        "",
        f"{r['settings']['repeat']} round{'s' if r['settings']['repeat'] != 1 else ''} of "
        f"{r['settings']['setup_ops']} adds, one after "
        "another, then as many removes; the three take turns, after a warm-up. "
        "Percentiles over all rounds.",
        "",
        "| | add p50 | add p95 | remove p50 | remove p95 | first forward (connects) |",
        "|---|---|---|---|---|---|",
    ]
    labels = {**PATH_LABELS, "in-process": "forwarder core in the Hub's loop (reference)"}
    for name in ("forwarder", "openssh", "in-process"):
        a, d = s[name]["add"], s[name]["remove"]
        lines.append(
            f"| {labels[name]} | {a['p50_ms']:.2f} ms | {a['p95_ms']:.2f} ms | "
            f"{d['p50_ms']:.2f} ms | {d['p95_ms']:.2f} ms | "
            f"{r['first_connection_ms'][name]:.0f} ms |"
        )
    lines += [
        "",
        "The first forward of the forwarder includes starting its process; OpenSSH's "
        "includes starting the master.",
        "",
        f"## Throughput ({r['settings']['seconds']:g} s windows, median of "
        f"{r['settings']['repeat']})",
        "",
        "| | 1 stream | 8 streams | CPU of the SSH client, 1 / 8 streams |",
        "|---|---|---|---|",
    ]
    t1, t8 = r["throughput"]["1"], r["throughput"]["8"]
    for name in THROUGHPUT_PATHS:
        cpu = "–"
        if "client_cpu_pct" in t1[name]:
            cpu = f"{t1[name]['client_cpu_pct']} % / {t8[name]['client_cpu_pct']} %"
        lines.append(
            f"| {PATH_LABELS[name]} | {t1[name]['mb_s']:.0f} MB/s | {t8[name]['mb_s']:.0f} MB/s "
            f"| {cpu} |"
        )
    q = r["requests"]
    lines += [
        "",
        f"## Request latency ({r['settings']['requests']} small HTTP requests, one at a time)",
        "",
        "| | new connection p50 | p95 | kept-alive connection p50 | p95 |",
        "|---|---|---|---|---|",
    ]
    for name in PATHS:
        n, k = q[name]["new"], q[name]["keepalive"]
        lines.append(
            f"| {PATH_LABELS[name]} | {n['p50_ms']:.2f} ms | {n['p95_ms']:.2f} ms | "
            f"{k['p50_ms']:.2f} ms | {k['p95_ms']:.2f} ms |"
        )
    lines += [
        "",
        "## The Hub while tunnels run at full speed",
        "",
        "A tornado app in the Hub process answers a small JSON request, asked every "
        "10 ms by another process over a kept-alive connection; the Hub's event-loop lag "
        "is how late a 10 ms timer fires (about 1 ms even when idle: timer resolution). "
        "Load: 8 streams at full speed. Medians over "
        f"{r['settings']['repeat']} windows of {r['settings']['seconds']:g} s.",
        "",
        "*Others elsewhere*: the processes that stand in for other machines (the sshd "
        "of the node, the servers behind it, the downloaders in place of the proxy and "
        "the users) run at the lowest CPU priority (`SCHED_IDLE`), so the Hub competes "
        "for the 2 CPUs only with what would run next to it: the forwarder process, or "
        "OpenSSH's `ssh`. *All on par*: everything at the same priority on the same "
        "2 CPUs, the Hub included.",
    ]
    for setting, title in (("elsewhere", "Others elsewhere"), ("same_priority", "All on par")):
        h = r["hub"][setting]
        lines += [
            "",
            f"### {title}",
            "",
            "| load | API p50 | API p95 | API p99 | loop lag p50 | loop lag p99 | "
            "loop lag max | load throughput |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cond in ("idle", *PATHS):
            c = h[cond]
            label = "none (idle)" if cond == "idle" else f"8 streams, {PATH_LABELS[cond]}"
            load = "–" if cond == "idle" else f"{c['load_mb_s']:.0f} MB/s"
            lines.append(
                f"| {label} | {c['api_p50_ms']:.2f} ms | {c['api_p95_ms']:.2f} ms | "
                f"{c['api_p99_ms']:.2f} ms | {c['lag_p50_ms']:.2f} ms | "
                f"{c['lag_p99_ms']:.2f} ms | {c['lag_max_ms']:.1f} ms | {load} |"
            )
    mm = r["many"]
    lines += [
        "",
        f"## {mm['n']} forwards to one node on one forwarder",
        "",
        "| | |",
        "|---|---|",
        f"| adding all, one after another | {mm['add_total_s']:.2f} s "
        f"(p50 {mm['add']['p50_ms']:.2f} ms, p95 {mm['add']['p95_ms']:.2f} ms) |",
        f"| listening / active | {mm['listening']} / {mm['active']} |",
        f"| requests through a sample | {mm['sample_requests']} answered |",
        f"| forwarder memory (RSS) | {mm['forwarder_before']['rss_kb'] / 1024:.1f} MB before, "
        f"{mm['forwarder_full']['rss_kb'] / 1024:.1f} MB with all "
        f"({mm['kb_per_forward']:.1f} kB per forward), "
        f"{mm['forwarder_after_remove']['rss_kb'] / 1024:.1f} MB after removing them |",
        f"| forwarder open files | {mm['forwarder_before']['fds']} before, "
        f"{mm['forwarder_full']['fds']} with all, {mm['forwarder_after_remove']['fds']} after |",
        f"| removing all | {mm['remove_total_s']:.2f} s (p50 {mm['remove']['p50_ms']:.2f} ms, "
        f"p95 {mm['remove']['p95_ms']:.2f} ms); {mm['listening_after_remove']} ports still "
        "listening |",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer operations, shorter windows")
    p.add_argument("--setup-ops", type=int, help="adds (and removes) timed (200; quick 30)")
    p.add_argument("--seconds", type=float, help="seconds per transfer window (4; quick 1.5)")
    p.add_argument("--repeat", type=int, help="windows per measurement (3; quick 1)")
    p.add_argument("--requests", type=int, help="HTTP requests per mode (500; quick 100)")
    p.add_argument("--many", type=int, help="forwards on one forwarder (2000; quick 200)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=1200,
        help="wait up to this many seconds while other benchmarks run (%(default)s)",
    )
    p.add_argument(
        "--others",
        default=OTHERS,
        help="pgrep -f pattern of other benchmarks to wait for (%(default)s)",
    )
    p.add_argument("--results", default=str(HERE / "forwarder-results.json"))
    p.add_argument(
        "--markdown",
        help="write a Markdown summary here (default: RESULTS-forwarder.md, not with --quick)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("setup_ops", 200, 30),
        ("seconds", 4.0, 1.5),
        ("repeat", 3, 1),
        ("requests", 500, 100),
        ("many", 2000, 200),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.markdown is None and not quick:
        args.markdown = str(HERE / "RESULTS-forwarder.md")
    return args


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "benchmarks/forwarder.py", *argv])


if __name__ == "__main__":
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None:
        sys.exit("needs OpenSSH: /usr/sbin/sshd and ssh")
    args = parse_args()
    OTHERS = args.others
    report = asyncio.run(main(args))
    report["command"] = command_line(sys.argv[1:])
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(report, report["command"]))
    print(markdown(report, report["command"]))
