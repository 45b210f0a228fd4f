"""The fault matrix: the Outpost slow, down, answering garbage or restarting
(dropping the connection mid-request) at each phase of a server's life, with a
real JupyterHub, configurable-http-proxy and ``jupyterhub-singleuser``.

For every cell: the user sees a clear message where something failed, nothing is
left on the Hub (no server, no route), nothing is left at the Outpost that the
Hub still lists as running (``GET /hub/api/servers``, what an Outpost compares its
services with to remove orphans), and the module's long-running server is not
lost. ``docs/testing.md`` has the table of cells and outcomes.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import pytest
import pytest_asyncio

from outpostspawner.testing import Fault

from .conftest import OUTPOST_CREDENTIALS, HubProcess, start_hub, stop_hub, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PHASES = ("start", "poll", "stop")
FAULTS = ("slow", "down", "garbage", "restarting")
#: seconds the Outpost is slow, or down, in a cell
SLOW = 3
DOWN = 4
#: what the user reads when the start fails (None: the start succeeds)
START_MESSAGES = {
    "slow": None,
    "down": "The Outpost could not be reached (start)",
    "garbage": "The Outpost sent an invalid answer (start): not JSON.",
    "restarting": "The Outpost could not be reached (start)",
}
#: the Outpost's answer for each fault that is one. A connection closed without an
#: answer is tried again once by libcurl when it was a kept-alive one, so a
#: restarting Outpost drops two in a row.
ANSWERS = {
    "slow": {"kind": "delay", "delay": SLOW, "count": 1},
    "garbage": {"kind": "bad_json", "count": 1},
    "restarting": {"kind": "drop", "count": 2},
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub(outpost, tmp_path_factory):
    """A Hub that polls every second, so that poll faults are seen quickly."""
    hub = await start_hub(
        tmp_path_factory.mktemp("hub-matrix"),
        outpost,
        extra_config="c.OutpostSpawner.custom_poll_interval = 1000\n",
    )
    try:
        yield hub
    finally:
        if outpost.paused:
            await outpost.resume()
        await stop_hub(hub)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def keeper(hub):
    """A server that runs across the whole matrix: no cell may lose it."""
    user = "fm-keeper"
    token = await hub.create_user(user)
    resp = await hub.api("POST", hub.server_path(user))
    assert resp.code in (201, 202), resp.text
    await hub.wait_ready(user, timeout=60)
    return user, token


async def reachable(hub: HubProcess, user: str, token: str) -> bool:
    try:
        resp = await hub.fetch(f"{hub.url}/user/{quote(user)}/api/status", token=token, timeout=5)
    except ConnectionError:
        return False
    return resp.code == 200


async def hub_lists(hub: HubProcess, start_id: str) -> bool:
    """The Hub's running-servers list holds a server of this start."""
    resp = await hub.api("GET", "/servers", token=hub.outpost_service_token)
    assert resp.code == 200, resp.text
    return any(key.endswith(f"_{start_id}") for key in resp.json())


async def orphans_collected(hub: HubProcess, user: str) -> list[str]:
    """Do what an Outpost does with ``GET /hub/api/servers``: stop every service of
    ``user`` whose start the Hub no longer lists. Returns their names."""
    removed = []
    for record in hub.services_for(user):
        if not await hub_lists(hub, record.start_id):
            removed.append(record.name)
            url = f"{hub.outpost.services_url}/{quote(record.name)}/{quote(record.start_id)}"
            resp = await hub.http.fetch(
                url,
                method="DELETE",
                headers=hub.outpost.basic_auth_header(*OUTPOST_CREDENTIALS),
                raise_error=False,
            )
            assert resp.code == 200, resp.code
    return removed


async def assert_cell_clean(hub: HubProcess, user: str, keeper) -> None:
    assert await hub.server_model(user) is None
    assert f"/user/{user}" not in await hub.routes()
    assert hub.services_for(user) == [], [r.name for r in hub.services_for(user)]
    assert hub.process.returncode is None, hub.log_tail()
    model = await hub.server_model(keeper[0])
    assert model is not None and model["ready"], model
    assert await reachable(hub, *keeper)


async def outpost_down_for(outpost, seconds: float) -> None:
    await outpost.pause()
    try:
        await asyncio.sleep(seconds)
    finally:
        await outpost.resume()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("phase", PHASES)
async def test_fault_matrix(hub, keeper, outpost_settings, phase, fault):
    outpost = outpost_settings
    user = f"fm-{phase}-{fault}"
    token = await hub.create_user(user)
    assert await reachable(hub, *keeper)

    # --- start ---------------------------------------------------------------
    if phase == "start":
        if fault == "down":
            await outpost.pause()
        else:
            outpost.faults.add(Fault("start", **ANSWERS[fault]))
        try:
            resp = await hub.api("POST", hub.server_path(user))
            assert resp.code in (201, 202), resp.text
            message = START_MESSAGES[fault]
            if message is None:
                await hub.wait_ready(user, timeout=30)
            else:
                await hub.wait_stopped(user, timeout=30)
                shown = await hub.failed_message(user, token)
                assert message in shown, shown
        finally:
            if outpost.paused:
                await outpost.resume()
        if START_MESSAGES[fault] is not None:
            # a failed start asks the Outpost to remove what it may have created
            await wait_for(
                lambda: asyncio.sleep(0, not hub.services_for(user)),
                timeout=15,
                message=lambda: f"{user}'s service to be removed\n{hub.log_tail()}",
            )
            await assert_cell_clean(hub, user, keeper)
            return
        assert await reachable(hub, user, token)
    else:
        resp = await hub.api("POST", hub.server_path(user))
        assert resp.code in (201, 202), resp.text
        await hub.wait_ready(user, timeout=30)
    (record,) = hub.services_for(user)

    # --- polling ----------------------------------------------------------------
    if phase == "poll":
        if fault == "down":
            await outpost_down_for(outpost, DOWN)
        else:
            answer = {**ANSWERS[fault], "count": 2}
            fault_ = outpost.faults.add(Fault("poll", match_name=record.name, **answer))
            await wait_for(
                lambda: asyncio.sleep(0, fault_.hits >= 2),
                timeout=30,
                message="two faulty polls",
            )
        # kept running and reachable, and polled normally again
        since = time.time()
        await wait_for(
            lambda: asyncio.sleep(0, polled_after(outpost, record.name, since)),
            timeout=20,
            message="a normal poll after the fault",
        )
        model = await hub.server_model(user)
        assert model is not None and model["ready"], model
        assert await reachable(hub, user, token)

    # --- stop -----------------------------------------------------------------------
    if phase == "stop":
        if fault == "down":
            await outpost.pause()
        else:
            outpost.faults.add(Fault("stop", match_name=record.name, **ANSWERS[fault]))
    try:
        resp = await hub.api("DELETE", hub.server_path(user))
        assert resp.code in (202, 204), resp.text
        await hub.wait_stopped(user, timeout=30)
    finally:
        if outpost.paused:
            await outpost.resume()
    # the Hub no longer lists the start: an Outpost that missed the stop removes it
    assert not await hub_lists(hub, record.start_id)
    removed = await orphans_collected(hub, user)
    if phase == "stop" and fault != "slow":
        assert removed == [record.name]  # the stop never reached the Outpost's spawner
    else:
        assert removed == []
    await assert_cell_clean(hub, user, keeper)


def polled_after(outpost, name: str, since: float) -> bool:
    return any(
        r.method == "GET" and r.path.startswith(f"/services/{quote(name)}/") and r.time >= since
        for r in outpost.requests
    )
