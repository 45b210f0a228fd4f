"""Validation of remote addresses.

The ``service`` an Outpost answers (and, later, a server reports through the
tunnel callback) is remote input. It is parsed here, once, into a hostname or IP
literal and a port; nothing else gets through.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


class ServiceAddress(NamedTuple):
    """A validated ``host:port``, with the scheme when the answer named one."""

    host: str
    port: int
    scheme: str | None = None

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.netloc


def is_valid_host(host: str) -> bool:
    """Whether ``host`` is an IP literal or a DNS hostname (letters, digits, ``-``, ``_``, dots)."""
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def parse_service_address(value: object) -> ServiceAddress:
    """Parse ``host:port``, ``[v6]:port`` or the same with ``http://``/``https://``.

    :param value: the remote answer
    :returns: the address
    :raises ValueError: for anything else (a path, user info, a query, a bad host
        or a port outside 1-65535), with a message that quotes the value safely
    """
    if not isinstance(value, str):
        raise ValueError(f"service address must be a string, not {type(value).__name__}")
    text = value.strip()
    shown = repr(text[:100])
    scheme = None
    for prefix in ("http://", "https://"):
        if text.lower().startswith(prefix):
            scheme = prefix[:-3]
            text = text[len(prefix) :]
            break
    text = text.rstrip("/")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"service address {shown} has no port")
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"service address {shown} has an invalid IPv6 literal") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"service address {shown} has no port")
        if not is_valid_host(host):
            raise ValueError(f"service address {shown} has an invalid host")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"service address {shown} has an invalid port")
    return ServiceAddress(host, int(port_text), scheme)
