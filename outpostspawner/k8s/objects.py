"""Pure builders for the Kubernetes Service of a forwarded server.

Nothing here talks to Kubernetes; the functions return plain dicts in the
API's JSON form (camelCase keys), so tests compare them as dicts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from ..names import expand_template

#: the value of ``app.kubernetes.io/managed-by`` on every Service made here
MANAGER = "outpostspawner"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: which Hub made the Service (``svc_hub_id``); orphans are only looked for among these
INSTANCE_LABEL = "app.kubernetes.io/instance"
USERNAME_LABEL = "hub.jupyter.org/username"
SERVERNAME_LABEL = "hub.jupyter.org/servername"
COMPONENT_LABEL = "component"
COMPONENT = "singleuser-server"

#: the unescaped names, read back when orphaned Services are looked for
USERNAME_ANNOTATION = "hub.jupyter.org/username"
SERVERNAME_ANNOTATION = "hub.jupyter.org/servername"
USERID_ANNOTATION = "outpostspawner/user-id"

#: labels that ``extra_labels`` cannot change: the orphan search depends on them
RESERVED_LABELS = frozenset({MANAGED_BY_LABEL, INSTANCE_LABEL, USERNAME_LABEL, SERVERNAME_LABEL})

DNS_LABEL_MAX = 63
LABEL_VALUE_MAX = 63
_HASH_LEN = 8

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_LEN]


def is_dns_label(name: str) -> bool:
    """Whether ``name`` is a DNS-1035 label, as Service names must be: lower-case
    letters, digits and ``-``, starting with a letter, ending with a letter or a
    digit, at most 63 characters."""
    return len(name) <= DNS_LABEL_MAX and bool(_DNS_1035.fullmatch(name))


def dns_label(name: str) -> str:
    """``name`` as a DNS-1035 label.

    A valid label is returned unchanged. Any other name is lower-cased, runs of
    other characters become ``-``, a leading digit gets ``s-`` in front, and a
    hash of the original name is appended, shortening the rest so that the
    result has at most 63 characters. The same input always gives the same
    output, and two different inputs practically never collide.
    """
    if is_dns_label(name):
        return name
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if base and not base[0].isalpha():
        base = "s-" + base
    base = base[: DNS_LABEL_MAX - _HASH_LEN - 1].rstrip("-")
    return f"{base}-{_digest(name)}" if base else f"s-{_digest(name)}"


def is_label_value(value: str) -> bool:
    """Whether ``value`` is a valid label value: empty, or at most 63
    characters of letters, digits, ``-``, ``_`` and ``.``, with a letter or digit
    at both ends."""
    return len(value) <= LABEL_VALUE_MAX and bool(_LABEL_VALUE.fullmatch(value))


def label_value(value: str) -> str:
    """``value`` escaped into a valid label value.

    A valid value is returned unchanged. Otherwise runs of characters other
    than letters, digits, ``-``, ``_`` and ``.`` become ``-``, the ends are
    trimmed to a letter or digit, and a hash of the original is appended
    (shortening the rest to fit 63 characters).
    """
    if is_label_value(value):
        return value
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[: LABEL_VALUE_MAX - _HASH_LEN - 1]
    base = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", base)
    return f"{base}-{_digest(value)}" if base else _digest(value)


def check_label_key(key: str) -> str:
    """Return ``key`` if it is a valid label key (``[prefix/]name``).

    :raises ValueError: naming what is wrong with it
    """
    prefix, sep, name = key.rpartition("/")
    if sep and (
        not prefix
        or len(prefix) > 253
        or not _DNS_1123_SUBDOMAIN.fullmatch(prefix)
        or "/" in prefix
    ):
        raise ValueError(f"label key {key!r}: the prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return key


def service_name(spawner: Any) -> str:
    """The Service name of a spawner's server: ``svc_name_template`` expanded
    (see :func:`outpostspawner.names.expand_template`) and made a valid DNS-1035
    label with :func:`dns_label`. It depends only on the template, the user and
    the server name, so it is the same after a Hub restart."""
    return dns_label(expand_template(spawner.svc_name_template, spawner))


def service_labels(
    *,
    username: str,
    servername: str,
    hub_id: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The labels of a server's Service.

    :param username: the user's name, unescaped; it is escaped here
    :param servername: the server's name (``""`` for the default server), unescaped
    :param hub_id: the Hub's identity (``svc_hub_id``), escaped here
    :param extra: ``extra_labels``; values are escaped, keys must be valid.
        They may set ``component``, but not the labels in :data:`RESERVED_LABELS`.
    :raises ValueError: for an invalid key in ``extra``
    """
    labels = {COMPONENT_LABEL: COMPONENT}
    for key, value in (extra or {}).items():
        labels[check_label_key(key)] = label_value(value)
    labels.update(
        {
            MANAGED_BY_LABEL: MANAGER,
            INSTANCE_LABEL: label_value(hub_id),
            USERNAME_LABEL: label_value(username),
            SERVERNAME_LABEL: label_value(servername),
        }
    )
    return labels


def service_annotations(*, username: str, servername: str, user_id: int) -> dict[str, str]:
    """Annotations that keep the unescaped names of the server's user and server."""
    return {
        USERNAME_ANNOTATION: username,
        SERVERNAME_ANNOTATION: servername,
        USERID_ANNOTATION: str(user_id),
    }


def owner_selector(hub_id: str) -> dict[str, str]:
    """The labels every Service made by the Hub ``hub_id`` has."""
    return {MANAGED_BY_LABEL: MANAGER, INSTANCE_LABEL: label_value(hub_id)}


def label_selector(labels: Mapping[str, str]) -> str:
    """``labels`` as an equality-based label selector string (``a=b,c=d``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def make_service(
    *,
    name: str,
    port: int,
    selector: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    target_port: int | None = None,
) -> dict[str, Any]:
    """The manifest of a ClusterIP Service in front of a port forward.

    :param name: the Service name, a DNS-1035 label (see :func:`service_name`)
    :param port: the port the Service listens on
    :param selector: labels of the pod that holds the forward (the Hub pod)
    :param labels: the Service's labels (see :func:`service_labels`)
    :param annotations: the Service's annotations
    :param target_port: the forward's port on that pod; default ``port``
    :returns: the manifest, as the API's JSON
    :raises ValueError: for an invalid name or port, or an empty selector
    """
    if not is_dns_label(name):
        raise ValueError(f"{name!r} is not a valid Service name (DNS-1035 label)")
    target = port if target_port is None else target_port
    for p in (port, target):
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise ValueError(f"invalid port {p!r}")
    if not selector:
        raise ValueError("the selector must not be empty: it would select no pod")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target}],
        },
    }
