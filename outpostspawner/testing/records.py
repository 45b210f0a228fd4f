"""What the reference Outpost keeps: the requests it received and the services
it runs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tornado import httpserver


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RecordedRequest:
    """One request the Outpost received.

    :param method: HTTP method.
    :param path: URL path without the query.
    :param query: query arguments (last value of each).
    :param headers: request headers; ``Authorization`` is redacted to ``Basic ***``.
    :param json: the parsed JSON body, ``None`` if there was none or it was not JSON.
    :param time: ``time.time()`` when it arrived.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    time: float
    #: the client's ``host:port``: one value for many requests means a kept-alive connection
    peer: str = ""

    @property
    def body(self) -> Any:
        """The parsed JSON body (same as :attr:`json`)."""
        return self.json


@dataclass(eq=False)
class ServiceRecord:
    """One service started for a Hub, kept in ``ReferenceOutpost.services[(hub, name)]``.

    :param hub: Hub name (from the Basic credentials).
    :param name: service name from the start body.
    :param start_id: ``user_options["start_id"]`` from the start body.
    :param body: the start body as received.
    :param host: host the service listens on (the Outpost's ``service_host``).
    :param port: port the service listens on.
    :param env: the environment the service was started with.
    :param log_path: the service's stdout/stderr file (process backend).
    :param process: the service process (process backend).
    :param server: the service's HTTP server (inprocess backend).
    :param logs: the log lines last read.
    :param ready: the start finished successfully (its delay is over).
    :param error: the 419 body if the start failed.
    :param exit_status: exit code of a service without a process.
    :param start_task: the task running the start.
    """

    hub: str
    name: str
    start_id: str
    body: dict[str, Any]
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict, repr=False)
    log_path: str | None = None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    server: httpserver.HTTPServer | None = field(default=None, repr=False)
    logs: list[str] = field(default_factory=list, repr=False)
    ready: bool = False
    error: dict[str, Any] | None = None
    exit_status: int | None = None
    start_task: asyncio.Task | None = field(default=None, repr=False)
    async_start: bool = False
    #: HTTP status of the setuptunnel callback after an async start, if one was made
    address_reported: int | None = None
    created: float = field(default_factory=time.time)
    #: when the Outpost stops the service (its flavor's ``runtime``), else ``None``
    end_date: float | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the service."""
        return host_port(self.host, self.port)

    @property
    def pid(self) -> int | None:
        """Process id (process backend), else ``None``."""
        return self.process.pid if self.process else None

    @property
    def status(self) -> int | None:
        """``None`` while running, else the exit code."""
        if self.process is not None:
            return self.process.returncode
        return self.exit_status
