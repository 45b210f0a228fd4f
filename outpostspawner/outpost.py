"""HTTP client for the Outpost REST API.

One client per event loop, shared by every spawner: libcurl keeps connections to
each Outpost alive between requests, and two semaphores bound how many requests
run at once, starts apart from polls and stops so that slow starts never delay
the polls of running servers. A request the caller sends again and again (a
server's poll) is set up once on a libcurl handle of its own
(:mod:`outpostspawner.curl`). The polls themselves are spread over each interval
by one timer for all servers: :mod:`outpostspawner.polling`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

from . import metrics
from .curl import CurlDriver, PreparedRequest, prepare
from .errors import OutpostError

_log = logging.getLogger(__name__)

#: callables ``(action, code, seconds)`` told about every finished request
observers: list[Callable[[str, int, float], None]] = [metrics.observe_request]

_MAX_TEXT = 1000


#: how long the answer of :func:`debug_enabled` is kept (seconds)
_DEBUG_CHECK_EVERY = 5.0
_debug_checked: dict[int, tuple[float, bool]] = {}


def debug_enabled(log: logging.Logger | logging.LoggerAdapter) -> bool:
    """Whether a debug record sent to ``log`` would be written anywhere.

    ``Logger.isEnabledFor`` is not enough: traitlets applications such as
    JupyterHub set their logger to DEBUG and filter in the handler, so a debug
    call builds a record that no handler writes. This looks at the handlers too;
    the answer is kept for a few seconds, so that hundreds of requests a second
    do not walk the logger tree each.
    """
    logger = log.logger if isinstance(log, logging.LoggerAdapter) else log
    now = time.monotonic()
    checked = _debug_checked.get(id(logger))
    if checked is not None and checked[0] > now:
        return checked[1]
    enabled = False
    if logger.isEnabledFor(logging.DEBUG):
        current: logging.Logger | None = logger
        while current is not None:
            if any(h.level <= logging.DEBUG for h in current.handlers):
                enabled = True
                break
            if not current.propagate:
                break
            current = current.parent
    _debug_checked[id(logger)] = (now + _DEBUG_CHECK_EVERY, enabled)
    return enabled


class _RedactCurlLog(logging.Filter):
    """Keep credentials out of tornado's curl log.

    At debug level tornado's curl client logs every request's URL and libcurl's
    verbose output, request headers included: the Hub's ``Authorization`` for the
    Outpost would reach any handler that takes ``tornado.curl_httpclient``'s debug
    records. Header values of credentials, user info and queries of URLs are
    replaced."""

    _HEADER = re.compile(
        r"^([<>]\s*(?:authorization|proxy-authorization|cookie|set-cookie)\s*:).*$",
        re.IGNORECASE | re.MULTILINE,
    )
    _USERINFO = re.compile(r"(https?://)[^/\s@]*@", re.IGNORECASE)
    _QUERY = re.compile(r"(https?://[^\s?#]*)[?#]\S*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = self._HEADER.sub(r"\1 [hidden]", text)
        clean = self._QUERY.sub(r"\1?[hidden]", self._USERINFO.sub(r"\1", clean))
        if clean != text:
            record.msg, record.args = clean, None
        return True


_curl_log = logging.getLogger("tornado.curl_httpclient")
if not any(isinstance(f, _RedactCurlLog) for f in _curl_log.filters):
    _curl_log.addFilter(_RedactCurlLog())


def _safe_url(url: str) -> str:
    """The URL without user info or query, for logs."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def remote_error_text(body: Any) -> tuple[str, str]:
    """Format an Outpost 419 body as ``module class: args``.

    :returns: ``(text, traceback)``, both plain text; the traceback is for logs
    """
    if not isinstance(body, dict):
        return "the remote spawner failed", ""
    module = body.get("module")
    cls = body.get("class")
    args = body.get("args")
    if not isinstance(args, list) or not args:
        args = ["unknown error"]
    head = " ".join(str(p) for p in (module, cls) if isinstance(p, str) and p)
    text = ", ".join(str(a) for a in args)
    tb = body.get("traceback")
    return _short(f"{head}: {text}" if head else text), tb if isinstance(tb, str) else ""


@dataclass
class Response:
    """A successful Outpost answer."""

    code: int
    body: Any


