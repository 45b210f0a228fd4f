#!/usr/bin/env python3
"""Spawn benchmark: N concurrent spawns through a JupyterHub against the reference Outpost.

For each measured package this starts

1. the reference Outpost (``python -m outpostspawner.testing``, backend
   ``inprocess``, a fixed start delay),
2. a real ``jupyterhub`` process from the package's own virtual environment, with
   configurable-http-proxy, the DummyAuthenticator and ``benchmarks/hub_config.py``,

and then, through the Hub's REST API only: creates N users, starts one named server
for each (all at once), measures the time until every server is ready, the Hub
process's CPU while all servers run and are polled, the time to stop them all,
failures, and what is left over afterwards. Both packages import as
``outpostspawner.OutpostSpawner``, so each runs in its own venv and its own Hub.

``python benchmarks/run.py --help`` lists the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import aiohttp
    import psutil
except ImportError as e:  # pragma: no cover - both come with the test extras
    sys.exit(
        f"benchmarks/run.py needs aiohttp and psutil ({e}); install '.[bench]' (make install does)"
    )

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HUB_CONFIG = HERE / "hub_config.py"
THEIRS_PACKAGE = "jupyterhub-outpostspawner"
THEIRS_VERSION = "2.2.13"
#: the environment variable that sizes the request slots of jupyterhub-outpostspawner
#: (outpostspawner/misc.py, default 10); removed from the Hub's environment so that
#: the package is measured as shipped
THEIRS_LIMIT_ENV = "OUTPOSTSPAWNER_HTTP_CLIENT_CONCURRENT_LIMIT"
OUTPOST_USER = "hub"
#: reference values of jupyterhub-outpostspawner on a 2-core machine (from the issue)
REFERENCE_THEIRS = {"all_ready_s": 39.0, "hub_cpu_percent": 25.0}
GOALS = {"all_ready_ratio": 0.35, "hub_cpu_ratio": 0.40}
#: a poll request as logged by the reference Outpost at DEBUG level
POLL_LINE = re.compile(rb"outpost: (\d{3}) GET /services/[^/\s]+/[^/\s]+ ")

PACKAGES = {
    "ours": "outpostspawner (this repository)",
    "theirs": f"{THEIRS_PACKAGE} {THEIRS_VERSION} (PyPI, as installed by pip)",
    "theirs-pycurl": f"{THEIRS_PACKAGE} {THEIRS_VERSION} (PyPI) plus pycurl",
    "ours-batched": "outpostspawner (this repository), poll_batch_window = 0.05: polls "
    "batched into passes every 50 ms, as before they were spread",
}
#: the packages measured for --package <group>
GROUPS = {
    "both": ["ours", "theirs"],
    "all": ["ours", "theirs", "theirs-pycurl"],
    "polling": ["ours", "ours-batched", "theirs"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    """A run could not be carried out (not a measured failure)."""


# --- small helpers ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _read_bytes(path: Path, start: int = 0, end: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read() if end is None else f.read(max(0, end - start))
    except OSError:
        return b""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, lines: int = 40) -> str:
    data = _read_bytes(path)
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _remove_old_runs(work: Path, package: str) -> None:
    """Remove the logs of earlier runs of a package (``<package>``, ``<package>-<i>``)."""
    pattern = re.compile(rf"{re.escape(package)}(-\d+)?")
    for old in work.iterdir():
        if old.is_dir() and pattern.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)


def _source_digest(package_dir: Path) -> str:
    """sha256 over the package's Python sources: which code a run measured."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        h.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _cpu_times(proc: psutil.Process | None) -> tuple[float, float] | None:
    """(user, system) CPU seconds of the process itself (not of its children)."""
    if proc is None:
        return None
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return t.user, t.system


def _cpu_delta(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float | None:
    """CPU seconds (user + system) between two :func:`_cpu_times` samples."""
    return None if a is None or b is None else rnd(sum(b) - sum(a))


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))


class LoadMeter:
    """CPU used by processes other than the given ones, in % of one core: the
    benchmark shares the machine, and load from elsewhere distorts its numbers."""

    def __init__(self, procs: list[psutil.Process | None]):
        self.procs = [p for p in procs if p is not None]
        self.start = self._read()

    def _read(self) -> tuple[float, float, float]:
        ours = 0.0
        for p in self.procs:
            t = _cpu_times(p)
            ours += sum(t) if t else 0.0
        return time.monotonic(), _busy_seconds(), ours

    def other_percent(self) -> float:
        t0, busy0, ours0 = self.start
        t1, busy1, ours1 = self._read()
        return max(0.0, 100 * ((busy1 - busy0) - (ours1 - ours0)) / max(t1 - t0, 1e-6))


async def wait_quiet(limit: float, timeout: float) -> float:
    """Wait until processes other than this one use less than ``limit`` % of a core
    (5 s samples), at most ``timeout`` seconds; returns the last sample."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout
    told = False
    while True:
        meter = await asyncio.to_thread(LoadMeter, [me])
        await asyncio.sleep(5)
        other = await asyncio.to_thread(meter.other_percent)
        if other < limit or time.monotonic() > deadline:
            if told or other >= limit:
                log(f"other processes use {other:.0f}% of a core, going on")
            return other
        if not told:
            log(f"other processes use {other:.0f}% of a core: waiting for a quiet machine")
            told = True


def _listeners(pid: int, except_port: int) -> int | None:
    """TCP sockets the process listens on, apart from ``except_port``."""
    try:
        proc = psutil.Process(pid)
        conns = (
            proc.net_connections(kind="tcp")
            if hasattr(proc, "net_connections")
            else proc.connections(kind="tcp")
        )
    except psutil.Error:
        return None
    return sum(1 for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port != except_port)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


async def run_cmd(cmd: list[str], *, log_path: Path, timeout: float, env=None) -> int:
    """Run a command with output to a log file; kill it after ``timeout`` seconds."""
    logf = await asyncio.to_thread(open, log_path, "ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    finally:
        logf.close()
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        raise BenchError(f"{cmd[0]} did not finish in {timeout:.0f}s (see {log_path})") from None
    finally:
        await end_process(proc, cmd[0], timeout=5)


async def capture(cmd: list[str], timeout: float = 60) -> str:
    """A command's standard output (its warnings on stderr are no part of it)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        raise BenchError(f"{' '.join(cmd[:3])} did not finish in {timeout:.0f}s") from None
    finally:
        await end_process(proc, cmd[0], timeout=5)
    if proc.returncode != 0:
        text = (out + err).decode(errors="replace")[-2000:]
        raise BenchError(f"{' '.join(cmd[:3])} failed: {text}")
    return out.decode()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def end_process(proc: asyncio.subprocess.Process, name: str, timeout: float) -> None:
    """SIGTERM the process group (every process here starts its own session), then
    SIGKILL after ``timeout`` seconds."""
    if proc.returncode is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
        return
    except asyncio.TimeoutError:
        log(f"{name} (pid {proc.pid}) still runs {timeout:.0f}s after SIGTERM: SIGKILL")
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except asyncio.TimeoutError:
        log(f"{name} (pid {proc.pid}) did not exit after SIGKILL")


