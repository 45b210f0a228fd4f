"""The Kubernetes Service of a forwarded server, as a spawner mixin.

:class:`KubernetesServiceMixin` implements the ``_service_create`` and
``_service_delete`` seams of :class:`~outpostspawner.ForwardBaseSpawner` and
removes Services that an earlier Hub run left behind.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

from traitlets import Bool, Dict, Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from .. import hooks
from ..errors import OutpostSpawnError
from .client import ClientSettings, KubernetesError, ServiceClient, ServiceConflictError
from .objects import (
    SERVERNAME_ANNOTATION,
    USERID_ANNOTATION,
    USERNAME_ANNOTATION,
    dns_label,
    label_value,
    make_service,
    owner_selector,
    service_annotations,
    service_labels,
    service_name,
)

#: the selector used when the Hub's own Service cannot be read
FALLBACK_SELECTOR = {"component": "hub"}

# (api host, namespace, hub Service name) -> selector, read once per process
_selectors: dict[tuple[str, str, str], dict[str, str]] = {}
# one orphan sweep per event loop (one per Hub process) and Hub identity
_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, asyncio.Task]] = (
    weakref.WeakKeyDictionary()
)


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


class KubernetesServiceMixin(LoggingConfigurable):
    """Creates a ClusterIP Service in front of each server's port forward, so
    that the proxy reaches the forward on the pod that holds it (the Hub pod)."""

    svc_selector = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={},
        help="""
        Labels of the pod that holds the port forwards, the selector of each
        server's Kubernetes Service.

        Empty (the default): the selector of the Hub's own Service
        (``svc_hub_service_name`` in ``namespace``), which in zero-to-jupyterhub
        selects the Hub pod. It is read once; if it cannot be read,
        ``{"component": "hub"}`` is used and a warning logged. Set it when the
        forwards run in another pod, e.g. a standalone forwarder.

        Example::

            c.OutpostSpawner.svc_selector = {"app": "outpost-forwarder"}
        """,
    ).tag(config=True)

    svc_hub_service_name = Unicode(
        "hub",
        help="""
        Name of the Hub's own Kubernetes Service, in ``namespace``, whose selector
        becomes the default ``svc_selector``.
        """,
    ).tag(config=True)

    svc_hub_id = Unicode(
        help="""
        Identity of this Hub, the ``app.kubernetes.io/instance`` label of the
        Services it makes. Only Services with this label (and
        ``app.kubernetes.io/managed-by: outpostspawner``) are replaced on a name
        conflict or removed as orphans, so Hubs sharing a namespace need
        different values. Default: the ``HELM_RELEASE_NAME`` environment variable
        (set by zero-to-jupyterhub), else ``jupyterhub``.
        """,
    ).tag(config=True)

    @default("svc_hub_id")
    def _svc_hub_id_default(self) -> str:
        return os.environ.get("HELM_RELEASE_NAME") or "jupyterhub"

    svc_remove_orphans = Bool(
        help="""
        Whether Services that an earlier Hub run left behind are removed: once per
        Hub process, ``svc_orphan_delay`` seconds after the first spawner is
        created, the Services of this Hub (see ``svc_hub_id``) are listed, and those
        whose server is neither running nor starting in the Hub database are
        deleted. A Service that changed since it was listed is kept.

        Default: ``True`` when running in a Kubernetes pod, else ``False``.
        """,
    ).tag(config=True)

    @default("svc_remove_orphans")
    def _svc_remove_orphans_default(self) -> bool:
        return _in_cluster()

    svc_orphan_delay = Float(
        60.0,
        help="""
        Seconds between the first spawner's creation and the search for orphaned
        Services (see ``svc_remove_orphans``), so that the Hub has finished
        starting.
        """,
    ).tag(config=True)

    k8s_api_host = Unicode(
        "",
        help="""
        URL of a Kubernetes API to use as is, without credentials, e.g.
        ``http://127.0.0.1:8001`` for ``kubectl proxy`` or a test server.

        Empty (the default): the in-cluster service account when running in a pod
        (``KUBERNETES_SERVICE_HOST`` is set), else the kubeconfig file
        (``KUBECONFIG``, default ``~/.kube/config``).
        """,
    ).tag(config=True)

    k8s_request_timeout = Float(
        10.0,
        help="Seconds one request to the Kubernetes API may take.",
    ).tag(config=True)

    k8s_max_attempts = Integer(
        5,
        help="""
        How often a Kubernetes API call is tried when it times out, cannot
        connect, or is answered with 429 or 5xx.
        """,
    ).tag(config=True)

    k8s_retry_delay = Float(
        0.5,
        help="""
        Seconds before the second attempt of a failed Kubernetes API call; the
        pause doubles for each further attempt, up to 10 seconds.
        """,
    ).tag(config=True)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._schedule_orphan_sweep()

    # --- client ------------------------------------------------------------------

    def _k8s_settings(self) -> ClientSettings:
        return ClientSettings(
            host=self.k8s_api_host,
            request_timeout=self.k8s_request_timeout,
            max_attempts=self.k8s_max_attempts,
            retry_delay=self.k8s_retry_delay,
        )

    async def _k8s_client(self) -> ServiceClient:
        return await ServiceClient.shared(self._k8s_settings(), self.log)

    async def _service_selector(self, client: ServiceClient) -> dict[str, str]:
        """``svc_selector``, else the Hub Service's selector (read once)."""
        if self.svc_selector:
            return dict(self.svc_selector)
        key = (self.k8s_api_host, self.namespace, self.svc_hub_service_name)
        if key in _selectors:
            return dict(_selectors[key])
        where = f"{self.namespace}/{self.svc_hub_service_name}"
        try:
            hub = await client.read(self.namespace, self.svc_hub_service_name)
        except KubernetesError as e:
            if e.status not in (401, 403):
                # may work next time: not kept
                self.log.warning(
                    "Could not read the Hub's Service %s (%s); Services select %s this time",
                    where,
                    e,
                    FALLBACK_SELECTOR,
                )
                return dict(FALLBACK_SELECTOR)
            hub = None
        selector = ((hub or {}).get("spec") or {}).get("selector") or {}
        if not selector:
            self.log.warning(
                "The Hub's Service %s was not found or has no selector; Services select %s. "
                "Set svc_selector to the labels of the Hub pod.",
                where,
                FALLBACK_SELECTOR,
            )
            selector = dict(FALLBACK_SELECTOR)
        _selectors[key] = dict(selector)
        return dict(selector)

    # --- the seams -----------------------------------------------------------------

    async def _service_create(self, info: dict) -> tuple[str, int]:
        """Create the server's Service in front of its forward (``info["local_port"]``).

        Records the Service's name and namespace in ``info`` and sets
        ``info["svc"]`` before the request, so that a failed start removes a
        Service even when the answer was lost.

        :returns: the Service's DNS name (``dns_name_template``) and port
        :raises OutpostSpawnError: when the Service cannot be made
        """
        name = service_name(self)
        namespace = self.namespace
        port = hooks.is_port(info["local_port"])
        info["svc_name"] = name
        info["namespace"] = namespace
        extra = await hooks.resolve(
            self, "extra_labels", user_options=self.user_options or {}, check=hooks.is_str_dict
        )
        try:
            labels = service_labels(
                username=self.user.name,
                servername=self.name or "",
                hub_id=self.svc_hub_id,
                extra=extra,
            )
            host = self.dns_name_template.format(name=name, namespace=namespace)
        except (ValueError, KeyError, IndexError) as e:
            raise OutpostSpawnError(
                f"The server could not be started: invalid Kubernetes Service settings ({e}).",
                reason="config",
            ) from None
        log_name = self._log_name
        try:
            client = await self._k8s_client()
        except KubernetesError as e:
            raise OutpostSpawnError(
                "The server could not be started: the Kubernetes API is not configured "
                "for the Hub. Details are in the JupyterHub log.",
                reason="config",
                log_message=f"{log_name}: {e}",
            ) from None
        try:
            selector = await self._service_selector(client)
            try:
                body = make_service(
                    name=name,
                    port=port,
                    selector=selector,
                    labels=labels,
                    annotations=service_annotations(
                        username=self.user.name, servername=self.name or "", user_id=self.user.id
                    ),
                )
            except ValueError as e:
                raise OutpostSpawnError(
                    f"The server could not be started: invalid Kubernetes Service ({e}).",
                    reason="config",
                ) from None
            info["svc"] = True  # from here on it may exist
            await client.create(namespace, body, owner=owner_selector(self.svc_hub_id))
        except ServiceConflictError as e:
            info["svc"] = False  # not ours: never delete it
            raise OutpostSpawnError(
                f"The server could not be started: a Kubernetes Service named {name} "
                f"already exists in namespace {namespace} and was not made by this Hub.",
                reason="kubernetes",
                log_message=f"{log_name}: {e}",
            ) from None
        except KubernetesError as e:
            status = f"HTTP {e.status}" if e.status else "no answer"
            raise OutpostSpawnError(
                "The server could not be started: its Kubernetes Service could not be "
                f"created ({status}). Details are in the JupyterHub log.",
                reason="kubernetes",
                log_message=f"{log_name}: {e}",
            ) from None
        self.log.info("%s: Service %s/%s created, port %d", log_name, namespace, name, port)
        return host, port

    async def _service_delete(self, info: dict) -> None:
        """Delete the server's Service; one that is already gone is fine.

        :raises KubernetesError: when it cannot be deleted (the caller logs it)
        """
        name = dns_label(info.get("svc_name") or service_name(self))
        namespace = info.get("namespace") or self.namespace
        client = await self._k8s_client()
        if await client.delete(namespace, name):
            self.log.info("%s: Service %s/%s deleted", self._log_name, namespace, name)
        else:
            self.log.info("%s: Service %s/%s was already gone", self._log_name, namespace, name)

    # --- orphans -------------------------------------------------------------------

    def _schedule_orphan_sweep(self) -> asyncio.Task | None:
        """Start the once-per-process search for orphaned Services, if enabled
        and not yet started for this Hub identity and namespace."""
        if not self.svc_remove_orphans or getattr(self, "svc_create", True) is False:
            return None
        if getattr(self, "ssh_custom_svc", None):  # Services are made by a hook
            return None
        if getattr(self, "user", None) is None:  # a spawner without a Hub
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: a later spawner schedules it
            return None
        key = (self.k8s_api_host, self.namespace, label_value(self.svc_hub_id))
        per_loop = _sweeps.setdefault(loop, {})
        if key in per_loop:
            return None
        per_loop[key] = task = loop.create_task(
            _sweep_later(
                self.svc_orphan_delay,
                self._k8s_settings(),
                self.namespace,
                self.svc_hub_id,
                self.user.db,
                self.log,
            ),
            name="outpostspawner-orphan-services",
        )
        return task

    async def remove_orphan_services(self) -> list[str]:
        """Remove this Hub's Services whose server is neither running nor
        starting (see ``svc_remove_orphans``).

        :returns: the names of the deleted Services
        """
        client = await self._k8s_client()
        return await remove_orphan_services(
            client, self.namespace, self.svc_hub_id, self.user.db, self.log
        )


