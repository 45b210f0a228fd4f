"""ForwardBaseSpawner: lifecycle, events, state and the places where forwarding
and Kubernetes Services plug in.

A subclass implements the remote side with four coroutines: :meth:`_start`
(returns the remote ``service`` answer, ``""`` when the address comes later),
:meth:`_poll`, :meth:`_stop` and :meth:`_check_pending_start`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import urlparse

from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port, url_escape_path, url_path_join
from tornado import web
from tornado.httpclient import HTTPRequest
from tornado.ioloop import PeriodicCallback

from . import hooks, metrics, polling
from .addresses import ServiceAddress, parse_service_address
from .errors import OutpostSpawnError
from .events import EventLog, make_event, sanitize_event
from .k8s import KubernetesServiceMixin
from .names import expand_template
from .seams import ForwardSeams
from .ssh import SSHForwardMixin
from .traits_forward import ForwardTraits


def _is_host_port(v: Any) -> tuple[str, int]:
    if isinstance(v, list | tuple) and len(v) == 2 and isinstance(v[0], str):
        return v[0], hooks.is_port(v[1])
    raise TypeError("expected (host, port)")


def _pre_poll_value(v: Any) -> Any:
    if v is None or isinstance(v, bool | int):
        return v
    raise TypeError(f"expected True, False, None or an exit code, got {type(v).__name__}")


class ForwardBaseSpawner(
    ForwardTraits, SSHForwardMixin, KubernetesServiceMixin, ForwardSeams, Spawner
):
    """A spawner whose servers run elsewhere and are made reachable by forwarding.

    The start has three outcomes (see the architecture docs): the remote address
    is used directly, an SSH forward (and a Kubernetes Service) is made to it, or
    the address arrives later and one of the two happens then.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # everything per instance: nothing mutable is shared between spawners
        self.start_id: str = ""
        self.port_forward_info: dict = {}
        self.events = EventLog(self.events_max)
        self._cleaned = False  # local and remote resources are gone
        self._cleanup_task: asyncio.Task | None = None
        self._address: asyncio.Future | None = None
        self._remote_failure: asyncio.Future | None = None
        self._tunnel_requested = False
        self._restored = False  # state loaded from the database, not yet polled
        self._poll_interval_ms: float = 0
        #: data of extensions (e.g. the job API) kept in the state across stops;
        #: gone only with the server itself
        self.extra_state: dict = {}

    # --- names ---------------------------------------------------------------

    @property
    def svc_name(self) -> str:
        """The Kubernetes Service name of this server (``svc_name_template``)."""
        return expand_template(self.svc_name_template, self)

    @property
    def dns_name(self) -> str:
        return self.dns_name_template.format(namespace=self.namespace, name=self.svc_name)

    @property
    def _proto(self) -> str:
        return "https" if self.internal_ssl else "http"

    # --- events --------------------------------------------------------------

    async def add_event(self, event: dict) -> None:
        """Add a progress event from the remote side (after ``filter_events``) to
        the pending spawn. Its ``html_message`` is escaped; ``filter_events`` may
        return HTML of the administrator's making.

        :raises ValueError: when the event (or the filter's result) is malformed
        """
        event = sanitize_event(event, trusted=False)
        if self.filter_events is not None:
            event = await hooks.resolve(self, "filter_events", event=event, check=hooks.is_dict)
            if not event:
                return
            event = sanitize_event(event)
        self.events.append(event)

    def _event(self, message: str, progress: int | None = None, *, failed=False, details=""):
        self.events.append(make_event(message, progress=progress, failed=failed, details=details))

    async def _generate_progress(self):
        if not self._spawn_pending:
            self.log.warning("Spawn not pending, can't generate progress for %s", self._log_name)
            return
        show = await hooks.resolve(self, "show_first_default_event", check=hooks.is_bool)
        if show:
            yield {"progress": 0, "message": "Server requested"}
        async for event in self.progress():
            yield event

    async def progress(self):
        async for event in self.events.follow(self._spawn_future):
            yield event

    # --- state ---------------------------------------------------------------

    def get_state(self) -> dict:
        state = super().get_state()
        if self.extra_state:
            state["extra_state"] = self.extra_state
        if self.start_id:
            state["start_id"] = self.start_id
            state["port"] = self.port
            state["port_forward_info"] = dict(self.port_forward_info)
            state["events"] = self.events.to_list()
            if self._poll_interval_ms:
                state["poll_interval_ms"] = self._poll_interval_ms
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        extra = state.get("extra_state")
        self.extra_state = dict(extra) if isinstance(extra, dict) else {}
        if not state.get("start_id"):
            return
        self.start_id = str(state["start_id"])
        self.port = int(state.get("port") or 0)
        self.port_forward_info = dict(state.get("port_forward_info") or {})
        if self.port_forward_info.get("forward"):
            metrics.forward_opened(self.start_id)
        self.events = EventLog(self.events_max, state.get("events") or [])
        self._poll_interval_ms = float(state.get("poll_interval_ms") or 0)
        self._restored = True

    def clear_state(self) -> None:
        super().clear_state()
        self.start_id = ""
        self.port_forward_info = {}
        self.port = 0
        self._cleaned = False
        self._cleanup_task = None
        self._restored = False

    def start_polling(self) -> None:
        """Poll every ``custom_poll_interval`` milliseconds when one was resolved
        for this start, else every ``poll_interval`` seconds; ``poll_jitter``
        applies. All servers share one timer that spreads their polls over the
        interval (see :mod:`outpostspawner.polling` and ``poll_batch_window``)."""
        if self._poll_interval_ms:
            interval = self._poll_interval_ms / 1000
        else:
            interval = float(self.poll_interval)
        if interval <= 0:
            self.log.debug("%s: not polling", self._log_name)
            return
        self.stop_polling()
        try:
            scheduler = polling.get_scheduler(self.poll_batch_window)
        except RuntimeError:  # no running event loop: tornado's timer
            self._poll_callback = PeriodicCallback(
                self.poll_and_notify, 1e3 * interval, jitter=self.poll_jitter
            )
            self._poll_callback.start()
            return
        self._poll_callback = scheduler.add(
            self.poll_and_notify, interval, self.poll_jitter, key=f"{self.user.id}/{self.name}"
        )

    # --- environment -----------------------------------------------------------

    def public_api_url_default(self) -> str:
        if self.hub_connect_url is not None:
            return url_path_join(self.hub_connect_url, urlparse(self.hub.api_url).path)
        return self.hub.api_url

    async def _resolve_public_api_url(self) -> str:
        url = await hooks.resolve(self, "public_api_url", check=hooks.is_optional_str)
        return (url or self.public_api_url_default()).rstrip("/")

    def _remote_env(self, api_url: str) -> dict[str, str]:
        """The environment for the remote server.

        Only ``JUPYTERHUB_*`` / ``JUPYTER_*`` variables of :meth:`get_env`, plus the
        administrator's ``c.Spawner.environment`` entries: nothing else of the
        Hub's own process environment.
        """
        full = self.get_env()
        env = {k: str(v) for k, v in full.items() if k.startswith(("JUPYTERHUB_", "JUPYTER_"))}
        for key in self.environment:
            if key in full:
                env[key] = str(full[key])
        user = url_escape_path(self.user.name)
        suffix = f"{user}/{url_escape_path(self.name)}" if self.name else user
        env["JUPYTERHUB_API_URL"] = api_url
        env["JUPYTERHUB_ACTIVITY_URL"] = f"{api_url}/users/{user}/activity"
        env["JUPYTERHUB_EVENTS_URL"] = f"{api_url}/users/progress/events/{suffix}"
        env["JUPYTERHUB_SETUPTUNNEL_URL"] = f"{api_url}/users/setuptunnel/{suffix}"
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or url_path_join(
            self.user.url, url_escape_path(self.name), "/"
        )
        env["JUPYTERHUB_SERVICE_URL"] = f"{self._proto}://0.0.0.0:{self.port}{prefix}"
        env["JUPYTERHUB_USER_ID"] = str(self.user.id)
        return env

    async def create_certs(self):
        names = await hooks.resolve(self, "ssl_alt_names", check=hooks.is_str_list)
        configured = self.ssl_alt_names
        self.ssl_alt_names = names
        try:
            return await super().create_certs()
        finally:
            self.ssl_alt_names = configured

    # --- requests for hooks ----------------------------------------------------

    async def send_request(self, req: HTTPRequest, action: str, raise_exception: bool = True):
        """Send a request with the shared client, e.g. from ``ssh_custom_forward``.

        :returns: the JSON answer (``None`` for an empty body; ``{}`` on failure
            when ``raise_exception`` is false)
        """
        try:
            resp = await self._http_client().fetch(action, req, logger=self.log)
        except OutpostSpawnError:
            if raise_exception:
                raise
            self.log.warning("%s: %s request failed", self._log_name, action, exc_info=True)
            return {}
        return resp.body

    def _http_client(self):
        raise NotImplementedError("a subclass provides the HTTP client")

    # --- lifecycle -------------------------------------------------------------

    async def start(self):
        self.start_id = uuid.uuid4().hex
        self.events.clear()  # the progress page may already be following it
        self.port_forward_info = {}
        self._cleaned = False
        self._cleanup_task = None
        # open for the whole start: a remote side may report the address before the
        # Outpost's answer to the start request has arrived here
        self._address = asyncio.get_running_loop().create_future()
        self._restored = False
        self._remote_failure = asyncio.get_running_loop().create_future()
        steps = asyncio.ensure_future(self._start_steps())
        try:
            try:
                await asyncio.wait(
                    {steps, self._remote_failure}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not steps.done():
                    steps.cancel()
                    await asyncio.wait({steps})
            if steps.cancelled() and self._remote_failure.done():
                raise self._remote_failure.result()
            return steps.result()
        except asyncio.CancelledError:
            self.log.info("%s: start cancelled; removing what it created", self._log_name)
            try:
                event = await hooks.resolve(self, "cancelling_event", check=hooks.is_dict)
                if event:
                    self.events.append(sanitize_event(event))
            except (OutpostSpawnError, ValueError):
                self.log.warning("%s: invalid cancelling_event", self._log_name, exc_info=True)
            await self._cleanup_failed_start()
            raise
        except Exception as e:
            error = self._spawn_error(e)
            self._event(f"Start failed: {error}", 100, failed=True)
            await self._cleanup_failed_start()
            if error is e:
                raise
            raise error from e
        finally:
            self._remote_failure = None
            self._address = None  # addresses reported later are refused

    async def _start_steps(self) -> str:
        port = await hooks.resolve(
            self, "custom_port", user_options=self.user_options or {}, check=hooks.is_port
        )
        self.port = port or random_port()
        await self._open_remote_forward()
        answer = await self._start()
        if self.update_start_response:
            answer = await hooks.resolve(
                self, "update_start_response", start_response=answer, check=hooks.is_str
            )
        url = await self._connect(answer)
        if self.update_expected_path:
            url = await hooks.resolve(
                self, "update_expected_path", expected_path=url, check=hooks.is_str
            )
        self.log.info("%s: expecting the server at %s", self._log_name, url)
        return url

    def fail_pending(self, reason: str) -> bool:
        """Fail the pending start with ``reason`` (plain text, shown escaped), e.g.
        when the remote side reports that the server cannot start.

        :returns: whether a start was pending
        """
        if self._remote_failure is None or self._remote_failure.done():
            return False
        self._remote_failure.set_result(
            OutpostSpawnError(f"The server failed to start: {reason}", reason="remote")
        )
        return True

    def _spawn_error(self, e: Exception) -> Exception:
        if isinstance(e, OutpostSpawnError):
            self.log.error("%s: start failed: %s", self._log_name, e.log_message)
            return e
        if isinstance(e, web.HTTPError):
            return e
        self.log.error("%s: start failed", self._log_name, exc_info=e)
        return OutpostSpawnError(
            f"The server could not be started: unexpected error ({type(e).__name__}). "
            "Details are in the JupyterHub log.",
            reason="error",
            log_message=repr(e),
        )

    async def _connect(self, answer: str) -> str:
        """Turn the start answer into the URL JupyterHub connects to."""
        tunnel = await hooks.resolve(self, "ssh_during_startup", check=hooks.is_bool)
        if answer:
            address = self._parse_address(answer)
        else:
            self._event("Waiting for the server to report its address.", 50)
            address, tunnel = await self._wait_for_address(tunnel)
        if tunnel:
            host, port = await self._open_tunnel(address)
            return f"{self._proto}://{ServiceAddress(host, port).netloc}"
        self.port = address.port
        return f"{address.scheme or self._proto}://{address.netloc}"

    def _parse_address(self, value: Any) -> ServiceAddress:
        try:
            return parse_service_address(value)
        except ValueError as e:
            raise OutpostSpawnError(
                f"The Outpost reported an invalid server address: {e}", reason="outpost"
            ) from None

    async def _wait_for_address(self, tunnel: bool) -> tuple[ServiceAddress, bool]:
        """Wait until :meth:`receive_service_address` is called or
        :meth:`_check_pending_start` finds the address; JupyterHub's
        ``start_timeout`` bounds the wait."""
        if self._address is None:  # a subclass's start without ForwardBaseSpawner.start
            self._address = asyncio.get_running_loop().create_future()
        while not self._address.done():
            found = await self._check_pending_start()
            if found and not self._address.done():
                self._address.set_result((self._parse_address(found), tunnel))
                break
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._address), timeout=self._pending_check_interval()
                )
            except asyncio.TimeoutError:
                pass
        address, requested = self._address.result()
        return address, tunnel if requested is None else requested

    def receive_service_address(self, value: str, *, tunnel: bool | None = None) -> None:
        """Report the address of a server whose start is waiting for it (the
        setuptunnel callback calls this).

        :param value: ``host:port``, validated here
        :param tunnel: whether to forward to it; ``None``: as ``ssh_during_startup``
        :raises ValueError: if the address is invalid or no start is waiting
        """
        address = parse_service_address(value)
        if self._address is None or self._address.done():
            raise ValueError("no start is waiting for an address")
        self._address.set_result((address, tunnel))

    def _pending_check_interval(self) -> float:
        return 1.0

    async def _check_pending_start(self) -> str | None:
        """Ask the remote side whether a delayed start has an address yet.

        :returns: the address, or ``None`` when not yet known
        :raises OutpostSpawnError: when the start failed remotely
        """
        return None

    async def _cleanup_failed_start(self) -> None:
        """Remove everything a failed or cancelled start created."""
        await self._run_cleanup(failed_start=True)

    async def _run_cleanup(self, *, failed_start: bool) -> None:
        """Tear down once (a concurrent :meth:`stop` waits for the same task);
        survives a second cancellation."""
        if self._cleanup_task is None:
            self._cleanup_task = asyncio.ensure_future(self._teardown(failed_start=failed_start))
        try:
            await asyncio.shield(self._cleanup_task)
        except Exception:
            what = "the failed start" if failed_start else "the stopped server"
            self.log.exception("%s: cleanup of %s failed", self._log_name, what)

    async def poll(self):
        if self._cleaned or not self.start_id:
            return 0
        if self.pre_poll_hook:
            value = await hooks.resolve(self, "pre_poll_hook", check=_pre_poll_value)
        else:
            value = True
        if value is True:
            status = await self._poll()
        elif value is False:
            status = None
        else:
            status = value
        if self._restored and status is None:
            self._restored = False
            if not await self._restore_forward():
                status = 0
        if status is not None:
            await self._remove_stopped(status)
        return status

    async def _remove_stopped(self, status: int) -> None:
        """The poll found the server gone. JupyterHub then ends it without calling
        :meth:`stop` (``User.stop`` stops only servers whose poll says running), and
        clears the state: remove the server at the remote side, the Service, the
        forward and the remote forward now, or they are left behind. A pending
        start cleans up after itself; a concurrent :meth:`stop` waits for this."""
        if self._remote_failure is not None or self._cleanup_task is not None:
            return
        self.log.info(
            "%s: the server is gone (exit status %s); removing what its start created",
            self._log_name,
            status,
        )
        await self._run_cleanup(failed_start=False)

    async def stop(self, now=False):
        if self._cleanup_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._cleanup_task), timeout=30)
            except Exception:  # includes TimeoutError
                self.log.warning("%s: cleanup of the failed start did not finish", self._log_name)
        if self._cleaned:
            return
        if self.pre_stop_hook:
            try:
                await hooks.resolve(self, "pre_stop_hook")
            except Exception:
                self.log.exception("%s: pre_stop_hook failed; stopping anyway", self._log_name)
        await self._teardown(failed_start=False, now=now)

    async def _teardown(self, *, failed_start: bool, now: bool = False) -> None:
        """Stop the remote server and remove the tunnel, Service and remote forward.
        Each step runs even if an earlier one failed."""
        try:
            await self._stop(now=now, failed_start=failed_start)
        except Exception:
            self.log.exception("%s: stopping the remote server failed", self._log_name)
        await self._close_tunnel()
        await self._close_remote_forward()
        self._cleaned = True

    # --- forwarding: where the tunnel and Kubernetes pieces plug in -------------

    def _forward_info(self, address: ServiceAddress) -> dict:
        return {
            "service": address.netloc,
            "hostname": address.host,
            "target_port": address.port,
            "local_port": self.port,
            "svc_name": self.svc_name,
            "namespace": self.namespace,
        }

    async def _open_tunnel(self, address: ServiceAddress) -> tuple[str, int]:
        """Forward ``self.port`` to ``address`` and make it reachable for the proxy.

        :returns: the host and port the proxy connects to
        """
        info = self._forward_info(address)
        if "remote" in self.port_forward_info:
            info["remote"] = self.port_forward_info["remote"]
        self.port_forward_info = info
        self._event("Creating the port forward to the server.", 70)
        if self.ssh_custom_forward:
            await hooks.resolve(self, "ssh_custom_forward", port_forward_info=info)
        else:
            await self._forward_add(info)
        info["forward"] = True
        metrics.forward_opened(self.start_id)
        if self.ssh_custom_svc:
            host, port = await hooks.resolve(
                self, "ssh_custom_svc", port_forward_info=info, check=_is_host_port
            )
            info["svc"] = True
        elif await hooks.resolve(self, "svc_create", check=hooks.is_bool):
            host, port = await self._service_create(info)
            info["svc"] = True
        else:
            host, port = self.forward_connect_host, self.port
        return host, port

    async def _close_tunnel(self) -> None:
        # the flags live in port_forward_info, so they survive a Hub restart
        info = self.port_forward_info
        if info.get("svc"):
            try:
                if self.ssh_custom_svc_remove:
                    await hooks.resolve(self, "ssh_custom_svc_remove", port_forward_info=info)
                elif not self.ssh_custom_svc:
                    await self._service_delete(info)
                info["svc"] = False
            except Exception:
                self.log.exception("%s: removing the Service failed", self._log_name)
        if info.get("forward"):
            try:
                if self.ssh_custom_forward_remove:
                    await hooks.resolve(self, "ssh_custom_forward_remove", port_forward_info=info)
                elif not self.ssh_custom_forward:
                    await self._forward_remove(info)
                info["forward"] = False
                metrics.forward_closed(self.start_id)
            except Exception:
                self.log.exception("%s: removing the port forward failed", self._log_name)

    async def _restore_forward(self) -> bool:
        """After a Hub restart: rebuild the forward and the remote forward of a running
        server when ``ssh_recreate_at_start`` says so (the Service is kept, not
        recreated). Returns False when they could not be rebuilt."""
        info = self.port_forward_info
        remote = info.get("remote")
        if not info.get("forward") and not remote:
            return True
        if not await hooks.resolve(self, "ssh_recreate_at_start", check=hooks.is_bool):
            return True
        try:
            if info.get("forward"):
                if self.ssh_custom_forward:
                    await hooks.resolve(self, "ssh_custom_forward", port_forward_info=info)
                else:
                    await self._forward_add(info)
            if remote:
                if self.ssh_custom_forward_remote:
                    await hooks.resolve(
                        self, "ssh_custom_forward_remote", remote_port_forward_info=remote
                    )
                else:
                    await self._remote_forward_add(remote)
        except Exception:
            self.log.exception("%s: could not rebuild the tunnel", self._log_name)
            metrics.TUNNEL_REBUILDS.labels(reason="hub_restart", outcome="failed").inc()
            return False
        metrics.TUNNEL_REBUILDS.labels(reason="hub_restart", outcome="ok").inc()
        return True

    async def _open_remote_forward(self) -> None:
        info = {"port": self.port}
        if not await hooks.resolve(
            self, "ssh_create_remote_forward", remote_port_forward_info=info, check=hooks.is_bool
        ):
            return
        if self.ssh_custom_forward_remote:
            await hooks.resolve(self, "ssh_custom_forward_remote", remote_port_forward_info=info)
        else:
            await self._remote_forward_add(info)
        self.port_forward_info["remote"] = info

    async def _close_remote_forward(self) -> None:
        info = self.port_forward_info.get("remote")
        if not info:
            return
        try:
            if self.ssh_custom_forward_remote_remove:
                await hooks.resolve(
                    self, "ssh_custom_forward_remote_remove", remote_port_forward_info=info
                )
            elif not self.ssh_custom_forward_remote:
                await self._remote_forward_remove(info)
            self.port_forward_info.pop("remote", None)
        except Exception:
            self.log.exception("%s: removing the remote forward failed", self._log_name)

    # --- subclass API ----------------------------------------------------------

    async def _start(self) -> str:
        raise NotImplementedError

    async def _poll(self) -> int | None:
        raise NotImplementedError

    async def _stop(self, *, now: bool = False, failed_start: bool = False) -> None:
        raise NotImplementedError
