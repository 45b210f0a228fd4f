"""Kubernetes Services for forwarded servers.

- :mod:`~outpostspawner.k8s.objects`: pure builders (names, labels, the manifest);
- :mod:`~outpostspawner.k8s.client`: the shared async API client with retries;
- :mod:`~outpostspawner.k8s.mixin`: :class:`KubernetesServiceMixin`, the spawner side.
"""

from .client import (
    ClientSettings,
    KubernetesError,
    ServiceClient,
    ServiceConflictError,
    close_clients,
    load_configuration,
    shared_api_client,
)
from .mixin import KubernetesServiceMixin, clear_caches, orphan_sweep, remove_orphan_services
from .objects import (
    dns_label,
    label_value,
    make_service,
    service_annotations,
    service_labels,
    service_name,
)

__all__ = [
    "ClientSettings",
    "KubernetesError",
    "KubernetesServiceMixin",
    "ServiceClient",
    "ServiceConflictError",
    "clear_caches",
    "close_clients",
    "dns_label",
    "label_value",
    "load_configuration",
    "make_service",
    "orphan_sweep",
    "remove_orphan_services",
    "service_annotations",
    "service_labels",
    "service_name",
    "shared_api_client",
]