def clear_caches() -> None:
    """Forget the Hub selectors read and the API configurations loaded (for tests)."""
    from .client import forget_configurations

    _selectors.clear()
    forget_configurations()


def orphan_sweep(loop: asyncio.AbstractEventLoop | None = None) -> list[asyncio.Task]:
    """The scheduled orphan searches of ``loop`` (default: the running one)."""
    loop = loop or asyncio.get_running_loop()
    return list(_sweeps.get(loop, {}).values())


async def _sweep_later(
    delay: float, settings: ClientSettings, namespace: str, hub_id: str, db: Any, log: Any
) -> None:
    await asyncio.sleep(delay)
    try:
        client = await ServiceClient.shared(settings, log)
        await remove_orphan_services(client, namespace, hub_id, db, log)
    except KubernetesError as e:
        log.warning("Could not look for orphaned Services in %s: %s", namespace, e)
    except Exception:
        log.exception("Looking for orphaned Services in %s failed", namespace)


def server_in_use(db: Any, annotations: dict) -> bool:
    """Whether the Hub database has the Service's server running or starting.

    A Service without the user annotations counts as in use (kept).
    """
    from jupyterhub import orm

    query = db.query(orm.Spawner).join(orm.User, orm.Spawner.user_id == orm.User.id)
    user_id = annotations.get(USERID_ANNOTATION, "")
    if user_id.isdigit():
        query = query.filter(orm.Spawner.user_id == int(user_id))
    elif USERNAME_ANNOTATION in annotations:
        query = query.filter(orm.User.name == annotations[USERNAME_ANNOTATION])
    else:
        return True
    query = query.filter(orm.Spawner.name == annotations.get(SERVERNAME_ANNOTATION, ""))
    # JupyterHub gives a spawner its server row before start() and drops it on stop
    return any(s.server_id is not None for s in query.all())


async def remove_orphan_services(
    client: ServiceClient, namespace: str, hub_id: str, db: Any, log: Any
) -> list[str]:
    """Delete the Services of Hub ``hub_id`` in ``namespace`` whose server is
    neither running nor starting according to ``db``.

    Each deletion carries the listed ``resourceVersion`` as a precondition, so a
    Service that a start replaced in the meantime stays.

    :returns: the names of the deleted Services
    """
    removed = []
    for svc in await client.list(namespace, owner_selector(hub_id)):
        meta = svc.get("metadata") or {}
        name = meta.get("name", "")
        if not name or server_in_use(db, meta.get("annotations") or {}):
            continue
        try:
            if await client.delete(
                namespace, name, resource_version=meta.get("resourceVersion") or ""
            ):
                removed.append(name)
        except KubernetesError as e:
            if e.status != 409:
                log.warning("Could not remove the orphaned Service %s/%s: %s", namespace, name, e)
    if removed:
        log.info("Removed %d orphaned Service(s) in %s: %s", len(removed), namespace, removed)
    return removed
