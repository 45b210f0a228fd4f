"""Validation of forward requests and the SSH option allow-list.

Pure functions, used by the Hub before it asks a forwarder and by the forwarder
for every request it receives (a standalone forwarder trusts nobody's checks).

``ssh_forward_options`` use OpenSSH option names. Only the options in
:data:`ALLOWED_OPTIONS` are accepted; :data:`IGNORED_OPTIONS` are accepted and
dropped (they configure OpenSSH connection sharing, which the forwarder does
by itself); ``Port``, ``User`` and ``IdentityFile`` replace the node's port, user
and key. Anything else, ``ProxyCommand`` and ``LocalCommand`` included, is a
configuration error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A forward request or an SSH option is invalid; the message says which."""


#: accepted options (canonical spelling) and what they become in asyncssh
ALLOWED_OPTIONS = (
    "ServerAliveInterval",
    "ServerAliveCountMax",
    "ConnectTimeout",
    "StrictHostKeyChecking",
    "UserKnownHostsFile",
    "Ciphers",
    "KexAlgorithms",
    "MACs",
    "HostKeyAlgorithms",
    "Compression",
)
#: accepted and ignored
IGNORED_OPTIONS = ("ControlMaster", "ControlPersist", "ControlPath", "BatchMode")
#: accepted; they set the node's port, user and key
TARGET_OPTIONS = ("Port", "User", "IdentityFile")

_CANONICAL = {n.lower(): n for n in ALLOWED_OPTIONS + IGNORED_OPTIONS + TARGET_OPTIONS}

_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
_ALGORITHM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._-]{0,99}$")
_FORWARD_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,199}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

STRICT_MODES = ("yes", "accept-new")


def check_host(value: Any, what: str = "SSH node") -> str:
    """A hostname (RFC 1123, underscores allowed) or an IP literal.

    :raises ConfigError: otherwise, e.g. for ``"-oProxyCommand=x"`` or ``"a b"``
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not name or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise ConfigError(f"{what} {value!r} is not a valid hostname or IP address")
    return name.lower()


def check_listen_host(value: Any, what: str = "listen address") -> str:
    """Like :func:`check_host`; ``""`` (every address) is allowed too."""
    if value == "":
        return ""
    return check_host(value, what)


def check_port(value: Any, what: str = "port", *, allow_zero: bool = False) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, float) and value != port:
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(f"{what} {port} is out of range")
    return port


def check_username(value: Any, what: str = "SSH username") -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not a valid user name")
    return value


def check_path(value: Any, what: str = "SSH key") -> str:
    """An absolute path without control characters (existence is checked by the
    forwarder, where the file has to be)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{what} must be an absolute path, got {value!r}")
    if _CONTROL.search(value):
        raise ConfigError(f"{what} path contains control characters")
    return value


def check_forward_id(value: Any) -> str:
    if not isinstance(value, str) or not _FORWARD_ID.fullmatch(value):
        raise ConfigError(f"forward id {value!r} is invalid")
    return value


def _text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(f"SSH option {name}: expected a string or number, got {value!r}")


def _number(name: str, value: str, *, minimum: float, integer: bool = False) -> str:
    try:
        n = int(value) if integer else float(value)
    except ValueError:
        raise ConfigError(f"SSH option {name}: expected a number, got {value!r}") from None
    if n < minimum:
        raise ConfigError(f"SSH option {name}: must be at least {minimum:g}, got {value!r}")
    return str(n) if integer else f"{n:g}"


def _algorithms(name: str, value: str) -> str:
    names = [a.strip() for a in value.split(",")]
    if value[:1] in "+-^":
        raise ConfigError(
            f"SSH option {name}: list the algorithms explicitly; "
            "'+', '-' and '^' prefixes are not supported"
        )
    for a in names:
        if not _ALGORITHM.fullmatch(a):
            raise ConfigError(f"SSH option {name}: invalid algorithm name {a!r}")
    return ",".join(names)


