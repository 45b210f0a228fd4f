"""The forwarder: SSH connections and the forwards carried over them.

One :class:`NodeConnection` per distinct :class:`~.options.SSHTarget` (node, port,
user, key and options) carries every forward to that node. It keeps the
connection up: keepalives find a hung peer, a lost connection is re-established
with exponential backoff, and every forward is opened again afterwards.

Everything here runs in the forwarder process, never in the Hub's event loop:
the bytes of the forwarded connections flow through this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncssh

from .errors import ForwardError
from .known_hosts import HostKeyChanged, KnownHostsFile, fingerprint
from .options import ForwardSpec, SSHTarget, asyncssh_options

log = logging.getLogger("outpostspawner.forwarder")

#: The cipher preference unless a target's ``Ciphers`` option says otherwise:
#: AES-GCM first. With the AES instructions of current CPUs it costs the
#: forwarder (and the node) much less CPU per byte than chacha20-poly1305,
#: asyncssh's and OpenSSH's first choice, which is computed in software. The
#: others follow, for nodes that do not offer AES-GCM.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)


@functools.lru_cache(maxsize=1)
def default_ciphers() -> tuple[str, ...]:
    """:data:`PREFERRED_CIPHERS` that this asyncssh offers by default (empty:
    leave the choice to asyncssh)."""
    try:
        from asyncssh.encryption import get_default_encryption_algs

        offered = {alg.decode() for alg in get_default_encryption_algs()}
    except (ImportError, AttributeError):
        return ()
    return tuple(c for c in PREFERRED_CIPHERS if c in offered)


@dataclass
class ForwarderSettings:
    """Defaults for targets whose options do not say otherwise, and the backoff."""

    known_hosts: str = os.path.abspath("outpostspawner_known_hosts")
    strict_host_key_checking: str = "accept-new"
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    connect_timeout: float = 10.0
    reconnect_delay: float = 1.0
    reconnect_max_delay: float = 30.0


class _NodeLogger(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"{self.extra['node']}: {msg}", kwargs


class _Client(asyncssh.SSHClient):
    """Host key decisions and connection-loss notice for one connection attempt."""

    def __init__(self, accept_new: bool, on_lost):
        self.accept_new = accept_new
        self.new_key = None
        self.rejected_key = None
        self._on_lost = on_lost

    def validate_host_public_key(self, host, addr, port, key) -> bool:
        # called only for keys that are not in the trusted list
        if self.accept_new:
            self.new_key = key
            return True
        self.rejected_key = key
        return False

    def connection_lost(self, exc) -> None:
        self._on_lost(exc)


def _mark_retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class Forward:
    """One forward and its current listener."""

    def __init__(self, spec: ForwardSpec, node: NodeConnection):
        self.spec = spec
        self.node = node
        self.listener: Any = None
        self.port = spec.listen_port
        self.state = "connecting"
        self.error: ForwardError | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.removed = False
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_mark_retrieved)

    def settle(self, error: ForwardError | None = None) -> None:
        if self.ready.done():
            return
        if error is None:
            self.ready.set_result(None)
        else:
            self.ready.set_exception(error)

    def close_listener(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()

    def describe(self) -> dict:
        d = self.spec.to_dict()
        d["requested_port"] = self.spec.listen_port
        d["listen_port"] = self.port
        d["state"] = self.state
        d["error"] = self.error.to_dict() if self.error else None
        d["connection"] = self.node.state
        return d


class NodeConnection:
    """The shared SSH connection to one target and the forwards over it."""

    def __init__(self, forwarder: Forwarder, target: SSHTarget):
        self.forwarder = forwarder
        self.target = target
        self.settings = forwarder.settings
        self.log = _NodeLogger(log, {"node": target.label})
        self.forwards: dict[str, Forward] = {}
        #: the forwards that need a listener (new, failed, or the connection was lost)
        self.pending: dict[str, Forward] = {}
        self.conn: asyncssh.SSHClientConnection | None = None
        self.state = "connecting"
        self.stopping = False
        self.connects = 0
        self.last_error: ForwardError | None = None
        self._wake = asyncio.Event()
        self._lost: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    @property
    def done(self) -> bool:
        return self._task is None or self._task.done()

    async def wait_stopped(self, timeout: float) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _option(self, name: str, default: Any) -> Any:
        return self.target.option(name, default)

    @property
    def connect_timeout(self) -> float:
        return float(self._option("ConnectTimeout", self.settings.connect_timeout))

    def _keep_running(self) -> bool:
        if not self.forwards or self.forwarder.closing:
            self.stopping = True
        return not self.stopping

    async def _run(self) -> None:
        delay = self.settings.reconnect_delay
        try:
            while self._keep_running():
                try:
                    conn = await self._connect()
                except ForwardError as e:
                    self.state = "down"
                    self.last_error = e
                    self.log.warning("connection failed: %s", e.message)
                    for f in list(self.forwards.values()):
                        f.state = "down"
                        f.error = e
                        f.settle(e)
                    await self._sleep(delay)
                    delay = min(delay * 2, self.settings.reconnect_max_delay)
                    continue
                delay = self.settings.reconnect_delay
                self.connects += 1
                self.conn = conn
                self.state = "up"
                self.last_error = None
                self.log.info("connected (%d forwards)", len(self.forwards))
                try:
                    await self._serve(conn)
                finally:
                    self.conn = None
                    for f in self.forwards.values():
                        f.close_listener()
                        if not f.removed:
                            f.state = "down"
                            self.pending[f.spec.id] = f
                    conn.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.wait_closed(), 5)
                if not self.stopping:
                    self.state = "down"
                    self.log.warning("connection lost; reconnecting")
        finally:
            self.stopping = True
            self.state = "closed"
            for f in list(self.forwards.values()):
                f.close_listener()
                f.settle(ForwardError("shutting_down", "The forwarder is shutting down."))
            self.forwarder._node_finished(self)

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` (with jitter) or until woken, e.g. by a new forward."""
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay * random.uniform(0.8, 1.2))

    async def _serve(self, conn) -> None:
        assert self._lost is not None
        while self._keep_running() and not self._lost.is_set():
            self._wake.clear()
            await self._reconcile(conn)
            if self._lost.is_set() or not self._keep_running():
                return
            retry = [f.retry_at for f in self.pending.values()]
            timeout = max(0.0, min(retry) - time.monotonic()) if retry else None
            await self._wait_woken(timeout)

    async def _wait_woken(self, timeout: float | None) -> None:
        """Until :meth:`wake` (a forward was added or removed), the connection is
        lost (which wakes too) or ``timeout`` passed (a retry is due)."""
        if timeout is None:
            await self._wake.wait()
            return
        timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def _reconcile(self, conn) -> None:
        """Open the listeners of the pending forwards (those whose retry is due)."""
        now = time.monotonic()
        for f in list(self.pending.values()):
            if f.removed or f.listener is not None:
                self.pending.pop(f.spec.id, None)
                continue
            if f.retry_at > now:
                continue
            try:
                listener = await self._open(conn, f.spec, f.port)
            except ForwardError as e:
                if f.removed:
                    continue
                f.failures += 1
                backoff = self.settings.reconnect_delay * 2 ** min(f.failures - 1, 10)
                f.retry_at = time.monotonic() + min(backoff, self.settings.reconnect_max_delay)
                f.state = "failed"
                f.error = e
                self.log.warning("forward %s failed: %s", f.spec.id, e.message)
                f.settle(e)
                continue
            if f.removed or self._lost.is_set():
                listener.close()
                continue
            if self.pending.get(f.spec.id) is f:
                del self.pending[f.spec.id]
            f.listener = listener
            self.forwarder._set_port(f, listener.get_port())
            f.state = "active"
            f.error = None
            f.failures = 0
            f.retry_at = 0.0
            self.log.info(
                "forward %s up: %s %s:%d -> %s:%d",
                f.spec.id,
                f.spec.kind,
                f.spec.listen_host or "*",
                f.port,
                f.spec.dest_host,
                f.spec.dest_port,
            )
            f.settle()

    async def _open(self, conn, spec: ForwardSpec, port: int):
        """Open the listener; ``port`` is the requested one, or the one given out on
        the first success when ``0`` was requested."""
        where = f"{spec.listen_host or '*'}:{port}"
        if spec.kind == "local":
            try:
                return await conn.forward_local_port(
                    spec.listen_host, port, spec.dest_host, spec.dest_port
                )
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ForwardError(
                        "port_in_use",
                        f"Port {port} for the forward through {self.target.host} "
                        "is already in use on the forwarder.",
                    ) from None
                raise ForwardError(
                    "invalid", f"Cannot listen on {where}: {e.strerror or e}"
                ) from None
        try:
            return await asyncio.wait_for(
                conn.forward_remote_port(spec.listen_host, port, spec.dest_host, spec.dest_port),
                self.connect_timeout,
            )
        except asyncssh.ChannelListenError as e:
            raise ForwardError(
                "remote_listen_failed",
                f"The SSH node {self.target.label} refused to listen on {where} "
                f"({e.reason or 'in use or not permitted'}).",
            ) from None
        except (asyncio.TimeoutError, asyncssh.Error, OSError) as e:
            raise ForwardError(
                "ssh_error",
                f"The SSH node {self.target.label} did not set up the remote forward on "
                f"{where} ({type(e).__name__}).",
            ) from None

    def _on_lost(self, exc) -> None:
        if self._lost is not None:
            self._lost.set()
        self._wake.set()
        if exc is not None and not self.stopping:
            self.log.info("connection closed: %s", exc)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        t = self.target
        known_hosts = self.forwarder.known_hosts_file(
            self._option("UserKnownHostsFile", self.settings.known_hosts)
        )
        strict = self._option("StrictHostKeyChecking", self.settings.strict_host_key_checking)
        try:
            key = await asyncio.to_thread(asyncssh.read_private_key, t.key)
        except OSError as e:
            raise ForwardError(
                "key_unreadable", f"The SSH key {t.key} for {t.label} cannot be read: {e.strerror}"
            ) from None
        except (asyncssh.KeyImportError, ValueError) as e:
            raise ForwardError(
                "key_unreadable", f"The SSH key {t.key} for {t.label} cannot be used: {e}"
            ) from None
        try:
            trusted = await known_hosts.lookup(t.host, t.port)
        except OSError as e:
            raise ForwardError(
                "known_hosts", f"Cannot read the known_hosts file {known_hosts.path}: {e.strerror}"
            ) from None
        self._lost = asyncio.Event()
        client = _Client(strict == "accept-new" and not trusted.known, self._on_lost)
        kw = {
            "keepalive_interval": self.settings.keepalive_interval,
            "keepalive_count_max": self.settings.keepalive_count_max,
            "connect_timeout": self.connect_timeout,
        }
        kw.update(asyncssh_options(t))
        if "encryption_algs" not in kw and default_ciphers():
            kw["encryption_algs"] = list(default_ciphers())
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    t.host,
                    t.port,
                    username=t.username,
                    client_keys=[key],
                    known_hosts=(trusted.keys, trusted.ca_keys, trusted.revoked),
                    client_factory=lambda: client,
                    config=None,
                    agent_path=None,
                    password_auth=False,
                    kbdint_auth=False,
                    gss_auth=False,
                    host_based_auth=False,
                    x509_trusted_certs=None,
                    **kw,
                ),
                self.connect_timeout + 1,
            )
        except (asyncio.TimeoutError, TimeoutError):
            raise ForwardError(
                "unreachable",
                f"The SSH node {t.label} did not answer within {self.connect_timeout:g} s.",
            ) from None
        except asyncssh.PermissionDenied:
            raise ForwardError(
                "auth_failed",
                f"The SSH node {t.label} refused the login with the key {t.key}.",
            ) from None
        except asyncssh.HostKeyNotVerifiable:
            raise self._host_key_error(client, trusted.known, known_hosts.path) from None
        except asyncssh.DisconnectError as e:
            raise ForwardError(
                "ssh_error", f"The SSH node {t.label} closed the connection: {e.reason}"
            ) from None
        except OSError as e:
            raise ForwardError(
                "unreachable",
                f"The SSH node {t.label} cannot be reached: {e.strerror or e}",
            ) from None
        except ValueError as e:  # e.g. an algorithm asyncssh does not know
            raise ForwardError("invalid", f"SSH settings for {t.label} are invalid: {e}") from None
        if client.new_key is not None:
            try:
                if await known_hosts.remember(t.host, t.port, client.new_key):
                    self.log.warning(
                        "permanently added host key %s to %s",
                        fingerprint(client.new_key),
                        known_hosts.path,
                    )
            except HostKeyChanged:
                conn.close()
                raise self._host_key_error(client, True, known_hosts.path) from None
            except OSError as e:
                conn.close()
                raise ForwardError(
                    "known_hosts",
                    f"Cannot write the known_hosts file {known_hosts.path}: {e.strerror}",
                ) from None
        return conn

    def _host_key_error(self, client: _Client, known: bool, path: str) -> ForwardError:
        key = client.rejected_key or client.new_key
        offered = f" (offered {fingerprint(key)})" if key is not None else ""
        if known:
            return ForwardError(
                "host_key_changed",
                f"The host key of the SSH node {self.target.label} has changed{offered}; "
                f"refusing to connect. If the change is expected, remove the old key "
                f"from {path}.",
            )
        return ForwardError(
            "host_key_unknown",
            f"The host key of the SSH node {self.target.label} is not in {path}{offered} "
            "and StrictHostKeyChecking is yes.",
        )


