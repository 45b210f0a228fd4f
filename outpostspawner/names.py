"""Names derived from users and servers: Kubernetes Services and Outpost keys."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

_VALID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?$")
_INVALID_RUN = re.compile(r"[^a-z0-9]+")
_NS_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def dns_safe(name: str) -> str:
    """A DNS-label-safe form of ``name``.

    Names that already are short lower-case DNS labels without ``--`` stay as they
    are; any other name is reduced to letters, digits and single ``-`` and gets a
    hash of the original appended, so distinct names stay distinct.
    """
    if not name or (_VALID.fullmatch(name) and "--" not in name):
        return name
    digest = hashlib.sha256(name.encode("utf8")).hexdigest()[:8]
    base = _INVALID_RUN.sub("-", name.lower()).strip("-")[:20].strip("-")
    return f"{base}-{digest}" if base else digest


@lru_cache(maxsize=1)
def hub_namespace() -> str:
    """The Hub's own namespace, or ``user`` when not in a cluster."""
    try:
        with open(_NS_PATH) as f:
            ns = f.read().strip()
    except OSError:
        return "user"
    return "user" if ns in ("", "default") else ns


def template_fields(spawner: Any) -> dict[str, Any]:
    """The fields ``svc_name_template`` and ``outpost_name_template`` expand."""
    server = spawner.name or ""
    return {
        "userid": spawner.user.id,
        "username": dns_safe(spawner.user.name),
        "unescaped_username": spawner.user.name,
        "servername": dns_safe(server),
        "unescaped_servername": server,
        "hubnamespace": hub_namespace(),
    }


def expand_template(template: str, spawner: Any) -> str:
    """Expand a name template; trailing ``-`` are stripped (default server)."""
    return template.format(**template_fields(spawner)).rstrip("-")
