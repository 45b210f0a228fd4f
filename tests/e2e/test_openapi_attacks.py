"""Schemathesis against a real JupyterHub: requests generated from the OpenAPI
document of the package's endpoints (``docs/_static/hub-callbacks.openapi.yaml``),
valid and invalid, with the tokens of every kind of caller.

For every request: no 5xx, no status, content type or body outside the document,
no request accepted that the document says must be refused, and a refused request
changes nothing (users and servers, the Outposts' flavors, the running servers'
list, the Outpost's services).

The Hub holds a pending start (``alice``, waiting for its address), a running
server (``bob``) and a user without servers (``carol``); job submissions stay
pending too. ``OUTPOSTSPAWNER_ATTACK_EXAMPLES`` sets the examples per operation
and mode (default 12); ``HYPOTHESIS_PROFILE=long`` with a larger count is the long
run of ``docs/testing.md``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation

from .conftest import start_hub, stop_hub, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "_static" / "hub-callbacks.openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(str(DOCUMENT))
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
EXAMPLES = int(os.environ.get("OUTPOSTSPAWNER_ATTACK_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: where an invalid value must be refused; unknown query parameters and headers are
#: ignored, as everywhere in JupyterHub's API
VALIDATED = (ParameterLocation.BODY, ParameterLocation.PATH)
#: the callers: a token of each kind, an unknown token, and none
CALLERS = (
    *("admin", "outpost", "alice", "bob", "carol"),
    *("alice-server", "bob-server", "carol-job"),
    *("bogus", "none"),
)
USERS = ("alice", "bob", "carol")
#: "owner" and "owner's server" -> the path's user -> the caller
OWNERS = {
    "owner": {
        "alice": "alice",
        "bob": "bob",
        "carol": "carol",
        "carol's job": "carol",
        "generated": "admin",
        "no user": "outpost",  # the Outposts' own endpoints
    },
    "owner's server": {
        "alice": "alice-server",
        "bob": "bob-server",
        "carol": "carol-job",
        "carol's job": "carol-job",
        "generated": "admin",
        "no user": "admin",
    },
}

ATTACK_CONFIG = """
# every start waits for its address (setuptunnel); with a long Outpost start delay
# it stays pending for the whole module
c.OutpostSpawner.start_async = True
c.OutpostSpawner.custom_user_options = {}
c.Spawner.start_timeout = 3600
c.JupyterHub.named_server_limit_per_user = 3
c.JobAPIHandlerConfig.job_server_limit_per_user = 1
"""


@dataclass
class Target:
    """The Hub under attack and what the callers hold."""

    base_url: str
    tokens: dict[str, str] = field(repr=False)
    admin: str = field(repr=False)
    outpost: Any = None
    #: the name of carol's job (its server)
    job: str = ""
    #: (operation, mode) -> answer status -> how many
    statuses: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)

    def get(self, path: str, token: str | None = None) -> Any:
        resp = requests.get(
            self.base_url + path,
            headers={"Authorization": f"token {token or self.admin}"},
            timeout=15,
        )
        resp.raise_for_status()
        return resp.json()

    def snapshot(self) -> dict:
        """What a refused request must not change."""
        users = {}
        for model in self.get("/users?include_stopped_servers=1"):
            users[model["name"]] = {
                "admin": model["admin"],
                "servers": {
                    name: (bool(s.get("ready")), bool(s.get("pending")), bool(s.get("stopped")))
                    for name, s in (model.get("servers") or {}).items()
                },
            }
        return {
            "users": users,
            "flavors": self.get("/outpostflavors?credits=1", self.tokens["carol"]),
            "running": sorted(self.get("/servers", self.tokens["outpost"])),
            "services": sorted(self.outpost.services),
        }

    def settled(self, quiet: float = 1.5, timeout: float = 20) -> dict:
        """A snapshot that has not changed for ``quiet`` seconds: the background
        work of an accepted request (a job being prepared or removed) is done."""
        deadline = time.monotonic() + timeout
        last, since = self.snapshot(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.snapshot()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


def pending_server_token(hub, user: str) -> str | None:
    """The JUPYTERHUB_API_TOKEN the Outpost holds for the user's latest start."""
    records = hub.services_for(user)
    return records[-1].body["env"]["JUPYTERHUB_API_TOKEN"] if records else None


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def target(outpost, tmp_path_factory):
    hub = await start_hub(
        tmp_path_factory.mktemp("attack-hub"), outpost, extra_config=ATTACK_CONFIG
    )
    delay = outpost.start_delay
    try:
        tokens = {user: await hub.create_user(user) for user in USERS}
        outpost.start_delay = 0
        resp = await hub.api("POST", hub.server_path("bob"))
        assert resp.code in (201, 202), resp.text
        await hub.wait_ready("bob")
        outpost.start_delay = 3600
        resp = await hub.api("POST", hub.server_path("alice"))
        assert resp.code == 202, resp.text

        async def alice_started():
            return pending_server_token(hub, "alice")

        tokens["alice-server"] = await wait_for(alice_started, timeout=20, message="alice's start")
        tokens["bob-server"] = pending_server_token(hub, "bob")
        resp = await hub.api(
            "POST",
            "/outpostflavors/cluster-a",
            token=hub.outpost_service_token,
            body={"small": {"max": 10, "current": 1, "display_name": "Small"}},
        )
        assert resp.code == 204, resp.text
        # a job of carol's, pending at the Outpost like every start after bob's
        resp = await hub.api(
            "POST",
            "/job",
            token=tokens["carol"],
            body={"user_options": {"option": "cluster-a"}, "notebooks": ["a.ipynb"]},
        )
        assert resp.code == 201, resp.text
        job = resp.text.rsplit("/", 1)[1]

        async def job_started():
            return pending_server_token(hub, "carol")

        tokens["carol-job"] = await wait_for(job_started, timeout=30, message="carol's job")
        tokens.update(admin=hub.api_token, outpost=hub.outpost_service_token, bogus="0" * 32)
        yield (
            Target(
                base_url=f"{hub.url}/hub/api",
                tokens=tokens,
                admin=hub.api_token,
                outpost=outpost,
                job=job,
            ),
            hub,
        )
    finally:
        outpost.start_delay = delay
        await stop_hub(hub)


