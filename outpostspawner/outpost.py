"""HTTP client for the Outpost REST API.

One client per event loop, shared by every spawner: libcurl keeps connections to
each Outpost alive between requests, and two semaphores bound how many requests
run at once, starts apart from polls and stops so that slow starts never delay
the polls of running servers. (The polls themselves come in batches from one
timer for all servers: :mod:`outpostspawner.polling`.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from . import metrics
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
        try:
            from tornado.curl_httpclient import CurlAsyncHTTPClient

            impl: type[AsyncHTTPClient] = CurlAsyncHTTPClient
        except ImportError:  # pragma: no cover - pycurl is a dependency
            impl = AsyncHTTPClient
            _log.warning("pycurl is not installed: Outpost connections are not kept alive")
        self.http = impl(
            force_instance=True,
            max_clients=start_limit + request_limit,
            defaults=dict(defaults or {}),
        )

    def close(self) -> None:
        self.http.close()

    async def fetch(
        self, action: str, request: HTTPRequest, *, logger: logging.Logger | None = None
    ) -> Response:
        """Send a request and map the answer.

        :param action: ``start``, ``poll``, ``stop`` ... (for logs, errors and metrics)
        :param logger: where to log (the spawner passes JupyterHub's logger)
        :returns: the answer of a 2xx with its JSON body (``None`` for an empty body)
        :raises OutpostError: for any other answer, a connection failure or a
            timeout, with ``code`` the HTTP status (599 without an answer) and a
            message fit to show to users
        """
        log = logger or _log
        slots = self._start_slots if action == "start" else self._request_slots
        async with slots:
            tic = time.perf_counter()
            try:
                resp: HTTPResponse = await self.http.fetch(request, raise_error=False)
            except HTTPClientError as e:  # raised only for 599-like failures
                resp = e.response  # type: ignore[assignment]
                code, error = getattr(e, "code", 599), e
            except OSError as e:
                resp, code, error = None, 599, e  # type: ignore[assignment]
            else:
                code, error = resp.code, resp.error
            elapsed = time.perf_counter() - tic
        for observer in observers:
            try:
                observer(action, code, elapsed)
            except Exception:
                _log.exception("Outpost request observer failed")
        if 200 <= code < 300 and not debug_enabled(log):
            # the common case, e.g. hundreds of polls a second: nothing more to log
            return _parse_success(action, request, resp, code)
        url = _safe_url(request.url)
        log.debug("%s %s %s -> %s in %.3fs", action, request.method, url, code, elapsed)

        if resp is None or code == 599:
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
            return _parse_success(action, request, resp, code)
        text = resp.body.decode("utf8", "replace") if resp.body else ""
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
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


def _parse_success(action: str, request: HTTPRequest, resp: HTTPResponse, code: int) -> Response:
    text = resp.body.decode("utf8", "replace") if resp.body else ""
    try:
        return Response(code, json.loads(text) if text.strip() else None)
    except ValueError:
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
