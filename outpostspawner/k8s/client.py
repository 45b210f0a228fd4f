"""An async client for the Kubernetes Services of forwarded servers.

One ``kubernetes_asyncio`` ``ApiClient`` per event loop and API configuration
is shared by every spawner (:func:`shared_api_client`). The configuration is
loaded once per process: the in-cluster service account when
``KUBERNETES_SERVICE_HOST`` is set, else the kubeconfig file (``KUBECONFIG`` or
``~/.kube/config``, read in a worker thread). An explicit API URL
(``k8s_api_host``) is used as is, without credentials, for ``kubectl proxy`` and
tests.

:class:`ServiceClient` wraps the calls the spawner needs: create (replacing a
left-over Service), read, list and delete. Every call has a timeout, and is
retried with exponential backoff on 5xx and 429 answers, timeouts and
connection errors, a bounded number of times.

``kubernetes_asyncio`` is imported on first use, so importing the package
stays fast.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import random
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger(__name__)

#: longest pause between two attempts
MAX_BACKOFF = 10.0
#: statuses worth another attempt (besides timeouts and connection errors)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


async def _pause(seconds: float) -> None:
    """The pause between attempts (replaced in tests)."""
    await asyncio.sleep(seconds)


class KubernetesError(Exception):
    """A Kubernetes API call failed.

    :param action: what was attempted, e.g. ``"create Service jupyter-alice"``
    :param status: the HTTP status, ``0`` when no answer arrived
    :param message: the API's message (from its ``Status`` answer) or the error
    """

    def __init__(self, action: str, status: int, message: str):
        self.action = action
        self.status = status
        self.message = message
        super().__init__(
            f"{action}: HTTP {status}: {message}" if status else f"{action}: {message}"
        )


class ServiceConflictError(KubernetesError):
    """A Service of the same name exists and was not made by this Hub."""


@dataclass(frozen=True)
class ClientSettings:
    """How to reach the API and how patiently.

    :param host: API URL used without credentials; ``""``: in-cluster or kubeconfig
    :param request_timeout: seconds for one request
    :param max_attempts: attempts per call, at least 1
    :param retry_delay: seconds before the second attempt; doubles for each
        further one, at most :data:`MAX_BACKOFF`, with up to 25% random jitter
    """

    host: str = ""
    request_timeout: float = 10.0
    max_attempts: int = 5
    retry_delay: float = 0.5


# --- configuration and the shared ApiClient ---------------------------------

_configs: dict[str, Any] = {}
_config_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Task]] = (
    weakref.WeakKeyDictionary()
)
_closers: set[asyncio.Task] = set()


def _kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or os.path.join("~", ".kube", "config")


def _load_kubeconfig_sync(configuration: Any, path: str) -> None:
    """Load a kubeconfig file into ``configuration``; runs in a worker thread,
    with its own event loop (kubernetes_asyncio's loader is a coroutine that
    reads files and may run credential plugins)."""
    from kubernetes_asyncio import config

    asyncio.run(
        config.load_kube_config(
            config_file=os.path.expanduser(path),
            client_configuration=configuration,
            persist_config=False,
        )
    )


async def load_configuration(host: str = "") -> Any:
    """The ``kubernetes_asyncio`` ``Configuration`` for ``host``, loaded once per
    process.

    :param host: an API URL to use without credentials; ``""`` loads the
        in-cluster configuration when ``KUBERNETES_SERVICE_HOST`` is set, else the
        kubeconfig file
    :raises KubernetesError: when no configuration can be loaded
    """
    if host in _configs:
        return _configs[host]
    lock = _config_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        if host not in _configs:
            _configs[host] = await _load(host)
    return _configs[host]


async def _load(host: str) -> Any:
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException

    configuration = Configuration()
    if host:
        configuration.host = host.rstrip("/")
        source = "k8s_api_host, no credentials"
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        from kubernetes_asyncio.config import load_incluster_config

        try:
            # reads two small files once; a refresh hook re-reads the token later
            load_incluster_config(client_configuration=configuration)
        except ConfigException as e:
            raise KubernetesError("load the in-cluster configuration", 0, str(e)) from None
        source = "in-cluster service account"
    else:
        path = _kubeconfig_path()
        try:
            await asyncio.to_thread(_load_kubeconfig_sync, configuration, path)
        except (ConfigException, OSError, ValueError, TypeError, KeyError) as e:
            raise KubernetesError(
                "load the kubeconfig file",
                0,
                f"{type(e).__name__}: {e} (set KUBECONFIG, or run in a cluster)",
            ) from None
        source = f"kubeconfig {path}"
    _log.info("Kubernetes API at %s (%s)", configuration.host, source)
    return configuration


async def shared_api_client(host: str = "") -> Any:
    """The ``ApiClient`` of the running event loop for ``host``.

    Made on first use. A background task closes it when the task is cancelled,
    which happens when JupyterHub (or a test's event loop) shuts down; see also
    :func:`close_clients`.

    :raises KubernetesError: when no configuration can be loaded
    """
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    task = per_loop.get(host)
    if task is None or (task.done() and (task.cancelled() or task.exception())):
        task = per_loop[host] = loop.create_task(_make_client(host))
    # a cancelled caller does not cancel the making for the others
    return await asyncio.shield(task)


async def _make_client(host: str) -> Any:
    from kubernetes_asyncio.client import ApiClient

    client = ApiClient(configuration=await load_configuration(host))
    closer = asyncio.create_task(_close_on_cancel(client), name="outpostspawner-k8s-client")
    _closers.add(closer)
    closer.add_done_callback(_closers.discard)
    return client


async def _close_on_cancel(client: Any) -> None:
    try:
        # holds the client for the loop's lifetime; ends only by cancellation
        while True:  # noqa: ASYNC110 - not polling for a condition
            await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    finally:
        await client.close()


async def close_clients() -> None:
    """Close the shared clients of the running event loop (tests call this)."""
    loop = asyncio.get_running_loop()
    _clients.pop(loop, None)
    tasks = [t for t in _closers if t.get_loop() is loop]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=10)


def forget_configurations() -> None:
    """Drop the loaded configurations, e.g. after ``KUBECONFIG`` changed."""
    _configs.clear()


# --- calls -------------------------------------------------------------------


def _api_message(e: Any) -> str:
    """The ``message`` of a Kubernetes ``Status`` answer, else the reason."""
    body = getattr(e, "body", None)
    if body:
        try:
            data = json.loads(body)
        except (TypeError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])[:500]
    return str(getattr(e, "reason", "") or type(e).__name__)


class ServiceClient:
    """Create, read, list and delete Services.

    Answers are plain dicts in the API's JSON form.

    :param api_client: a ``kubernetes_asyncio`` ``ApiClient``
        (see :func:`shared_api_client`)
    :param settings: timeouts and retries
    :param log: where retries are logged
    """

    def __init__(self, api_client: Any, settings: ClientSettings, log: Any = None):
        from kubernetes_asyncio.client import CoreV1Api

        self.api_client = api_client
        self.core = CoreV1Api(api_client)
        self.settings = settings
        self.log = log or _log

    @classmethod
    async def shared(cls, settings: ClientSettings, log: Any = None) -> ServiceClient:
        """A client on the shared ``ApiClient`` of the running loop."""
        return cls(await shared_api_client(settings.host), settings, log)

    def _to_dict(self, obj: Any) -> dict:
        return self.api_client.sanitize_for_serialization(obj)

    async def _call(self, action: str, method: Callable[..., Awaitable], *args, **kwargs) -> Any:
        """Call an API method with a timeout, retrying transient failures.

        :raises KubernetesError: with the status of the last answer
        """
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        s = self.settings
        attempts = max(1, s.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.wait_for(
                    method(*args, _request_timeout=s.request_timeout, **kwargs),
                    timeout=s.request_timeout + 1,
                )
            except ApiException as e:
                status = int(e.status or 0)
                error = KubernetesError(action, status, _api_message(e))
                if status not in _RETRY_STATUS:
                    raise error from None
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as e:
                error = KubernetesError(action, 0, f"{type(e).__name__}: {e}".rstrip(": "))
            if attempt == attempts:
                raise error
            delay = min(s.retry_delay * 2 ** (attempt - 1), MAX_BACKOFF)
            delay *= 1 + random.random() / 4  # noqa: S311 - jitter, not security
            self.log.warning(
                "Kubernetes API: %s failed (%s), attempt %d of %d; retrying in %.1fs",
                action,
                error.status or error.message,
                attempt,
                attempts,
                delay,
            )
            await _pause(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(self, namespace: str, name: str) -> dict | None:
        """The Service, or ``None`` if it does not exist."""
        try:
            svc = await self._call(
                f"read Service {namespace}/{name}",
                self.core.read_namespaced_service,
                name,
                namespace,
            )
        except KubernetesError as e:
            if e.status == 404:
                return None
            raise
        return self._to_dict(svc)

    async def list(
        self, namespace: str, labels: Mapping[str, str], *, page_size: int = 500
    ) -> list[dict]:
        """Every Service in ``namespace`` that has all of ``labels``, read in
        pages of ``page_size``."""
        from .objects import label_selector

        selector = label_selector(labels)
        items: list[dict] = []
        token = None
        for _ in range(10000):  # bounded
            kwargs: dict[str, Any] = {"label_selector": selector, "limit": page_size}
            if token:
                kwargs["_continue"] = token
            page = await self._call(
                f"list Services in {namespace}",
                self.core.list_namespaced_service,
                namespace,
                **kwargs,
            )
            items.extend(self._to_dict(item) for item in page.items or [])
            token = page.metadata._continue if page.metadata else None
            if not token:
                break
        return items

    async def delete(self, namespace: str, name: str, *, resource_version: str = "") -> bool:
        """Delete a Service.

        :param resource_version: delete only if the Service is still at this version
        :returns: ``False`` if it did not exist
        :raises KubernetesError: status 409 if ``resource_version`` no longer matches
        """
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self._call(
                f"delete Service {namespace}/{name}",
                self.core.delete_namespaced_service,
                name,
                namespace,
                body=body,
            )
        except KubernetesError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def wait_deleted(self, namespace: str, name: str, timeout: float) -> None:
        """Wait until the Service is gone.

        :raises KubernetesError: when it still exists after ``timeout`` seconds
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.1
        while await self.read(namespace, name) is not None:
            if loop.time() + delay > deadline:
                raise KubernetesError(
                    f"delete Service {namespace}/{name}", 0, f"still there after {timeout:g}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def create(
        self, namespace: str, body: Mapping[str, Any], *, owner: Mapping[str, str]
    ) -> dict:
        """Create a Service, replacing an existing one of the same name that
        has all the ``owner`` labels.

        On a conflict the existing Service is replaced; if the replacement is
        refused (for example because of an immutable field), it is deleted, and
        created again once it is gone.

        :param owner: labels that mark a Service as this Hub's own
        :raises ServiceConflictError: when a Service of the name exists that is not ours
        :raises KubernetesError: for any other failure
        """
        name = body["metadata"]["name"]
        action = f"create Service {namespace}/{name}"
        try:
            return self._to_dict(
                await self._call(action, self.core.create_namespaced_service, namespace, body)
            )
        except KubernetesError as e:
            if e.status != 409:
                raise
        for _ in range(3):  # the existing Service may change or vanish meanwhile
            existing = await self.read(namespace, name)
            if existing is None:
                try:
                    return self._to_dict(
                        await self._call(
                            action, self.core.create_namespaced_service, namespace, body
                        )
                    )
                except KubernetesError as e:
                    if e.status != 409:
                        raise
                    continue
            self._check_owner(existing, owner, action)
            replacement = _replacement(body, existing)
            try:
                return self._to_dict(
                    await self._call(
                        f"replace Service {namespace}/{name}",
                        self.core.replace_namespaced_service,
                        name,
                        namespace,
                        replacement,
                    )
                )
            except KubernetesError as e:
                if e.status == 409:
                    continue
                if e.status != 422:
                    raise
                self.log.info("Kubernetes API: %s refused (%s); recreating", action, e.message)
                break
        else:
            raise KubernetesError(action, 409, "the existing Service kept changing")
        # ours (checked above), and the API refused to replace it
        await self.delete(namespace, name)
        await self.wait_deleted(namespace, name, self.settings.request_timeout * 3)
        return self._to_dict(
            await self._call(action, self.core.create_namespaced_service, namespace, body)
        )

    @staticmethod
    def _check_owner(existing: dict, owner: Mapping[str, str], action: str) -> None:
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in owner.items()):
            raise ServiceConflictError(
                action, 409, "a Service of this name exists and was not made by this Hub"
            )


def _replacement(body: Mapping[str, Any], existing: dict) -> dict:
    """``body`` as an update of ``existing``: its resourceVersion and cluster IPs."""
    new = copy.deepcopy(dict(body))
    new["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
    old_spec = existing.get("spec") or {}
    for key in ("clusterIP", "clusterIPs"):
        if key in old_spec and key not in new["spec"]:
            new["spec"][key] = old_spec[key]
    return new
