"""The Hub side of the forwarder: start, watch and restart forwarder processes, or
talk to a standalone one, and remember every forward the Hub asked for.

A :class:`ForwarderSupervisor` runs ``shards`` forwarder processes as children of
the Hub, each in its own session. A forward goes to the shard chosen by a stable
hash of its SSH target (node, port, user, key), so forwards to one node share one
SSH connection. A child that dies is restarted with backoff and gets every
forward of the registry back. Children stop by themselves when the Hub is gone
(their standard input closes).

A :class:`RemoteForwarder` talks to a standalone forwarder (for example its own
pod) by URL and token; when that forwarder restarts (a new ``instance`` in its
health answer) it gets the registry's forwards back.

Both keep the registry in the Hub process: the forwards of all running
spawners, fed by their add and remove calls.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from .. import metrics
from ..processes import stop_process
from .client import TOKEN_ENV, ForwarderClient
from .errors import ForwardError, ForwarderUnavailable

log = logging.getLogger("outpostspawner.forwarder.supervisor")

#: The child needs only the forwarder package, not the Hub-side modules that
#: ``outpostspawner/__init__.py`` imports (JupyterHub itself, about a second and
#: tens of MB): it gets a bare parent package pointing at this package's directory.
_BOOTSTRAP = """\
import sys, types
package = types.ModuleType("outpostspawner")
package.__path__ = [sys.argv.pop(1)]
sys.modules["outpostspawner"] = package
from outpostspawner.forwarder.app import main
sys.exit(main())
"""
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: variables of the Hub's environment a forwarder child gets (nothing else)
CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "TZ")


def shard_index(spec: dict, shards: int) -> int:
    """The shard of a forward: a stable hash of its SSH target."""
    if shards <= 1:
        return 0
    ssh = spec["ssh"]
    text = "\0".join(str(ssh[k]) for k in ("host", "port", "username", "key"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % shards


@dataclass(frozen=True)
class SupervisorConfig:
    """How the forwarder children run."""

    shards: int = 1
    reconnect_delay: float = 1.0
    reconnect_max_delay: float = 30.0
    start_timeout: float = 20.0
    restart_delay: float = 0.5
    restart_max_delay: float = 30.0
    log_level: str = "INFO"
    python: str = sys.executable


#: the private directories of forwarder children that have not been stopped yet;
#: whatever is left is removed when the Hub exits (JupyterHub does not stop the
#: children itself: they end when their standard input closes)
_DIRS: set[str] = set()


@atexit.register
def _remove_dirs() -> None:
    for d in list(_DIRS):
        shutil.rmtree(d, ignore_errors=True)
    _DIRS.clear()


class ForwarderProcess:
    """One forwarder child process on a Unix socket in a private directory."""

    def __init__(self, index: int, config: SupervisorConfig):
        self.index = index
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.client: ForwarderClient | None = None
        self.dir = ""
        self.started = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start it and wait for its ready line.

        :raises ForwarderUnavailable: when it did not come up in time
        """
        c = self.config
        self.dir = await asyncio.to_thread(tempfile.mkdtemp, prefix="outpostspawner-forwarder-")
        _DIRS.add(self.dir)
        sock = os.path.join(self.dir, "control.sock")
        token = secrets.token_urlsafe(32)
        env = {k: os.environ[k] for k in CHILD_ENV if k in os.environ}
        env[TOKEN_ENV] = token
        try:
            self.proc = await self._spawn(sock, env)
        except OSError as e:
            await self.stop()
            raise ForwarderUnavailable(
                f"The SSH forwarder process cannot be started: {e.strerror or e}"
            ) from None
        except BaseException:
            await asyncio.shield(self.stop())
            raise
        self.started = time.monotonic()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), c.start_timeout)
        except asyncio.TimeoutError:
            line = b""
        except BaseException:  # cancelled: leave no process behind
            await asyncio.shield(self.stop())
            raise
        if not line.startswith(b'{"ready": true'):
            await self.stop()
            raise ForwarderUnavailable(
                f"The SSH forwarder process did not start within {c.start_timeout:g} s; "
                "see the JupyterHub log."
            )
        self.client = ForwarderClient(unix_socket=sock, token=token)

    async def _spawn(self, sock: str, env: dict) -> asyncio.subprocess.Process:
        c = self.config
        return await asyncio.create_subprocess_exec(
            c.python,
            "-c",
            _BOOTSTRAP,
            _PACKAGE_DIR,
            "--unix-socket",
            sock,
            "--exit-on-stdin-eof",
            "--ready-line",
            "--reconnect-delay",
            str(c.reconnect_delay),
            "--reconnect-max-delay",
            str(c.reconnect_max_delay),
            "--log-level",
            c.log_level,
            "--log-name",
            f"forwarder-{self.index}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, timeout: float = 5) -> None:
        """Close its stdin, SIGTERM, wait, SIGKILL; remove its directory."""
        proc = self.proc
        if self.client is not None:
            self.client.close()
            self.client = None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            await stop_process(proc, timeout)
        if self.dir:
            await asyncio.to_thread(shutil.rmtree, self.dir, True)
            _DIRS.discard(self.dir)
            self.dir = ""


def _mark_retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class _Registry:
    """The forwards the Hub asked for: id -> request body. Only confirmed ones
    (the forwarder has made them once) are restored after a forwarder restart."""

    def __init__(self):
        self.specs: dict[str, dict] = {}
        self.confirmed: set[str] = set()

    def put(self, spec: dict) -> None:
        self.specs[spec["id"]] = spec
        self.confirmed.discard(spec["id"])

    def confirm(self, spec: dict) -> None:
        if self.specs.get(spec["id"]) is spec:
            self.confirmed.add(spec["id"])

    def pop(self, forward_id: str) -> dict | None:
        self.confirmed.discard(forward_id)
        return self.specs.pop(forward_id, None)

    def restorable(self) -> list[dict]:
        return [s for i, s in self.specs.items() if i in self.confirmed]


class ForwarderBackend:
    """What the spawners use: add and remove forwards, list them."""

    def __init__(self):
        self.registry = _Registry()

    async def _client_for(self, spec: dict, *, start: bool) -> ForwarderClient | None:
        raise NotImplementedError

    async def add(
        self, spec: dict, *, timeout: float | None = None, keep: bool = False
    ) -> tuple[dict, bool]:
        """Make (or keep) a forward and remember it; nothing is left behind when
        it fails or the caller is cancelled.

        :raises ForwardError: the forwarder's reason, or
            :class:`~.errors.ForwarderUnavailable`
        """
        self.registry.put(spec)
        try:
            client = await self._client_for(spec, start=True)
            result = await client.add(spec, timeout=timeout, keep=keep)
            self.registry.confirm(spec)
            return result
        except BaseException:
            if self.registry.specs.get(spec["id"]) is spec:
                self.registry.pop(spec["id"])
                await asyncio.shield(self._forget(spec))
            raise

    async def _forget(self, spec: dict) -> None:
        """Best effort: remove a forward whose add failed or was abandoned."""
        try:
            client = await self._client_for(spec, start=False)
            if client is not None:
                await client.remove(spec["id"], timeout=10)
        except ForwardError as e:
            log.warning("could not remove forward %s: %s", spec["id"], e.message)

    async def remove(self, forward_id: str, spec: dict | None = None) -> bool:
        """Remove a forward (also one this Hub process did not add, given its
        ``spec``, e.g. after a Hub restart with a standalone forwarder).

        :returns: whether the forwarder had it
        """
        spec = self.registry.pop(forward_id) or spec
        if spec is None:
            return False
        client = await self._client_for(spec, start=False)
        if client is None:
            return False
        return await client.remove(forward_id)

    async def list(self) -> list[dict]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _readd(self, client: ForwarderClient, specs: list[dict], where: str) -> None:
        for spec in specs:
            if self.registry.specs.get(spec["id"]) is not spec:
                continue  # removed meanwhile
            try:
                forward, _ = await client.add(spec, keep=True)
            except ForwardError as e:
                log.error("%s: could not restore forward %s: %s", where, spec["id"], e.message)
                continue
            if forward.get("error"):
                log.warning(
                    "%s: forward %s restored but not up yet: %s",
                    where,
                    spec["id"],
                    forward["error"].get("message"),
                )
        if specs:
            log.info("%s: restored %d forwards", where, len(specs))


class _Shard:
    def __init__(self, supervisor: ForwarderSupervisor, index: int):
        self.supervisor = supervisor
        self.index = index
        self.process: ForwarderProcess | None = None
        self.starting: asyncio.Future | None = None
        self.watch: asyncio.Task | None = None
        self.restarts = 0
        self.delay = supervisor.config.restart_delay
        self.ready_at = 0.0  # no start before this (backoff)

    @property
    def name(self) -> str:
        return f"forwarder-{self.index}"

    def _running_client(self) -> ForwarderClient | None:
        if self.process is not None and self.process.running:
            return self.process.client
        return None

    async def client(self, *, start: bool) -> ForwarderClient | None:
        """The running child's client; with ``start``, start the child first if
        needed. The start is shared by all callers and survives their cancellation."""
        while True:
            client = self._running_client()
            if client is not None or not start:
                return client
            if self.supervisor.closed:
                raise ForwarderUnavailable("The SSH forwarder is shutting down.")
            if self.starting is None or self.starting.done():
                self.starting = asyncio.ensure_future(self._start())
                self.starting.add_done_callback(_mark_retrieved)
            await asyncio.shield(self.starting)

    async def _start(self) -> None:
        wait = self.ready_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        process = ForwarderProcess(self.index, self.supervisor.config)
        try:
            await process.start()
        except ForwarderUnavailable:
            self._backoff()
            raise
        self.process = process
        log.info("%s started (pid %s)", self.name, process.pid)
        self.watch = asyncio.create_task(self._watch(process))
        specs = [
            s
            for s in self.supervisor.registry.restorable()
            if shard_index(s, len(self.supervisor.shards)) == self.index
        ]
        if specs:
            assert process.client is not None
            await self.supervisor._readd(process.client, specs, self.name)

    def _backoff(self) -> None:
        self.ready_at = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.supervisor.config.restart_max_delay)

    async def _watch(self, process: ForwarderProcess) -> None:
        code = await process.wait()
        if self.supervisor.closed or self.process is not process:
            return
        self.restarts += 1
        metrics.FORWARDER_RESTARTS.inc()
        lived = time.monotonic() - process.started
        log.error("%s (pid %s) exited with %s; restarting", self.name, process.pid, code)
        if lived > 60:
            self.delay = self.supervisor.config.restart_delay
        self._backoff()
        await process.stop()
        while not self.supervisor.closed:
            try:
                await self.client(start=True)
                return
            except ForwarderUnavailable as e:
                log.error("%s: restart failed: %s", self.name, e.message)

    async def stop(self) -> None:
        if self.starting is not None and not self.starting.done():
            self.starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ForwarderUnavailable):
                await self.starting
        if self.watch is not None:
            self.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch
            self.watch = None
        if self.process is not None:
            await self.process.stop()
            self.process = None


