"""The one exception type a failed start raises."""

from __future__ import annotations

from html import escape

from tornado import web

try:  # JupyterHub >= 6
    from jupyterhub.spawner import SpawnException as _Base

    _HAS_SPAWN_EXCEPTION = True
except ImportError:  # JupyterHub 5.x
    _Base = web.HTTPError
    _HAS_SPAWN_EXCEPTION = False


class OutpostSpawnError(_Base):
    """A start, poll or stop that failed in a way the user should be told about.

    On JupyterHub 6 this is a :class:`jupyterhub.spawner.SpawnException`; on 5.x a
    :class:`tornado.web.HTTPError`. Either way JupyterHub shows ``message`` (HTML
    escaped) to the user and logs ``log_message``.

    :param message: plain text shown to the user; it is escaped before it reaches HTML
    :param reason: short label for metrics, e.g. ``"outpost"`` or ``"hook"``
    :param log_message: more detail for the Hub log only (defaults to ``message``)
    :param status_code: HTTP status used when the failure answers a request
    """

    # a plain attribute (tornado's HTTPError makes it a read-only property)
    log_message = ""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "outpost",
        log_message: str = "",
        status_code: int = 500,
    ):
        self.message = message
        self.log_message = log_message or message
        self.status_code = status_code
        # JupyterHub's progress page and error pages read these two
        self.jupyterhub_message = message
        self.jupyterhub_html_message = escape(message)
        if _HAS_SPAWN_EXCEPTION:
            super().__init__(
                message,
                reason=reason,
                log_message=self.log_message,
                message_html=self.jupyterhub_html_message,
                status_code=status_code,
            )
        else:
            # tornado's HTTPError formats log_message with % args: keep it literal
            super().__init__(status_code, "%s", self.log_message, reason=reason)
            self.log_message = log_message or message
        self.args = (message,)

    def __str__(self) -> str:
        return self.message


class HookError(OutpostSpawnError):
    """A configured hook raised or returned something it must not.

    :param hook: the trait name, e.g. ``"custom_env"``
    """

    def __init__(self, hook: str, message: str, *, log_message: str = ""):
        self.hook = hook
        super().__init__(
            message,
            reason="hook",
            log_message=log_message or message,
            status_code=500,
        )


class OutpostError(OutpostSpawnError):
    """The Outpost answered with an error or could not be reached.

    :param action: ``"start"``, ``"poll"``, ``"stop"``, ...
    :param code: the HTTP status, or 599 when no answer arrived
    :param remote: for a 419 answer, the remote spawner's ``module class: args`` text
    """

    def __init__(
        self,
        action: str,
        code: int,
        message: str,
        *,
        log_message: str = "",
        remote: str = "",
    ):
        self.action = action
        self.code = code
        self.remote = remote
        super().__init__(
            message,
            reason="outpost",
            log_message=log_message or message,
            status_code=502 if code >= 500 or code == 0 else 500,
        )
