"""Endpoints for Outposts and operators: the running servers, and rebuilding the
tunnels through an SSH node.

Both are guarded by custom scopes, declared in ``c.JupyterHub.custom_scopes`` and
granted to an Outpost's service token through a role (see the docs).
"""

from __future__ import annotations

import asyncio
import json

from jupyterhub import orm

from .. import metrics
from ..addresses import is_valid_host
from .base import OutpostAPIHandler, needs_custom_scope

LIST_SCOPE = "custom:servers:list"
RECREATE_SCOPE = "custom:sshnode:restart"

_tasks: set[asyncio.Task] = set()


def _running(handler: OutpostAPIHandler):
    """The spawners of all running servers."""
    query = handler.db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None))
    for orm_spawner in query.order_by(orm.Spawner.user_id):
        user = handler.users[orm_spawner.user]
        yield user.spawners[orm_spawner.name]


class ServerListAPIHandler(OutpostAPIHandler):
    """``GET /hub/api/servers``: ``["<user_id>_<outpost name>_<start_id>", ...]``, the
    keys an Outpost compares its services with to remove orphans."""

    @needs_custom_scope(LIST_SCOPE)
    async def get(self):
        names = []
        for spawner in _running(self):
            start_id = getattr(spawner, "start_id", "")
            name = getattr(spawner, "outpost_name", spawner.name)
            if start_id:
                names.append(f"{spawner.user.id}_{name}_{start_id}")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(names))


class RecreateForwardAPIHandler(OutpostAPIHandler):
    """``GET /hub/api/recreateforward/{ssh_node}``: an SSH node restarted; rebuild
    every tunnel through it in the background (202)."""

    @needs_custom_scope(RECREATE_SCOPE)
    async def get(self, ssh_node: str):
        if not is_valid_host(ssh_node):
            self.set_status(400)
            self.finish({"message": "invalid node name"})
            return
        spawners = [
            s
            for s in _running(self)
            if getattr(s, "port_forward_info", {}).get("ssh_node") == ssh_node
            and s.port_forward_info.get("forward")
        ]
        task = asyncio.ensure_future(self._rebuild(spawners))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        self.log.info("rebuilding %d tunnels through %s", len(spawners), ssh_node)
        self.set_status(202)
        self.finish({"tunnels": len(spawners)})

    async def _rebuild(self, spawners) -> None:
        for spawner in spawners:
            try:
                await spawner._forward_add(spawner.port_forward_info)
            except Exception:
                self.log.exception("%s: rebuilding the tunnel failed", spawner._log_name)
                outcome = "failed"
            else:
                outcome = "ok"
            metrics.TUNNEL_REBUILDS.labels(reason="node_restart", outcome=outcome).inc()