class ForwarderSupervisor(ForwarderBackend):
    """Forwarder processes as children of the Hub, started on first use.

    :param config: number of shards, backoff, Python executable
    """

    def __init__(self, config: SupervisorConfig | None = None):
        super().__init__()
        self.config = config or SupervisorConfig()
        self.shards = [_Shard(self, i) for i in range(max(1, self.config.shards))]
        self.closed = False

    def shard_for(self, spec: dict) -> _Shard:
        return self.shards[shard_index(spec, len(self.shards))]

    async def _client_for(self, spec: dict, *, start: bool) -> ForwarderClient | None:
        return await self.shard_for(spec).client(start=start)

    def processes(self) -> list[ForwarderProcess]:
        """The running children (for monitoring and tests)."""
        return [s.process for s in self.shards if s.process is not None and s.process.running]

    async def list(self) -> list[dict]:
        forwards: list[dict] = []
        for shard in self.shards:
            client = await shard.client(start=False)
            if client is not None:
                forwards.extend(await client.list())
        return forwards

    async def close(self) -> None:
        """Stop every child (their forwards end with them)."""
        self.closed = True
        await asyncio.gather(*(s.stop() for s in self.shards))


class RemoteForwarder(ForwarderBackend):
    """A standalone forwarder reached over HTTP(S).

    :param url: its base URL
    :param token_file: file with the bearer token (read again after a 401)
    :param check_interval: seconds between health checks while forwards exist;
        a new ``instance`` means it restarted, and the registry is sent again
    """

    def __init__(
        self,
        url: str,
        token_file: str,
        *,
        check_interval: float = 15.0,
        ca_certs: str | None = None,
        timeout: float = 30.0,
    ):
        super().__init__()
        self.url = url
        self.token_file = token_file
        self.check_interval = check_interval
        self.ca_certs = ca_certs
        self.timeout = timeout
        self._client: ForwarderClient | None = None
        self._instance: str | None = None
        self._watch: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def _read_token(self) -> str:
        with open(self.token_file, encoding="utf-8") as f:
            return f.read().strip()

    async def _new_client(self) -> ForwarderClient:
        try:
            token = await asyncio.to_thread(self._read_token)
        except OSError as e:
            raise ForwarderUnavailable(
                f"The token file of the SSH forwarder ({self.token_file}) cannot be read: "
                f"{e.strerror}"
            ) from None
        if self._client is not None:
            self._client.close()
        self._client = ForwarderClient(
            self.url, token=token, ca_certs=self.ca_certs, timeout=self.timeout
        )
        return self._client

    async def _client_for(self, spec: dict, *, start: bool) -> ForwarderClient | None:
        async with self._lock:
            client = self._client or await self._new_client()
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._check_loop())
        return client

    async def add(self, spec: dict, **kw) -> tuple[dict, bool]:
        try:
            return await super().add(spec, **kw)
        except ForwardError as e:
            if e.code != "unauthorized":
                raise
        async with self._lock:
            await self._new_client()  # the token may have been rotated
        return await super().add(spec, **kw)

    async def _check_loop(self) -> None:
        while self.registry.specs:
            await self.check()
            await asyncio.sleep(self.check_interval)

    async def check(self) -> None:
        """Ask for its health; send the registry again when it restarted."""
        if self._client is None:
            return
        try:
            health = await self._client.health()
        except ForwardError as e:
            log.warning("SSH forwarder %s: %s", self.url, e.message)
            return
        instance = health.get("instance")
        if self._instance is not None and instance != self._instance:
            log.warning("SSH forwarder %s restarted; restoring its forwards", self.url)
            metrics.FORWARDER_RESTARTS.inc()
            await self._readd(self._client, self.registry.restorable(), self.url)
        self._instance = instance

    async def list(self) -> list[dict]:
        client = await self._client_for({}, start=False)
        assert client is not None
        return await client.list()

    async def close(self) -> None:
        """Stop watching; the standalone forwarder keeps its forwards."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._client is not None:
            self._client.close()
            self._client = None


_backends: dict[tuple, ForwarderBackend] = {}


def get_backend(key: tuple, factory) -> ForwarderBackend:
    """The backend of this event loop for ``key``, made by ``factory()`` on first use.

    One per Hub process and configuration, shared by all spawners.
    """
    loop = asyncio.get_running_loop()
    for k in [k for k in _backends if k[0].is_closed()]:
        del _backends[k]
    full = (loop, *key)
    backend = _backends.get(full)
    if backend is None:
        backend = _backends[full] = factory()
    return backend


async def shutdown_all() -> None:
    """Close every backend of this event loop (tests, Hub shutdown)."""
    loop = asyncio.get_running_loop()
    for k in [k for k in _backends if k[0] is loop]:
        await _backends.pop(k).close()