def _yes_no(name: str, value: str) -> str:
    v = value.lower()
    if v not in ("yes", "no"):
        raise ConfigError(f"SSH option {name}: expected yes or no, got {value!r}")
    return v


def _strict(value: str) -> str:
    v = value.lower()
    if v == "ask":  # nobody can be asked: unknown keys are refused, as with "yes"
        return "yes"
    if v in STRICT_MODES:
        return v
    if v in ("no", "off", "false"):
        raise ConfigError(
            f"SSH option StrictHostKeyChecking={value} is refused: it would accept any "
            "host key, including an attacker's. Use 'accept-new' (the default: the "
            "first key seen is remembered) or 'yes' with a prepared known_hosts file."
        )
    raise ConfigError(f"SSH option StrictHostKeyChecking: unknown value {value!r}")


def _known_hosts(value: str) -> str:
    if value.lower() == "none" or value in ("/dev/null",):
        raise ConfigError(
            f"SSH option UserKnownHostsFile={value} is refused: host keys would never be "
            "checked. Give a file the forwarder may write."
        )
    if len(value.split()) != 1:
        raise ConfigError("SSH option UserKnownHostsFile: give exactly one file")
    return check_path(value, "SSH option UserKnownHostsFile")


_VALUE_CHECKS = {
    "ServerAliveInterval": lambda v: _number("ServerAliveInterval", v, minimum=0),
    "ServerAliveCountMax": lambda v: _number("ServerAliveCountMax", v, minimum=1, integer=True),
    "ConnectTimeout": lambda v: _number("ConnectTimeout", v, minimum=0.001),
    "StrictHostKeyChecking": _strict,
    "UserKnownHostsFile": _known_hosts,
    "Ciphers": lambda v: _algorithms("Ciphers", v),
    "KexAlgorithms": lambda v: _algorithms("KexAlgorithms", v),
    "MACs": lambda v: _algorithms("MACs", v),
    "HostKeyAlgorithms": lambda v: _algorithms("HostKeyAlgorithms", v),
    "Compression": lambda v: _yes_no("Compression", v),
}


