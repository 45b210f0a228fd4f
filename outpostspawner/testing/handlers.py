"""The reference Outpost's HTTP handlers: the Outpost protocol, with request
recording, Basic auth and injectable faults."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from tornado import httputil, web

from .faults import Fault, spawner_error
from .records import RecordedRequest, ServiceRecord

log = logging.getLogger("outpostspawner.testing")

if TYPE_CHECKING:
    from .outpost import ReferenceOutpost


def _peer(request: httputil.HTTPServerRequest) -> str:
    address = getattr(request.connection.context, "address", None)
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return ""


def _validate_start_body(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """Check a start body; returns ``(body, "")`` or ``(None, error)``."""
    try:
        body = json.loads(raw or b"null")
    except ValueError as e:
        return None, f"invalid JSON body: {e}"
    if not isinstance(body, dict):
        return None, "body must be a JSON object"
    name = body.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        return None, "'name' must be a non-empty string without '/'"
    for key in ("env", "user_options", "misc", "certs", "internal_trust_bundles", "authentication"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            return None, f"{key!r} must be a JSON object"
    env = body.get("env") or {}
    for k, v in env.items():
        if not k or "=" in k or "\0" in k:
            return None, f"invalid env name {k!r}"
        if isinstance(v, dict | list) or v is None or "\0" in str(v):
            return None, f"env {k!r} must be a string"
    start_id = (body.get("user_options") or {}).get("start_id")
    if isinstance(start_id, bool) or not isinstance(start_id, str | int) or start_id == "":
        return None, "'user_options.start_id' must be a non-empty string"
    if "/" in str(start_id):
        return None, "'user_options.start_id' must not contain '/'"
    return body, ""


class Handler(web.RequestHandler):
    """Base: records requests, checks auth, applies faults, answers JSON."""

    def initialize(self, outpost: ReferenceOutpost) -> None:
        self.outpost = outpost
        self.crash = False
        self._closed = asyncio.Event()

    def prepare(self) -> None:
        try:
            body = json.loads(self.request.body) if self.request.body else None
        except ValueError:
            body = None
        headers = {}
        for k, v in self.request.headers.get_all():
            if k.lower() == "authorization":
                v = "Basic ***" if v.lower().startswith("basic ") else "***"
            headers[k] = v
        query = {
            k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()
        }
        self.outpost.requests.append(
            RecordedRequest(
                self.request.method or "",
                self.request.path,
                query,
                headers,
                body,
                time.time(),
                peer=_peer(self.request),
            )
        )

    def on_connection_close(self) -> None:
        self._closed.set()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def compute_etag(self) -> None:
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(json.dumps({"error": self._reason}))

    def send_json(self, status: int, data: Any) -> None:
        self.send(status, json.dumps(data).encode())

    def send(self, status: int, payload: bytes) -> None:
        if self._finished:
            return
        if self._closed.is_set():  # the client went away: nothing to answer
            self.drop()
            return
        self.set_status(status, reason="Spawner Error" if status == 419 else None)
        self.finish(payload)

    def drop(self) -> None:
        """Close the connection without an answer."""
        stream = self.request.connection.stream  # type: ignore[attr-defined]
        stream.close()
        self._finished = True  # nothing may be written any more

    @property
    def collect_logs(self) -> bool:
        return self.get_query_argument("collect_logs", "false").lower() in ("true", "1", "yes")

    @property
    def is_async(self) -> bool:
        return self.request.headers.get("execution-type", "").lower() == "async"

    def authenticate(self) -> str | None:
        """The Hub name from valid Basic credentials; else answers 401 and returns None."""
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                decoded = ""
            hub, sep, password = decoded.partition(":")
            expected = self.outpost.credentials.get(hub)
            if (
                sep
                and expected is not None
                and hmac.compare_digest(password.encode(), expected.encode())
            ):
                return hub
        self.set_header("WWW-Authenticate", 'Basic realm="outpost"')
        self.send_json(401, {"error": "unauthorized"})
        return None

    async def wait_abortable(self, seconds: float) -> bool:
        """Sleep; returns False early if the client goes away or the Outpost stops."""
        waiters = [
            asyncio.ensure_future(self._closed.wait()),
            asyncio.ensure_future(self.outpost._stopping.wait()),
        ]
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not done

    async def apply_fault(self, action: str, name: str | None = None) -> bool:
        """Apply the matching fault, if any; True if the request is answered by it."""
        fault = self.outpost.faults.take(action, name)
        if fault is None:
            return False
        log.info(
            "outpost: injecting fault %s for %s %s",
            fault.kind,
            self.request.method,
            self.request.path,
        )
        if fault.kind == "delay":
            if not await self.wait_abortable(fault.delay):
                self.drop()
                return True
            return False
        if fault.kind == "crash":
            self.crash = True
            return False
        if fault.kind == "hang":
            await self.wait_abortable(self.outpost.hang_timeout)
            self.drop()
        elif fault.kind == "drop":
            self.drop()
        else:
            self.send(*fault.response())
        return True

    async def begin(self, action: str, name: str | None = None, auth: bool = True) -> str | None:
        """Authenticate and apply faults; the Hub name if the request goes on."""
        hub = self.authenticate() if auth else ""
        if hub is None or await self.apply_fault(action, name):
            return None
        return hub


class PingHandler(Handler):
    async def get(self) -> None:
        if await self.begin("other", auth=False) is not None:
            self.send_json(200, {"status": "ok"})


class FlavorsHandler(Handler):
    """``GET /flavors/`` (the Hub's) and ``POST /userflavors`` (a user's, the body
    being the user's authentication), with ``current``."""

    async def get(self) -> None:
        if await self.begin("other") is not None:
            flavors = self.outpost.flavors
            self.send_json(
                200, flavors.with_current(flavors.flavors, self.outpost.services.values())
            )

    async def post(self) -> None:
        hub = await self.begin("other")
        if hub is None:
            return
        authentication = _json_or_none(self.request.body)
        flavors = self.outpost.flavors
        own = flavors.for_user(hub, authentication)
        self.send_json(200, flavors.with_current(own, self.outpost.services.values()))


class CreditsHandler(Handler):
    """``GET /credits/`` (the Hub's) and ``POST /usercredits`` (a user's)."""

    async def get(self) -> None:
        if await self.begin("other") is not None:
            self.send_json(200, self.outpost.flavors.credits)

    async def post(self) -> None:
        hub = await self.begin("other")
        if hub is None:
            return
        flavors = self.outpost.flavors
        if flavors.user_credits is None:
            self.send_json(200, flavors.credits)
            return
        self.send_json(200, flavors.user_credits(hub, _json_or_none(self.request.body)))


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def list_entry(record: ServiceRecord, extras: bool) -> dict[str, Any]:
    """A service in ``GET /services/``: the JupyterHub Outpost's fields, plus
    ``service`` and ``status`` with ``extras`` (this reference Outpost's extension)."""
    try:
        user_id: int | None = int((record.body.get("env") or {}).get("JUPYTERHUB_USER_ID", ""))
    except (TypeError, ValueError, AttributeError):
        user_id = None
    pending = record.start_task is not None and not record.start_task.done()
    entry: dict[str, Any] = {
        "name": record.name,
        "start_id": record.start_id,
        "start_date": _iso(record.created),
        "end_date": _iso(record.end_date),
        "jupyterhub": record.hub,
        "jupyterhub_userid": user_id,
        "last_update": _iso(record.created),
        "state_stored": record.ready,
        "start_pending": pending,
        "stop_pending": False,
    }
    if extras:
        entry["service"] = record.address if record.ready else ""
        entry["status"] = record.status
    return entry


class ServicesHandler(Handler):
    async def get(self) -> None:
        hub = await self.begin("list")
        if hub is None:
            return
        extras = self.outpost.list_extras
        self.send_json(
            200,
            [
                list_entry(r, extras)
                for (h, _), r in list(self.outpost.services.items())
                if h == hub
            ],
        )

    async def post(self) -> None:
        hub = self.authenticate()
        if hub is None:
            return
        body, error = _validate_start_body(self.request.body)
        if body is None:
            self.send_json(400, {"error": error})
            return
        if await self.apply_fault("start", body["name"]):
            return
        if self.outpost._stopping.is_set():
            self.send_json(503, {"error": "the outpost is stopping"})
            return
        try:
            self.outpost.command_for(body)
        except ValueError as e:
            self.send_json(419, spawner_error(str(e), cls="ValueError"))
            return
        refusal = self.outpost.flavors.refusal(hub, body, self.outpost.services.values())
        if refusal is not None:
            self.send_json(419, spawner_error(refusal, cls="Exception", module="builtins"))
            return
        record = await self.outpost._start_service(hub, body, crash=self.crash)
        if self.is_async:
            record.async_start = True
            self.outpost.push_flavors(record)
            self.send_json(202, {"service": ""})
            return
        task = record.start_task
        assert task is not None
        await asyncio.wait({task}, timeout=self.outpost.start_delay + 60)
        if not task.done():
            self.send_json(419, spawner_error("start timed out", cls="TimeoutError"))
        elif task.cancelled():
            self.send_json(
                419,
                spawner_error(
                    "start cancelled by a stop request", cls="CancelledError", module="asyncio"
                ),
            )
        elif record.error:
            self.send_json(419, record.error)
        else:
            self.outpost.push_flavors(record)
            self.send_json(200, {"service": record.address})


class ServiceHandler(Handler):
    def _find(self, hub: str, name: str, start_id: str) -> ServiceRecord | None:
        record = self.outpost.services.get((hub, name))
        if record is None or record.start_id != start_id:
            self.send_json(404, {"error": f"no service {name!r} with start_id {start_id!r}"})
            return None
        return record

    async def get(self, name: str, start_id: str) -> None:
        hub = await self.begin("poll", name)
        record = self._find(hub, name, start_id) if hub is not None else None
        if record is not None:
            logs = await self.outpost._collect_logs(record) if self.collect_logs else []
            self.send_json(200, {"status": record.status, "logs": logs})

    async def delete(self, name: str, start_id: str) -> None:
        hub = await self.begin("stop", name)
        record = self._find(hub, name, start_id) if hub is not None else None
        if record is None:
            return
        self.outpost.services.pop((hub, name), None)
        self.outpost.push_flavors(record)  # counting the stopped one out
        if self.is_async:
            self.outpost._spawn(self.outpost._teardown(record), f"stop-{name}")
            self.send_json(202, {})
            return
        await self.outpost._teardown(record)
        logs = await self.outpost._collect_logs(record) if self.collect_logs else []
        self.send_json(200, {"logs": logs})


class FaultsHandler(Handler):
    def _answer(self) -> None:
        self.send_json(200, {"faults": [f.to_dict() for f in self.outpost.faults]})

    def get(self) -> None:
        if self.authenticate() is not None:
            self._answer()

    def post(self) -> None:
        if self.authenticate() is None:
            return
        try:
            data = json.loads(self.request.body or b"null")
            faults = [Fault.from_dict(d) for d in (data if isinstance(data, list) else [data])]
        except (ValueError, TypeError) as e:
            self.send_json(400, {"error": f"invalid faults: {e}"})
            return
        for fault in faults:
            self.outpost.faults.add(fault)
        self._answer()

    def delete(self) -> None:
        if self.authenticate() is not None:
            self.outpost.faults.clear()
            self._answer()


class NotFoundHandler(Handler):
    def prepare(self) -> None:
        super().prepare()
        self.send_json(404, {"error": "not found"})


def log_request(handler: web.RequestHandler) -> None:
    log.debug(
        "outpost: %s %s %s %.1fms",
        handler.get_status(),
        handler.request.method,
        handler.request.path,
        1000 * handler.request.request_time(),
    )
