"""OutpostSpawner against the reference Outpost: request bodies, hooks, errors, state."""

import asyncio
import json
import os

import pytest

from outpostspawner import HookError, OutpostSpawnError
from outpostspawner.testing import Fault


def header(request, name):
    return {k.lower(): v for k, v in request.headers.items()}.get(name.lower())


def requests(outpost, method=None):
    return [r for r in outpost.requests if method is None or r.method == method]


def service_requests(outpost, method):
    return [r for r in requests(outpost, method) if r.path.startswith("/services")]


async def test_sync_start_poll_stop(reference_outpost, outpost_spawner_factory):
    spawner = outpost_spawner_factory()
    url = await spawner.start()
    record = reference_outpost.get_service(spawner.outpost_name)
    assert url == f"http://{record.address}"
    assert spawner.port == record.port
    assert await spawner.poll() is None

    (post,) = service_requests(reference_outpost, "POST")
    assert post.headers["Authorization"] == "Basic ***"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Accept"] == "application/json"
    assert header(post, "execution-type") is None
    body = post.json
    assert body["name"] == f"{spawner.user.id}"
    assert body["user_options"] == {"start_id": spawner.start_id}
    assert body["certs"] == {} and body["internal_trust_bundles"] == {}
    assert "authentication" not in body
    misc = body["misc"]
    assert misc["ip"] == "0.0.0.0"
    assert misc["services_enabled"] is True
    assert misc["pod_name_template"] == "jupyter-{username}--{servername}"
    assert misc["dns_name_template"] == "{name}.{namespace}.svc.cluster.local"
    assert misc["extra_labels"] == {}
    assert misc["internal_ssl"] is False

    await spawner.stop()
    deletes = service_requests(reference_outpost, "DELETE")
    assert len(deletes) == 1
    # the default server has a real name: never /services//<start_id>
    assert deletes[0].path == f"/services/{spawner.user.id}/{spawner.start_id}"
    assert reference_outpost.get_service(spawner.outpost_name) is None
    assert not record.process or record.process.returncode is not None
    spawner.clear_state()
    assert await spawner.poll() == 0


async def test_env_holds_only_jupyterhub_variables(outpost_spawner_factory, reference_outpost):
    async def custom_env(spawner, user_options, jupyterhub_api_url):
        return {
            "JUPYTERHUB_STAGE": "prod",
            "OPTION": user_options["system"],
            "API": jupyterhub_api_url,
        }

    os.environ["OUTPOST_TEST_SECRET"] = "leak-me-not"
    try:
        spawner = outpost_spawner_factory(
            custom_env=custom_env,
            user_options={"system": "A"},
            environment={"ADMIN_VAR": "set-by-admin", "CALLABLE_VAR": lambda s: s.user.name},
            env_keep=["PATH", "OUTPOST_TEST_SECRET"],
            public_api_url="https://hub.example.org/hub/api/",
        )
        await spawner.start()
    finally:
        del os.environ["OUTPOST_TEST_SECRET"]
    body = service_requests(reference_outpost, "POST")[0].json
    env = body["env"]
    assert "PATH" not in env and "OUTPOST_TEST_SECRET" not in env
    assert env["ADMIN_VAR"] == "set-by-admin"
    assert env["CALLABLE_VAR"] == "alice"
    assert env["JUPYTERHUB_STAGE"] == "prod" and env["OPTION"] == "A"
    assert env["API"] == "https://hub.example.org/hub/api"
    assert env["JUPYTERHUB_API_URL"] == "https://hub.example.org/hub/api"
    assert env["JUPYTERHUB_ACTIVITY_URL"] == "https://hub.example.org/hub/api/users/alice/activity"
    assert env["JUPYTERHUB_EVENTS_URL"].endswith("/users/progress/events/alice")
    assert env["JUPYTERHUB_SETUPTUNNEL_URL"].endswith("/users/setuptunnel/alice")
    assert env["JUPYTERHUB_SERVICE_URL"] == f"http://0.0.0.0:{body['misc']['port']}/user/alice/"
    assert env["JUPYTERHUB_USER_ID"] == str(spawner.user.id)
    assert env["JUPYTERHUB_API_TOKEN"]
    allowed = {"ADMIN_VAR", "CALLABLE_VAR", "OPTION", "API"}
    assert all(k.startswith(("JUPYTERHUB_", "JUPYTER_")) or k in allowed for k in env)
    await spawner.stop()