def invalid_where_validated(case) -> bool:
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.NEGATIVE:
        return False
    return any(
        info.mode is GenerationMode.NEGATIVE
        for where, info in meta.components.items()
        if where in VALIDATED
    )


def attack(target: Target, label: str, mode: GenerationMode) -> None:
    operation = OPERATIONS[label]
    params = [name for name in ("user", "server") if f"{{{name}}}" in operation.path]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(mode),
        # the owner of the path's user, or their server, half of the time
        caller=st.sampled_from(("owner", "owner's server") * 5 + CALLERS + ("generated",)),
        user=st.sampled_from(USERS + ("carol's job", "generated")),
    )
    def one(case, caller, user):
        if mode is GenerationMode.POSITIVE and "user" in params and user != "generated":
            if user == "carol's job":
                case.path_parameters["user"] = "carol"
                if "server" in params:
                    case.path_parameters["server"] = target.job
            else:
                case.path_parameters["user"] = user
        if caller in OWNERS:
            caller = OWNERS[caller][user if "user" in params else "no user"]
        headers = dict(case.headers or {})
        if caller == "none":
            headers.pop("Authorization", None)
        elif caller != "generated":
            headers["Authorization"] = f"token {target.tokens[caller]}"
        case.headers = headers
        before = target.snapshot()
        response = case.call(base_url=target.base_url, timeout=30)
        seen = target.statuses.setdefault((label, mode.value), {})
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        if response.status_code < 400 and invalid_where_validated(case):
            raise AssertionError(
                f"{case.method} {case.formatted_path} accepted ({response.status_code}) "
                f"an invalid request:\n{case.meta.phase.data.description}\nbody {case.body!r}"
            )
        if response.status_code >= 400:
            after = target.snapshot()
            assert after == before, (
                f"{case.method} {case.formatted_path} refused with {response.status_code} "
                f"but changed the Hub's state:\nbefore {before}\nafter  {after}"
            )
        else:
            target.settled()

    one()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
# deletions last: a job removed by an accepted DELETE is gone for the other operations
@pytest.mark.parametrize(
    "label", sorted(OPERATIONS, key=lambda label: (label.startswith("DELETE "), label))
)
async def test_operation_survives_generated_requests(target, label, mode):
    state, hub = target
    try:
        await asyncio.to_thread(attack, state, label, mode)
    except BaseException:
        print(hub.log_tail(80))
        raise
    seen = state.statuses.get((label, mode.value), {})
    print(
        f"{label} {mode.value}: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}"
    )
    assert seen, "no request was sent"
    # the Hub is still answering and logged no unhandled error
    resp = await hub.api("GET", "/")
    assert resp.code == 200
    assert "Uncaught exception" not in hub.log_path.read_text(), hub.log_tail(80)
