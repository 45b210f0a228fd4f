"""End-to-end: flavors and credits, from the Outpost's YAML file to the user.

A real JupyterHub + configurable-http-proxy asks a reference Outpost for its
flavors (``GET /flavors/``, ``POST /userflavors``, ``/credits/``,
``/usercredits``) as the JupyterHub Outpost answers them; the Outpost runs real
``jupyterhub-singleuser`` servers, refuses starts over a limit with its 419
messages, pushes its usage to the Hub and ends servers at their flavor's runtime.
"""

from __future__ import annotations

import time

import pytest
import pytest_asyncio

from .conftest import HubProcess, restart_hub, start_hub, stop_hub, wait_for
from .flavor_setup import (
    CREDITS,
    HUB_CONFIG,
    SHORT_RUNTIME,
    SYSTEM,
    VIP,
    VIP_FLAVORS,
    flavors_outpost,
    options,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def outpost(tmp_path_factory):
    async with flavors_outpost(tmp_path_factory.mktemp("flavors-outpost")) as o:
        yield o


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub(outpost, tmp_path_factory):
    hub = await start_hub(tmp_path_factory.mktemp("flavors-hub"), outpost, extra_config=HUB_CONFIG)
    # the Outpost pushes its usage with a token of its own configuration
    outpost.flavors_update_token = hub.outpost_service_token
    try:
        yield hub
    finally:
        await stop_hub(hub)


@pytest.fixture
def outpost_limit(outpost):
    """Restores the Outpost's per-user limit of services after a test."""
    limit = outpost.flavors.max_per_user
    yield outpost.flavors
    outpost.flavors.max_per_user = limit


async def seen(hub: HubProcess, token: str, **params: str) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    resp = await hub.api("GET", "/outpostflavors" + (f"?{query}" if query else ""), token=token)
    assert resp.code == 200, resp.text
    return resp.json()


async def wait_current(hub: HubProcess, token: str, flavor: str, current: int) -> None:
    """Wait until the Hub shows ``current`` servers of ``flavor`` (a push arrived)."""

    async def shown():
        return (await seen(hub, token))[SYSTEM][flavor]["current"] == current

    await wait_for(
        shown, timeout=20, message=lambda: f"{flavor} current == {current}\n{hub.log_tail()}"
    )


async def start(hub: HubProcess, user: str, server: str, user_options: dict) -> None:
    resp = await hub.api("POST", hub.server_path(user, server), body=user_options)
    assert resp.code in (201, 202), resp.text


async def stop(hub: HubProcess, user: str, server: str = "") -> None:
    resp = await hub.api("DELETE", hub.server_path(user, server))
    assert resp.code in (202, 204), resp.text
    await hub.wait_stopped(user, server)


async def assert_refused_before_request(
    hub: HubProcess, user: str, token: str, server: str, user_options: dict, expected: str
) -> None:
    """The start fails on the Hub with ``expected`` and never reaches the Outpost."""
    before = len(hub.start_requests(user))
    await start(hub, user, server, user_options)
    await hub.wait_stopped(user, server)
    message = await hub.failed_message(user, token, server)
    assert expected in message, message
    assert len(hub.start_requests(user)) == before


async def test_flavors_before_any_start_and_fetched_again_as_a_restarted_hub_starts(
    outpost, tmp_path_factory
):
    """A new Hub shows the flavors before any start (its first flavors request
    fetches them); a restarted Hub asks the Outpost as it starts, before any
    request, when it has servers running."""
    extra = HUB_CONFIG + "\nc.JupyterHub.cleanup_servers = False\n"
    hub = await start_hub(tmp_path_factory.mktemp("restart-hub"), outpost, extra_config=extra)
    try:
        token = await hub.create_user("flavor-restart")
        flavors = (await seen(hub, token))[SYSTEM]
        assert sorted(flavors) == ["medium", "short", "small"]
        assert flavors["small"]["max"] == 1 and flavors["small"]["current"] == 0
        assert flavors["medium"]["maxPerUser"] == 1
        assert flavors["short"]["runtime"] == {"seconds": SHORT_RUNTIME}
        await start(hub, "flavor-restart", "", options("medium"))
        await hub.wait_ready("flavor-restart")

        await stop_hub(hub)
        since = time.time()
        hub = await restart_hub(hub)

        async def fetched():
            return [
                r
                for r in outpost.requests
                if r.method == "GET" and r.path.rstrip("/") == "/flavors" and r.time >= since
            ]

        await wait_for(fetched, timeout=10, message="GET /flavors/ as the Hub starts")
        assert (await seen(hub, token))[SYSTEM]["medium"]["current"] == 1
        await stop(hub, "flavor-restart")
    finally:
        await stop_hub(hub)


async def test_max_one_refuses_the_second_start_before_the_request_until_the_first_stops(
    hub, outpost
):
    alice = await hub.create_user("flavor-alice")
    bob = await hub.create_user("flavor-bob")
    await start(hub, "flavor-alice", "", options("small"))
    await hub.wait_ready("flavor-alice")
    await wait_current(hub, bob, "small", 1)  # the Outpost pushed its usage after the start
    pushes = [p for p in outpost.flavor_pushes if p[1] == 204]
    assert pushes and all(url.endswith(f"/hub/api/outpostflavors/{SYSTEM}") for url, *_ in pushes)

    await assert_refused_before_request(
        hub,
        "flavor-bob",
        bob,
        "",
        options("small"),
        "Start with flavor small not allowed. Maximum (1) already reached.",
    )

    await stop(hub, "flavor-alice")
    await wait_current(hub, alice, "small", 0)  # the push before the stop counts it out
    await start(hub, "flavor-bob", "", options("small"))
    await hub.wait_ready("flavor-bob")
    await stop(hub, "flavor-bob")
    assert hub.services_for("flavor-bob") == []


async def test_max_per_user_counts_each_user_apart(hub):
    carol = await hub.create_user("flavor-carol")
    await hub.create_user("flavor-dave")
    await start(hub, "flavor-carol", "one", options("medium"))
    await hub.wait_ready("flavor-carol", "one")
    await assert_refused_before_request(
        hub,
        "flavor-carol",
        carol,
        "two",
        options("medium"),
        "Start with flavor medium not allowed. Each user may only start 1 of medium",
    )

    await start(hub, "flavor-dave", "one", options("medium"))  # another user: allowed
    await hub.wait_ready("flavor-dave", "one")
    await stop(hub, "flavor-dave", "one")
    await stop(hub, "flavor-carol", "one")


async def test_the_outposts_own_refusal_reaches_the_user(hub, outpost_limit):
    """A limit the Hub does not know (the Outpost's services per user): the start
    is sent, refused with a 419, and the user sees the Outpost's message."""
    erin = await hub.create_user("flavor-erin")
    outpost_limit.max_per_user = 1
    await start(hub, "flavor-erin", "first", options("medium"))
    await hub.wait_ready("flavor-erin", "first")
    await start(hub, "flavor-erin", "second", options("short"))
    await hub.wait_stopped("flavor-erin", "second")
    message = await hub.failed_message("flavor-erin", erin, "second")
    assert "has reached the maximum limit of services (1)" in message, message
    assert len(hub.start_requests("flavor-erin")) == 2  # this one was sent
    assert len(hub.services_for("flavor-erin")) == 1  # and left nothing at the Outpost
    await stop(hub, "flavor-erin", "first")
    assert hub.services_for("flavor-erin") == []


async def test_a_flavors_runtime_ends_its_server(hub, outpost):
    await hub.create_user("flavor-frank")
    await start(hub, "flavor-frank", "", options("short"))
    await hub.wait_ready("flavor-frank")
    (record,) = hub.services_for("flavor-frank")
    # the Outpost's end date: its start + the runtime
    assert record.end_date == pytest.approx(record.created + SHORT_RUNTIME)
    # the Outpost stops it then; the Hub's next poll (every 5 s) sees it
    await hub.wait_stopped("flavor-frank", timeout=SHORT_RUNTIME + 30)
    assert time.time() >= record.end_date
    assert hub.services_for("flavor-frank") == []
    assert "/user/flavor-frank" not in await hub.routes()


async def test_per_user_flavors_and_credits_replace_the_shared_ones_for_that_user(hub):
    vip = await hub.create_user(VIP)
    other = await hub.create_user("flavor-grace")
    mine = await seen(hub, vip, credits="1")
    assert sorted(mine["flavors"][SYSTEM]) == sorted(VIP_FLAVORS)
    assert mine["flavors"][SYSTEM]["huge"]["max"] == 2
    assert mine["credits"] == {SYSTEM: {"hours": 5, "user": VIP}}
    theirs = await seen(hub, other, credits="1")
    assert sorted(theirs["flavors"][SYSTEM]) == ["medium", "short", "small"]
    assert theirs["credits"][SYSTEM] in ({"hours": 5, "user": "flavor-grace"}, CREDITS)

    await assert_refused_before_request(
        hub,
        VIP,
        vip,
        "",
        options("small"),
        "Start with flavor small not allowed. Allowed values for user: ['huge']",
    )

    await start(hub, VIP, "", options("huge"))
    await hub.wait_ready(VIP)
    (record,) = hub.services_for(VIP)
    assert record.body["authentication"]["name"] == VIP  # the Outpost sees whose start
    await stop(hub, VIP)


@pytest.mark.parametrize(
    ("system", "body", "code"),
    [
        (SYSTEM, ["small"], 400),  # not an object of flavors
        (SYSTEM, {"small": {"max": "1"}}, 400),  # a count that is not a number
        (SYSTEM, {"<img src=x onerror=alert(1)>": {"max": 1}}, 400),  # markup as a name
        (SYSTEM, {"small": {"max": 10**12}}, 400),  # out of range
        (SYSTEM, {f"f{i}": {"max": 1} for i in range(5000)}, 413),  # too large
        ("%3Cb%3Ex%3C%2Fb%3E", {"small": {"max": 1}}, 400),  # markup as a system
    ],
)
async def test_malformed_pushes_are_refused_and_change_nothing(hub, system, body, code):
    token = await hub.create_user(f"flavor-push-{code}-{len(str(body))}")
    before = await seen(hub, token)
    resp = await hub.api(
        "POST", f"/outpostflavors/{system}", token=hub.outpost_service_token, body=body
    )
    assert resp.code == code, resp.text
    assert await seen(hub, token) == before
    # a user's token may not push at all
    resp = await hub.api("POST", f"/outpostflavors/{SYSTEM}", token=token, body={})
    assert resp.code == 403, resp.text
