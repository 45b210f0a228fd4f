"""Pure pieces: address validation, names, events, error formatting, trait table."""

import asyncio

import pytest
from traitlets import Any, Bool, Callable, Dict, Float, Unicode, Union

from outpostspawner import OutpostSpawner
from outpostspawner.addresses import ServiceAddress, parse_service_address
from outpostspawner.events import EventLog, make_event, sanitize_event
from outpostspawner.names import dns_safe
from outpostspawner.outpost import remote_error_text


@pytest.mark.parametrize(
    "value, expected",
    [
        ("10.0.0.5:8888", ServiceAddress("10.0.0.5", 8888)),
        ("jupyter-alice.ns.svc:8080", ServiceAddress("jupyter-alice.ns.svc", 8080)),
        ("http://node1:1", ServiceAddress("node1", 1, "http")),
        ("https://node1.example.org:65535/", ServiceAddress("node1.example.org", 65535, "https")),
        ("[::1]:8888", ServiceAddress("::1", 8888)),
    ],
)
def test_valid_addresses(value, expected):
    assert parse_service_address(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "node1",
        "node1:0",
        "node1:65536",
        "node1:80x",
        "-oProxyCommand=x:22",
        "host;rm -rf /:80",
        "host name:80",
        "user@host:80",
        "host:80/path",
        "$(id):80",
        "[1.2.3.4]:80",
        "a" * 300 + ":80",
        None,
        80,
        "ftp://host:21",
    ],
)
def test_invalid_addresses(value):
    with pytest.raises(ValueError):
        parse_service_address(value)


def test_netloc_brackets_ipv6():
    assert parse_service_address("[fe80::1]:22").netloc == "[fe80::1]:22"


@pytest.mark.parametrize(
    "name, expected",
    [("", ""), ("alice", "alice"), ("gpu-1", "gpu-1"), ("a1", "a1")],
)
def test_dns_safe_keeps_safe_names(name, expected):
    assert dns_safe(name) == expected


@pytest.mark.parametrize("name", ["Alice", "a--b", "user@example.org", "-x", "ü" * 40, "x" * 40])
def test_dns_safe_escapes(name):
    out = dns_safe(name)
    assert out and len(out) <= 30
    assert all(c.isdigit() or ("a" <= c <= "z") or c == "-" for c in out)
    assert "--" not in out and not out.startswith("-") and not out.endswith("-")


def test_dns_safe_is_injective_for_similar_names():
    names = ["Alice", "alice!", "ALICE", "a.lice", "a-lice", "a_lice"]
    assert len({dns_safe(n) for n in names}) == len(names)


def test_make_event_escapes():
    e = make_event("<script>x</script>", progress=5, details="<b>")
    assert "<script>" not in e["html_message"]
    assert "&lt;script&gt;" in e["html_message"] and "&lt;b&gt;" in e["html_message"]
    assert e["message"] == "<script>x</script>" and e["progress"] == 5


def test_sanitize_event():
    assert sanitize_event({"progress": 150, "message": "m", "x": 1}) == {
        "progress": 100,
        "message": "m",
    }
    for bad in ([], {"failed": "yes"}, {"message": 3}, {"progress": True}):
        with pytest.raises(ValueError):
            sanitize_event(bad)


async def test_event_log_follow_wakes_and_ends():
    log = EventLog(10)
    done = asyncio.get_running_loop().create_future()
    seen = []

    async def reader():
        async for e in log.follow(done):
            seen.append(e["message"])

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0)
    log.append({"message": "a"})
    await asyncio.sleep(0.01)
    assert seen == ["a"]
    log.append({"message": "b"})
    done.set_result(None)
    await asyncio.wait_for(task, 2)
    assert seen == ["a", "b"]


async def test_event_log_stops_at_failed_event():
    log = EventLog(10, [{"message": "a"}, {"message": "x", "failed": True}, {"message": "late"}])
    assert [e["message"] async for e in log.follow()] == ["a", "x"]


def test_remote_error_text():
    text, tb = remote_error_text(
        {"module": "kubespawner", "class": "KubeSpawnerError", "args": ["no", 3], "traceback": "T"}
    )
    assert text == "kubespawner KubeSpawnerError: no, 3" and tb == "T"
    assert remote_error_text("garbage")[0] == "the remote spawner failed"
    assert remote_error_text({"args": "x" * 5000})[0] == "unknown error"
    assert len(remote_error_text({"args": ["x" * 5000]})[0]) <= 1000


