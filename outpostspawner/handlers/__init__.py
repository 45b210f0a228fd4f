"""REST endpoints the remote side calls on the Hub.

Importing this package registers them with JupyterHub (once, however often it is
imported); :mod:`outpostspawner` imports it.
"""

from jupyterhub import apihandlers

from ..jobs.handler import handlers as job_handlers
from .events import EventsAPIHandler
from .flavors import FlavorsAPIHandler, UserFlavorsAPIHandler
from .servers import RecreateForwardAPIHandler, ServerListAPIHandler
from .setuptunnel import SetupTunnelAPIHandler

handlers = []
for _prefix, _handler in (
    ("/api/users/setuptunnel/", SetupTunnelAPIHandler),
    ("/api/users/progress/events/", EventsAPIHandler),
):
    # the default server, then named servers; each path argument narrows the scope
    handlers.append((_prefix + r"([^/]+)/?", _handler))
    handlers.append((_prefix + r"([^/]+)/([^/]+)/?", _handler))
handlers += [
    (r"/api/servers/?", ServerListAPIHandler),
    (r"/api/recreateforward/([^/]+)/?", RecreateForwardAPIHandler),
    (r"/api/outpostflavors/([^/]+)/?", FlavorsAPIHandler),
    (r"/api/outpostflavors/?", UserFlavorsAPIHandler),
    *job_handlers,
]


def register() -> None:
    """Add the handlers to JupyterHub's API routes unless they are there already."""
    present = {pattern for pattern, *_ in apihandlers.default_handlers}
    for route in handlers:
        if route[0] not in present:
            apihandlers.default_handlers.append(route)


register()
