"""Tests of the reference Outpost on its own (no spawner involved)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from outpostspawner.testing import Fault, ReferenceOutpost
from outpostspawner.testing.faults import FaultPlan

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
async def http():
    client = AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


@pytest.fixture
async def outpost():
    async with ReferenceOutpost() as o:
        yield o


def start_body(name="srv", start_id="abc123", user="alice", **env):
    return {
        "name": name,
        "env": {
            "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:8888/user/{user}/{name}/",
            "JUPYTERHUB_SERVICE_PREFIX": f"/user/{user}/{name}/",
            "JUPYTERHUB_USER": user,
            **env,
        },
        "user_options": {"start_id": start_id},
        "misc": {"ip": "0.0.0.0"},
        "certs": {},
        "internal_trust_bundles": {},
    }


async def call(
    http,
    outpost,
    method,
    path,
    body=None,
    *,
    auth=("hub", "secret"),
    headers=None,
    timeout=4.0,
    raw=False,
):
    """Call the outpost; returns (code, parsed JSON body or raw bytes)."""
    hdrs = {"Content-Type": "application/json", "Accept": "application/json"}
    if auth:
        hdrs.update(ReferenceOutpost.basic_auth_header(*auth))
    hdrs.update(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    req = HTTPRequest(
        outpost.url + path,
        method=method,
        headers=hdrs,
        body=body,
        request_timeout=timeout,
        allow_nonstandard_methods=True,
    )
    resp = await http.fetch(req, raise_error=False)
    if raw:
        return resp.code, resp.body
    return resp.code, json.loads(resp.body) if resp.body else None


async def wait_until(predicate, timeout=4.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


async def get_service(http, address, path):
    """GET a URL on a started service once it answers."""

    async def attempt():
        try:
            resp = await http.fetch(f"http://{address}{path}", request_timeout=1)
        except (OSError, HTTPClientError):
            return None
        return json.loads(resp.body)

    return await wait_until(attempt)


def pid_gone(pid):
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- auth and routing ---------------------------------------------------------


async def test_ping_needs_no_auth(http, outpost):
    assert await call(http, outpost, "GET", "/ping", auth=None) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        ReferenceOutpost.basic_auth_header("hub", "wrong"),
        ReferenceOutpost.basic_auth_header("other", "secret"),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Bearer secret"},
    ],
)
@pytest.mark.parametrize(
    "method,path", [("GET", "/services/"), ("POST", "/services"), ("GET", "/flavors/")]
)
async def test_auth_rejected(http, outpost, headers, method, path):
    body = start_body() if method == "POST" else None
    code, data = await call(http, outpost, method, path, body, auth=None, headers=headers)
    assert code == 401
    assert data == {"error": "unauthorized"}
    assert outpost.services == {}


async def test_requests_recorded_and_redacted(http, outpost):
    await call(http, outpost, "GET", "/services/srv/abc?collect_logs=true")
    req = outpost.requests[-1]
    assert (req.method, req.path, req.query) == (
        "GET",
        "/services/srv/abc",
        {"collect_logs": "true"},
    )
    assert req.headers["Authorization"] == "Basic ***"
    assert req.json is None
    await call(http, outpost, "POST", "/services", start_body(name="rec"))
    assert outpost.requests[-1].json["name"] == "rec"


async def test_flavors_and_unknown_path(http, outpost):
    assert await call(http, outpost, "GET", "/flavors/") == (200, {})
    assert await call(http, outpost, "POST", "/userflavors", {}) == (200, {})
    code, data = await call(http, outpost, "GET", "/nothing/here")
    assert code == 404 and "error" in data


async def test_hubs_kept_apart(http):
    creds = {"hub-a": "pw-a", "hub-b": "pw-b"}
    async with ReferenceOutpost(credentials=creds, backend="inprocess") as o:
        a, b = ("hub-a", "pw-a"), ("hub-b", "pw-b")
        code, _ = await call(http, o, "POST", "/services", start_body(start_id="1"), auth=a)
        assert code == 200
        assert await call(http, o, "GET", "/services/", auth=b) == (200, [])
        assert (await call(http, o, "GET", "/services/srv/1", auth=b))[0] == 404
        assert (await call(http, o, "DELETE", "/services/srv/1", auth=b))[0] == 404
        code, _ = await call(http, o, "POST", "/services", start_body(start_id="2"), auth=b)
        assert code == 200
        assert set(o.services) == {("hub-a", "srv"), ("hub-b", "srv")}
        assert (await call(http, o, "DELETE", "/services/srv/1", auth=a))[0] == 200
        assert await call(http, o, "GET", "/services/srv/2", auth=b) == (
            200,
            {"status": None, "logs": []},
        )


# --- start / poll / stop --------------------------------------------------------


async def test_sync_start_poll_stop(http, outpost):
    code, data = await call(http, outpost, "POST", "/services", start_body())
    assert code == 200
    record = outpost.get_service("srv")
    assert data == {"service": record.address}
    assert record.address == f"127.0.0.1:{record.port}"
    pid = record.pid
    assert psutil.pid_exists(pid)

    answer = await get_service(http, record.address, "/user/alice/srv/")
    assert answer == {"ok": True, "user": "alice"}
    assert await get_service(http, record.address, "/user/alice/srv/api/status") == {
        "version": "dummy"
    }

    code, data = await call(http, outpost, "GET", "/services/srv/abc123?collect_logs=true")
    assert code == 200 and data["status"] is None
    assert any("dummy server listening" in line for line in data["logs"])
    assert (await call(http, outpost, "GET", "/services/srv/other-id"))[0] == 404

    code, data = await call(http, outpost, "DELETE", "/services/srv/abc123?collect_logs=true")
    assert code == 200 and isinstance(data["logs"], list)
    assert pid_gone(pid)
    assert record.status is not None
    assert outpost.services == {}
    assert (await call(http, outpost, "GET", "/services/srv/abc123"))[0] == 404
    assert (await call(http, outpost, "DELETE", "/services/srv/abc123"))[0] == 404


async def test_service_environment(http, monkeypatch):
    monkeypatch.setenv("OUTPOST_TEST_SECRET", "must-not-leak")
    dump = "import json, os, time; print(json.dumps(dict(os.environ)), flush=True); time.sleep(30)"
    async with ReferenceOutpost(command=[sys.executable, "-c", dump]) as o:
        body = start_body(JUPYTERHUB_API_TOKEN="tok")
        assert (await call(http, o, "POST", "/services", body))[0] == 200
        record = o.get_service("srv")

        async def env_line():
            _, data = await call(http, o, "GET", "/services/srv/abc123?collect_logs=true")
            return next((json.loads(line) for line in data["logs"] if line.startswith("{")), None)

        env = await wait_until(env_line)
    assert env["JUPYTERHUB_SERVICE_URL"] == f"http://127.0.0.1:{record.port}/user/alice/srv/"
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/user/alice/srv/"
    assert env["JUPYTERHUB_API_TOKEN"] == "tok"
    assert env["PATH"] == os.environ["PATH"]
    assert "OUTPOST_TEST_SECRET" not in env
    allowed = set(body["env"]) | {"PATH", "HOME", "LANG", "PYTHONPATH"}
    # the interpreter itself may add a few LC_*/locale variables
    assert {k for k in env if not k.startswith("LC_")} <= allowed


async def test_async_start(http):
    async with ReferenceOutpost(start_delay=0.4) as o:
        t0 = time.monotonic()
        code, data = await call(
            http,
            o,
            "POST",
            "/services",
            start_body(JUPYTERHUB_USER_ID="7"),
            headers={"execution-type": "async"},
        )
        assert (code, data) == (202, {"service": ""})
        assert time.monotonic() - t0 < 0.3
        (entry,) = (await call(http, o, "GET", "/services/"))[1]
        assert entry["start_pending"] is True and entry["state_stored"] is False
        assert "service" not in entry  # the JupyterHub Outpost lists no address
        assert await call(http, o, "GET", "/services/srv/abc123") == (
            200,
            {"status": None, "logs": []},
        )
        record = o.get_service("srv")
        await wait_until(lambda: record.ready)
        _, listing = await call(http, o, "GET", "/services/")
        (entry,) = listing
        assert set(entry) == {
            "name", "start_id", "start_date", "end_date", "jupyterhub", "jupyterhub_userid",
            "last_update", "state_stored", "start_pending", "stop_pending",
        }  # fmt: skip
        assert entry["name"] == "srv" and entry["start_id"] == "abc123"
        assert entry["jupyterhub"] == "hub" and entry["end_date"] is None
        assert entry["jupyterhub_userid"] == 7
        assert (entry["start_pending"], entry["state_stored"]) == (False, True)
        assert (await get_service(http, record.address, "/user/alice/srv/"))["ok"] is True


@pytest.mark.parametrize("execution", ["sync", "async"])
async def test_delete_during_start_delay(http, execution):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    async with ReferenceOutpost(start_delay=3) as o:
        headers = {"execution-type": "async"} if execution == "async" else {}
        start = asyncio.ensure_future(
            call(http, o, "POST", "/services", start_body(), headers=headers)
        )
        await wait_until(lambda: o.get_service("srv") is not None)
        record = o.get_service("srv")
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        assert (await call(http, o, "DELETE", "/services/srv/abc123"))[0] == 200
        assert time.monotonic() - t0 < 2
        code, data = await asyncio.wait_for(start, 2)
        if execution == "sync":
            assert code == 419 and data["class"] == "CancelledError"
        else:
            assert code == 202
        assert o.services == {}
        assert record.start_task.done()
        if record.pid is not None:
            assert pid_gone(record.pid)
        after = {p.pid for p in psutil.Process().children(recursive=True)}
        assert after - before == set()


async def test_start_replaces_running_service(http, outpost):
    assert (await call(http, outpost, "POST", "/services", start_body(start_id="one")))[0] == 200
    first = outpost.get_service("srv")
    assert (await call(http, outpost, "POST", "/services", start_body(start_id="two")))[0] == 200
    second = outpost.get_service("srv")
    assert second is not first and second.start_id == "two"
    assert pid_gone(first.pid)
    assert (await call(http, outpost, "GET", "/services/srv/one"))[0] == 404
    assert (await call(http, outpost, "GET", "/services/srv/two"))[1]["status"] is None


async def test_async_delete(http, outpost):
    assert (await call(http, outpost, "POST", "/services", start_body()))[0] == 200
    pid = outpost.get_service("srv").pid
    code, data = await call(
        http, outpost, "DELETE", "/services/srv/abc123", headers={"execution-type": "async"}
    )
    assert (code, data) == (202, {})
    assert (await call(http, outpost, "GET", "/services/srv/abc123"))[0] == 404
    await wait_until(lambda: pid_gone(pid))


async def test_process_exiting_during_start_is_419(http):
    cmd = [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]
    async with ReferenceOutpost(command=cmd, start_delay=2) as o:
        t0 = time.monotonic()
        code, data = await call(http, o, "POST", "/services", start_body())
        assert time.monotonic() - t0 < 1.5  # answered as soon as the process died
        assert code == 419
        assert set(data) == {"module", "class", "args", "traceback", "kwargs"}
        assert "status 3" in data["args"][0] and "boom" in data["traceback"]
        code, data = await call(http, o, "GET", "/services/srv/abc123?collect_logs=true")
        assert (code, data["status"]) == (200, 3)
        assert "boom" in data["logs"]


async def test_launch_failure_is_419(http):
    async with ReferenceOutpost(command=["/nonexistent/jupyterhub-singleuser"]) as o:
        code, data = await call(http, o, "POST", "/services", start_body())
        assert code == 419 and data["class"] == "FileNotFoundError"
        assert (await call(http, o, "GET", "/services/srv/abc123"))[1]["status"] == 127


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        {"env": {}, "user_options": {"start_id": "x"}},
        {"name": "", "user_options": {"start_id": "x"}},
        {"name": "a/b", "user_options": {"start_id": "x"}},
        {"name": "s", "env": ["A=1"], "user_options": {"start_id": "x"}},
        {"name": "s", "env": {"A": {"nested": 1}}, "user_options": {"start_id": "x"}},
        {"name": "s", "user_options": {}},
        {"name": "s", "user_options": {"start_id": "x"}, "misc": "nope"},
    ],
)
async def test_bad_start_body(http, outpost, body):
    code, data = await call(http, outpost, "POST", "/services", body)
    assert code == 400 and isinstance(data["error"], str)
    assert outpost.services == {}


async def test_list_with_the_extension_fields(http):
    """``list_extras`` (this reference Outpost's extension) adds address and status."""
    async with ReferenceOutpost(list_extras=True) as outpost:
        await check_list(http, outpost)


async def check_list(http, outpost):
    for name in ("a", "b"):
        code, _ = await call(http, outpost, "POST", "/services", start_body(name, start_id=name))
        assert code == 200
    for path in ("/services/", "/services"):
        code, data = await call(http, outpost, "GET", path)
        assert code == 200
        assert sorted((s["name"], s["start_id"], s["status"]) for s in data) == [
            ("a", "a", None),
            ("b", "b", None),
        ]
        assert all(s["service"].startswith("127.0.0.1:") for s in data)


async def test_inprocess_backend(http):
    async with ReferenceOutpost(backend="inprocess") as o:
        code, data = await call(http, o, "POST", "/services", start_body())
        assert code == 200
        record = o.get_service("srv")
        assert record.pid is None
        assert await get_service(http, data["service"], "/user/alice/srv/") == {
            "ok": True,
            "user": "alice",
        }
        assert (await call(http, o, "GET", "/services/srv/abc123"))[1]["status"] is None
        assert (await call(http, o, "DELETE", "/services/srv/abc123"))[0] == 200
        with pytest.raises((OSError, HTTPClientError)):
            await http.fetch(f"http://{data['service']}/user/alice/srv/", request_timeout=1)


async def test_stop_kills_everything_and_is_idempotent(http):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    o = ReferenceOutpost(command=[sys.executable, "-c", stubborn])
    o.stop_timeout = 0.5
    await o.start()
    for name in ("a", "b"):
        assert (await call(http, o, "POST", "/services", start_body(name)))[0] == 200
    pids = [r.pid for r in o.services.values()]
    await asyncio.sleep(0.3)  # let the processes install their SIGTERM handler
    await asyncio.wait_for(o.stop(), 4)
    await asyncio.wait_for(o.stop(), 1)
    assert all(pid_gone(pid) for pid in pids)
    with pytest.raises((OSError, HTTPClientError)):
        await http.fetch(o.url + "/ping", request_timeout=1)


async def test_pause_and_resume(http, outpost):
    """pause() makes the Outpost unreachable (connections refused, kept-alive ones
    closed) while its services run on; resume() listens on the same port again."""
    assert (await call(http, outpost, "POST", "/services", start_body()))[0] == 200
    record = outpost.get_service("srv")
    port = outpost.port
    # a kept-alive connection, as the spawner's libcurl client keeps one
    reader, writer = await asyncio.open_connection(outpost.host, port)
    try:
        writer.write(b"GET /ping HTTP/1.1\r\nHost: outpost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 4)
        assert head.startswith(b"HTTP/1.1 200")

        await asyncio.wait_for(outpost.pause(), 6)
        assert outpost.paused
        await asyncio.wait_for(outpost.pause(), 1)  # idempotent
        await asyncio.wait_for(reader.read(), 4)  # the rest of the answer, then EOF
        assert reader.at_eof()
    finally:
        writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(outpost.host, port)
    with pytest.raises(ConnectionRefusedError):
        await call(http, outpost, "GET", "/ping", auth=None)
    # the service runs on and answers
    assert not pid_gone(record.pid)
    assert await get_service(http, record.address, "/user/alice/srv/api/status") == {
        "version": "dummy"
    }

    await outpost.resume()
    assert not outpost.paused and outpost.port == port
    assert await call(http, outpost, "GET", "/ping", auth=None) == (200, {"status": "ok"})
    code, data = await call(http, outpost, "GET", "/services/srv/abc123")
    assert (code, data["status"]) == (200, None)
    await outpost.resume()  # idempotent

    # stopping a paused Outpost still ends its services
    await outpost.pause()
    await asyncio.wait_for(outpost.stop(), 8)
    assert pid_gone(record.pid)
    with pytest.raises(RuntimeError):
        await outpost.pause()
    with pytest.raises(RuntimeError):
        await outpost.resume()


# --- faults -------------------------------------------------------------------


async def test_fault_validation():
    with pytest.raises(ValueError):
        Fault("nope", "delay")
    with pytest.raises(ValueError):
        Fault("poll", "nope")
    with pytest.raises(ValueError):
        Fault("poll", "crash")
    with pytest.raises(ValueError):
        Fault("poll", "status", count=0)
    plan = FaultPlan()
    fault = plan.add(Fault("poll", "status", count=2))
    assert plan.take("stop", "x") is None
    assert plan.take("poll", "x") is fault and plan.take("poll", "x") is fault
    assert plan.take("poll", "x") is None and len(plan) == 0 and fault.hits == 2


async def test_fault_delay(http, outpost):
    outpost.faults.add(Fault("list", "delay", delay=0.5, count=1))
    t0 = time.monotonic()
    assert await call(http, outpost, "GET", "/services/") == (200, [])
    assert time.monotonic() - t0 >= 0.5
    t0 = time.monotonic()
    assert await call(http, outpost, "GET", "/services/") == (200, [])
    assert time.monotonic() - t0 < 0.4


async def test_fault_status(http, outpost):
    outpost.faults.add(Fault("start", "status", status=503, count=1))
    outpost.faults.add(Fault("poll", "status", status=500, body={"detail": "x"}))
    assert await call(http, outpost, "POST", "/services", start_body()) == (
        503,
        {"error": "injected"},
    )
    assert outpost.services == {}
    assert await call(http, outpost, "GET", "/services/srv/abc123") == (500, {"detail": "x"})
    assert await call(http, outpost, "GET", "/services/srv/abc123") == (500, {"detail": "x"})


async def test_fault_419(http, outpost):
    outpost.faults.add(Fault("start", "419", body="quota exceeded"))
    code, data = await call(http, outpost, "POST", "/services", start_body())
    assert code == 419
    assert data["module"] == "builtins" and data["class"] == "Exception"
    assert data["args"] == ["quota exceeded"] and data["kwargs"] == {}
    assert "Traceback" in data["traceback"]
    outpost.faults.clear()
    outpost.faults.add(Fault("stop", "419"))
    code, data = await call(http, outpost, "DELETE", "/services/srv/abc123")
    assert (code, data["args"]) == (419, ["injected failure"])


async def test_fault_hang(http, outpost):
    outpost.faults.add(Fault("poll", "hang", count=1))
    with pytest.raises(HTTPClientError) as err:
        await call(http, outpost, "GET", "/services/srv/abc123", timeout=0.5)
    assert err.value.code == 599
    # the next request is answered normally
    assert (await call(http, outpost, "GET", "/services/srv/abc123"))[0] == 404


async def test_fault_hang_does_not_block_stop(http):
    o = ReferenceOutpost()
    await o.start()
    o.faults.add(Fault("any", "hang"))
    pending = asyncio.ensure_future(call(http, o, "GET", "/services/", timeout=10))
    await wait_until(lambda: len(o.requests) == 1)
    t0 = time.monotonic()
    await asyncio.wait_for(o.stop(), 3)
    assert time.monotonic() - t0 < 2
    with pytest.raises(HTTPClientError):
        await asyncio.wait_for(pending, 3)


async def test_fault_bad_json(http, outpost):
    outpost.faults.add(Fault("list", "bad_json", count=1))
    assert await call(http, outpost, "GET", "/services/", raw=True) == (200, b"not json{")


async def test_fault_drop(http, outpost):
    outpost.faults.add(Fault("stop", "drop", count=1))
    with pytest.raises(HTTPClientError) as err:
        await call(http, outpost, "DELETE", "/services/srv/abc123")
    assert err.value.code == 599
    assert (await call(http, outpost, "DELETE", "/services/srv/abc123"))[0] == 404


@pytest.mark.parametrize("backend", ["process", "inprocess"])
async def test_fault_crash(http, backend):
    async with ReferenceOutpost(backend=backend) as o:
        o.faults.add(Fault("start", "crash", count=1))
        code, data = await call(http, o, "POST", "/services", start_body())
        assert code == 200 and data["service"]
        code, data = await call(http, o, "GET", "/services/srv/abc123?collect_logs=true")
        assert code == 200 and isinstance(data["status"], int) and data["status"] != 0
        assert "injected crash" in data["logs"]
        # count=1: the next start is healthy
        code, _ = await call(http, o, "POST", "/services", start_body(start_id="2"))
        assert code == 200
        assert (await call(http, o, "GET", "/services/srv/2"))[1]["status"] is None


async def test_fault_match_name_and_any(http, outpost):
    outpost.faults.add(Fault("any", "status", status=502, match_name="bad"))
    assert (await call(http, outpost, "POST", "/services", start_body("bad")))[0] == 502
    assert (await call(http, outpost, "GET", "/services/bad/abc123"))[0] == 502
    assert (await call(http, outpost, "GET", "/services/"))[0] == 200
    assert (await call(http, outpost, "POST", "/services", start_body("good")))[0] == 200
    outpost.faults.clear()
    outpost.faults.add(Fault("any", "status", status=503))
    assert (await call(http, outpost, "GET", "/ping", auth=None))[0] == 503
    assert (await call(http, outpost, "DELETE", "/_faults"))[0] == 200
    assert (await call(http, outpost, "GET", "/ping", auth=None))[0] == 200


async def test_faults_over_http(http, outpost):
    faults = [{"action": "poll", "kind": "status", "status": 504, "count": 1}]
    assert (await call(http, outpost, "POST", "/_faults", faults, auth=None))[0] == 401
    code, data = await call(http, outpost, "POST", "/_faults", faults)
    assert code == 200 and data["faults"][0]["status"] == 504
    assert (await call(http, outpost, "GET", "/services/x/y"))[0] == 504
    assert (await call(http, outpost, "GET", "/services/x/y"))[0] == 404
    await call(http, outpost, "POST", "/_faults", {"action": "list", "kind": "status"})
    assert len(outpost.faults) == 1
    assert (await call(http, outpost, "DELETE", "/_faults", auth=None))[0] == 401
    assert await call(http, outpost, "DELETE", "/_faults") == (200, {"faults": []})
    assert len(outpost.faults) == 0
    for bad in ([{"action": "poll"}], {"action": "x", "kind": "delay"}, b"{", [{"x": 1}]):
        assert (await call(http, outpost, "POST", "/_faults", bad))[0] == 400
    assert len(outpost.faults) == 0


# --- command line ---------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_cli_runs_and_cleans_up(http):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outpostspawner.testing",
        "--port",
        "0",
        "--credentials",
        "hub:secret",
        "--credentials",
        "other:pw",
        "--backend",
        "process",
        cwd=str(REPO),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # importing the package (and jupyterhub with it) takes about a second
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        prefix = "outpost listening on "
        assert line.startswith(prefix) and line.endswith("/services"), line
        services_url = line[len(prefix) :]

        class Remote:
            url = services_url[: -len("/services")]

        code, data = await call(http, Remote, "POST", "/services", start_body())
        assert code == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 1
        code, _ = await call(http, Remote, "GET", "/services/", auth=("other", "pw"))
        assert code == 200

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 4) == 0
        assert all(pid_gone(c.pid) for c in children)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_misc_command_override(http):
    """``misc.cmd``/``args`` replace the command only where ``allow_override`` allows."""
    body = start_body()
    body["misc"] = {"cmd": ["/bin/bash", "-lc"], "args": ["echo 'from misc'; sleep 30"]}
    async with ReferenceOutpost(allow_override=["cmd", "args"]) as o:
        assert (await call(http, o, "POST", "/services", body))[0] == 200

        async def logged():
            _, data = await call(http, o, "GET", "/services/srv/abc123?collect_logs=true")
            return "from misc" in data["logs"]

        await wait_until(logged)
        body["misc"] = {"cmd": "bash -c x"}
        code, data = await call(http, o, "POST", "/services", body)
        assert code == 419 and "misc.cmd must be a list of strings" in data["args"][0]
    async with ReferenceOutpost() as o:  # not allowed: the configured command runs
        body["misc"] = {"cmd": ["/bin/false"]}
        assert (await call(http, o, "POST", "/services", body))[0] == 200
        cmdline = psutil.Process(o.get_service("srv").pid).cmdline()
        assert any(part.endswith("dummy_server.py") for part in cmdline), cmdline