async def end_foreign(pid: int, name: str, timeout: float = 10) -> bool:
    """End a process that is not our child (configurable-http-proxy); True if gone."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
    except psutil.Error:
        return True
    try:
        await asyncio.to_thread(proc.wait, timeout)
        return True
    except psutil.TimeoutExpired:
        log(f"{name} (pid {pid}) still runs after SIGTERM: SIGKILL")
    except psutil.Error:
        return True
    try:
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
    except psutil.TimeoutExpired:
        return False
    except psutil.Error:
        pass
    return True


# --- environments ---------------------------------------------------------------------


@dataclass
class Env:
    package: str
    python: str
    jupyterhub: str
    versions: dict[str, str]


async def versions_of(python: str, *modules: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try:\n"
        "        out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(await capture([python, "-c", code, *modules]))


async def ours_env(python: str) -> Env:
    code = "import outpostspawner, os; print(os.path.dirname(os.path.abspath(outpostspawner.__file__)))"
    where = (await capture([python, "-c", code])).strip()
    real = await asyncio.to_thread(os.path.realpath, where)
    if real != await asyncio.to_thread(os.path.realpath, REPO / "outpostspawner"):
        raise BenchError(f"{python} imports outpostspawner from {where}, not from {REPO}")
    versions = await versions_of(python, "outpostspawner", "jupyterhub", "tornado", "pycurl")
    versions["outpostspawner sources"] = await asyncio.to_thread(_source_digest, Path(real))
    jh = Path(python).parent / "jupyterhub"
    if not await asyncio.to_thread(jh.exists):
        raise BenchError(f"no jupyterhub next to {python}")
    return Env("ours", python, str(jh), versions)


async def theirs_env(work: Path, jupyterhub_version: str, pycurl: bool) -> Env:
    """The venv with the PyPI package, created (or recreated) when needed."""
    name = "venv-theirs-pycurl" if pycurl else "venv-theirs"
    venv = work / name
    spec = [f"{THEIRS_PACKAGE}=={THEIRS_VERSION}", f"jupyterhub=={jupyterhub_version}"]
    if pycurl:
        spec.append("pycurl")
    marker = venv / ".bench-installed"
    python = venv / "bin" / "python"
    current = (await asyncio.to_thread(_read_bytes, marker)).decode()
    if current != json.dumps(spec) or not await asyncio.to_thread(python.exists):
        log(f"creating {venv} with {' '.join(spec)}")
        await asyncio.to_thread(shutil.rmtree, venv, True)
        pip_log = work / f"{name}-install.log"
        await run_cmd([sys.executable, "-m", "venv", str(venv)], log_path=pip_log, timeout=300)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        if await run_cmd([*pip, *spec], log_path=pip_log, timeout=900) != 0:
            raise BenchError(f"pip install {' '.join(spec)} failed, see {pip_log}")
        await asyncio.to_thread(_write_private, marker, json.dumps(spec))
    versions = await versions_of(
        str(python),
        THEIRS_PACKAGE,
        "jupyterhub-forwardbasespawner",
        "jupyterhub",
        "tornado",
        "pycurl",
    )
    return Env(
        "theirs-pycurl" if pycurl else "theirs",
        str(python),
        str(venv / "bin" / "jupyterhub"),
        versions,
    )


# --- one measured run ---------------------------------------------------------------------


@dataclass
class Server:
    user: str
    name: str
    post_status: int | None = None
    post_s: float | None = None
    ready_s: float | None = None
    failed: str | None = None
    delete_status: int | None = None
    stopped_s: float | None = None
    stop_failed: str | None = None


@dataclass
class Result:
    package: str
    description: str
    versions: dict[str, str]
    n: int
    repeat: int
    ok: bool = False
    error: str | None = None
    spawn: dict[str, Any] = field(default_factory=dict)
    steady: dict[str, Any] = field(default_factory=dict)
    stop: dict[str, Any] = field(default_factory=dict)
    leftovers: dict[str, Any] = field(default_factory=dict)
    hub_log: dict[str, Any] = field(default_factory=dict)
    failures: int | None = None
    #: processes outside the benchmark used more than --max-other-load while measuring
    disturbed: bool = False
    leftovers_total: int | None = None
    processes_after_teardown: int | None = None
    workdir: str = ""


class Run:
    """Everything one package's measurement starts, and its teardown."""

    def __init__(
        self, env: Env, args: argparse.Namespace, ours_python: str, work: Path, repeat: int
    ):
        self.env = env
        self.args = args
        self.ours_python = ours_python
        self.dir = work / (env.package if args.repeat == 1 else f"{env.package}-{repeat}")
        self.result = Result(env.package, PACKAGES[env.package], env.versions, args.n, repeat)
        self.result.workdir = str(self.dir)
        self.outpost: asyncio.subprocess.Process | None = None
        self.hub: asyncio.subprocess.Process | None = None
        self.chp_pid: int | None = None
        self.hub_ps: psutil.Process | None = None
        self.outpost_ps: psutil.Process | None = None
        self.chp_ps: psutil.Process | None = None
        self.outpost_url = ""
        self.outpost_port = 0
        self.password = secrets.token_hex(16)
        self.api_token = secrets.token_hex(32)
        self.proxy_token = secrets.token_hex(32)
        self.hub_port = free_port()
        self.hub_api_port = free_port()
        self.proxy_api_port = free_port()
        self.api = f"http://127.0.0.1:{self.hub_api_port}/hub/api"
        self.session: aiohttp.ClientSession | None = None
        width = len(str(args.n))
        self.servers = [
            Server(f"bench-{i:0{width}d}", f"s{i:0{width}d}") for i in range(1, args.n + 1)
        ]

    # --- processes ---------------------------------------------------------------

    async def start_outpost(self) -> None:
        log_path = self.dir / "outpost.log"
        logf = await asyncio.to_thread(open, log_path, "ab")
        # the CLI's own argument parser, with the credentials taken from the
        # environment instead of the command line
        bootstrap = (
            "import os, sys\n"
            "from outpostspawner.testing.__main__ import main\n"
            "creds = os.environ.pop('OUTPOST_BENCH_CREDENTIALS')\n"
            "sys.exit(main(sys.argv[1:] + ['--credentials', creds]))\n"
        )
        env = dict(os.environ, OUTPOST_BENCH_CREDENTIALS=f"{OUTPOST_USER}:{self.password}")
        cmd = [
            self.ours_python, "-c", bootstrap,
            "--host", "127.0.0.1",
            "--port", "0",
            "--backend", "inprocess",
            "--start-delay", str(self.args.start_delay),
            # DEBUG logs one line per request: the poll rate is counted from it
            "--log-level", "DEBUG",
        ]  # fmt: skip
        try:
            self.outpost = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=logf,
                env=env,
                cwd=self.dir,
                start_new_session=True,
            )
        finally:
            logf.close()
        assert self.outpost.stdout is not None
        try:
            line = await asyncio.wait_for(self.outpost.stdout.readline(), 60)
        except asyncio.TimeoutError:
            line = b""
        m = re.search(rb"outpost listening on (http://\S+)", line)
        if not m:
            tail = await asyncio.to_thread(_tail, log_path)
            raise BenchError(f"the reference Outpost did not start:\n{tail}")
        self.outpost_url = m.group(1).decode()
        self.outpost_port = int(re.search(r":(\d+)/", self.outpost_url).group(1))  # type: ignore[union-attr]
        self.outpost_ps = psutil.Process(self.outpost.pid)
        log(f"{self.env.package}: Outpost at {self.outpost_url} (pid {self.outpost.pid})")

    async def start_hub(self) -> None:
        settings = {
            "workdir": str(self.dir),
            "n": self.args.n,
            "hub_port": self.hub_port,
            "hub_api_port": self.hub_api_port,
            "proxy_api_port": self.proxy_api_port,
            "chp": self.args.chp,
            "cookie_secret": secrets.token_hex(32),
            "api_token": self.api_token,
            "proxy_token": self.proxy_token,
            "outpost_url": self.outpost_url,
            "outpost_user": OUTPOST_USER,
            "outpost_password": self.password,
            "poll_interval": self.args.poll_interval,
            "log_level": self.args.hub_log_level,
            "lag_file": str(self.dir / "lag.jsonl"),
            "poll_batch_window": 0.05
            if self.env.package == "ours-batched"
            else self.args.poll_batch_window
            if self.env.package == "ours"
            else None,
        }
        settings_path = self.dir / "settings.json"
        await asyncio.to_thread(_write_private, settings_path, json.dumps(settings))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JUPYTERHUB_", "CONFIGPROXY_", "JPY_")) and k != THEIRS_LIMIT_ENV
        }
        env["OUTPOST_BENCH_SETTINGS"] = str(settings_path)
        env["PATH"] = os.pathsep.join([str(Path(self.env.python).parent), env.get("PATH", "")])
        log_path = self.dir / "hub.log"
        logf = await asyncio.to_thread(open, log_path, "ab")
        try:
            self.hub = await asyncio.create_subprocess_exec(
                self.env.jupyterhub, "-f", str(HUB_CONFIG),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
                start_new_session=True,
            )  # fmt: skip
        finally:
            logf.close()
        self.hub_ps = psutil.Process(self.hub.pid)
        # ready once the API answers through the proxy: the Hub and its route are up
        public = f"http://127.0.0.1:{self.hub_port}/hub/api/"
        deadline = time.monotonic() + self.args.hub_start_timeout
        while True:
            if self.hub.returncode is not None:
                tail = await asyncio.to_thread(_tail, log_path)
                raise BenchError(f"jupyterhub exited with {self.hub.returncode}:\n{tail}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.http.get(public, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                tail = await asyncio.to_thread(_tail, log_path)
                raise BenchError(f"jupyterhub did not come up in time:\n{tail}")
            await asyncio.sleep(0.5)
        pid_text = (await asyncio.to_thread(_read_bytes, self.dir / "jupyterhub-proxy.pid")).strip()
        if pid_text.isdigit():
            self.chp_pid = int(pid_text)
        else:
            nodes = [p for p in _descendants(self.hub.pid) if "node" in (p.name() or "")]
            self.chp_pid = nodes[0].pid if nodes else None
        if self.chp_pid:
            with contextlib.suppress(psutil.Error):
                self.chp_ps = psutil.Process(self.chp_pid)
        log(f"{self.env.package}: Hub up (pid {self.hub.pid}, proxy pid {self.chp_pid})")

    async def teardown(self) -> None:
        pids = []
        for proc in (self.hub, self.outpost):
            if proc is not None:
                pids.append(proc.pid)
                pids += [p.pid for p in _descendants(proc.pid)]
        if self.chp_pid:
            pids.append(self.chp_pid)
        if self.hub is not None:
            await end_process(self.hub, "jupyterhub", timeout=30)
        if self.chp_pid and psutil.pid_exists(self.chp_pid):
            await end_foreign(self.chp_pid, "configurable-http-proxy")
        if self.outpost is not None:
            await end_process(self.outpost, "outpost", timeout=30)
        for pid in set(pids):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    await end_foreign(pid, p.name())
        left = 0
        for pid in set(pids):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left += 1
        self.result.processes_after_teardown = left

    # --- Hub REST API ---------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.api_token}"}

    async def active_servers(self, state: str = "active") -> dict[str, dict]:
        """user -> the user's benchmark server model, for users with an active server."""
        url = f"{self.api}/users?state={state}&limit={self.args.n * 2}"
        async with self.http.get(
            url, headers=self._headers(), timeout=aiohttp.ClientTimeout(total=60)
        ) as r:
            if r.status != 200:
                raise BenchError(f"GET /users?state={state}: {r.status} {(await r.text())[:200]}")
            data = await r.json()
        if isinstance(data, dict):  # paginated answer
            data = data.get("items", [])
        out = {}
        for user in data:
            servers = user.get("servers") or {}
            for model in servers.values():
                out[user["name"]] = model
        return out

    async def create_users(self) -> None:
        names = [s.user for s in self.servers]
        for i in range(0, len(names), 500):
            async with self.http.post(
                f"{self.api}/users",
                json={"usernames": names[i : i + 500]},
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=120),
            ) as r:
                if r.status != 201:
                    raise BenchError(f"creating users: {r.status} {(await r.text())[:300]}")

    # --- phases -----------------------------------------------------------------------

    async def proxy_routes(self) -> set[str] | None:
        """Route paths in configurable-http-proxy (asked from the proxy, not the Hub)."""
        try:
            async with self.http.get(
                f"http://127.0.0.1:{self.proxy_api_port}/api/routes",
                headers={"Authorization": f"token {self.proxy_token}"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as r:
                if r.status != 200:
                    return None
                return set(await r.json())
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def spawn_all(self) -> None:
        """Start every server at once; a server counts as ready when its route is in
        the proxy (JupyterHub adds it as the last step of a spawn) and the Hub's API
        confirms it. The route table is read from the proxy, so watching the spawns
        adds no load to the Hub; the Hub's API is asked every ``api_check_interval``
        seconds (to notice failed spawns) and once more when all routes are there."""
        sem = asyncio.Semaphore(self.args.concurrency)
        t0 = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.args.ready_timeout)
        routes = {s.user: f"/user/{s.user}/{s.name}" for s in self.servers}
        meter = await asyncio.to_thread(self.load_meter)
        hub_cpu0 = await asyncio.to_thread(_cpu_times, self.hub_ps)

        async def start(s: Server) -> None:
            async with sem:
                try:
                    async with self.http.post(
                        f"{self.api}/users/{s.user}/servers/{s.name}",
                        json={},
                        headers=self._headers(),
                        timeout=timeout,
                    ) as r:
                        s.post_status = r.status
                        text = await r.text()
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    s.post_s = time.monotonic() - t0
                    s.failed = f"start request: {type(e).__name__} {e}"[:300]
                    return
                s.post_s = time.monotonic() - t0
                if r.status == 201:
                    if s.ready_s is None:
                        s.ready_s = s.post_s
                elif r.status != 202:
                    s.failed = f"start request answered {r.status}: {text[:200]}"

        deadline = t0 + self.args.ready_timeout
        next_api_check = t0 + self.args.api_check_interval
        tasks = [asyncio.ensure_future(start(s)) for s in self.servers]
        try:
            while True:
                await asyncio.sleep(self.args.check_interval)
                now = time.monotonic()
                present = await self.proxy_routes()
                seen = time.monotonic()
                if present is not None:
                    present = {path.rstrip("/") for path in present}
                    for s in self.servers:
                        if s.ready_s is None and not s.failed and routes[s.user] in present:
                            s.ready_s = seen - t0
                waiting = [s for s in self.servers if s.ready_s is None and not s.failed]
                if not waiting or now >= next_api_check or now > deadline:
                    asked = time.monotonic()
                    try:
                        active = await self.active_servers()
                    except (aiohttp.ClientError, asyncio.TimeoutError, BenchError) as e:
                        log(f"{self.env.package}: listing servers failed: {e}")
                        active = None
                    next_api_check = time.monotonic() + self.args.api_check_interval
                    if active is not None:
                        for s in self.servers:
                            if s.failed:
                                continue
                            model = active.get(s.user)
                            ready = bool(model and model.get("ready"))
                            if model is None and s.post_s is not None and t0 + s.post_s < asked:
                                s.failed = "the server disappeared before it was ready"
                            elif s.ready_s is not None and not ready:
                                # a route alone is not enough: wait for the Hub to agree
                                s.ready_s = None
                            elif s.ready_s is None and ready:
                                # ready without a route seen (should not happen)
                                s.ready_s = asked - t0
                        if all(s.failed or s.ready_s is not None for s in self.servers):
                            break
                if now > deadline:
                    for s in self.servers:
                        if not s.failed and s.ready_s is None:
                            s.failed = f"not ready after {self.args.ready_timeout:.0f}s"
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ready = [s.ready_s for s in self.servers if s.ready_s is not None and not s.failed]
        failed = [s for s in self.servers if s.failed]
        codes: dict[str, int] = {}
        for s in self.servers:
            codes[str(s.post_status)] = codes.get(str(s.post_status), 0) + 1
        self.result.spawn = {
            "all_ready_s": rnd(max(ready)) if ready and not failed else None,
            "last_ready_s": rnd(max(ready)) if ready else None,
            "first_ready_s": rnd(min(ready)) if ready else None,
            "median_ready_s": rnd(statistics.median(ready)) if ready else None,
            "p90_ready_s": rnd(percentile(ready, 0.9)),
            "ready_times_s": sorted(rnd(t) for t in ready),  # for the plot
            "ready": len(ready),
            "failed": len(failed),
            "start_answers": codes,
            "failure_examples": sorted({s.failed for s in failed if s.failed})[:5],
            "other_cpu_percent": rnd(await asyncio.to_thread(meter.other_percent), 1),
            "hub_cpu_s": _cpu_delta(hub_cpu0, await asyncio.to_thread(_cpu_times, self.hub_ps)),
        }
        log(
            f"{self.env.package}: {len(ready)}/{self.args.n} ready, last after "
            f"{self.result.spawn['last_ready_s']}s, {len(failed)} failed"
        )

    async def sample_cpu(self, seconds: float) -> dict[str, Any]:
        """CPU of the Hub, the proxy and the Outpost over ``seconds`` (1 s samples),
        in % of one core."""
        procs = {"hub": self.hub_ps, "proxy": self.chp_ps, "outpost": self.outpost_ps}

        def sample() -> dict[str, tuple[float, float] | None]:
            return {k: _cpu_times(p) for k, p in procs.items()}

        meter = await asyncio.to_thread(self.load_meter)
        start = await asyncio.to_thread(sample)
        t_start = time.monotonic()
        prev, t_prev = dict(start), t_start
        per_second: list[float] = []
        while time.monotonic() - t_start < seconds - 1e-3:
            await asyncio.sleep(min(1.0, seconds - (time.monotonic() - t_start)))
            now = time.monotonic()
            cur = await asyncio.to_thread(sample)
            a, b = prev["hub"], cur["hub"]
            if a is not None and b is not None:
                per_second.append(100 * (sum(b) - sum(a)) / (now - t_prev))
            prev, t_prev = cur, now
        wall = t_prev - t_start
        out: dict[str, Any] = {"window_s": rnd(wall)}
        for k in procs:
            a, b = start[k], prev[k]
            out[f"{k}_cpu_percent"] = (
                None if a is None or b is None else rnd(100 * (sum(b) - sum(a)) / wall, 1)
            )
        a, b = start["hub"], prev["hub"]
        if a is not None and b is not None:
            out["hub_user_percent"] = rnd(100 * (b[0] - a[0]) / wall, 1)
            out["hub_system_percent"] = rnd(100 * (b[1] - a[1]) / wall, 1)
        out["hub_cpu_percent_per_second"] = [round(v, 1) for v in per_second]
        out["other_cpu_percent"] = rnd(await asyncio.to_thread(meter.other_percent), 1)
        return out

    def load_meter(self) -> LoadMeter:
        return LoadMeter([self.hub_ps, self.chp_ps, self.outpost_ps, psutil.Process()])

    async def api_latency(self, seconds: float, interval: float = 0.05) -> dict[str, Any]:
        """``GET /hub/api`` every ``interval`` over ``seconds``, one at a time on a
        kept-alive connection, as a client of the Hub's API feels it."""
        times: list[float] = []
        errors = 0
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                tic = time.perf_counter()
                try:
                    async with http.get(self.api, timeout=timeout) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                took = time.perf_counter() - tic
                if ok:
                    times.append(1000 * took)
                else:
                    errors += 1
                await asyncio.sleep(max(0.0, interval - took))
        return {
            "api_requests": len(times),
            "api_errors": errors,
            "api_p50_ms": rnd(percentile(times, 0.5), 3),
            "api_p95_ms": rnd(percentile(times, 0.95), 3),
            "api_max_ms": rnd(max(times), 3) if times else None,
        }

    async def loop_lag(self, since: float, until: float) -> dict[str, Any]:
        """The Hub's event-loop lag between two wall-clock times (``lag.jsonl``)."""
        text = (await asyncio.to_thread(_read_bytes, self.dir / "lag.jsonl")).decode()
        samples: list[float] = []
        pauses: list[float] = []
        full: list[float] = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                if since <= entry["t"] - 1 and entry["t"] <= until:
                    samples.extend(entry["lag_ms"])
                    for generation, ms in entry.get("gc_ms", []):
                        pauses.append(ms)
                        if generation == 2:
                            full.append(ms)
        seconds = max(until - since, 1e-9)
        return {
            "gc_per_s": rnd(len(pauses) / seconds, 3),
            "gc_ms_per_s": rnd(sum(pauses) / seconds, 3),
            "gc_max_ms": rnd(max(pauses), 3) if pauses else None,
            "gc_full_per_s": rnd(len(full) / seconds, 3),
            "gc_full_ms": rnd(percentile(full, 0.5), 3),
            "lag_samples": len(samples),
            "lag_p50_ms": rnd(percentile(samples, 0.5), 3),
            "lag_p95_ms": rnd(percentile(samples, 0.95), 3),
            "lag_max_ms": rnd(max(samples), 3) if samples else None,
        }

    async def steady_state(self) -> None:
        await asyncio.sleep(self.args.settle)
        outpost_log = self.dir / "outpost.log"
        off0 = await asyncio.to_thread(_file_size, outpost_log)
        since = time.time()
        cpu, api = await asyncio.gather(
            self.sample_cpu(self.args.cpu_seconds), self.api_latency(self.args.cpu_seconds)
        )
        lag = await self.loop_lag(since, time.time())
        off1 = await asyncio.to_thread(_file_size, outpost_log)
        chunk = await asyncio.to_thread(_read_bytes, outpost_log, off0, off1)
        polls: dict[str, int] = {}
        for m in POLL_LINE.finditer(chunk):
            code = m.group(1).decode()
            polls[code] = polls.get(code, 0) + 1
        rss = None
        with contextlib.suppress(psutil.Error):
            if self.hub_ps is not None:
                rss = self.hub_ps.memory_info().rss / 2**20
        self.result.steady = {
            **cpu,
            **api,
            **lag,
            "settle_s": self.args.settle,
            "outpost_polls": polls,
            "outpost_polls_per_s": rnd(sum(polls.values()) / cpu["window_s"], 1)
            if cpu["window_s"]
            else None,
            "hub_rss_mib": rnd(rss, 1),
        }
        ready = await self.active_servers("ready")
        lost = [
            s.user
            for s in self.servers
            if s.ready_s is not None and not s.failed and s.user not in ready
        ]
        self.result.steady["lost"] = len(lost)
        for s in self.servers:
            if s.user in lost:
                s.failed = "stopped while it was polled"
        log(
            f"{self.env.package}: Hub CPU {cpu['hub_cpu_percent']}% over {cpu['window_s']}s, "
            f"{self.result.steady['outpost_polls_per_s']} polls/s at the Outpost, {len(lost)} lost; "
            f"API p95 {api['api_p95_ms']} ms, loop lag p95 {lag['lag_p95_ms']} ms"
        )

    async def stop_all(self) -> None:
        active = await self.active_servers()
        targets = [s for s in self.servers if s.user in active]
        sem = asyncio.Semaphore(self.args.concurrency)
        t0 = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.args.stop_timeout)

        async def stop(s: Server) -> None:
            async with sem:
                try:
                    async with self.http.delete(
                        f"{self.api}/users/{s.user}/servers/{s.name}",
                        headers=self._headers(),
                        timeout=timeout,
                    ) as r:
                        s.delete_status = r.status
                        text = await r.text()
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    s.stop_failed = f"stop request: {type(e).__name__} {e}"[:300]
                    return
                if r.status == 204:
                    s.stopped_s = time.monotonic() - t0
                elif r.status != 202:
                    s.stop_failed = f"stop request answered {r.status}: {text[:200]}"

        deadline = t0 + self.args.stop_timeout
        hub_cpu0 = await asyncio.to_thread(_cpu_times, self.hub_ps)
        tasks = [asyncio.ensure_future(stop(s)) for s in targets]
        try:
            while True:
                await asyncio.sleep(self.args.check_interval)
                now = time.monotonic()
                # stops answered 202 finish in the background: ask the Hub about those
                pending = [s for s in targets if s.delete_status == 202 and s.stopped_s is None]
                if pending:
                    try:
                        still = await self.active_servers()
                    except (aiohttp.ClientError, asyncio.TimeoutError, BenchError) as e:
                        log(f"{self.env.package}: listing servers failed: {e}")
                        still = None
                    seen = time.monotonic()
                    if still is not None:
                        for s in pending:
                            if s.user not in still:
                                s.stopped_s = seen - t0
                if all(t.done() for t in tasks) and all(
                    s.stopped_s is not None or s.stop_failed for s in targets
                ):
                    break
                if now > deadline:
                    for s in targets:
                        if s.stopped_s is None and not s.stop_failed:
                            s.stop_failed = f"not stopped after {self.args.stop_timeout:.0f}s"
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        stopped = [s.stopped_s for s in targets if s.stopped_s is not None]
        failed = [s for s in targets if s.stop_failed]
        codes: dict[str, int] = {}
        for s in targets:
            codes[str(s.delete_status)] = codes.get(str(s.delete_status), 0) + 1
        self.result.stop = {
            "all_stopped_s": rnd(max(stopped)) if stopped and not failed else None,
            "last_stopped_s": rnd(max(stopped)) if stopped else None,
            "median_stopped_s": rnd(statistics.median(stopped)) if stopped else None,
            "servers": len(targets),
            "stopped": len(stopped),
            "failed": len(failed),
            "stop_answers": codes,
            "failure_examples": sorted({s.stop_failed for s in failed if s.stop_failed})[:5],
            "hub_cpu_s": _cpu_delta(hub_cpu0, await asyncio.to_thread(_cpu_times, self.hub_ps)),
        }
        log(
            f"{self.env.package}: {len(stopped)}/{len(targets)} stopped, last after "
            f"{self.result.stop['last_stopped_s']}s, {len(failed)} failed"
        )

    async def leftovers(self) -> None:
        # give asynchronous clean-up a moment, as a user would
        await asyncio.sleep(2)
        basic = base64.b64encode(f"{OUTPOST_USER}:{self.password}".encode()).decode()
        entries: int | None = None
        try:
            async with self.http.get(
                self.outpost_url.rstrip("/") + "/",
                headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as r:
                if r.status == 200:
                    entries = len(await r.json())
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            log(f"{self.env.package}: Outpost list failed: {e}")
        routes: int | None = None
        try:
            async with self.http.get(
                f"http://127.0.0.1:{self.proxy_api_port}/api/routes",
                headers={"Authorization": f"token {self.proxy_token}"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as r:
                if r.status == 200:
                    routes = sum(1 for path in await r.json() if path.startswith("/user/"))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            log(f"{self.env.package}: proxy routes failed: {e}")
        active = await self.active_servers()
        assert self.outpost is not None and self.hub is not None
        hub_children = [p for p in _descendants(self.hub.pid) if p.pid != self.chp_pid]
        self.result.leftovers = {
            "outpost_services": entries,
            "outpost_child_processes": len(_descendants(self.outpost.pid)),
            "outpost_service_listeners": _listeners(self.outpost.pid, self.outpost_port),
            "hub_active_servers": len(active),
            "proxy_user_routes": routes,
            "hub_child_processes_besides_proxy": len(hub_children),
        }
        values = list(self.result.leftovers.values())
        self.result.leftovers_total = (
            None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]
        )
        log(f"{self.env.package}: leftovers {self.result.leftovers}")

    async def read_hub_log(self) -> None:
        text = (await asyncio.to_thread(_read_bytes, self.dir / "hub.log")).decode(
            "utf-8", "replace"
        )
        lines = text.splitlines()
        errors = [ln for ln in lines if ln.startswith("[E ")]
        self.result.hub_log = {
            "errors": len(errors),
            "warnings": sum(1 for ln in lines if ln.startswith("[W ")),
            "tracebacks": sum(1 for ln in lines if ln.startswith("Traceback")),
            "error_examples": [ln[:300] for ln in errors[:5]],
        }

    async def measure(self) -> Result:
        await asyncio.to_thread(_fresh_dir, self.dir)
        if self.env.package == "ours":  # the sources the Hub of this run imports
            self.result.versions = dict(self.result.versions)
            self.result.versions["outpostspawner sources"] = await asyncio.to_thread(
                _source_digest, REPO / "outpostspawner"
            )
        conn = aiohttp.TCPConnector(limit=self.args.concurrency + 10, force_close=False)
        self.session = aiohttp.ClientSession(connector=conn)
        try:
            await self.start_outpost()
            await self.start_hub()
            # the Hub's API with no servers: the floor the polling figures compare to
            idle, idle_api = await asyncio.gather(
                self.sample_cpu(self.args.idle_seconds), self.api_latency(self.args.idle_seconds)
            )
            await self.create_users()
            log(f"{self.env.package}: starting {self.args.n} servers")
            await self.spawn_all()
            await self.steady_state()
            self.result.steady["idle_hub_cpu_percent"] = idle["hub_cpu_percent"]
            for key in ("api_p50_ms", "api_p95_ms", "api_max_ms"):
                self.result.steady[f"idle_{key}"] = idle_api[key]
            log(f"{self.env.package}: stopping all servers")
            await self.stop_all()
            await self.leftovers()
            self.result.ok = True
        except Exception as e:  # recorded; the processes are ended below all the same
            self.result.error = f"{type(e).__name__}: {e}"
            log(f"{self.env.package}: run failed: {self.result.error}")
        finally:
            await self.session.close()
            try:
                await self.teardown()
            finally:
                await self.read_hub_log()
        others = [
            self.result.spawn.get("other_cpu_percent"),
            self.result.steady.get("other_cpu_percent"),
        ]
        self.result.disturbed = any(v is not None and v > self.args.max_other_load for v in others)
        if self.result.disturbed:
            log(f"{self.env.package}: other processes used {others} % of a core while measuring")
        # the Hub has read its settings long ago; the tokens in them die with this run
        await asyncio.to_thread((self.dir / "settings.json").unlink, True)
        spawn_failed = sum(1 for s in self.servers if s.failed)
        stop_failed = sum(1 for s in self.servers if s.stop_failed)
        self.result.failures = spawn_failed + stop_failed if self.result.ok else None
        await asyncio.to_thread(
            _write_private,
            self.dir / "servers.json",
            json.dumps([asdict(s) for s in self.servers], indent=1),
        )
        return self.result


# --- report -----------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


#: summarised metrics: name -> (section, key)
METRICS = {
    "all_ready_s": ("spawn", "all_ready_s"),
    "median_ready_s": ("spawn", "median_ready_s"),
    "first_ready_s": ("spawn", "first_ready_s"),
    "hub_cpu_percent": ("steady", "hub_cpu_percent"),
    "hub_user_percent": ("steady", "hub_user_percent"),
    "hub_system_percent": ("steady", "hub_system_percent"),
    "idle_hub_cpu_percent": ("steady", "idle_hub_cpu_percent"),
    "outpost_polls_per_s": ("steady", "outpost_polls_per_s"),
    "proxy_cpu_percent": ("steady", "proxy_cpu_percent"),
    "outpost_cpu_percent": ("steady", "outpost_cpu_percent"),
    "hub_rss_mib": ("steady", "hub_rss_mib"),
    "idle_api_p50_ms": ("steady", "idle_api_p50_ms"),
    "idle_api_p95_ms": ("steady", "idle_api_p95_ms"),
    "idle_api_max_ms": ("steady", "idle_api_max_ms"),
    "api_p50_ms": ("steady", "api_p50_ms"),
    "api_p95_ms": ("steady", "api_p95_ms"),
    "api_max_ms": ("steady", "api_max_ms"),
    "gc_per_s": ("steady", "gc_per_s"),
    "gc_ms_per_s": ("steady", "gc_ms_per_s"),
    "gc_max_ms": ("steady", "gc_max_ms"),
    "gc_full_per_s": ("steady", "gc_full_per_s"),
    "gc_full_ms": ("steady", "gc_full_ms"),
    "lag_p50_ms": ("steady", "lag_p50_ms"),
    "lag_p95_ms": ("steady", "lag_p95_ms"),
    "lag_max_ms": ("steady", "lag_max_ms"),
    "other_cpu_percent_spawn": ("spawn", "other_cpu_percent"),
    "other_cpu_percent_steady": ("steady", "other_cpu_percent"),
    "all_stopped_s": ("stop", "all_stopped_s"),
    "spawn_hub_cpu_s": ("spawn", "hub_cpu_s"),
    "stop_hub_cpu_s": ("stop", "hub_cpu_s"),
}


def summarize(results: list[Result]) -> dict[str, dict[str, Any]]:
    """Per package: median, min and max of each metric over the repeats; failures and
    Hub log errors summed; leftovers and processes after teardown at their worst."""
    out: dict[str, dict[str, Any]] = {}
    for package in dict.fromkeys(r.package for r in results):
        every = [r for r in results if r.package == package]
        # medians over the runs nothing else disturbed, when there are such runs
        runs = [r for r in every if not r.disturbed] or every
        summary: dict[str, Any] = {
            "runs": len(runs),
            "disturbed_runs": sum(1 for r in every if r.disturbed),
            "ok": all(r.ok for r in every),
        }
        for name, (section, key) in METRICS.items():
            values = [getattr(r, section).get(key) for r in runs]
            if any(v is None for v in values):
                summary[name] = None
                continue
            summary[name] = {
                "median": rnd(statistics.median(values)),
                "min": min(values),
                "max": max(values),
                "values": values,
            }

        def total(values: list[int | None]) -> int | None:
            return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]

        def worst(values: list[int | None]) -> int | None:
            return None if any(v is None for v in values) else max(values)  # type: ignore[type-var]

        summary["failures"] = total([r.failures for r in every])
        summary["leftovers"] = worst([r.leftovers_total for r in every])
        summary["processes_after_teardown"] = worst([r.processes_after_teardown for r in every])
        summary["hub_log_errors"] = total([r.hub_log.get("errors") for r in every])
        out[package] = summary
    return out


def _median(summary: dict[str, Any] | None, name: str) -> float | None:
    value = (summary or {}).get(name)
    return value["median"] if isinstance(value, dict) else None


def comparison(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours, theirs = summary.get("ours"), summary.get("theirs")
    out: dict[str, Any] = {"goals": GOALS, "reference_theirs": REFERENCE_THEIRS}
    if ours is None:
        return out

    def ratio(a: float | None, b: float | None) -> float | None:
        return rnd(a / b, 3) if a is not None and b else None

    o_ready, o_cpu = _median(ours, "all_ready_s"), _median(ours, "hub_cpu_percent")
    if theirs is not None:
        out["all_ready_ratio"] = ratio(o_ready, _median(theirs, "all_ready_s"))
        out["hub_cpu_ratio"] = ratio(o_cpu, _median(theirs, "hub_cpu_percent"))
        out["stop_ratio"] = ratio(_median(ours, "all_stopped_s"), _median(theirs, "all_stopped_s"))
    out["all_ready_ratio_vs_reference"] = ratio(o_ready, REFERENCE_THEIRS["all_ready_s"])
    out["hub_cpu_ratio_vs_reference"] = ratio(o_cpu, REFERENCE_THEIRS["hub_cpu_percent"])
    ratio_ready = out.get("all_ready_ratio", out["all_ready_ratio_vs_reference"])
    ratio_cpu = out.get("hub_cpu_ratio", out["hub_cpu_ratio_vs_reference"])
    out["met"] = {
        "all_ready": ratio_ready is not None and ratio_ready < GOALS["all_ready_ratio"],
        "hub_cpu": ratio_cpu is not None and ratio_cpu < GOALS["hub_cpu_ratio"],
        "no_failures": ours["failures"] == 0,
        "no_leftovers": ours["leftovers"] == 0 and ours["processes_after_teardown"] == 0,
    }
    return out


def table(summary: dict[str, dict[str, Any]], cmp: dict[str, Any]) -> str:
    """The summary as a Markdown table (medians; min-max over repeats in brackets)."""

    def metric(name: str):
        def cell(s: dict[str, Any]) -> str:
            v = s.get(name)
            if not isinstance(v, dict):
                return "-"
            if s["runs"] > 1 and v["min"] != v["max"]:
                return f"{_fmt(v['median'])} ({_fmt(v['min'])}-{_fmt(v['max'])})"
            return _fmt(v["median"])

        return cell

    rows = [
        ("all ready (s)", metric("all_ready_s")),
        ("median server ready (s)", metric("median_ready_s")),
        ("Hub CPU, all polled (% of a core)", metric("hub_cpu_percent")),
        ("Hub CPU: user / system", lambda s: "{} / {}".format(
            metric("hub_user_percent")(s), metric("hub_system_percent")(s))),
        ("Hub CPU idle, no servers", metric("idle_hub_cpu_percent")),
        ("polls/s seen by the Outpost", metric("outpost_polls_per_s")),
        ("proxy / Outpost CPU (% of a core)", lambda s: "{} / {}".format(
            metric("proxy_cpu_percent")(s), metric("outpost_cpu_percent")(s))),
        ("Hub RSS (MiB)", metric("hub_rss_mib")),
        ("Hub API idle, no servers, p50 / p95 / max (ms)", lambda s: "{} / {} / {}".format(
            metric("idle_api_p50_ms")(s), metric("idle_api_p95_ms")(s), metric("idle_api_max_ms")(s))),
        ("Hub API while polling, p50 / p95 / max (ms)", lambda s: "{} / {} / {}".format(
            metric("api_p50_ms")(s), metric("api_p95_ms")(s), metric("api_max_ms")(s))),
        ("Hub event-loop lag while polling, p50 / p95 / max (ms)", lambda s: "{} / {} / {}".format(
            metric("lag_p50_ms")(s), metric("lag_p95_ms")(s), metric("lag_max_ms")(s))),
        ("Hub GC while polling: collections/s, ms/s, longest (ms)", lambda s: "{} / {} / {}".format(
            metric("gc_per_s")(s), metric("gc_ms_per_s")(s), metric("gc_max_ms")(s))),
        ("Hub full GC while polling: per s, median (ms)", lambda s: "{} / {}".format(
            metric("gc_full_per_s")(s), metric("gc_full_ms")(s))),
        ("other processes' CPU, spawn / steady (%)", lambda s: "{} / {}".format(
            metric("other_cpu_percent_spawn")(s), metric("other_cpu_percent_steady")(s))),
        ("runs in the medians (disturbed runs left out)", lambda s: "{} ({})".format(
            s["runs"], s["disturbed_runs"])),
        ("Hub CPU time for all starts (s)", metric("spawn_hub_cpu_s")),
        ("stop all (s)", metric("all_stopped_s")),
        ("Hub CPU time for all stops (s)", metric("stop_hub_cpu_s")),
        ("failures", lambda s: _fmt(s["failures"])),
        ("leftovers after stop-all", lambda s: _fmt(s["leftovers"])),
        ("processes left after teardown", lambda s: _fmt(s["processes_after_teardown"])),
        ("Hub log errors", lambda s: _fmt(s["hub_log_errors"])),
    ]  # fmt: skip
    packages = list(summary)
    head = ["metric", *packages]
    body = [[name, *[fn(summary[p]) for p in packages]] for name, fn in rows]
    if "all_ready_ratio" in cmp:
        pad = [""] * (len(packages) - 1)
        body.append(["ours/theirs, all ready (goal < 0.35)", _fmt(cmp["all_ready_ratio"]), *pad])
        body.append(["ours/theirs, Hub CPU (goal < 0.40)", _fmt(cmp["hub_cpu_ratio"]), *pad])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, help="servers to start (default 300, 30 with --quick)")
    p.add_argument(
        "--package",
        choices=(*PACKAGES, *GROUPS),
        default="both",
        help="what to measure: both = ours and theirs; all adds theirs with pycurl; "
        "polling = ours, ours-batched and theirs (default %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="a fast check: n=30, shorter windows")
    p.add_argument(
        "--repeat", type=int, default=1, help="measure each package this many times (medians)"
    )
    p.add_argument("--start-delay", type=float, default=1.0, help="Outpost start delay, s")
    p.add_argument("--poll-interval", type=float, default=1.0, help="server poll interval, s")
    p.add_argument(
        "--poll-batch-window",
        type=float,
        help="poll_batch_window for ours (default: the package's own)",
    )
    p.add_argument("--cpu-seconds", type=float, default=20.0, help="CPU measuring window, s")
    p.add_argument(
        "--settle", type=float, default=5.0, help="wait after all-ready before measuring, s"
    )
    p.add_argument(
        "--idle-seconds", type=float, default=10.0, help="idle Hub CPU and API window, s"
    )
    p.add_argument("--concurrency", type=int, default=300, help="REST requests in flight at once")
    p.add_argument(
        "--check-interval",
        type=float,
        default=0.2,
        help="interval of the proxy route checks while spawning and of stop checks, s",
    )
    p.add_argument(
        "--api-check-interval",
        type=float,
        default=5.0,
        help="interval of the Hub API listing while spawning (finds failed spawns), s",
    )
    p.add_argument("--ready-timeout", type=float, default=600.0, help="limit for all-ready, s")
    p.add_argument("--stop-timeout", type=float, default=300.0, help="limit for stop-all, s")
    p.add_argument("--hub-start-timeout", type=float, default=120.0, help="limit for Hub start, s")
    p.add_argument("--hub-log-level", default="INFO", help="JupyterHub log level")
    p.add_argument(
        "--max-other-load",
        type=float,
        default=20.0,
        help="CPU (%% of a core) other processes may use; a run above it counts as disturbed",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="how often to measure a disturbed run again (default %(default)s)",
    )
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=900.0,
        help="how long to wait for other processes to calm down before each run, s",
    )
    p.add_argument("--python", default=sys.executable, help="python of the venv with this package")
    p.add_argument("--jupyterhub-version", help="for the PyPI venv (default: the one of --python)")
    p.add_argument("--chp", help="configurable-http-proxy executable")
    p.add_argument("--work", default=str(HERE / "_work"), help="work dir (venvs, logs)")
    p.add_argument("--results", default=str(HERE / "results.json"), help="JSON output")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 30 if args.quick else 300
    if args.quick:
        args.cpu_seconds = min(args.cpu_seconds, 10.0)
        args.settle = min(args.settle, 3.0)
        args.idle_seconds = min(args.idle_seconds, 3.0)
    if args.n < 1 or args.repeat < 1:
        p.error("--n and --repeat must be at least 1")
    if not args.chp:
        local = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
        args.chp = str(local) if local.exists() else shutil.which("configurable-http-proxy")
    if not args.chp or not Path(args.chp).exists():
        p.error("configurable-http-proxy not found: run 'make node' or pass --chp")
    args.chp = str(Path(args.chp).resolve())
    return args


async def main_async(args: argparse.Namespace) -> int:
    work = Path(args.work)
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    wanted = GROUPS.get(args.package, [args.package])
    ours = await ours_env(args.python)
    jh_version = args.jupyterhub_version or ours.versions.get("jupyterhub", "6.1.1")
    envs = []
    for name in wanted:
        if name == "ours":
            envs.append(ours)
        elif name == "ours-batched":
            envs.append(dataclasses.replace(ours, package=name))
        else:
            envs.append(await theirs_env(work, jh_version, pycurl=name == "theirs-pycurl"))
    for env in envs:
        await asyncio.to_thread(_remove_old_runs, work, env.package)
    results: list[Result] = []
    # alternate the packages, so that slow drifts of the machine hit all alike
    for repeat in range(1, args.repeat + 1):
        for env in envs:
            for attempt in range(args.retries + 1):
                log(f"=== {env.package} ({repeat}/{args.repeat}): {PACKAGES[env.package]}")
                await wait_quiet(args.max_other_load, args.quiet_timeout)
                result = await Run(env, args, ours.python, work, repeat).measure()
                results.append(result)
                if not result.disturbed:
                    break
                if attempt < args.retries:
                    log(f"{env.package}: measuring again, other processes disturbed this run")
    summary = summarize(results)
    cmp = comparison(summary)
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["benchmarks/run.py", *sys.argv[1:]]),
        "machine": await asyncio.to_thread(machine),
        "settings": {
            k: getattr(args, k)
            for k in (
                "n",
                "repeat",
                "start_delay",
                "poll_interval",
                "cpu_seconds",
                "settle",
                "idle_seconds",
                "concurrency",
                "check_interval",
                "api_check_interval",
            )
        },  # fmt: skip
        "packages": {e.package: {"description": PACKAGES[e.package], **e.versions} for e in envs},
        "summary": summary,
        "comparison": cmp,
        "runs": [asdict(r) for r in results],
    }
    await asyncio.to_thread(Path(args.results).write_text, json.dumps(report, indent=2) + "\n")
    print()
    print(table(summary, cmp))
    print(f"\nwritten: {args.results}; logs under {work}/<package>/")
    if importlib.util.find_spec("matplotlib") is None:
        print("no plot: matplotlib is not installed (the bench extra)")
    else:
        import plot  # benchmarks/plot.py, next to this file

        figure = await asyncio.to_thread(
            plot.plot,
            plot.load([Path(args.results)]),
            Path(args.results).with_suffix(".png"),
            plot.request_cost(),
        )
        print(f"written: {figure}")
    return 0 if all(r.ok for r in results) else 1


def run_main(main_async, args: argparse.Namespace) -> int:
    """Run ``main_async(args)``; SIGTERM/SIGINT cancel it (its processes are ended)."""

    async def runner() -> int:
        task = asyncio.ensure_future(main_async(args))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            log("interrupted: all started processes were ended")
            return 130

    try:
        return asyncio.run(runner())
    except BenchError as e:
        log(f"error: {e}")
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_main(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