class OutpostClient:
    """Sends requests to Outposts.

    :param start_limit: starts in flight at once
    :param request_limit: other requests (poll, stop, list) in flight at once
    :param defaults: keyword arguments for every :class:`~tornado.httpclient.HTTPRequest`
    """

    def __init__(
        self,
        *,
        start_limit: int,
        request_limit: int,
        defaults: dict | None = None,
    ):
        self._loop = asyncio.get_running_loop()
        self.start_limit = start_limit
        self.request_limit = request_limit
        self._start_slots = asyncio.Semaphore(start_limit)
        self._request_slots = asyncio.Semaphore(request_limit)
        self.http = CurlAsyncHTTPClient(
            force_instance=True,
            max_clients=start_limit + request_limit,
            defaults=dict(defaults or {}),
        )
        self._driver = CurlDriver(self._loop, maxconnects=start_limit + request_limit)
        #: requests sent with ``reuse``: their prepared handle (None: not reusable)
        self._prepared: weakref.WeakKeyDictionary[HTTPRequest, PreparedRequest | None] = (
            weakref.WeakKeyDictionary()
        )

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
        for prepared in list(self._prepared.values()):
            if prepared is not None:
                prepared.close()
        self._prepared.clear()
        self.http.close()

    def _prepared_for(self, request: HTTPRequest) -> PreparedRequest | None:
        try:
            return self._prepared[request]
        except KeyError:
            pass
        try:
            prepared = prepare(self.http, request)  # type: ignore[arg-type]
        except Exception:
            # tornado answers such a request (a CR in a header ...) with a 599: let it
            prepared = None
        self._prepared[request] = prepared
        return prepared

    async def _send(
        self, request: HTTPRequest, reuse: bool
    ) -> tuple[int, bytes | None, BaseException | None]:
        """``(status, body, error)``; the body is ``None`` when no answer came."""
        prepared = self._prepared_for(request) if reuse else None
        if prepared is not None and not prepared.busy:
            try:
                code, body = await self._driver.send(prepared, self.http.max_body_size)
            except CurlError as e:
                return 599, None, e
            return code, body, None
        try:
            resp: HTTPResponse = await self.http.fetch(request, raise_error=False)
        except HTTPClientError as e:  # raised only for 599-like failures
            return getattr(e, "code", 599), None, e
        except OSError as e:
            return 599, None, e
        return resp.code, resp.body, resp.error

    async def fetch(
        self,
        action: str,
        request: HTTPRequest,
        *,
        logger: logging.Logger | None = None,
        reuse: bool = False,
    ) -> Response:
        """Send a request and map the answer.

        :param action: ``start``, ``poll``, ``stop`` ... (for logs, errors and metrics)
        :param logger: where to log (the spawner passes JupyterHub's logger)
        :param reuse: ``request`` will be sent again as it is (a poll): keep it set
            up on a handle of its own; do not change it after the first send
        :returns: the answer of a 2xx with its JSON body (``None`` for an empty body)
        :raises OutpostError: for any other answer, a connection failure or a
            timeout, with ``code`` the HTTP status (599 without an answer) and a
            message fit to show to users
        """
        log = logger or _log
        slots = self._start_slots if action == "start" else self._request_slots
        async with slots:
            tic = time.perf_counter()
            code, body, error = await self._send(request, reuse)
            elapsed = time.perf_counter() - tic
        for observer in observers:
            try:
                observer(action, code, elapsed)
            except Exception:
                _log.exception("Outpost request observer failed")
        if 200 <= code < 300 and not debug_enabled(log):
            # the common case, e.g. hundreds of polls a second: nothing more to log
            return _parse_success(action, request, body, code)
        url = _safe_url(request.url)
        log.debug("%s %s %s -> %s in %.3fs", action, request.method, url, code, elapsed)

        if body is None or code == 599:
            reason = str(error) if error else "no answer"
            # the details (libcurl's wording, the Outpost's address) go to the log only
            lowered = reason.lower()
            if (
                getattr(error, "errno", None) == 28
                or "timeout" in lowered
                or "timed out" in lowered
            ):
                what = "it did not answer in time"
            else:
                what = "the connection failed"
            raise OutpostError(
                action,
                599,
                f"The Outpost could not be reached ({action}): {what}.",
                log_message=f"{action} {request.method} {url} failed: {reason}",
            )
        if 200 <= code < 300:
            return _parse_success(action, request, body, code)
        text = body.decode("utf8", "replace") if body else ""
        try:
            body = json.loads(text) if text.strip() else None
        except (ValueError, RecursionError):
            body = _INVALID
        if code == 419:
            remote, tb = remote_error_text(body)
            log.error(
                "%s %s %s: remote spawner failed: %s\n%s", action, request.method, url, remote, tb
            )
            raise OutpostError(
                action, 419, remote, remote=remote, log_message=f"{action} {url}: 419 {remote}"
            )
        if code == 401:
            message = "The Outpost refused the Hub's credentials."
        elif code == 404:
            message = "The Outpost does not know this server."
        else:
            message = f"The Outpost answered {code} ({action})."
        detail = _short(text) if body is _INVALID or body is None else _short(json.dumps(body))
        raise OutpostError(
            action, code, message, log_message=f"{action} {request.method} {url}: {code} {detail}"
        )


_INVALID = object()


def _parse_success(action: str, request: HTTPRequest, body: bytes, code: int) -> Response:
    text = body.decode("utf8", "replace") if body else ""
    try:
        return Response(code, json.loads(text) if text.strip() else None)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise OutpostError(
            action,
            code,
            f"The Outpost sent an invalid answer ({action}): not JSON.",
            log_message=(
                f"{action} {request.method} {_safe_url(request.url)}: {code} with a non-JSON body"
            ),
        ) from None


_clients: dict[tuple, OutpostClient] = {}


def get_client(
    *,
    start_limit: int,
    request_limit: int,
    defaults: dict | None = None,
) -> OutpostClient:
    """The shared client of the running event loop for these settings."""
    loop = asyncio.get_running_loop()
    key = (
        id(loop),
        start_limit,
        request_limit,
        json.dumps(defaults or {}, sort_keys=True, default=repr),
    )
    client = _clients.get(key)
    if client is None:
        for k in [k for k, c in _clients.items() if c._loop.is_closed()]:
            _clients.pop(k).close()
        client = OutpostClient(
            start_limit=start_limit,
            request_limit=request_limit,
            defaults=defaults,
        )
        _clients[key] = client
    return client
