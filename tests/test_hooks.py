"""The hook resolver: every documented signature, sync and async, validation, errors."""

import logging
from functools import partial

import pytest
from tornado import web

from outpostspawner import hooks
from outpostspawner.errors import HookError


class FakeSpawner:
    _log_name = "alice/"
    log = logging.getLogger("test")

    def __init__(self, **traits):
        self.__dict__.update(traits)
        self.user_options = {"system": "A"}


async def test_plain_value_is_returned():
    s = FakeSpawner(ssh_node="node1")
    assert await hooks.resolve(s, "ssh_node") == "node1"


@pytest.mark.parametrize("is_async", [False, True])
async def test_spawner_only(is_async):
    if is_async:

        async def ssh_key(spawner):
            return f"/keys/{spawner.user_options['system']}"
    else:

        def ssh_key(spawner):
            return f"/keys/{spawner.user_options['system']}"

    s = FakeSpawner(ssh_key=ssh_key)
    # offered more arguments than the hook takes: only the spawner is passed
    assert await hooks.resolve(s, "ssh_key", port_forward_info={"x": 1}) == "/keys/A"


async def test_spawner_and_second_argument():
    seen = {}

    def ssh_key(spawner, port_forward_info):
        seen["pfi"] = port_forward_info
        return "/k"

    s = FakeSpawner(ssh_key=ssh_key)
    assert await hooks.resolve(s, "ssh_key", port_forward_info={"service": "h:1"}) == "/k"
    assert seen["pfi"] == {"service": "h:1"}


async def test_three_arguments_in_order():
    async def custom_env(spawner, user_options, jupyterhub_api_url):
        return {"A": user_options["system"], "URL": jupyterhub_api_url}

    s = FakeSpawner(custom_env=custom_env)
    out = await hooks.resolve(
        s, "custom_env", user_options={"system": "B"}, jupyterhub_api_url="http://hub/api"
    )
    assert out == {"A": "B", "URL": "http://hub/api"}


async def test_kwargs_and_keyword_only():
    def h1(spawner, **kwargs):
        return sorted(kwargs)

    def h2(spawner, *, jupyterhub_api_url):
        return jupyterhub_api_url

    def h3(spawner, *args):
        return args

    s = FakeSpawner(h1=h1, h2=h2, h3=h3)
    offered = {"user_options": {}, "jupyterhub_api_url": "u"}
    assert await hooks.resolve(s, "h1", **offered) == ["jupyterhub_api_url", "user_options"]
    assert await hooks.resolve(s, "h2", **offered) == "u"
    assert await hooks.resolve(s, "h3", **offered) == ({}, "u")


async def test_callable_objects_partials_and_methods():
    class Hook:
        def __call__(self, spawner, user_options):
            return user_options["v"]

        def method(self, spawner):
            return "m"

    def base(prefix, spawner, user_options):
        return prefix + user_options["v"]

    s = FakeSpawner(a=Hook(), b=Hook().method, c=partial(base, "p-"))
    assert await hooks.resolve(s, "a", user_options={"v": "x"}) == "x"
    assert await hooks.resolve(s, "b", user_options={"v": "x"}) == "m"
    assert await hooks.resolve(s, "c", user_options={"v": "x"}) == "p-x"


async def test_no_argument_callable():
    s = FakeSpawner(h=lambda: 5)
    assert await hooks.resolve(s, "h", user_options={}) == 5


async def test_missing_required_argument_names_the_hook():
    def h(spawner, user_options, something_else):
        return 1

    s = FakeSpawner(custom_misc=h)
    with pytest.raises(HookError) as ei:
        await hooks.resolve(s, "custom_misc", user_options={})
    assert ei.value.hook == "custom_misc"
    assert "custom_misc" in str(ei.value)
    assert "something_else" in ei.value.log_message


async def test_exception_becomes_hook_error_without_details_for_users(caplog):
    def h(spawner):
        raise RuntimeError("secret-ish detail")

    s = FakeSpawner(custom_port=h)
    with pytest.raises(HookError) as ei:
        await hooks.resolve(s, "custom_port")
    assert "custom_port" in str(ei.value)
    assert "RuntimeError" in str(ei.value)
    assert "secret-ish" not in str(ei.value)
    assert "custom_port" in caplog.text


async def test_show_errors_shows_the_hooks_message():
    def check_allowed(spawner, user_options):
        raise Exception("This is not allowed")

    s = FakeSpawner(check_allowed=check_allowed)
    with pytest.raises(HookError, match="This is not allowed"):
        await hooks.resolve(s, "check_allowed", user_options={}, show_errors=True)


async def test_http_errors_pass_through():
    async def h(spawner):
        raise web.HTTPError(403, "nope")

    s = FakeSpawner(h=h)
    with pytest.raises(web.HTTPError) as ei:
        await hooks.resolve(s, "h")
    assert ei.value.status_code == 403
    assert not isinstance(ei.value, HookError)


async def test_async_result_is_awaited_before_validation():
    async def flag(spawner):
        return False

    s = FakeSpawner(ssh_during_startup=flag)
    # an un-awaited coroutine would be truthy; the resolver awaits it
    assert await hooks.resolve(s, "ssh_during_startup", check=hooks.is_bool) is False


@pytest.mark.parametrize(
    "check, value",
    [
        (hooks.is_bool, "yes"),
        (hooks.is_dict, ["a"]),
        (hooks.is_str_dict, {"a": 1}),
        (hooks.is_port, 70000),
        (hooks.is_port, True),
        (hooks.is_nonempty_str, ""),
        (hooks.is_nonneg_number, -1),
        (hooks.is_str_list, "abc"),
    ],
)
async def test_wrong_result_types_are_refused(check, value):
    s = FakeSpawner(h=lambda spawner: value)
    with pytest.raises(HookError, match="'h' setting is invalid"):
        await hooks.resolve(s, "h", check=check)


async def test_validators_accept_and_normalise():
    assert hooks.is_port("8080") == 8080
    assert hooks.is_dict(None) == {}
    assert hooks.is_nonempty_str("  x ") == "x"
    assert hooks.is_optional_str(None) is None


async def test_signature_plans_are_cached():
    calls = []

    def h(spawner, user_options):
        calls.append(user_options)
        return {}

    s = FakeSpawner(h=h)
    for i in range(3):
        await hooks.resolve(s, "h", user_options={"i": i})
    assert [c["i"] for c in calls] == [0, 1, 2]
    assert hooks._cached_plan.cache_info().hits >= 2