class Forwarder:
    """All forwards of one forwarder process.

    :param settings: defaults and backoff
    """

    def __init__(self, settings: ForwarderSettings | None = None):
        self.settings = settings or ForwarderSettings()
        self.instance = uuid.uuid4().hex
        self.forwards: dict[str, Forward] = {}
        self.nodes: dict[SSHTarget, NodeConnection] = {}
        self.closing = False
        self._known_hosts: dict[str, KnownHostsFile] = {}
        #: (kind, port) -> the forwards on that port, to find conflicts quickly
        self._ports: dict[tuple[str, int], list[Forward]] = {}

    def known_hosts_file(self, path: str) -> KnownHostsFile:
        if path not in self._known_hosts:
            self._known_hosts[path] = KnownHostsFile(path)
        return self._known_hosts[path]

    def _node_finished(self, node: NodeConnection) -> None:
        if self.nodes.get(node.target) is node:
            del self.nodes[node.target]
        for fid, f in list(self.forwards.items()):
            if f.node is node:  # left over when the forwarder shuts down
                del self.forwards[fid]
                self._unindex(f)

    def _index(self, f: Forward) -> None:
        self._ports.setdefault((f.spec.kind, f.port), []).append(f)

    def _unindex(self, f: Forward) -> None:
        key = (f.spec.kind, f.port)
        same = self._ports.get(key)
        if same is not None:
            with contextlib.suppress(ValueError):
                same.remove(f)
            if not same:
                del self._ports[key]

    def _set_port(self, f: Forward, port: int) -> None:
        """The port a listener got (the one asked for, or chosen for ``0``)."""
        if port != f.port:
            self._unindex(f)
            f.port = port
            if self.forwards.get(f.spec.id) is f:
                self._index(f)

    def _conflict(self, spec: ForwardSpec) -> Forward | None:
        if spec.listen_port == 0:
            return None
        for f in self._ports.get((spec.kind, spec.listen_port), ()):
            if spec.kind == "local" or f.spec.ssh.host == spec.ssh.host:
                return f
        return None

    async def add(
        self, spec: ForwardSpec, timeout: float | None = None, *, keep: bool = False
    ) -> tuple[dict, bool]:
        """Make the forward, or keep it when the same one exists.

        Waits until it listens or failed. A failed new forward is removed, and so
        is its connection when nothing else uses it, unless ``keep`` is set: then
        it stays and is retried with backoff (used when forwards of running servers
        are restored, where a node that is down for a moment must not lose them).

        :returns: ``(description, created)``
        :raises ForwardError: why it could not be made (not with ``keep``)
        """
        if self.closing:
            raise ForwardError("shutting_down", "The forwarder is shutting down.")
        existing = self.forwards.get(spec.id)
        if existing is not None and existing.spec == spec:
            if not existing.ready.done():
                await self._wait_ready(existing, timeout, keep)
            return existing.describe(), False
        if existing is not None:
            await self.remove(spec.id)
        other = self._conflict(spec)
        if other is not None:
            where = "on the forwarder" if spec.kind == "local" else f"on {spec.ssh.host}"
            raise ForwardError(
                "port_in_use",
                f"Port {spec.listen_port} {where} is already used by forward {other.spec.id}.",
            )
        node = self.nodes.get(spec.ssh)
        if node is None or node.stopping:
            node = NodeConnection(self, spec.ssh)
            self.nodes[spec.ssh] = node
            node.start()
        fwd = Forward(spec, node)
        self.forwards[spec.id] = fwd
        self._index(fwd)
        node.forwards[spec.id] = fwd
        node.pending[spec.id] = fwd
        node.wake()
        try:
            await self._wait_ready(fwd, timeout, keep)
        except BaseException:
            if self.forwards.get(spec.id) is fwd:
                await self.remove(spec.id)
            raise
        return fwd.describe(), True

    async def _wait_ready(self, fwd: Forward, timeout: float | None, keep: bool) -> None:
        if timeout is None:
            timeout = fwd.node.connect_timeout + 5
        try:
            await asyncio.wait_for(asyncio.shield(fwd.ready), timeout)
        except asyncio.TimeoutError:
            if keep:
                return
            raise ForwardError(
                "timeout",
                f"The forward through {fwd.spec.ssh.label} was not ready within {timeout:g} s.",
            ) from None
        except ForwardError:
            if not keep or fwd.removed:
                raise

    async def remove(self, forward_id: str, timeout: float = 5) -> bool:
        """Close the forward; its connection too when nothing else uses it.

        :returns: whether it existed
        """
        fwd = self.forwards.pop(forward_id, None)
        if fwd is None:
            return False
        self._unindex(fwd)
        fwd.removed = True
        fwd.state = "removed"
        node = fwd.node
        if node.forwards.get(forward_id) is fwd:
            del node.forwards[forward_id]
        if node.pending.get(forward_id) is fwd:
            del node.pending[forward_id]
        fwd.close_listener()
        fwd.settle(ForwardError("removed", "The forward was removed."))
        node.wake()
        if not node.forwards:
            await node.wait_stopped(timeout)
        log.info("forward %s removed", forward_id)
        return True

    def get(self, forward_id: str) -> dict | None:
        fwd = self.forwards.get(forward_id)
        return fwd.describe() if fwd else None

    def list(self) -> list[dict]:
        return [f.describe() for f in self.forwards.values()]

    def status(self) -> dict:
        return {
            "instance": self.instance,
            "pid": os.getpid(),
            "forwards": len(self.forwards),
            "connections": sum(1 for n in self.nodes.values() if n.state == "up"),
        }

    async def close(self, timeout: float = 5) -> None:
        """Close every forward and connection."""
        self.closing = True
        nodes = list(self.nodes.values())
        for fid in list(self.forwards):
            fwd = self.forwards.pop(fid)
            fwd.removed = True
            fwd.close_listener()
            fwd.settle(ForwardError("shutting_down", "The forwarder is shutting down."))
        self._ports.clear()
        for node in nodes:
            node.forwards.clear()
            node.pending.clear()
            node.wake()
        for node in nodes:
            await node.wait_stopped(timeout)
            if not node.done:
                node.cancel()
                await node.wait_stopped(1)