async def test_named_server_and_hooks(outpost_spawner_factory, reference_outpost):
    def request_url(spawner, user_options):
        assert user_options["system"] == "B"
        return reference_outpost.services_url + "/"

    async def request_headers(spawner, user_options):
        return reference_outpost.basic_auth_header()

    def extra_labels(spawner, user_options):
        return {"system": user_options["system"]}

    async def custom_misc(spawner, user_options):
        return {"image": "jupyter/base-notebook:latest", "ip": "127.0.0.1"}

    async def custom_user_options(spawner, user_options):
        user_options["image"] = "minimal"
        return user_options

    spawner = outpost_spawner_factory(
        server="gpu-1",
        user_options={"system": "B"},
        request_url=request_url,
        request_headers=request_headers,
        extra_labels=extra_labels,
        custom_misc=custom_misc,
        custom_user_options=custom_user_options,
        custom_port=lambda spawner, user_options: 18123,
    )
    await spawner.start()
    body = service_requests(reference_outpost, "POST")[0].json
    assert body["name"] == f"{spawner.user.id}-gpu-1"
    assert body["user_options"] == {"system": "B", "image": "minimal", "start_id": spawner.start_id}
    assert body["misc"]["image"] == "jupyter/base-notebook:latest"
    assert body["misc"]["ip"] == "127.0.0.1"  # custom_misc wins over the defaults
    assert body["misc"]["port"] == 18123
    assert body["misc"]["extra_labels"] == {"system": "B"}
    assert body["env"]["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:18123/user/alice/gpu-1/"
    assert body["env"]["JUPYTERHUB_EVENTS_URL"].endswith("/users/progress/events/alice/gpu-1")
    assert spawner.user_options == {"system": "B"}  # the user's options are not changed
    await spawner.stop()
    assert service_requests(reference_outpost, "DELETE")[0].path.startswith(
        f"/services/{spawner.user.id}-gpu-1/"
    )


async def test_custom_misc_disable_default(outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory(custom_misc={"a": 1}, custom_misc_disable_default=True)
    await spawner.start()
    assert service_requests(reference_outpost, "POST")[0].json["misc"] == {"a": 1}
    await spawner.stop()


async def test_check_allowed_refuses_before_any_request(outpost_spawner_factory, reference_outpost):
    def check_allowed(spawner, user_options):
        if not user_options.get("allowed", True):
            raise Exception("This is not <b>allowed</b>")

    spawner = outpost_spawner_factory(check_allowed=check_allowed, user_options={"allowed": False})
    with pytest.raises(HookError) as ei:
        await spawner.start()
    assert str(ei.value) == "This is not <b>allowed</b>"
    assert ei.value.jupyterhub_html_message == "This is not &lt;b&gt;allowed&lt;/b&gt;"
    assert service_requests(reference_outpost, "POST") == []
    failed = spawner.events.last
    assert failed["failed"] is True
    assert "<b>" not in failed["html_message"]
    await spawner.stop()
    assert service_requests(reference_outpost, "DELETE") == []


async def test_broken_hook_names_the_hook(outpost_spawner_factory, reference_outpost):
    def custom_env(spawner, user_options, jupyterhub_api_url):
        raise KeyError("oops")

    spawner = outpost_spawner_factory(custom_env=custom_env)
    with pytest.raises(HookError, match="custom_env"):
        await spawner.start()
    assert service_requests(reference_outpost, "POST") == []


@pytest.mark.parametrize(
    "value, hook",
    [
        ({"request_headers": lambda s, uo: ["not", "a", "dict"]}, "request_headers"),
        ({"custom_env": {"A": {"nested": 1}}}, "custom_env"),
        ({"request_kwargs": {"no_such_kwarg": 1}}, "request_kwargs"),
        ({"custom_poll_interval": -5}, "custom_poll_interval"),
    ],
)
async def test_invalid_hook_results(outpost_spawner_factory, reference_outpost, value, hook):
    spawner = outpost_spawner_factory(**value)
    with pytest.raises(HookError) as ei:
        await spawner.start()
    assert ei.value.hook == hook
    assert reference_outpost.services == {}


async def test_419_is_shown_escaped_and_cleaned_up(outpost_spawner_factory, reference_outpost):
    reference_outpost.faults.add(Fault("start", "419", body="quota <exceeded> & more"))
    calls = []
    spawner = outpost_spawner_factory(
        failed_spawn_request_hook=lambda spawner, exception: calls.append(exception),
    )
    with pytest.raises(OutpostSpawnError) as ei:
        await spawner.start()
    message = str(ei.value)
    assert message == "builtins Exception: quota <exceeded> & more"
    assert "Traceback" not in message
    assert (
        ei.value.jupyterhub_html_message == "builtins Exception: quota &lt;exceeded&gt; &amp; more"
    )
    assert calls and calls[0].code == 419
    event = spawner.events.last
    assert event["failed"] and "&lt;exceeded&gt;" in event["html_message"]
    assert "<exceeded>" not in event["html_message"]
    # the failed start sent its one best-effort DELETE; JupyterHub's stop adds none
    assert len(service_requests(reference_outpost, "DELETE")) == 1
    await spawner.stop()
    assert len(service_requests(reference_outpost, "DELETE")) == 1
    assert reference_outpost.services == {}


@pytest.mark.parametrize(
    "fault, text",
    [
        (Fault("start", "status", status=503), "The Outpost answered 503 (start)."),
        (Fault("start", "status", status=401), "The Outpost refused the Hub's credentials."),
        (Fault("start", "bad_json"), "The Outpost sent an invalid answer (start): not JSON."),
        (
            Fault("start", "drop"),
            "The Outpost could not be reached (start): the connection failed.",
        ),
    ],
)
async def test_start_errors(outpost_spawner_factory, reference_outpost, fault, text):
    reference_outpost.faults.add(fault)
    spawner = outpost_spawner_factory()
    with pytest.raises(OutpostSpawnError) as ei:
        await spawner.start()
    assert str(ei.value).startswith(text)
    # the Outpost's address and libcurl's wording stay in the log
    assert str(reference_outpost.port) not in str(ei.value)
    await spawner.stop()
    assert reference_outpost.services == {}
    assert len(service_requests(reference_outpost, "DELETE")) <= 1


async def test_start_timeout_removes_the_remote_service(outpost_spawner_factory, reference_outpost):
    reference_outpost.start_delay = 3
    spawner = outpost_spawner_factory(request_kwargs_start={"request_timeout": 0.5})
    with pytest.raises(OutpostSpawnError) as ei:
        await spawner.start()
    assert str(ei.value) == "The Outpost could not be reached (start): it did not answer in time."
    assert len(service_requests(reference_outpost, "DELETE")) == 1
    await asyncio.sleep(0.2)
    assert reference_outpost.services == {}


async def test_invalid_service_address_is_refused(outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory(
        update_start_response=lambda spawner, start_response: "host;rm -rf /:80"
    )
    with pytest.raises(OutpostSpawnError, match="invalid server address"):
        await spawner.start()
    assert reference_outpost.services == {}


async def test_start_timeout_defaults_to_start_timeout(outpost_spawner_factory, reference_outpost):
    reference_outpost.start_delay = 1.2
    # tornado's own default (20 s) would be too short for slow starts; here the
    # request must outlive a request_kwargs timeout that is not for the start
    spawner = outpost_spawner_factory(request_kwargs={"connect_timeout": 5}, start_timeout=10)
    await spawner.start()
    assert await spawner.poll() is None
    await spawner.stop()


async def test_cancel_while_pending(outpost_spawner_factory, reference_outpost):
    reference_outpost.start_delay = 5
    spawner = outpost_spawner_factory()
    task = asyncio.ensure_future(spawner.start())
    for _ in range(100):
        if service_requests(reference_outpost, "POST"):
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spawner.events.last["html_message"] == "JupyterLab is cancelling the start."
    await spawner.stop()
    assert len(service_requests(reference_outpost, "DELETE")) == 1
    await asyncio.sleep(0.2)
    assert reference_outpost.services == {}


async def test_async_start_waits_for_the_address(outpost_spawner_factory, reference_outpost):
    """The Outpost answers 202 at once and reports the address later through the
    setuptunnel URL, with the server's token."""
    from tornado import httpserver, netutil, web

    received = []

    class SetupTunnel(web.RequestHandler):
        def post(self, user):
            received.append((user, self.request.headers["Authorization"]))
            spawner.receive_service_address(json.loads(self.request.body)["service"])
            self.set_status(202)

    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server = httpserver.HTTPServer(
        web.Application([(r"/hub/api/users/setuptunnel/(.*)", SetupTunnel)])
    )
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    reference_outpost.start_delay = 0.3
    spawner = outpost_spawner_factory(
        start_async=True, public_api_url=f"http://127.0.0.1:{port}/hub/api"
    )
    try:
        url = await asyncio.wait_for(spawner.start(), timeout=10)
    finally:
        server.stop()
    post = service_requests(reference_outpost, "POST")[0]
    assert header(post, "execution-type") == "async"
    record = reference_outpost.get_service(spawner.outpost_name)
    assert url == f"http://{record.address}"
    assert received == [("alice", f"token {spawner.api_token}")]
    await spawner.stop()


@pytest.mark.parametrize("when", ["while the start waits", "before the start answer"])
async def test_address_reported_by_callback(outpost_spawner_factory, reference_outpost, when):
    """The address arrives through setuptunnel while the start waits for it, or, from a
    fast remote side, before the Outpost's answer to the start reaches the Hub."""
    if when == "before the start answer":
        reference_outpost.start_delay = 0.5  # the answer comes late

    def ready():
        if when == "before the start answer":
            return bool(service_requests(reference_outpost, "POST"))
        return any("report its address" in e["message"] for e in spawner.events)

    async def fake_callback():
        for _ in range(200):
            if ready():
                spawner.receive_service_address("127.0.0.1:9", tunnel=False)
                return
            await asyncio.sleep(0.01)

    spawner = outpost_spawner_factory(update_start_response=lambda spawner, start_response: "")
    helper = asyncio.ensure_future(fake_callback())
    url = await asyncio.wait_for(spawner.start(), timeout=5)
    await helper
    assert url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="no start is waiting"):
        spawner.receive_service_address("127.0.0.1:10")
    await spawner.stop()


async def test_async_start_that_crashes_fails(outpost_spawner_factory, reference_outpost):
    reference_outpost.faults.add(Fault("start", "crash"))
    spawner = outpost_spawner_factory(start_async=True, async_start_poll_interval=0.1)
    with pytest.raises(OutpostSpawnError, match="stopped during its start|no longer knows"):
        await asyncio.wait_for(spawner.start(), timeout=10)
    assert reference_outpost.services == {}


@pytest.mark.parametrize(
    "fault, traits, expected",
    [
        (Fault("poll", "status", status=404), {}, 0),
        (Fault("poll", "status", status=404), {"request_404_poll_keep_running": True}, None),
        (Fault("poll", "status", status=500), {}, None),
        (Fault("poll", "status", status=500), {"request_failed_poll_keep_running": False}, 0),
        (Fault("poll", "bad_json"), {}, None),
        (Fault("poll", "drop"), {"request_failed_poll_keep_running": False}, 0),
    ],
)
async def test_poll_errors(outpost_spawner_factory, reference_outpost, fault, traits, expected):
    spawner = outpost_spawner_factory(**traits)
    await spawner.start()
    reference_outpost.faults.add(fault)
    assert await spawner.poll() == expected
    reference_outpost.faults.clear()
    await spawner.stop()


async def test_poll_reports_exit_code_and_logs(outpost_spawner_factory, reference_outpost):
    reference_outpost.faults.add(Fault("start", "crash"))
    spawner = outpost_spawner_factory(collect_logs_polling=True)
    await spawner.start()
    for _ in range(100):
        status = await spawner.poll()
        if status is not None:
            break
        await asyncio.sleep(0.05)
    assert isinstance(status, int)
    assert spawner.exit_code == status
    assert service_requests(reference_outpost, "GET")[-1].query.get("collect_logs") == "true"
    assert isinstance(spawner.logs, list)
    await spawner.stop()


@pytest.mark.parametrize(
    "hook_result, polls_outpost, expected",
    [(True, True, None), (False, False, None), (None, False, None), (3, False, 3)],
)
async def test_pre_poll_hook(
    outpost_spawner_factory, reference_outpost, hook_result, polls_outpost, expected
):
    async def pre_poll_hook(spawner):
        return hook_result

    spawner = outpost_spawner_factory(pre_poll_hook=pre_poll_hook)
    await spawner.start()
    before = len(service_requests(reference_outpost, "GET"))
    assert await spawner.poll() == expected
    assert (len(service_requests(reference_outpost, "GET")) > before) is polls_outpost
    await spawner.stop()


async def test_stop_variants(outpost_spawner_factory, reference_outpost):
    stopped = []
    spawner = outpost_spawner_factory(
        stop_async=lambda spawner: True,
        collect_logs=True,
        pre_stop_hook=lambda spawner: stopped.append(spawner.name),
    )
    await spawner.start()
    await spawner.stop()
    (delete,) = service_requests(reference_outpost, "DELETE")
    assert header(delete, "execution-type") == "async"
    assert delete.query.get("collect_logs") == "true"
    assert stopped == [""]


async def test_stop_404_is_success(outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory()
    await spawner.start()
    reference_outpost.faults.add(Fault("stop", "status", status=404))
    await spawner.stop()
    assert spawner.exit_code is None or spawner.exit_code == 0


async def test_state_round_trip(outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory(custom_poll_interval=lambda spawner, user_options: 2500)
    await spawner.start()
    assert spawner._poll_interval_ms == 2500
    state = spawner.get_state()
    assert state["start_id"] == spawner.start_id
    assert state["port"] == spawner.port
    assert state["poll_interval_ms"] == 2500
    assert [e["message"] for e in state["events"]][:1] == [
        "Sending the start request to the Outpost."
    ]

    # a new Hub process: a fresh spawner loads the state and finds the server
    restored = outpost_spawner_factory(custom_poll_interval=0)
    restored.load_state(state)
    assert restored.start_id == spawner.start_id
    assert restored.port == spawner.port
    assert restored._poll_interval_ms == 2500
    assert restored.events.to_list() == spawner.events.to_list()
    assert await restored.poll() is None
    await restored.stop()
    assert len(service_requests(reference_outpost, "DELETE")) == 1
    restored.clear_state()
    assert restored.get_state().get("start_id") is None
    assert await restored.poll() == 0


async def test_nothing_mutable_is_shared(outpost_spawner_factory):
    a = outpost_spawner_factory(user="a")
    b = outpost_spawner_factory(user="b")
    assert a.events is not b.events
    assert a.port_forward_info is not b.port_forward_info
    a.port_forward_info["x"] = 1
    assert b.port_forward_info == {}


async def test_progress_events(outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory(
        filter_events=lambda spawner, event: {**event, "message": event["message"].upper()}
    )
    spawner._spawn_pending = True
    spawner._spawn_future = asyncio.ensure_future(spawner.start())
    seen = []
    async for event in spawner._generate_progress():
        seen.append(event)
        if event.get("message") == "The Outpost started the server.":
            await spawner.add_event(
                {
                    "progress": 95,
                    "message": "remote says hi",
                    "html_message": "<b>hi</b>",
                    "bogus": 1,
                }
            )
    await spawner._spawn_future
    spawner._spawn_pending = False
    assert seen[0] == {"progress": 0, "message": "Server requested"}
    (remote,) = [e for e in seen if e["message"] == "REMOTE SAYS HI"]
    assert "bogus" not in remote
    assert remote["html_message"] == "&lt;b&gt;hi&lt;/b&gt;"
    with pytest.raises(ValueError):
        await spawner.add_event({"progress": "lots"})
    await spawner.stop()


async def test_no_first_default_event(outpost_spawner_factory):
    spawner = outpost_spawner_factory(show_first_default_event=lambda spawner: False)
    spawner._spawn_pending = True
    spawner._spawn_future = asyncio.get_running_loop().create_future()
    spawner._spawn_future.set_result(None)
    spawner.events.append({"message": "x", "progress": 10})
    assert [e async for e in spawner._generate_progress()] == [{"message": "x", "progress": 10}]


async def test_events_are_bounded(outpost_spawner_factory):
    spawner = outpost_spawner_factory(events_max=5)
    spawner.events = type(spawner.events)(5)
    for i in range(20):
        await spawner.add_event({"message": str(i)})
    messages = [e["message"] for e in spawner.events]
    assert messages == ["0", "16", "17", "18", "19"]


async def test_post_spawn_and_expected_path_hooks(outpost_spawner_factory, reference_outpost):
    seen = {}

    def post_spawn_request_hook(spawner, resp_json):
        seen["resp"] = resp_json

    async def update_expected_path(spawner, expected_path):
        return expected_path + "/extra"

    spawner = outpost_spawner_factory(
        post_spawn_request_hook=post_spawn_request_hook, update_expected_path=update_expected_path
    )
    url = await spawner.start()
    assert seen["resp"]["service"] in url
    assert url.endswith("/extra")
    await spawner.stop()


async def test_custom_forward_and_service(outpost_spawner_factory, reference_outpost):
    calls = []

    async def ssh_custom_forward(spawner, port_forward_info):
        calls.append(("forward", dict(port_forward_info)))

    def ssh_custom_svc(spawner, port_forward_info):
        calls.append(("svc", port_forward_info["service"]))
        return "svc-host.example", spawner.port

    spawner = outpost_spawner_factory(
        ssh_during_startup=True,
        ssh_custom_forward=ssh_custom_forward,
        ssh_custom_forward_remove=lambda spawner, port_forward_info: calls.append(("unforward",)),
        ssh_custom_svc=ssh_custom_svc,
        ssh_custom_svc_remove=lambda spawner, port_forward_info: calls.append(("unsvc",)),
    )
    url = await spawner.start()
    record = reference_outpost.get_service(spawner.outpost_name)
    assert url == f"http://svc-host.example:{spawner.port}"
    assert calls[0][0] == "forward"
    assert calls[0][1]["service"] == record.address
    assert calls[0][1]["local_port"] == spawner.port
    state = spawner.get_state()
    assert state["port_forward_info"]["forward"] is True
    await spawner.stop()
    assert [c[0] for c in calls] == ["forward", "svc", "unsvc", "unforward"]


async def test_forward_without_forwarder_fails_cleanly(outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory(ssh_during_startup=True)
    with pytest.raises(OutpostSpawnError, match="ssh_node is not set"):
        await spawner.start()
    await spawner.stop()
    assert reference_outpost.services == {}
    assert len(service_requests(reference_outpost, "DELETE")) == 1


async def test_internal_ssl_sends_certs(outpost_spawner_factory, reference_outpost, tmp_path):
    files = {}
    for name in ("key", "cert", "ca", "bundle"):
        p = tmp_path / f"{name}.pem"
        p.write_text(f"-----BEGIN {name}-----\n")
        files[name] = str(p)
    extra = tmp_path / "extra.pem"
    extra.write_text("-----BEGIN extra-----\n")
    spawner = outpost_spawner_factory(
        internal_ssl=True,
        cert_paths={"keyfile": files["key"], "certfile": files["cert"], "cafile": files["ca"]},
        internal_trust_bundles={"hub-ca": files["bundle"]},
        additional_cafile=lambda spawner: str(extra),
    )
    body = await spawner._start_body({})
    assert body["certs"]["keyfile"] == "-----BEGIN key-----\n"
    assert body["certs"]["cafile"] == "-----BEGIN ca-----\n-----BEGIN extra-----\n"
    assert body["internal_trust_bundles"]["hub-ca"].endswith("-----BEGIN extra-----\n")
    assert body["misc"]["internal_ssl"] is True
    assert body["env"]["JUPYTERHUB_SERVICE_URL"].startswith("https://")


async def test_connections_are_reused(outpost_spawner_factory, reference_outpost):
    spawner = outpost_spawner_factory()
    await spawner.start()
    for _ in range(5):
        assert await spawner.poll() is None
    peers = {r.peer for r in service_requests(reference_outpost, "GET")}
    await spawner.stop()
    assert len(peers) == 1 and "" not in peers


async def test_poll_that_finds_the_server_gone_removes_what_the_start_made(
    outpost_spawner_factory, reference_outpost
):
    """JupyterHub ends a server whose poll reports an exit code without calling
    stop() (User.stop stops only running servers) and then clears the state: the
    poll itself stops it at the Outpost (one DELETE) and removes Service and forward."""
    removed = []
    spawner = outpost_spawner_factory(
        ssh_during_startup=True,
        ssh_custom_forward=lambda spawner, port_forward_info: None,
        ssh_custom_forward_remove=lambda spawner, port_forward_info: removed.append("forward"),
        ssh_custom_svc=lambda spawner, port_forward_info: ("svc", port_forward_info["local_port"]),
        ssh_custom_svc_remove=lambda spawner, port_forward_info: removed.append("svc"),
    )
    await spawner.start()
    record = reference_outpost.get_service(spawner.outpost_name)
    record.process.kill()
    await asyncio.wait_for(record.process.wait(), 10)

    status = await spawner.poll()
    assert status is not None and status == record.status
    assert removed == ["svc", "forward"]
    assert len(service_requests(reference_outpost, "DELETE")) == 1
    assert reference_outpost.get_service(spawner.outpost_name) is None
    # a stop() after all changes nothing
    await spawner.stop()
    assert len(service_requests(reference_outpost, "DELETE")) == 1
    assert removed == ["svc", "forward"]
