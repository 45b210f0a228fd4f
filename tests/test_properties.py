"""Property-based tests (Hypothesis) of every parser of remote or configured input.

Each parser gets arbitrary input of the kind it reads (JSON values with unicode,
huge numbers, deep nesting; arbitrary bytes for HTTP bodies; arbitrary text for
names and addresses) and must either return a valid value or raise its own clear
error: never another exception, never a value that could become a shell word, an
SSH option or markup. Valid inputs round-trip. The CI profile has a fixed seed and
a bounded number of examples (``tests/conftest.py``); ``HYPOTHESIS_PROFILE=long``
runs many more.
"""

from __future__ import annotations

import html
import json
import logging
import re
import shlex
import string
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado.httpclient import HTTPRequest
from traitlets.config import Config

from outpostspawner import hooks
from outpostspawner.addresses import ServiceAddress, is_valid_host, parse_service_address
from outpostspawner.errors import OutpostError
from outpostspawner.events import sanitize_event
from outpostspawner.flavors import form as flavor_form
from outpostspawner.flavors.model import (
    FlavorError,
    parse_credits,
    parse_flavors,
    refusal,
    user_view,
)
from outpostspawner.forwarder.options import (
    ConfigError,
    SSHTarget,
    asyncssh_options,
    check_forward_id,
    check_host,
    check_path,
    check_username,
    split_options,
)
from outpostspawner.jobs.model import (
    MARKER_COMPLETED,
    MARKER_STARTED,
    JobRequestError,
    ResultError,
    parse_job_request,
    parse_notebook_result,
    parse_result_report,
    results_from_logs,
)
from outpostspawner.jobs.script import job_command
from outpostspawner.outpost import _parse_success, _safe_url, remote_error_text
from outpostspawner.spawner import _env_values, _logs, check_poll_answer

# --- strategies ----------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: huge numbers too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=40,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=8)
#: text with what breaks parsers and shells: controls, newlines, quotes, markup, options
nasty_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from(list("\n\r\t\x00 -;|&$`'\"<>/:[]@%")),
    max_size=60,
)
hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True
)
ports = st.integers(1, 65535)

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f\x85\u2028\u2029]")


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- addresses -----------------------------------------------------------------------


@given(st.one_of(nasty_text, json_values))
def test_any_service_answer_is_an_address_or_a_clear_error(value):
    try:
        address = parse_service_address(value)
    except ValueError as e:
        assert str(e).startswith("service address")
        return
    assert isinstance(address, ServiceAddress)
    assert 1 <= address.port <= 65535
    assert is_valid_host(address.host)
    # nothing that could become an option, a second word or a second line
    assert not address.host.startswith("-")
    assert not _CONTROL_OR_SPACE.search(address.host)
    assert parse_service_address(address.netloc)[:2] == address[:2]


@given(
    st.one_of(hostnames, st.ip_addresses().map(str)),
    ports,
    st.sampled_from(["", "http://", "https://"]),
)
def test_a_valid_address_round_trips(host, port, scheme):
    shown = f"[{host}]" if ":" in host else host
    address = parse_service_address(f"{scheme}{shown}:{port}")
    assert (address.host, address.port) == (host, port)
    assert address.scheme == (scheme[:-3] or None)


# --- Outpost answers -----------------------------------------------------------------

_REQUEST = HTTPRequest("http://outpost.example/services/u/s")


@given(
    st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(200, 299),
)
def test_any_success_body_is_json_or_a_clear_error(body, code):
    try:
        resp = _parse_success("poll", _REQUEST, body, code)
    except OutpostError as e:
        assert e.code == code
        assert "not JSON" in str(e)
        return
    assert resp.code == code


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
def test_deeply_nested_answers_are_refused_cleanly(depth):
    try:
        resp = _parse_success("poll", _REQUEST, deep(depth), 200)
    except OutpostError as e:
        assert "not JSON" in str(e)
    else:
        assert isinstance(resp.body, list)
    with pytest.raises(OutpostError):
        check_poll_answer(
            _parse_success("poll", _REQUEST, b'{"status": ' + deep(depth) + b"}", 200)
        )


@given(json_values)
def test_any_poll_answer_is_a_status_or_a_clear_error(body):
    from outpostspawner.outpost import Response

    try:
        answer = check_poll_answer(Response(200, body))
    except OutpostError as e:
        assert "invalid poll answer" in str(e)
        return
    status = answer["status"]
    assert status is None or (type(status) is int)


@given(json_values)
def test_any_419_body_becomes_bounded_plain_text(body):
    text, tb = remote_error_text(body)
    assert isinstance(text, str) and isinstance(tb, str)
    assert 0 < len(text) <= 1000


@given(json_values)
def test_any_logs_answer_is_a_list_of_strings(value):
    logs = _logs(value)
    assert isinstance(logs, list) and all(isinstance(line, str) for line in logs)


