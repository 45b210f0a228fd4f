"""JupyterHub spawners for servers started remotely through a JupyterHub Outpost."""

from . import handlers  # noqa: F401  (registers the Hub endpoints)
from ._version import __version__
from .errors import HookError, OutpostError, OutpostSpawnError
from .forward import ForwardBaseSpawner
from .spawner import OutpostSpawner

__all__ = [
    "ForwardBaseSpawner",
    "HookError",
    "OutpostError",
    "OutpostSpawnError",
    "OutpostSpawner",
    "__version__",
]
