"""Errors of the forwarder, shared by the process and its clients."""

from __future__ import annotations

#: error code -> HTTP status of the control API
STATUS = {
    "invalid": 400,
    "unauthorized": 401,
    "not_found": 404,
    "port_in_use": 409,
    "key_unreadable": 422,
    "auth_failed": 502,
    "unreachable": 502,
    "host_key_changed": 502,
    "host_key_unknown": 502,
    "remote_listen_failed": 502,
    "ssh_error": 502,
    "known_hosts": 500,
    "removed": 409,
    "shutting_down": 503,
    "timeout": 504,
    "unavailable": 503,
}


class ForwardError(Exception):
    """A forward could not be made or kept.

    :param code: a key of :data:`STATUS`, for programs
    :param message: for people; names the node, never contains key material
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 500)

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message}


class ForwarderUnavailable(ForwardError):
    """The forwarder could not be asked (not running, no answer, bad answer)."""

    def __init__(self, message: str):
        super().__init__("unavailable", message)
