"""The forwarder's known_hosts file.

OpenSSH format, so an administrator can fill it with ``ssh-keyscan`` (hashed
entries and ``@cert-authority``/``@revoked`` markers are understood). Entries are
looked up per ``host:port`` exactly as OpenSSH does: ``[host]:port`` for ports
other than 22, without falling back to the port-22 entry.

With ``StrictHostKeyChecking accept-new`` the first key seen for a ``host:port``
is appended; a different key later is refused. Appends take an exclusive lock
on the file, so forwarder shards can share it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field

import asyncssh


class HostKeyChanged(Exception):
    """The file has another key for this host:port."""


@dataclass
class Trusted:
    """What the file says about one ``host:port``."""

    keys: list = field(default_factory=list)
    ca_keys: list = field(default_factory=list)
    revoked: list = field(default_factory=list)

    @property
    def known(self) -> bool:
        return bool(self.keys or self.ca_keys)


def host_entry(host: str, port: int) -> str:
    """The known_hosts name of ``host:port``: ``host`` or ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt, digest = pattern.split("|", 3)
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, binascii.Error):
            return False
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()
    )
    return re.fullmatch(regex, name.lower()) is not None


def _line_matches(patterns: str, name: str) -> bool:
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _pattern_matches(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            matched = True
    return matched


def parse(text: str, host: str, port: int) -> Trusted:
    """The keys ``text`` (known_hosts content) has for ``host:port``; lines that
    cannot be parsed are skipped."""
    name = host_entry(host, port)
    result = Trusted()
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = ""
        if fields[0].startswith("@"):
            marker, fields = fields[0], fields[1:]
        if len(fields) < 3 or not _line_matches(fields[0], name):
            continue
        try:
            key = asyncssh.import_public_key(f"{fields[1]} {fields[2]}")
        except (asyncssh.KeyImportError, ValueError):
            continue
        if marker == "@cert-authority":
            result.ca_keys.append(key)
        elif marker == "@revoked":
            result.revoked.append(key)
        elif not marker:
            result.keys.append(key)
    return result


def key_text(key) -> str:
    """``"ssh-ed25519 AAAA..."`` without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def fingerprint(key) -> str:
    return key.get_fingerprint("sha256")


class KnownHostsFile:
    """One known_hosts file.

    :param path: absolute path; the file and its directory are created on the first
        append
    """

    def __init__(self, path: str):
        self.path = path
        self._lock = asyncio.Lock()

    def _read(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    async def lookup(self, host: str, port: int) -> Trusted:
        """The trusted and revoked keys for ``host:port``."""
        text = await asyncio.to_thread(self._read)
        return parse(text, host, port)

    def _append(self, host: str, port: int, key) -> bool:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                text = f.read()
                trusted = parse(text, host, port)
                if trusted.known:
                    if key in trusted.keys:
                        return False
                    raise HostKeyChanged(host_entry(host, port))
                prefix = "" if not text or text.endswith("\n") else "\n"
                f.write(f"{prefix}{host_entry(host, port)} {key_text(key)}\n")
                f.flush()
                with contextlib.suppress(OSError):
                    os.fsync(f.fileno())
                return True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    async def remember(self, host: str, port: int, key) -> bool:
        """Append ``key`` for ``host:port`` unless another process did already.

        :returns: whether a line was written
        :raises HostKeyChanged: when the file has another key for ``host:port`` by now
        """
        async with self._lock:
            return await asyncio.to_thread(self._append, host, port, key)