# --- events --------------------------------------------------------------------------


@given(
    st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["progress", "message", "html_message", "failed", "ready", "x"]),
            json_values,
        ),
    )
)
def test_any_remote_event_is_clean_or_refused(event):
    try:
        out = sanitize_event(event, trusted=False)
    except ValueError:
        return
    assert set(out) <= {"progress", "message", "html_message", "failed", "ready"}
    if "progress" in out:
        assert 0 <= out["progress"] <= 100
    if "html_message" in out:
        shown = out["html_message"]
        assert "<" not in shown and ">" not in shown and '"' not in shown
        assert html.unescape(shown) == event["html_message"][:10_000]


# --- hooks ---------------------------------------------------------------------------

_CHECKS = [
    hooks.is_bool,
    hooks.is_dict,
    hooks.is_str_dict,
    hooks.is_str,
    hooks.is_nonempty_str,
    hooks.is_optional_str,
    hooks.is_port,
    hooks.is_nonneg_number,
    hooks.is_str_list,
    _env_values,
]


@pytest.mark.parametrize("check", _CHECKS, ids=lambda c: c.__name__)
@given(value=json_values)
def test_any_hook_result_is_checked(check, value):
    try:
        out = check(value)
    except (TypeError, ValueError) as e:
        assert str(e)
        return
    if check is hooks.is_port:
        assert 0 <= out <= 65535
    if check in (hooks.is_str_dict, _env_values):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


# --- SSH: nothing remote or configured becomes an option -----------------------------


@pytest.mark.parametrize(
    "check", [check_host, check_username, check_forward_id], ids=lambda c: c.__name__
)
@given(value=st.one_of(nasty_text, json_values))
def test_ssh_words_are_single_safe_words(check, value):
    try:
        out = check(value)
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(out, str) and out
    assert not out.startswith("-")
    assert not _CONTROL_OR_SPACE.search(out)


@given(st.one_of(nasty_text, json_values))
def test_key_paths_are_absolute_without_controls(value):
    try:
        out = check_path(value)
    except ConfigError:
        return
    assert out.startswith("/")
    assert not re.search(r"[\x00-\x1f\x7f]", out)


_OPTION_NAMES = (
    st.sampled_from(
        [
            "ServerAliveInterval",
            "connecttimeout",
            "StrictHostKeyChecking",
            "UserKnownHostsFile",
            "Ciphers",
            "KexAlgorithms",
            "MACs",
            "HostKeyAlgorithms",
            "Compression",
            "ControlMaster",
            "Port",
            "User",
            "IdentityFile",
            "ProxyCommand",
            "LocalCommand",
            "Include",
        ]
    )
    | nasty_text
)


@given(st.dictionaries(_OPTION_NAMES, st.one_of(nasty_text, scalars), max_size=6))
def test_ssh_options_are_allow_listed_and_clean(options):
    try:
        accepted, target = split_options(options)
    except ConfigError as e:
        assert str(e)
        return
    for name, value in {**accepted, **target}.items():
        assert name not in ("ProxyCommand", "LocalCommand", "Include")
        assert isinstance(value, str) and "\n" not in value and "\x00" not in value
    try:
        ssh = SSHTarget.build("node.example", 22, "alice", "/keys/id", options)
    except ConfigError:
        return
    made = asyncssh_options(ssh)
    assert "proxy_command" not in made
    assert SSHTarget.from_dict(ssh.to_dict()) == ssh


# --- flavors -------------------------------------------------------------------------

flavor = st.fixed_dictionaries(
    {},
    optional={
        "max": st.integers(-1, 10**6),
        "current": st.integers(0, 10**6),
        "maxPerUser": st.integers(-1, 100),
        "weight": st.integers(-1, 100),
        "display_name": nasty_text,
        "description": nasty_text,
        "runtime": st.fixed_dictionaries({"hours": st.integers(0, 100)}),
    },
)
flavor_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,20}", fullmatch=True)
valid_flavors = st.dictionaries(flavor_names, flavor, max_size=5)


@given(st.one_of(json_values, st.dictionaries(flavor_names, json_values, max_size=4)))
def test_any_flavors_answer_is_valid_or_refused(value):
    try:
        parsed = parse_flavors(value)
    except FlavorError as e:
        assert str(e)
        return
    assert parse_flavors(parsed) == parsed
    json.dumps(parsed)


@given(valid_flavors)
def test_valid_flavors_round_trip(value):
    parsed = parse_flavors(value)
    assert parse_flavors(json.loads(json.dumps(parsed))) == parsed
    assert set(parsed) == set(value)


@given(json_values)
def test_any_credits_answer_is_an_object_or_refused(value):
    try:
        parsed = parse_credits(value)
    except FlavorError:
        return
    assert isinstance(parsed, dict)


def _spawner():
    return SimpleNamespace(config=Config(), user=SimpleNamespace(name="u", spawners={}))


