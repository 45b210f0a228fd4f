"""Build an :class:`~outpostspawner.OutpostSpawner` without a running Hub.

The spawner gets a real JupyterHub ``User`` backed by an in-memory database, so
administrators can check what their configuration sends to an Outpost.
"""

from __future__ import annotations

import secrets
from typing import Any

from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User
from traitlets.config import Config

from ..spawner import OutpostSpawner

_sessions: dict[int, Any] = {}


def _session():
    return orm.new_session_factory("sqlite://")()


def make_spawner(
    *,
    user: str = "alice",
    server: str = "",
    user_options: dict | None = None,
    config: Config | dict | None = None,
    spawner_class: type[OutpostSpawner] = OutpostSpawner,
    db: Any = None,
    **traits: Any,
) -> OutpostSpawner:
    """A spawner for ``user``'s server ``server`` (``""``: the default server).

    :param config: a traitlets ``Config`` as in ``jupyterhub_config.py``
        (``{"OutpostSpawner": {"request_url": ...}}``)
    :param traits: trait values set on the spawner directly
    :returns: the spawner; ``spawner.user.db`` is its database session
    """
    db = db or _session()
    orm_user = db.query(orm.User).filter_by(name=user).one_or_none()
    if orm_user is None:
        orm_user = orm.User(name=user)
        db.add(orm_user)
        db.commit()
    if server and server not in orm_user.orm_spawners:
        db.add(orm.Spawner(user=orm_user, name=server))
        db.commit()
    settings = {"config": Config(config or {}), "spawner_class": spawner_class}
    u = User(orm_user, settings)
    hub = Hub(ip="127.0.0.1", port=8081, base_url="/hub/")
    spawner = u._new_spawner(server, spawner_class=spawner_class, hub=hub, **traits)
    u.spawners[server] = spawner
    spawner.user_options = dict(user_options or {})
    if not spawner.api_token:
        spawner.api_token = secrets.token_hex(16)  # JupyterHub sets one per spawn
    return spawner
