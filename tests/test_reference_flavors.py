"""The reference Outpost's flavors and credits, as the JupyterHub Outpost has them:
a YAML file, ``current``, the 419 refusals, runtimes, pushes with the token."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_reference_outpost import call, start_body, wait_until  # tests/ is on sys.path
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from outpostspawner.testing import ReferenceOutpost

pytestmark = pytest.mark.timeout(15)

FLAVORS_YAML = """\
small:
  max: 2
  maxPerUser: 1
  weight: 1
  display_name: "Small <1 CPU>"
  description: one core
gpu:
  max: 1
  weight: 2
  display_name: GPU
  description: one GPU
  runtime:
    seconds: 1
"""


@pytest.fixture
async def http():
    client = AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


class PushReceiver(web.RequestHandler):
    def post(self) -> None:
        self.application.settings["pushes"].append(
            (self.request.headers.get("Authorization"), json.loads(self.request.body))
        )
        self.set_status(204)


@pytest.fixture
async def pushes():
    """``(url, [(authorization, body), ...])`` of a real HTTP server taking pushes."""
    received: list = []
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/push", PushReceiver)], pushes=received))
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}/push", received
    server.stop()


@pytest.fixture
async def outpost(tmp_path):
    path = tmp_path / "flavors.yaml"
    path.write_text(FLAVORS_YAML)
    async with ReferenceOutpost(
        backend="inprocess", flavors_path=str(path), max_per_user=2, credits={"hours": 10}
    ) as o:
        yield o


def body(name: str, flavor, user_id: int, url: str = "", **env) -> dict:
    b = start_body(name, start_id=name, JUPYTERHUB_USER_ID=str(user_id), **env)
    if url:
        b["env"]["JUPYTERHUB_FLAVORS_UPDATE_URL"] = url
        b["env"]["JUPYTERHUB_FLAVORS_UPDATE_TOKEN"] = "push-token"
    if flavor is not None:
        b["user_options"]["flavor"] = flavor
    return b


async def test_flavors_from_the_yaml_file_with_current(http, outpost):
    code, flavors = await call(http, outpost, "GET", "/flavors/")
    assert code == 200
    assert flavors["small"] == {
        "max": 2,
        "maxPerUser": 1,
        "weight": 1,
        "display_name": "Small <1 CPU>",
        "description": "one core",
        "current": 0,
    }
    assert flavors["gpu"]["runtime"] == {"seconds": 1}
    assert (await call(http, outpost, "POST", "/services", body("a", "small", 1)))[0] == 200
    _, flavors = await call(http, outpost, "GET", "/flavors/")
    assert (flavors["small"]["current"], flavors["gpu"]["current"]) == (1, 0)
    assert await call(http, outpost, "GET", "/credits/") == (200, {"hours": 10})
    assert await call(http, outpost, "POST", "/usercredits", {"user": "x"}) == (200, {"hours": 10})


@pytest.mark.parametrize(
    ("starts", "refused", "message"),
    [
        ([], ("x", "huge", 1), "x - Start with flavor huge not allowed. Allowed values for "
         "user: ['small', 'gpu']"),
        ([], ("x", None, 1), "x - Start with flavor None not allowed. Allowed values"),
        ([("a", "small", 1)], ("x", "small", 1),
         "x - Start with flavor small not allowed. Each user may only start 1 of small"),
        ([("a", "small", 1), ("b", "small", 2)], ("x", "small", 3),
         "x - Start with flavor small not allowed. Maximum (2) already reached."),
        ([("a", "small", 1), ("b", "gpu", 1)], ("x", "small", 1),
         "User with user id 1 of hub has reached the maximum limit of services (2)"),
    ],
)  # fmt: skip
async def test_starts_over_a_limit_are_refused_with_419(http, outpost, starts, refused, message):
    for name, flavor, user in starts:
        assert (await call(http, outpost, "POST", "/services", body(name, flavor, user)))[0] == 200
    code, data = await call(http, outpost, "POST", "/services", body(*refused))
    assert code == 419
    assert data["args"][0].startswith(message)
    assert outpost.get_service("x") is None


async def test_pushes_after_start_and_before_stop_with_the_token(http, outpost, pushes):
    url, received = pushes
    assert (await call(http, outpost, "POST", "/services", body("a", "small", 1, url)))[0] == 200
    await wait_until(lambda: len(received) == 1)
    token, usage = received[0]
    assert token == "token push-token" and usage["small"]["current"] == 1
    assert (await call(http, outpost, "DELETE", "/services/a/a"))[0] == 200
    await wait_until(lambda: len(received) == 2)
    assert received[1][1]["small"]["current"] == 0  # the stopped one counted out
    # no URL, no push
    assert (await call(http, outpost, "POST", "/services", body("b", "small", 1)))[0] == 200
    await asyncio.sleep(0.2)
    assert len(received) == 2


async def test_async_start_pushes_before_answering(http, outpost, pushes):
    url, received = pushes
    code, _ = await call(
        http, outpost, "POST", "/services", body("a", "small", 1, url),
        headers={"execution-type": "async"},
    )  # fmt: skip
    assert code == 202
    await wait_until(lambda: received)
    assert received[0][1]["small"]["current"] == 1


async def test_the_runtime_ends_a_service(http, outpost, pushes):
    url, received = pushes
    assert (await call(http, outpost, "POST", "/services", body("g", "gpu", 1, url)))[0] == 200
    (entry,) = (await call(http, outpost, "GET", "/services/"))[1]
    assert entry["end_date"] is not None and entry["end_date"] > entry["start_date"]
    await wait_until(lambda: outpost.get_service("g") is None, timeout=5)
    assert (await call(http, outpost, "GET", "/services/g/g"))[0] == 404
    await wait_until(lambda: len(received) == 2)
    assert received[-1][1]["gpu"]["current"] == 0


async def test_user_flavors_replace_the_hubs_for_that_user(http):
    def user_flavors(hub, authentication):
        if isinstance(authentication, dict) and authentication.get("user") == "vip":
            return {"big": {"max": -1, "weight": 1, "display_name": "Big"}}
        return None

    async with ReferenceOutpost(
        backend="inprocess", flavors={"small": {"max": -1}}, user_flavors=user_flavors
    ) as o:
        code, own = await call(http, o, "POST", "/userflavors", {"user": "vip"})
        assert code == 200 and list(own) == ["big"] and own["big"]["current"] == 0
        _, other = await call(http, o, "POST", "/userflavors", {"user": "ann"})
        assert list(other) == ["small"]
        vip = body("v", "big", 5)
        vip["authentication"] = {"user": "vip"}
        assert (await call(http, o, "POST", "/services", vip))[0] == 200
        code, data = await call(http, o, "POST", "/services", body("w", "big", 6))
        assert code == 419 and "Allowed values for user: ['small']" in data["args"][0]


async def test_without_flavors_nothing_is_checked(http):
    async with ReferenceOutpost(backend="inprocess") as o:
        assert await call(http, o, "GET", "/flavors/") == (200, {})
        assert (await call(http, o, "POST", "/services", body("a", None, 1)))[0] == 200
