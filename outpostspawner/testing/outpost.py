"""A reference JupyterHub Outpost: a real tornado HTTP server that speaks the
Outpost wire protocol and runs one local service per start request.

Used by tests, the demo and benchmarks::

    async with ReferenceOutpost(start_delay=0.5) as outpost:
        spawner.request_url = outpost.services_url
        spawner.request_headers = outpost.basic_auth_header()
        ...
        outpost.faults.add(Fault("poll", "status", status=503, count=1))
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tornado import httpserver, web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.netutil import bind_sockets

from ..processes import stop_process
from .faults import FaultPlan, spawner_error
from .flavors import Flavors, configured_flavors
from .handlers import (
    CreditsHandler,
    FaultsHandler,
    FlavorsHandler,
    NotFoundHandler,
    PingHandler,
    ServiceHandler,
    ServicesHandler,
    log_request,
)
from .records import RecordedRequest, ServiceRecord, host_port

log = logging.getLogger("outpostspawner.testing")

#: default per-service command: the dummy server, run by file path so it works
#: whether or not the package is installed
DEFAULT_COMMAND = [
    sys.executable,
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "dummy_server.py"),
]
#: the only variables of the Outpost's own environment a service inherits
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "PYTHONPATH")
#: how many log lines poll/stop return
LOG_TAIL_LINES = 100
_CRASH_COMMAND = [
    sys.executable,
    "-c",
    "import sys; print('injected crash', flush=True); sys.exit(1)",
]


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tail(path: str, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def _prepare_launch(workdir: str, log_path: str, command: list[str], path: str | None):
    """Create the work dir, open the log file and resolve the executable (in a thread)."""
    os.makedirs(workdir, exist_ok=True)
    cmd = list(command)
    if os.sep not in cmd[0]:
        # fall back to the interpreter's bin dir so venv scripts are found without PATH
        found = shutil.which(cmd[0], path=path) or shutil.which(
            cmd[0], path=os.path.dirname(sys.executable)
        )
        if found:
            cmd[0] = found
    return open(log_path, "ab"), cmd  # noqa: SIM115 - closed by the caller


class ReferenceOutpost:
    """A JupyterHub Outpost that runs services locally.

    :param credentials: Hub name -> password for HTTP Basic auth; default ``{"hub": "secret"}``.
    :param command: command run per service (process backend); default the dummy server.
        A bare executable name is looked up on PATH, then next to ``sys.executable``.
    :param backend: ``"process"`` (one OS process per service) or ``"inprocess"``
        (a tornado HTTP server on its own port inside this process).
    :param host: address to listen on.
    :param port: port to listen on; 0 picks a free one (see :attr:`port` after start).
    :param start_delay: seconds a start takes before it is answered (or, for async
        starts, before the service counts as ready).
    :param service_host: host reported in the ``service`` answer and bound by services.
    :param log_file_dir: directory for per-service work dirs and log files; a temporary
        directory (removed on stop) if not given.
    :param list_extras: an extension of this reference Outpost, off by default:
        ``GET /services/`` adds ``service`` (the address, ``""`` before it is known)
        and ``status`` to each entry. The JupyterHub Outpost's list has only
        ``name, start_id, start_date, end_date, jupyterhub, jupyterhub_userid,
        last_update, state_stored, start_pending, stop_pending``.
    :param allow_override: keys of the start body's ``misc`` that override the
        remote spawner's settings, as the JupyterHub Outpost's ``allow_override``
        does. This Outpost honours ``cmd`` and ``args`` (the service's command is
        then ``misc.cmd + misc.args``, as a remote ``LocalProcessSpawner`` runs it);
        other keys are accepted and ignored. Default: none.
    :param flavors: flavors offered to every Hub (see :mod:`.flavors`); default
        those of ``flavors_path``, ``$OUTPOST_FLAVORS_PATH`` or
        ``/mnt/flavors/flavors.yaml``; none: starts are not checked.
    :param user_flavors: ``(hub, authentication) -> flavors | None``, a user's own.
    :param credits: the answer of ``GET /credits/``;
        ``user_credits(hub, authentication)`` that of ``POST /usercredits``.
    :param max_per_user: services one user (``JUPYTERHUB_USER_ID``) may run at once.
    :param flavors_update_token: the token of the flavors pushes when the start
        body's env has no ``JUPYTERHUB_FLAVORS_UPDATE_TOKEN``.
    :param report_address: after an async start, POST ``{"service": "host:port"}`` to the
        service's ``JUPYTERHUB_SETUPTUNNEL_URL`` with its ``JUPYTERHUB_API_TOKEN``, as the
        JupyterHub Outpost does.
    """

    def __init__(
        self,
        *,
        credentials: dict[str, str] | None = None,
        command: list[str] | None = None,
        backend: str = "process",
        host: str = "127.0.0.1",
        port: int = 0,
        start_delay: float = 0.0,
        service_host: str = "127.0.0.1",
        log_file_dir: str | None = None,
        report_address: bool = True,
        list_extras: bool = False,
        allow_override: tuple[str, ...] | list[str] = (),
        flavors: dict[str, dict] | None = None,
        flavors_path: str | None = None,
        user_flavors: Callable[[str, Any], dict | None] | None = None,
        credits: dict | None = None,
        user_credits: Callable[[str, Any], dict] | None = None,
        max_per_user: int | None = None,
        flavors_update_token: str | None = None,
    ) -> None:
        if backend not in ("process", "inprocess"):
            raise ValueError(f"backend must be 'process' or 'inprocess', not {backend!r}")
        if command is not None and not command:
            raise ValueError("command must not be empty")
        self.credentials = dict(credentials) if credentials is not None else {"hub": "secret"}
        self.command = list(command) if command else list(DEFAULT_COMMAND)
        self.backend = backend
        self.host = host
        self.port = port
        self.start_delay = float(start_delay)
        self.service_host = service_host
        self.log_file_dir = log_file_dir
        self.report_address = report_address
        self.list_extras = list_extras
        self.allow_override = frozenset(allow_override)
        self.flavors = Flavors(
            configured_flavors(flavors, flavors_path),
            user_flavors=user_flavors,
            credits=credits,
            user_credits=user_credits,
            max_per_user=max_per_user,
        )
        self.flavors_update_token = flavors_update_token
        #: ``(url, status, body)`` of each flavors push made
        self.flavor_pushes: list[tuple[str, int, dict]] = []
        #: seconds between SIGTERM and SIGKILL when stopping a service
        self.stop_timeout = 5.0
        #: upper bound for a "hang" fault
        self.hang_timeout = 3600.0
        self.requests: list[RecordedRequest] = []
        self.services: dict[tuple[str, str], ServiceRecord] = {}
        self.faults = FaultPlan()
        self._server: httpserver.HTTPServer | None = None
        self._app: web.Application | None = None
        self._paused = False
        self._stopping = asyncio.Event()
        self._stopped = False
        self._tasks: set[asyncio.Task] = set()
        self._workdir: str | None = None
        self._own_workdir = False
        self._seq = 0

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8090``."""
        return f"http://{host_port(self.host, self.port)}"

    @property
    def services_url(self) -> str:
        """The services collection URL (the spawner's ``request_url``)."""
        return self.url + "/services"

    @staticmethod
    def basic_auth_header(hub: str = "hub", password: str = "secret") -> dict[str, str]:
        """``{"Authorization": "Basic ..."}`` for a Hub's credentials.

        :param hub: Hub name.
        :param password: its password.
        """
        token = base64.b64encode(f"{hub}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    def get_service(self, name: str, hub: str = "hub") -> ServiceRecord | None:
        """The record of a Hub's service, if it exists.

        :param name: service name.
        :param hub: Hub name.
        """
        return self.services.get((hub, name))

    async def start(self) -> None:
        """Start listening."""
        if self._server is not None:
            raise RuntimeError("outpost already started")
        if self.log_file_dir:
            self._workdir = self.log_file_dir
            await asyncio.to_thread(os.makedirs, self._workdir, exist_ok=True)
        else:
            self._workdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="outpost-")
            self._own_workdir = True
        args = {"outpost": self}
        app = web.Application(
            [
                (r"/ping/?", PingHandler, args),
                (r"/flavors/?", FlavorsHandler, args),
                (r"/userflavors/?", FlavorsHandler, args),
                (r"/credits/?", CreditsHandler, args),
                (r"/usercredits/?", CreditsHandler, args),
                (r"/services/?", ServicesHandler, args),
                (r"/services/([^/]+)/([^/]+)/?", ServiceHandler, args),
                (r"/_faults/?", FaultsHandler, args),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args=args,
            log_function=log_request,
        )
        self._app = app
        self._listen()
        log.info("outpost: listening on %s (backend %s)", self.services_url, self.backend)

    def _listen(self) -> None:
        assert self._app is not None
        sockets = bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self._server = httpserver.HTTPServer(self._app)
        self._server.add_sockets(sockets)

    @property
    def paused(self) -> bool:
        """Whether the Outpost is unreachable because of :meth:`pause`."""
        return self._paused

    async def pause(self, timeout: float = 5) -> None:
        """Become unreachable, as an Outpost that is down: close the listening
        socket and every open connection (kept-alive ones included), so that
        connections are refused. Requests in progress get no answer. The services
        keep running; :meth:`resume` listens again on the same port.

        :param timeout: seconds to wait for the open connections to close
        """
        if self._server is None or self._stopped:
            raise RuntimeError("outpost is not running")
        if self._paused:
            return
        self._paused = True
        self._server.stop()
        try:
            await asyncio.wait_for(self._server.close_all_connections(), timeout=timeout)
        except asyncio.TimeoutError:
            log.warning("outpost: connections still open after pause")
        log.info("outpost: paused, %s refuses connections", self.url)

    async def resume(self) -> None:
        """Listen again on the same address and port after :meth:`pause`.

        :raises OSError: if the port was taken meanwhile
        """
        if self._stopped:
            raise RuntimeError("outpost is stopped")
        if not self._paused:
            return
        self._listen()
        self._paused = False
        log.info("outpost: resumed, listening on %s", self.services_url)

    async def stop(self) -> None:
        """Stop listening and terminate every service; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._server is not None:
            self._server.stop()
        # twice: a start that was already past its checks may add a service meanwhile
        for _ in range(2):
            records = list(self.services.values())
            self.services.clear()
            await asyncio.gather(*(self._teardown(r) for r in records))
            pending = [t for t in self._tasks if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.stop_timeout + 10)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.close_all_connections(), timeout=5)
            except asyncio.TimeoutError:
                log.warning("outpost: connections still open after stop")
        if self._own_workdir and self._workdir:
            await asyncio.to_thread(shutil.rmtree, self._workdir, ignore_errors=True)
        log.info("outpost: stopped")

    async def __aenter__(self) -> ReferenceOutpost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _service_env(self, env: dict[str, Any], port: int) -> dict[str, str]:
        """The spawner's env plus PATH/HOME/LANG/PYTHONPATH, service URL rewritten."""
        child = {k: str(v) for k, v in env.items()}
        for key in PASSTHROUGH_ENV:
            if key in os.environ:
                child.setdefault(key, os.environ[key])
        url = child.get("JUPYTERHUB_SERVICE_URL")
        path = urlsplit(url).path if url else child.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        child["JUPYTERHUB_SERVICE_URL"] = (
            f"http://{host_port(self.service_host, port)}{path or '/'}"
        )
        return child

    async def _start_service(self, hub: str, body: dict[str, Any], crash: bool) -> ServiceRecord:
        """Replace any service with the same key and begin starting a new one."""
        key = (hub, body["name"])
        while (old := self.services.pop(key, None)) is not None:
            log.info("outpost: replacing service %s of hub %s", key[1], hub)
            await self._teardown(old)
        sockets = []
        if self.backend == "inprocess":
            sockets = bind_sockets(0, self.service_host)
            port = sockets[0].getsockname()[1]
        else:
            port = _free_port(self.service_host)
        env = self._service_env(body.get("env") or {}, port)
        start_id = str(body["user_options"]["start_id"])
        record = ServiceRecord(hub, body["name"], start_id, body, self.service_host, port, env=env)
        if sockets:
            if crash:
                for sock in sockets:
                    sock.close()
                record.exit_status = 1
                record.logs = ["injected crash"]
            else:
                from .dummy_server import make_app  # not at the top: `-m dummy_server` stays clean

                path = urlsplit(env["JUPYTERHUB_SERVICE_URL"]).path
                record.server = httpserver.HTTPServer(make_app(path, env.get("JUPYTERHUB_USER")))
                record.server.add_sockets(sockets)
                record.logs = [f"inprocess service listening on {record.address}"]
        self.services[key] = record
        record.start_task = self._spawn(self._run_start(record, crash), f"start-{record.name}")
        self._end_at_runtime(record)
        log.info("outpost: starting service %s of hub %s on %s", record.name, hub, record.address)
        return record

    def command_for(self, body: dict[str, Any]) -> list[str]:
        """The command of a service: ``misc.cmd + misc.args`` where ``allow_override``
        allows them, else :attr:`command`.

        :raises ValueError: if an allowed override is not a list of strings
        """
        misc = body.get("misc") or {}
        parts = {"cmd": list(self.command), "args": []}
        for key in parts:
            if key not in misc or key not in self.allow_override:
                continue
            value = misc[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"misc.{key} must be a list of strings")
            parts[key] = list(value)
        if not parts["cmd"]:
            raise ValueError("misc.cmd must not be empty")
        return parts["cmd"] + parts["args"]

    async def _run_start(self, record: ServiceRecord, crash: bool) -> None:
        """Launch (process backend) and wait ``start_delay``, watching for an early exit."""
        proc = None
        try:
            if self.backend == "process":
                proc = await self._launch(record, crash)
                if proc is None:
                    return
            if crash:
                if proc is not None:
                    await asyncio.wait_for(proc.wait(), timeout=10)
            elif proc is not None:
                try:
                    await asyncio.wait_for(proc.wait(), timeout=self.start_delay)
                except asyncio.TimeoutError:
                    pass
                if proc.returncode is not None:
                    logs = await self._collect_logs(record)
                    msg = f"service process exited with status {proc.returncode} during start"
                    record.error = spawner_error(msg, tb="\n".join([*logs, msg]))
                    log.warning("outpost: %s (service %s)", msg, record.name)
                    return
            else:
                await asyncio.sleep(self.start_delay)
            record.ready = True
            if record.async_start and self.report_address:
                await self._report_address(record)
        except asyncio.CancelledError:
            log.info("outpost: start of service %s cancelled", record.name)
            if proc is not None:
                await self._terminate(proc)
            raise
        except Exception as e:
            log.exception("outpost: start of service %s failed", record.name)
            record.error = spawner_error(str(e), cls=type(e).__name__, tb=traceback.format_exc())
            if proc is None and record.exit_status is None:
                record.exit_status = 1

    def push_flavors(self, record: ServiceRecord) -> None:
        """POST the flavors' usage to the record's ``JUPYTERHUB_FLAVORS_UPDATE_URL``
        (in the background); no URL, no push."""
        env = record.body.get("env") or {}
        url = env.get("JUPYTERHUB_FLAVORS_UPDATE_URL")
        if not self.flavors.enabled or not url:
            return
        token = env.get("JUPYTERHUB_FLAVORS_UPDATE_TOKEN") or self.flavors_update_token
        body = self.flavors.with_current(self.flavors.flavors, self.services.values())
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"token {token}"
        request = HTTPRequest(
            str(url), method="POST", headers=headers, body=json.dumps(body), request_timeout=10
        )

        async def push() -> None:
            try:
                response = await AsyncHTTPClient().fetch(request, raise_error=False)
            except OSError as e:
                log.warning("outpost: flavors push to %s failed: %s", url, e)
                return
            self.flavor_pushes.append((str(url), response.code, body))

        self._spawn(push(), f"flavors-push-{record.name}")

    def _end_at_runtime(self, record: ServiceRecord) -> None:
        seconds = self.flavors.runtime_of(record.hub, record.body)
        if seconds is None:
            return
        record.end_date = record.created + seconds

        async def expire() -> None:
            await asyncio.sleep(seconds)
            if self.services.get((record.hub, record.name)) is record:
                log.info("outpost: service %s reached its flavor's runtime", record.name)
                self.services.pop((record.hub, record.name), None)
                self.push_flavors(record)
                await self._teardown(record)

        self._spawn(expire(), f"runtime-{record.name}")

    async def _report_address(self, record: ServiceRecord) -> None:
        """Tell the Hub where an async start's service is (the setuptunnel callback)."""
        url = record.env.get("JUPYTERHUB_SETUPTUNNEL_URL")
        token = record.env.get("JUPYTERHUB_API_TOKEN")
        if not url or not token:
            log.warning("outpost: service %s has no callback URL or token", record.name)
            return
        request = HTTPRequest(
            url,
            method="POST",
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            body=json.dumps({"service": record.address}),
            request_timeout=30,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        record.address_reported = response.code
        log.info("outpost: reported the address of %s: %s", record.name, response.code)

    async def _launch(
        self, record: ServiceRecord, crash: bool
    ) -> asyncio.subprocess.Process | None:
        """Start the service process; on failure set ``error`` and return None."""
        self._seq += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{record.hub}-{record.name}")
        workdir = os.path.join(self._workdir or tempfile.gettempdir(), f"{self._seq:04d}-{safe}")
        record.log_path = os.path.join(workdir, "service.log")
        command = _CRASH_COMMAND if crash else self.command_for(record.body)
        try:
            logf, cmd = await asyncio.to_thread(
                _prepare_launch, workdir, record.log_path, command, record.env.get("PATH")
            )
            try:
                record.process = await asyncio.create_subprocess_exec(
                    *cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=record.env,
                    cwd=workdir,
                    start_new_session=True,
                )
            finally:
                logf.close()
        except OSError as e:
            log.warning("outpost: cannot launch service %s: %s", record.name, e)
            record.exit_status = 127
            record.logs = [f"cannot launch {command[0]}: {e}"]
            record.error = spawner_error(str(e), cls=type(e).__name__, tb=traceback.format_exc())
            return None
        log.info("outpost: service %s runs as pid %s", record.name, record.process.pid)
        return record.process

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the service's process group, SIGKILL after ``stop_timeout``."""
        if proc.returncode is not None:
            return
        code = await stop_process(proc, self.stop_timeout, group=True)
        if code is None:
            log.error("outpost: pid %s did not exit after SIGKILL", proc.pid)
        elif code == -signal.SIGKILL:
            log.warning("outpost: pid %s ignored SIGTERM and was killed", proc.pid)

    async def _teardown(self, record: ServiceRecord) -> None:
        """Cancel a pending start and stop the service (record already removed)."""
        task = record.start_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=self.stop_timeout + 10)
        if record.process is not None:
            await self._terminate(record.process)
        if record.server is not None:
            record.server.stop()
            try:
                await asyncio.wait_for(record.server.close_all_connections(), timeout=2)
            except asyncio.TimeoutError:
                log.warning("outpost: inprocess service %s kept connections open", record.name)
            record.server = None
            record.exit_status = 0
        log.info("outpost: service %s of hub %s stopped", record.name, record.hub)

    async def _collect_logs(self, record: ServiceRecord) -> list[str]:
        """The last lines of the service's log (read in a thread)."""
        if record.log_path:
            lines = await asyncio.to_thread(_tail, record.log_path, LOG_TAIL_LINES)
            if lines or not record.logs:
                record.logs = lines
        return list(record.logs)
