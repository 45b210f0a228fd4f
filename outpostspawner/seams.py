"""Where the SSH forwarder and the Kubernetes Service client plug in.

:class:`ForwardSeams` holds the default implementations, which fail with a clear
message. A mixin that provides the machinery overrides them and is listed before
``ForwardSeams`` in :class:`~outpostspawner.ForwardBaseSpawner`'s bases. Every
method gets ``info``, the server's ``port_forward_info`` (see
:meth:`ForwardBaseSpawner._forward_info`), and may resolve ``ssh_*``/``svc_*``
hooks through :func:`outpostspawner.hooks.resolve`.
"""

from __future__ import annotations

from .errors import OutpostSpawnError


class ForwardSeams:
    """Defaults for the forwarding seams: no built-in forwarder or Service client."""

    forward_connect_host = "127.0.0.1"

    async def _forward_add(self, info: dict) -> None:
        raise OutpostSpawnError(
            "The server needs an SSH port forward, but no forwarder is configured "
            "(set ssh_custom_forward).",
            reason="config",
        )

    async def _forward_remove(self, info: dict) -> None:
        return None

    async def _service_create(self, info: dict) -> tuple[str, int]:
        raise OutpostSpawnError(
            "The server needs a Kubernetes Service, but no Service client is configured "
            "(set ssh_custom_svc, or svc_create = False).",
            reason="config",
        )

    async def _service_delete(self, info: dict) -> None:
        return None

    async def _remote_forward_add(self, info: dict) -> None:
        raise OutpostSpawnError(
            "A remote port forward is required, but no forwarder is configured "
            "(set ssh_custom_forward_remote).",
            reason="config",
        )

    async def _remote_forward_remove(self, info: dict) -> None:
        return None
