"""The Hub's view of the Outposts' flavors and credits (one per Hub process).

Shared flavors come from ``GET /flavors/`` of every configured Outpost: fetched
as the Hub creates its first spawner (at its start for the servers still running)
or when first needed (the first spawn page, flavors request or start), and then
every ``refresh_interval``; an Outpost's push replaces its
system's flavors at once. A user's flavors and credits come from
``POST /userflavors`` / ``/usercredits`` with the user's authentication, kept for
``user_ttl``; without an answer, ``auth_state["outpost_flavors"]`` (set by a
``post_auth_hook``) applies. Several Hub processes each keep their own view.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tornado.httpclient import HTTPRequest

from ..errors import OutpostError
from ..outpost import get_client
from .config import OutpostFlavors
from .model import FlavorError, parse_credits, parse_flavors, user_view

log = logging.getLogger("JupyterHub")


def authentication(user: Any, auth_state: dict | None) -> dict:
    """The body of ``/userflavors`` and the start body's ``authentication``."""
    state = auth_state or {}
    groups = state.get("groups")
    if not isinstance(groups, list):
        groups = [g.name for g in getattr(user, "groups", [])]
    return {
        "access_token": state.get("access_token", ""),
        "name": state.get("name") or user.name,
        "groups": groups,
    }


