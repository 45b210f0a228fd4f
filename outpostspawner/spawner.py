"""OutpostSpawner: starts, polls and stops servers through a JupyterHub Outpost."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from copy import deepcopy
from typing import Any

from jupyterhub.utils import url_escape_path
from tornado.httpclient import HTTPRequest
from tornado.httputil import url_concat
from traitlets import default

from . import hooks
from .errors import HookError, OutpostError, OutpostSpawnError
from .flavors import form as flavor_form
from .flavors import spawn as flavor_checks
from .flavors.service import authentication
from .forward import ForwardBaseSpawner
from .names import expand_template
from .outpost import Response, get_client
from .traits_outpost import OutpostTraits

_MAX_LOG_LINES = 200


def _env_values(v: Any) -> dict[str, str]:
    d = hooks.is_dict(v)
    out = {}
    for key, val in d.items():
        if not isinstance(key, str):
            raise TypeError("environment variable names must be strings")
        if isinstance(val, str | int | float | bool):
            out[key] = str(val)
        else:
            raise TypeError(
                f"environment variable {key} must be a string, not {type(val).__name__}"
            )
    return out


def _logs(v: Any) -> list[str]:
    if not isinstance(v, list):
        return []
    return [str(line) for line in v[-_MAX_LOG_LINES:]]


def check_poll_answer(resp: Response) -> dict:
    """A poll answer's body: an object whose ``status`` is ``None`` (running) or an
    exit code.

    :raises OutpostError: for anything else
    """
    body = resp.body
    if not isinstance(body, dict):
        problem = "is not a JSON object"
    elif "status" not in body:
        problem = "has no status"
    else:
        status = body["status"]
        if status is None or type(status) is int:
            return body
        problem = f"status has type {type(status).__name__}"
    raise OutpostError(
        "poll",
        resp.code,
        "The Outpost sent an invalid poll answer.",
        log_message=f"poll answer {problem}",
    )


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _outpost_applies(spawner: Any, user_options: dict) -> None:
    """``apply_user_options`` of an OutpostSpawner: nothing to do on the Hub."""


class OutpostSpawner(OutpostTraits, ForwardBaseSpawner):
    """A JupyterHub spawner that starts servers on remote systems through a
    JupyterHub Outpost service."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.exit_code: int | None = None
        self.logs: list[str] = []
        self._request: tuple[str, dict, dict] | None = None  # url, headers, kwargs
        self._url_cache: tuple[tuple[str, str], str] | None = None
        self._client = None
        self._poll_request: tuple | None = None
        self._remote_started = False
        flavor_checks.begin(self)

    @default("apply_user_options")
    def _sent_to_the_outpost(self):
        # the start body carries user_options to the Outpost, whose spawner applies them
        return _outpost_applies

    @default("options_form")
    def _flavors_form(self):
        return flavor_form.options_form

    async def run_options_from_form(self, form_data: dict) -> dict:
        """``options_from_form`` on the form's fields, plus the flavor chosen in
        the flavors form (``system``, ``flavor``) when the form has one."""
        form_data, choice = flavor_form.take_choice(self, form_data)
        options = super().run_options_from_form(form_data)
        if inspect.isawaitable(options):
            options = await options
        return {**options, **choice} if choice else options

    @property
    def outpost_name(self) -> str:
        """The name this server has at the Outpost (``outpost_name_template``)."""
        return expand_template(self.outpost_name_template, self)

    # --- state -------------------------------------------------------------------

    def get_state(self) -> dict:
        state = super().get_state()
        if self.start_id:
            state["exit_code"] = self.exit_code
            state["logs"] = self.logs[-_MAX_LOG_LINES:]
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if self.start_id:
            code = state.get("exit_code")
            self.exit_code = code if isinstance(code, int) else None
            self.logs = _logs(state.get("logs"))
            self._remote_started = True

    def clear_state(self) -> None:
        super().clear_state()
        self._request = None
        self._remote_started = False

    # --- requests ----------------------------------------------------------------

    def _http_client(self):
        client = self._client
        if client is None or client._loop is not asyncio.get_running_loop():
            client = self._client = get_client(
                start_limit=self.start_concurrency_limit,
                request_limit=self.request_concurrency_limit,
                defaults=self.http_client_defaults,
            )
        return client

    async def _request_settings(self) -> tuple[str, dict, dict]:
        """URL, headers and request kwargs: resolved once per start and kept."""
        if self._request is None:
            uo = self.user_options or {}
            url = await hooks.resolve(
                self, "request_url", user_options=uo, check=hooks.is_nonempty_str
            )
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            headers.update(
                await hooks.resolve(
                    self, "request_headers", user_options=uo, check=hooks.is_str_dict
                )
            )
            kwargs = await hooks.resolve(
                self, "request_kwargs", user_options=uo, check=hooks.is_dict
            )
            self._request = (url.rstrip("/"), headers, kwargs)
        return self._request

    def _make_request(
        self, hook: str, url: str, method: str, headers: dict, kwargs: dict, body: str | None = None
    ) -> HTTPRequest:
        try:
            return HTTPRequest(url, method=method, headers=dict(headers), body=body, **kwargs)
        except TypeError as e:
            raise HookError(
                hook, f"The server could not be started: the '{hook}' setting is invalid ({e})."
            ) from None

    async def _service_url(self, collect_logs: bool = False) -> tuple[str, dict, dict]:
        base, headers, kwargs = await self._request_settings()
        # polls run every few seconds for every server: build the URL once per start
        key = (base, self.start_id)
        if self._url_cache is None or self._url_cache[0] != key:
            name = url_escape_path(self.outpost_name)
            self._url_cache = (key, f"{base}/{name}/{self.start_id}")
        url = self._url_cache[1]
        if collect_logs:
            url = url_concat(url, {"collect_logs": "true"})
        return url, headers, kwargs

    # --- start ---------------------------------------------------------------------

    async def _start(self) -> str:
        self.exit_code = None
        self.logs = []
        self._request = None
        uo = self.user_options or {}
        if self.check_allowed:
            await hooks.resolve(self, "check_allowed", user_options=uo, show_errors=True)
        await flavor_checks.check_start(self, uo)
        flavor_checks.usage_changed(self)
        body = await self._start_body(uo)
        url, headers, kwargs = await self._request_settings()
        if self.request_kwargs_start is not None:
            kwargs = await hooks.resolve(
                self, "request_kwargs_start", user_options=uo, check=hooks.is_dict
            )
        kwargs = dict(kwargs)
        # never cut a start short before JupyterHub's own start_timeout would
        kwargs.setdefault("request_timeout", float(self.start_timeout))
        headers = dict(headers)
        start_async = await hooks.resolve(self, "start_async", check=hooks.is_bool)
        if start_async:
            headers["execution-type"] = "async"
        req = self._make_request(
            "request_kwargs_start" if self.request_kwargs_start is not None else "request_kwargs",
            url,
            "POST",
            headers,
            kwargs,
            json.dumps(body),
        )
        self._event("Sending the start request to the Outpost.", 20)
        self._remote_started = True
        try:
            resp = await self._http_client().fetch("start", req, logger=self.log)
        except OutpostError as e:
            if self.failed_spawn_request_hook:
                try:
                    await hooks.resolve(self, "failed_spawn_request_hook", exception=e)
                except Exception:
                    self.log.exception("%s: failed_spawn_request_hook failed", self._log_name)
            if e.code in (400, 401, 403):
                self._remote_started = False  # refused: nothing was created
            raise
        answer = resp.body if isinstance(resp.body, dict) else None
        service = answer.get("service", "") if answer is not None else None
        if not isinstance(service, str):
            raise OutpostError(
                "start",
                resp.code,
                "The Outpost sent an invalid answer to the start request.",
                log_message=f"start answer without a 'service' string: {type(resp.body).__name__}",
            )
        if self.post_spawn_request_hook:
            await hooks.resolve(self, "post_spawn_request_hook", resp_json=answer)
        self._event(
            "The Outpost accepted the start." if not service else "The Outpost started the server.",
            40,
        )
        return service

    async def _start_body(self, uo: dict) -> dict:
        api_url = await self._resolve_public_api_url()
        env = self._remote_env(api_url)
        env.update(flavor_checks.start_env(self, uo, api_url))
        env.update(
            await hooks.resolve(
                self, "custom_env", user_options=uo, jupyterhub_api_url=api_url, check=_env_values
            )
        )
        env["JUPYTERHUB_USER_ID"] = str(self.user.id)

        user_options = deepcopy(uo)
        user_options.update(
            await hooks.resolve(
                self, "custom_user_options", user_options=deepcopy(uo), check=hooks.is_dict
            )
        )
        user_options["start_id"] = self.start_id

        misc: dict[str, Any] = {}
        if not self.custom_misc_disable_default:
            misc = {
                "dns_name_template": self.dns_name_template,
                "pod_name_template": self.svc_name_template,
                "internal_ssl": bool(self.internal_ssl),
                "ip": "0.0.0.0",
                "port": self.port,
                "services_enabled": True,
                "extra_labels": await hooks.resolve(
                    self, "extra_labels", user_options=uo, check=hooks.is_str_dict
                ),
            }
        misc.update(await hooks.resolve(self, "custom_misc", user_options=uo, check=hooks.is_dict))

        interval = await hooks.resolve(
            self, "custom_poll_interval", user_options=uo, check=hooks.is_nonneg_number
        )
        self._poll_interval_ms = interval

        body: dict[str, Any] = {
            "name": self.outpost_name,
            "env": env,
            "user_options": user_options,
            "misc": misc,
            "certs": {},
            "internal_trust_bundles": {},
        }
        if self.internal_ssl:
            await self._add_certs(body)
        auth_state = await self.user.get_auth_state()
        if flavor_checks.sends_authentication(self, uo, auth_state):
            body["authentication"] = authentication(self.user, auth_state)
        return body

    async def _add_certs(self, body: dict) -> None:
        paths = self.cert_paths or {}
        for key in ("keyfile", "certfile", "cafile"):
            if paths.get(key):
                body["certs"][key] = await asyncio.to_thread(_read_text, paths[key])
        for name, path in (self.internal_trust_bundles or {}).items():
            body["internal_trust_bundles"][name] = await asyncio.to_thread(_read_text, path)
        extra = await hooks.resolve(self, "additional_cafile", check=hooks.is_optional_str)
        if extra:
            if "-----BEGIN" not in extra and await asyncio.to_thread(os.path.isfile, extra):
                extra = await asyncio.to_thread(_read_text, extra)
            if "cafile" in body["certs"]:
                body["certs"]["cafile"] = body["certs"]["cafile"].rstrip("\n") + "\n" + extra
            bundles = body["internal_trust_bundles"]
            if "hub-ca" in bundles:
                bundles["hub-ca"] = bundles["hub-ca"].rstrip("\n") + "\n" + extra

    # --- waiting for an async start ------------------------------------------------

    def _pending_check_interval(self) -> float:
        return max(0.05, float(self.async_start_poll_interval))

    async def _check_pending_start(self) -> str | None:
        try:
            body = await self._get_status()
        except OutpostError as e:
            if e.code == 404 and not self.request_404_poll_keep_running:
                raise OutpostSpawnError(
                    "The Outpost no longer knows this server: its start failed.",
                    log_message=e.log_message,
                ) from None
            if e.code == 404 or self.request_failed_poll_keep_running:
                self.log.warning("%s: poll during start failed: %s", self._log_name, e.log_message)
                return None
            raise
        if body["status"] is not None:
            self.exit_code = body["status"]
            raise OutpostSpawnError(
                f"The server stopped during its start (exit code {body['status']}).",
            )
        service = body.get("service")
        return service if isinstance(service, str) and service else None

    # --- poll ----------------------------------------------------------------------

    async def _get_status(self) -> dict:
        url, headers, kwargs = await self._service_url(self.collect_logs_polling)
        # the same request every few seconds while the server runs: built once
        cached = self._poll_request
        if cached is not None and cached[0] is self._request and cached[1] == url:
            req = cached[2]
        else:
            req = self._make_request("request_kwargs", url, "GET", headers, kwargs)
            self._poll_request = (self._request, url, req)
        resp = await self._http_client().fetch("poll", req, logger=self.log, reuse=True)
        body = check_poll_answer(resp)
        if self.collect_logs_polling and "logs" in body:
            self.logs = _logs(body["logs"])
        return body

    async def _poll(self) -> int | None:
        try:
            body = await self._get_status()
        except OutpostError as e:
            if e.code == 404:
                keep = self.request_404_poll_keep_running
            else:
                keep = self.request_failed_poll_keep_running
            self.log.warning(
                "%s: poll failed (%s), treating the server as %s",
                self._log_name,
                e.log_message,
                "running" if keep else "stopped",
            )
            if keep:
                return None
            self.exit_code = 0 if self.exit_code is None else self.exit_code
            return self.exit_code
        except OutpostSpawnError as e:  # a hook failed: keep the server, tell the admin
            self.log.error("%s: poll could not be sent: %s", self._log_name, e.log_message)
            return None
        status = body["status"]
        if status is not None:
            self.exit_code = status
        return status

    # --- stop ----------------------------------------------------------------------

    async def _stop(self, *, now: bool = False, failed_start: bool = False) -> None:
        if not self._remote_started:
            return
        self._remote_started = False
        try:
            await self._send_stop()
        finally:
            flavor_checks.usage_changed(self)

    async def _send_stop(self) -> None:
        try:
            url, headers, kwargs = await self._service_url(self.collect_logs)
            headers = dict(headers)
            if await hooks.resolve(self, "stop_async", check=hooks.is_bool):
                headers["execution-type"] = "async"
            req = self._make_request("request_kwargs", url, "DELETE", headers, kwargs)
            resp = await self._http_client().fetch("stop", req, logger=self.log)
        except OutpostError as e:
            if e.code == 404:
                self.log.info("%s: already gone at the Outpost", self._log_name)
            else:
                self.log.warning("%s: stop request failed: %s", self._log_name, e.log_message)
            return
        except OutpostSpawnError as e:
            self.log.error("%s: stop request could not be sent: %s", self._log_name, e.log_message)
            return
        if isinstance(resp.body, dict) and "logs" in resp.body:
            self.logs = _logs(resp.body["logs"])
        if self.exit_code is None:
            self.exit_code = 0