def split_options(options: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, str]]:
    """Check OpenSSH-style options against the allow-list.

    :returns: ``(options, target)``: the accepted options in canonical spelling
        with normalized values, and the ``Port``/``User``/``IdentityFile`` values
    :raises ConfigError: for an unknown or refused option or an invalid value
    """
    accepted: dict[str, str] = {}
    target: dict[str, str] = {}
    for raw_name, raw_value in (options or {}).items():
        if not isinstance(raw_name, str):
            raise ConfigError(f"SSH option names must be strings, got {raw_name!r}")
        name = _CANONICAL.get(raw_name.strip().lower())
        if name is None:
            raise ConfigError(
                f"SSH option {raw_name!r} is not allowed. Allowed: "
                + ", ".join(ALLOWED_OPTIONS + TARGET_OPTIONS + IGNORED_OPTIONS)
            )
        if name in IGNORED_OPTIONS:
            continue
        value = _text(name, raw_value)
        if name in TARGET_OPTIONS:
            target[name] = value
        else:
            accepted[name] = _VALUE_CHECKS[name](value)
    return accepted, target


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to log in: one shared SSH connection per distinct target."""

    host: str
    port: int
    username: str
    key: str
    options: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def build(
        cls,
        host: Any,
        port: Any,
        username: Any,
        key: Any,
        options: Mapping[str, Any] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> SSHTarget:
        """Validate everything; ``options`` (OpenSSH names) may override the port,
        user and key and are merged over ``defaults``.

        :raises ConfigError: naming what is wrong
        """
        merged = dict(defaults or {})
        merged.update(options or {})
        accepted, target = split_options(merged)
        port = target.get("Port", port)
        username = target.get("User", username)
        key = target.get("IdentityFile", key)
        return cls(
            host=check_host(host),
            port=check_port(port, "SSH port"),
            username=check_username(username),
            key=check_path(key),
            options=tuple(sorted(accepted.items())),
        )

    @classmethod
    def from_dict(cls, d: Any) -> SSHTarget:
        """From :meth:`to_dict` output (a request body or the spawner's state)."""
        if not isinstance(d, Mapping):
            raise ConfigError("ssh must be an object")
        opts = d.get("options") or {}
        if not isinstance(opts, Mapping):
            raise ConfigError("ssh.options must be an object")
        return cls.build(d.get("host"), d.get("port"), d.get("username"), d.get("key"), opts)

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "key": self.key,
            "options": dict(self.options),
        }

    @property
    def label(self) -> str:
        """``user@host:port`` for messages and logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.username}@{host}:{self.port}"

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


@dataclass(frozen=True)
class ForwardSpec:
    """One forward.

    ``kind="local"``: listen on ``listen_host:listen_port`` where the forwarder runs
    and carry connections through ``ssh`` to ``dest_host:dest_port`` (as seen from
    the SSH node). ``kind="remote"``: the SSH node listens on
    ``listen_host:listen_port`` and connections come back to ``dest_host:dest_port``
    as seen from the forwarder.
    """

    id: str
    kind: str
    ssh: SSHTarget
    listen_host: str
    listen_port: int
    dest_host: str
    dest_port: int

    @classmethod
    def from_dict(cls, d: Any, *, forward_id: str | None = None) -> ForwardSpec:
        """Validate a request body.

        :raises ConfigError: naming the invalid field
        """
        if not isinstance(d, Mapping):
            raise ConfigError("the forward must be a JSON object")
        fid = d.get("id") if forward_id is None else forward_id
        if forward_id is not None and d.get("id", forward_id) != forward_id:
            raise ConfigError("the forward id in the body differs from the one in the URL")
        kind = d.get("kind", "local")
        if kind not in ("local", "remote"):
            raise ConfigError(f"kind must be 'local' or 'remote', got {kind!r}")
        return cls(
            id=check_forward_id(fid),
            kind=kind,
            ssh=SSHTarget.from_dict(d.get("ssh")),
            listen_host=check_listen_host(d.get("listen_host", ""), "listen_host"),
            listen_port=check_port(d.get("listen_port"), "listen_port", allow_zero=True),
            dest_host=check_host(d.get("dest_host"), "dest_host"),
            dest_port=check_port(d.get("dest_port"), "dest_port"),
        )

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "ssh": self.ssh.to_dict(),
            "listen_host": self.listen_host,
            "listen_port": self.listen_port,
            "dest_host": self.dest_host,
            "dest_port": self.dest_port,
        }


def asyncssh_options(target: SSHTarget) -> dict[str, Any]:
    """The asyncssh ``connect()`` arguments for the target's accepted options
    (host key handling and key loading are the forwarder's business)."""
    opts = dict(target.options)
    kw: dict[str, Any] = {}
    if "ServerAliveInterval" in opts:
        kw["keepalive_interval"] = float(opts["ServerAliveInterval"])
    if "ServerAliveCountMax" in opts:
        kw["keepalive_count_max"] = int(opts["ServerAliveCountMax"])
    if "ConnectTimeout" in opts:
        kw["connect_timeout"] = float(opts["ConnectTimeout"])
    for name, arg in (
        ("Ciphers", "encryption_algs"),
        ("KexAlgorithms", "kex_algs"),
        ("MACs", "mac_algs"),
        ("HostKeyAlgorithms", "server_host_key_algs"),
    ):
        if name in opts:
            kw[arg] = opts[name].split(",")
    if "Compression" in opts:
        kw["compression_algs"] = (
            ["zlib@openssh.com", "zlib", "none"] if opts["Compression"] == "yes" else ["none"]
        )
    return kw