@given(
    st.dictionaries(st.sampled_from(["hpc", "k8s"]), valid_flavors, max_size=2),
    st.one_of(json_values, st.dictionaries(st.sampled_from(["hpc", "k8s", "x"]), json_values)),
    json_values,
)
def test_the_spawn_form_shows_any_flavors_as_text(shared, per_user, credits):
    flavors = user_view(shared, per_user)
    page = flavor_form.render(_spawner(), flavors, credits if isinstance(credits, dict) else None)
    # every tag in the page is one of the form's own
    tags = set(re.findall(r"<\s*/?\s*([A-Za-z0-9]+)", page))
    assert tags <= {"div", "fieldset", "legend", "input", "label", "strong", "span", "br", "small"}
    for value in [f.get("description", "") for fl in flavors.values() for f in fl.values()]:
        if value and "<" in value:
            assert value not in page


@given(valid_flavors, json_values, st.integers(0, 1000))
def test_any_choice_is_refused_or_allowed_with_text(flavors, choice, running):
    reason = refusal({"hpc": flavors}, choice, "hpc", running)
    assert reason is None or isinstance(reason, str)


@given(
    st.dictionaries(st.sampled_from(["outpost_flavor", "other"]), st.lists(nasty_text, max_size=3))
)
def test_any_form_choice_is_a_flavor_or_a_clear_error(form_data):
    try:
        rest, choice = flavor_form.take_choice(_spawner(), form_data)
    except ValueError as e:
        assert str(e) == "Choose one of the flavors shown."
        return
    assert "outpost_flavor" not in rest
    if choice:
        assert set(choice.values()) and all(isinstance(v, str) for v in choice.values())


# --- jobs ----------------------------------------------------------------------------

job_bodies = st.fixed_dictionaries(
    {"user_options": st.fixed_dictionaries({"option": nasty_text}, optional={"x": json_values})},
    optional={
        "notebooks": st.lists(nasty_text.map(lambda s: s + ".ipynb"), max_size=3),
        "notebook_dirs": st.lists(nasty_text, max_size=3),
        "parameters": st.dictionaries(
            st.text(string.ascii_letters + "_", min_size=1, max_size=8), scalars, max_size=4
        ),
    },
)


@given(st.one_of(json_values, job_bodies))
def test_any_job_request_is_valid_or_refused_and_never_reaches_a_shell(body):
    try:
        request = parse_job_request(body, {}, confine_to_home=True)
    except JobRequestError as e:
        assert str(e)
        return
    spec = request.spec()
    cmd, args = job_command({**spec, "output_dir": "out"})
    assert cmd == ["/bin/bash", "-lc"]
    words = shlex.split(args[0])
    assert words[:3] == ["exec", "python3", "-c"]
    assert json.loads(words[4]) == json.loads(json.dumps({**spec, "output_dir": "out"}))
    assert len(words) == 5


@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"notebook": nasty_text, "exit_code": json_values},
            optional={"output": nasty_text, "duration": json_values, "finished": json_values},
        ),
    )
)
def test_any_result_report_is_valid_or_refused(body):
    try:
        report = parse_result_report(body, 1000)
    except ResultError as e:
        assert str(e)
        return
    assert report is not None
    try:
        parse_notebook_result(body)
    except ResultError:
        pass


@given(st.lists(nasty_text, max_size=20))
def test_any_job_log_is_read_without_error(lines):
    rest, found = results_from_logs([MARKER_STARTED, *lines, MARKER_COMPLETED])
    assert isinstance(rest, list)
    assert found is None or isinstance(found, dict)


# --- secrets -------------------------------------------------------------------------

secrets = st.text(string.ascii_letters + string.digits, min_size=12, max_size=40)


@given(secrets, secrets, hostnames, st.one_of(st.none(), ports))
def test_urls_in_logs_carry_no_credentials(user, token, host, port):
    netloc = f"{host}:{port}" if port else host
    shown = _safe_url(f"https://{user}:{token}@{netloc}/services/x?token={token}#{token}")
    assert token not in shown and user not in shown
    assert shown.startswith(f"https://{netloc}/services/x")


def test_error_messages_and_logs_carry_no_token(caplog):
    """A failing request with the Hub's credentials in its header and URL."""
    import asyncio
    import socket

    from outpostspawner.outpost import OutpostClient

    token = "S3cr3tT0kenValue"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        client = OutpostClient(start_limit=1, request_limit=1)
        try:
            for reuse in (False, True):
                request = HTTPRequest(
                    f"http://hub:{token}@127.0.0.1:{port}/services/a?t={token}",
                    headers={"Authorization": f"token {token}"},
                    connect_timeout=2,
                )
                with pytest.raises(OutpostError) as info:
                    await client.fetch("poll", request, reuse=reuse)
                assert token not in str(info.value) and token not in info.value.log_message
        finally:
            client.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    assert token not in caplog.text