class FlavorsService:
    def __init__(self, cfg: OutpostFlavors) -> None:
        self.cfg = cfg
        #: system -> flavors, as last fetched or pushed
        self.shared: dict[str, dict] = {}
        #: system -> credits of the Hub
        self.credits: dict[str, dict] = {}
        self._fetched = 0.0
        self._first_done = False
        self._refresh: asyncio.Task | None = None
        self._periodic: asyncio.Task | None = None
        #: (user, system, kind) -> (expires, value)
        self._users: dict[tuple[str, str, str], tuple[float, Any]] = {}

    # --- configuration --------------------------------------------------------

    def outposts(self) -> dict[str, dict]:
        """The configured systems, with headers and options filled in."""
        spawner_cfg = self.cfg.config.get("OutpostSpawner", {})
        default_headers = spawner_cfg.get("request_headers")
        if not isinstance(default_headers, dict):
            default_headers = {}
        result = {}
        for system, entry in self.cfg.outposts.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                continue
            result[system] = {
                "url": entry["url"].rstrip("/"),
                "headers": {
                    "Accept": "application/json",
                    "Content-Type": "application/json",
                    **(entry.get("headers") or default_headers),
                },
                "request_kwargs": dict(entry.get("request_kwargs") or {}),
                "user_flavors": entry.get("user_flavors", True) is not False,
                "credits": bool(entry.get("credits", False)),
                "display_name": str(entry.get("display_name") or ""),
            }
        return result

    # --- requests -------------------------------------------------------------

    async def _ask(self, system: str, entry: dict, path: str, body: Any = None) -> Any:
        kwargs = {"request_timeout": self.cfg.request_timeout, "connect_timeout": 2}
        kwargs.update(entry["request_kwargs"])
        req = HTTPRequest(
            entry["url"] + path,
            method="GET" if body is None else "POST",
            headers=entry["headers"],
            body=None if body is None else json.dumps(body),
            **kwargs,
        )
        client = get_client(start_limit=1, request_limit=16)
        return (await client.fetch("flavors", req, logger=log)).body

    async def _fetch_system(self, system: str, entry: dict) -> None:
        try:
            self.shared[system] = parse_flavors(await self._ask(system, entry, "/flavors/"))
            if entry["credits"]:
                self.credits[system] = parse_credits(await self._ask(system, entry, "/credits/"))
        except (OutpostError, FlavorError) as e:
            log.warning("flavors of %s not updated: %s", system, getattr(e, "log_message", e))

    async def refresh(self) -> None:
        """Fetch every configured Outpost's flavors now (concurrently, bounded)."""
        outposts = self.outposts()
        self._fetched = time.monotonic()
        await asyncio.gather(*(self._fetch_system(s, e) for s, e in outposts.items()))
        self._first_done = True

    def begin(self) -> None:
        """Start the first fetch and the periodic refresh in the background, unless
        they run already (for the Hub's first spawner; needs a running loop)."""
        if not self.cfg.outposts or self._refresh is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refresh = asyncio.create_task(self.refresh())
        if self._periodic is None and self.cfg.refresh_interval > 0:
            self._periodic = asyncio.create_task(self._every_interval())

    async def ensure(self) -> None:
        """Fetch when nothing was fetched yet (waiting for it, at most
        ``request_timeout``), or in the background when the flavors are older than
        ``refresh_interval``; start the periodic refresh."""
        if not self.cfg.outposts:
            return
        if self._refresh is None or (
            self._refresh.done()
            and self.cfg.refresh_interval > 0
            and time.monotonic() - self._fetched > self.cfg.refresh_interval
        ):
            self._refresh = asyncio.create_task(self.refresh())
        if self._periodic is None and self.cfg.refresh_interval > 0:
            self._periodic = asyncio.create_task(self._every_interval())
        if not self._first_done:
            await asyncio.wait({self._refresh}, timeout=self.cfg.request_timeout + 2)

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.refresh_interval)
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(self.refresh())

    def push(self, system: str, flavors: Any) -> None:
        """An Outpost's push: its system's flavors, replaced at once.

        :raises FlavorError: when the push is malformed (nothing changes)
        """
        self.shared[system] = parse_flavors(flavors)

    # --- per user -------------------------------------------------------------

    async def _per_user(
        self, name: str, auth_state: dict | None, body: dict, kind: str
    ) -> dict[str, Any]:
        now = time.monotonic()
        found: dict[str, Any] = {}
        asks = []
        for system, entry in self.outposts().items():
            wanted = entry["user_flavors"] if kind == "flavors" else entry["credits"]
            if not wanted:
                continue
            cached = self._users.get((name, system, kind))
            if cached is not None and cached[0] > now:
                found[system] = cached[1]
            else:
                asks.append((system, entry))
        path = "/userflavors" if kind == "flavors" else "/usercredits"
        parse = parse_flavors if kind == "flavors" else parse_credits

        async def ask(system: str, entry: dict) -> None:
            try:
                value = parse(await self._ask(system, entry, path, body))
            except (OutpostError, FlavorError) as e:
                log.warning(
                    "%s of %s for %s not read: %s",
                    kind,
                    system,
                    name,
                    getattr(e, "log_message", e),
                )
                return
            self._users[(name, system, kind)] = (now + self.cfg.user_ttl, value)
            found[system] = value

        await asyncio.gather(*(ask(s, e) for s, e in asks))
        if kind == "flavors" and isinstance(auth_state, dict):
            stored = auth_state.get("outpost_flavors")
            if isinstance(stored, dict):
                for system, value in stored.items():
                    found.setdefault(system, value)
        return found

    async def _user_args(self, user: Any) -> tuple[str, dict | None, dict]:
        auth_state = await user.get_auth_state()
        return user.name, auth_state, authentication(user, auth_state)

    async def for_user(self, user: Any) -> dict[str, dict]:
        """The flavors ``user`` (a JupyterHub user) sees: system -> flavors."""
        await self.ensure()
        per_user = await self._per_user(*await self._user_args(user), "flavors")
        return user_view(self.shared, per_user)

    async def credits_for_user(self, user: Any) -> dict[str, dict]:
        """The credits ``user`` has: system -> the Outpost's answer (the Hub's
        credits where the Outpost has none for the user)."""
        await self.ensure()
        result = dict(self.credits)
        result.update(await self._per_user(*await self._user_args(user), "credits"))
        return result

    def forget(self, name: str) -> None:
        """Ask again for a user's flavors and credits next time (their usage
        changed: one of their servers started or stopped, or they logged in)."""
        for key in [k for k in self._users if k[0] == name]:
            del self._users[key]

    async def at_login(self, auth_model: dict) -> dict:
        """Ask the Outposts for a user's flavors as they log in; see
        :func:`outpostspawner.flavors.post_auth_hook`."""
        state = auth_model.get("auth_state")
        state = state if isinstance(state, dict) else {}
        name = str(auth_model.get("name", ""))
        body = {
            "access_token": state.get("access_token", ""),
            "name": state.get("name") or name,
            "groups": list(auth_model.get("groups") or state.get("groups") or []),
        }
        self.forget(name)  # a new login: ask again
        return await self._per_user(name, None, body, "flavors")


_services: dict[int, FlavorsService] = {}


def flavors_service(config: Any) -> FlavorsService:
    """The Hub process's flavors for the application's ``config``."""
    key = id(config)
    if key not in _services:
        _services[key] = FlavorsService(OutpostFlavors(config=config))
    return _services[key]