# The configuration reference: every trait, its type and its default.
_UNSET = object()
REFERENCE = {
    "additional_cafile": (Any, None),
    "cancelling_event": (
        Union,
        {
            "failed": False,
            "ready": False,
            "progress": 99,
            "message": "",
            "html_message": "JupyterLab is cancelling the start.",
        },
    ),
    "check_allowed": (Any, None),
    "collect_logs": (Bool, False),
    "collect_logs_polling": (Bool, False),
    "custom_env": (Union, {}),
    "custom_misc": (Union, {}),
    "custom_misc_disable_default": (Bool, False),
    "custom_poll_interval": (Union, 0),
    "custom_port": (Union, 0),
    "custom_user_options": (Union, {}),
    "dns_name_template": (Unicode, "{name}.{namespace}.svc.cluster.local"),
    "extra_labels": (Union, {}),
    "failed_spawn_request_hook": (Any, None),
    "filter_events": (Callable, None),
    "http_client_defaults": (Dict, {}),
    "namespace": (Unicode, _UNSET),
    "poll_jitter": (Float, 0.1),
    "post_spawn_request_hook": (Any, None),
    "pre_poll_hook": (Any, False),
    "pre_stop_hook": (Any, False),
    "progress_ready_hook": (Any, None),
    "public_api_url": (Any, None),
    "request_404_poll_keep_running": (Bool, False),
    "request_failed_poll_keep_running": (Bool, True),
    "request_headers": (Union, {}),
    "request_kwargs": (Union, {}),
    "request_kwargs_start": (Union, None),
    "request_url": (Union, ""),
    "show_first_default_event": (Any, True),
    "ssh_create_remote_forward": (Any, False),
    "ssh_custom_forward": (Any, None),
    "ssh_custom_forward_remote": (Any, None),
    "ssh_custom_forward_remote_remove": (Any, None),
    "ssh_custom_forward_remove": (Any, None),
    "ssh_custom_svc": (Any, None),
    "ssh_custom_svc_remove": (Any, None),
    "ssh_during_startup": (Union, False),
    "ssh_forward_options": (Union, {}),
    "ssh_forward_remote_options": (Union, {}),
    "ssh_key": (Union, "/home/jovyan/.ssh/id_rsa"),
    "ssh_node": (Union, None),
    "ssh_node_mapping": (Callable, None),
    "ssh_port": (Union, 22),
    "ssh_recreate_at_start": (Union, False),
    "ssh_remote_key": (Union, "/home/jovyan/.ssh/id_rsa_remote"),
    "ssh_remote_node": (Union, None),
    "ssh_remote_port": (Union, 22),
    "ssh_remote_username": (Union, "jhuboutpost"),
    "ssh_username": (Union, "jhuboutpost"),
    "start_async": (Union, False),
    "stop_async": (Union, False),
    "svc_create": (Union, True),
    "svc_name_template": (Unicode, "jupyter-{username}--{servername}"),
    "update_expected_path": (Any, False),
    "update_start_response": (Any, False),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_configuration_reference(name):
    kind, default = REFERENCE[name]
    traits = OutpostSpawner.class_traits(config=True)
    assert name in traits, f"{name} is not configurable"
    assert isinstance(traits[name], kind), f"{name} is {type(traits[name]).__name__}"
    if default is not _UNSET:
        assert getattr(OutpostSpawner(), name) == default


def test_group_overrides_and_apply_user_options_come_from_jupyterhub():
    traits = OutpostSpawner.class_traits(config=True)
    for name in ("apply_user_options", "group_overrides", "progress_ready_hook", "poll_jitter"):
        assert name in traits


def test_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="jupyterhub.spawners")}
    assert eps["outpost"].load() is OutpostSpawner


def test_user_flavors_never_change_the_shared_cache():
    import copy

    from outpostspawner.flavors.model import user_view as user_flavors

    cache = {"a": {"small": {"max": 4, "current": 3}}, "b": {"big": {"max": 1, "current": 0}}}
    before = copy.deepcopy(cache)
    per_user = {"a": {"small": {"max": 10, "current": 0}}, "b": False}
    result = user_flavors(cache, per_user)
    assert list(result) == ["a"]
    assert (result["a"]["small"]["max"], result["a"]["small"]["current"]) == (10, 3)
    assert cache == before
    assert per_user["a"]["small"]["current"] == 0
    result["a"]["small"]["max"] = 99
    assert cache == before
    assert user_flavors(cache, None) == cache


async def test_metrics_count_requests_and_forwards(outpost_spawner_factory, reference_outpost):
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0

    before_start = sample(
        "outpostspawner_outpost_request_duration_seconds_count", action="start", status="200"
    )
    spawner = outpost_spawner_factory(
        ssh_during_startup=True,
        ssh_custom_forward=lambda spawner, port_forward_info: None,
        ssh_custom_forward_remove=lambda spawner, port_forward_info: None,
        svc_create=False,
    )
    forwards = sample("outpostspawner_active_forwards")
    await spawner.start()
    assert sample("outpostspawner_active_forwards") == forwards + 1
    after = sample(
        "outpostspawner_outpost_request_duration_seconds_count", action="start", status="200"
    )
    assert after == before_start + 1

    # a Hub restart: the restored spawner counts its forward once, and the rebuild
    restored = outpost_spawner_factory(
        ssh_recreate_at_start=True,
        ssh_custom_forward=lambda spawner, port_forward_info: None,
        ssh_custom_forward_remove=lambda spawner, port_forward_info: None,
    )
    rebuilds = sample("outpostspawner_tunnel_rebuilds_total", reason="hub_restart", outcome="ok")
    restored.load_state(spawner.get_state())
    assert await restored.poll() is None
    assert sample("outpostspawner_active_forwards") == forwards + 1
    assert (
        sample("outpostspawner_tunnel_rebuilds_total", reason="hub_restart", outcome="ok")
        == rebuilds + 1
    )
    await restored.stop()
    assert sample("outpostspawner_active_forwards") == forwards
    assert (
        sample("outpostspawner_outpost_request_duration_seconds_count", action="stop", status="200")
        >= 1
    )
