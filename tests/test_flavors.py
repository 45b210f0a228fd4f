"""Flavors on the Hub's side: answers validated, the per-user view, the check
before a start, and the configuration."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from outpostspawner.flavors import OutpostFlavors
from outpostspawner.flavors.model import (
    FlavorError,
    parse_credits,
    parse_flavors,
    refusal,
    user_view,
)


def test_flavors_are_normalized():
    flavors = parse_flavors(
        {
            "small": {"max": 4, "current": 1, "display_name": "Small", "extra": "dropped"},
            "gpu": {"max": -1, "maxPerUser": 1, "weight": 5, "runtime": {"hours": 2}},
        }
    )
    assert flavors["small"] == {
        "max": 4,
        "current": 1,
        "weight": 0,
        "display_name": "Small",
        "description": "",
    }
    assert flavors["gpu"]["maxPerUser"] == 1 and flavors["gpu"]["runtime"] == {"hours": 2}


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "small",
        {"small": 3},
        {"<b>x</b>": {}},
        {"": {}},
        {"a" * 101: {}},
        {"small": {"max": "4"}},
        {"small": {"max": True}},
        {"small": {"max": 10**12}},
        {"small": {"current": -1}},
        {"small": {"display_name": ["x"]}},
        {"small": {"runtime": {"years": 1}}},
        {"small": {"runtime": {"hours": -1}}},
        {"small": {"runtime": "1h"}},
        {f"f{i}": {} for i in range(201)},
    ],
)
def test_bad_flavor_answers_are_refused(answer):
    with pytest.raises(FlavorError):
        parse_flavors(answer)


def test_long_texts_are_cut_and_credits_bounded():
    flavors = parse_flavors({"small": {"description": "x" * 5000}})
    assert len(flavors["small"]["description"]) == 1000
    assert parse_credits({"hours": 10}) == {"hours": 10}
    with pytest.raises(FlavorError):
        parse_credits({"x": "y" * 20000})
    with pytest.raises(FlavorError):
        parse_credits([1])


def test_user_view_keeps_the_shared_usage():
    shared = {"a": {"small": {"max": 4, "current": 3}}, "b": {"big": {"max": 1, "current": 0}}}
    view = user_view(shared, {"a": {"small": {"max": 10, "current": 0}}, "b": False})
    assert list(view) == ["a"] and list(view["a"]) == ["small"]
    assert (view["a"]["small"]["max"], view["a"]["small"]["current"]) == (10, 3)
    assert shared["a"]["small"]["max"] == 4
    # per-user flavors are validated as the shared ones: a malformed system is ignored
    view = user_view(shared, {"a": {"small": {"max": "lots"}}, "b": {"big": "x"}})
    assert view == shared


FLAVORS = {
    "small": {"max": 2, "current": 1, "maxPerUser": 1},
    "big": {"max": 1, "current": 1},
    "free": {"max": -1, "current": 50},
}


@pytest.mark.parametrize(
    ("flavor", "running", "message"),
    [
        ("small", 0, None),
        ("free", 7, None),
        (
            "tiny",
            0,
            "srv - Start with flavor tiny not allowed. Allowed values for user: "
            "['big', 'free', 'small']",
        ),
        (None, 0, "srv - Start with flavor None not allowed. Allowed values for user: "),
        (
            "small",
            1,
            "srv - Start with flavor small not allowed. Each user may only start 1 of small",
        ),
        ("big", 0, "srv - Start with flavor big not allowed. Maximum (1) already reached."),
    ],
)
def test_refusals_speak_as_the_outpost(flavor, running, message):
    got = refusal(FLAVORS, flavor, "srv", running)
    if message is None:
        assert got is None
    else:
        assert got.startswith(message)


def test_no_flavors_no_refusal():
    assert refusal(None, "x", "srv", 0) is None
    assert refusal({}, "x", "srv", 0) is None


def test_outposts_from_the_existing_implementations_env(monkeypatch):
    monkeypatch.setenv("OUTPOST_FLAVOR_INITIAL_SYSTEM_NAMES", "a;b")
    monkeypatch.setenv(
        "OUTPOST_FLAVOR_INITIAL_SYSTEM_URLS", "http://a.example/flavors;http://b.example/"
    )
    monkeypatch.setenv("OUTPOST_FLAVOR_INITIAL_SYSTEM_TOKENS", "dG9rZW4=;")
    cfg = OutpostFlavors()
    assert cfg.outposts == {
        "a": {"url": "http://a.example/", "headers": {"Authorization": "Basic dG9rZW4="}},
        "b": {"url": "http://b.example/"},
    }
    configured = OutpostFlavors(config=Config({"OutpostFlavors": {"outposts": {"c": {}}}}))
    assert configured.outposts == {"c": {}}


class _User:
    def __init__(self):
        self.spawners = {}


class _Spawner:
    def __init__(self, user, options=None, active=False):
        self.user, self.user_options, self.active = user, options or {}, active
        self.config = Config()
        user.spawners[str(len(user.spawners))] = self


def test_form_shows_usage_escapes_and_disables_what_is_full():
    from outpostspawner.flavors.form import FIELD, render

    user = _User()
    spawner = _Spawner(user)
    _Spawner(user, {"system": "hpc", "flavor": "gpu"}, active=True)
    flavors = {
        "hpc": {
            "gpu": {"max": 10, "current": 2, "maxPerUser": 1, "display_name": "GPU"},
            "cpu": {"max": 2, "current": 2, "description": "<script>alert(1)</script>"},
            "any": {"max": -1, "current": 5, "runtime": {"hours": 2}, "weight": 9},
        },
        "<b>evil</b>": {"x": {"max": -1, "current": 0}},
    }
    html = render(spawner, flavors, {"hpc": {"hours": "<i>5</i>"}})
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
    assert "<i>5</i>" not in html
    assert "2 of 10 in use; 1 of 1 yours" in html and "runs at most 2 hours" in html
    inputs = [line for line in html.splitlines() if "value=" in line]
    gpu = next(i for i, line in enumerate(html.splitlines()) if 'value="hpc/gpu"' in line)
    assert "disabled" in html.splitlines()[gpu]  # maxPerUser reached for this user
    cpu = next(i for i, line in enumerate(html.splitlines()) if 'value="hpc/cpu"' in line)
    assert "disabled" in html.splitlines()[cpu]  # max reached
    assert len(inputs) == 4 and f'name="{FIELD}"' in html
    anyf = next(line for line in html.splitlines() if 'value="hpc/any"' in line)
    assert "disabled" not in anyf and html.count(" checked") == 1  # the first with room
    assert render(spawner, {}) == ""


def test_the_choice_is_taken_off_the_form():
    from outpostspawner.flavors.form import FIELD, take_choice

    spawner = _Spawner(_User())
    assert take_choice(spawner, {FIELD: ["hpc/gpu"], "note": ["x"]}) == (
        {"note": ["x"]},
        {"system": "hpc", "flavor": "gpu"},
    )
    assert take_choice(spawner, {"note": ["x"]}) == ({"note": ["x"]}, {})
    for bad in (["gpu"], ["/gpu"], ["hpc/<b>"], ["hpc/"], ["hpc/a", "hpc/b"]):
        with pytest.raises(ValueError):
            take_choice(spawner, {FIELD: bad})


async def test_a_system_that_is_not_a_name_is_left_to_the_outpost():
    from outpostspawner.flavors import spawn

    spawner = _Spawner(_User(), {"system": {"partition": "batch"}, "flavor": "x"})
    spawner.config = Config({"OutpostFlavors": {"outposts": {"hpc": {"url": "http://h/"}}}})
    options = spawner.user_options
    assert spawn.start_env(spawner, options, "http://hub/api") == {}
    assert spawn.sends_authentication(spawner, options, None) is False
    await spawn.check_start(spawner, options)  # no refusal, no request
    options = {"system": "hpc"}
    assert spawn.start_env(spawner, options, "http://hub/api") == {
        "JUPYTERHUB_FLAVORS_UPDATE_URL": "http://hub/api/outpostflavors/hpc"
    }


async def test_the_spawner_adds_the_flavor_chosen_to_its_options_from_form():
    from outpostspawner import OutpostSpawner
    from outpostspawner.flavors.form import FIELD, options_form

    spawner = OutpostSpawner()
    assert spawner.options_form is options_form  # the flavors form unless configured
    form = {FIELD: ["hpc/gpu"], "memory": ["4"]}
    assert await spawner.run_options_from_form(form) == {
        "memory": ["4"],  # JupyterHub's passthrough for the other fields
        "system": "hpc",
        "flavor": "gpu",
    }
    spawner.options_from_form = "simple"
    assert await spawner.run_options_from_form(form) == {
        "memory": "4",  # "simple": single values as strings
        "system": "hpc",
        "flavor": "gpu",
    }

    async def custom(form_data, spawner):
        return {"fields": sorted(form_data), "by": type(spawner).__name__}

    spawner.options_from_form = custom
    assert await spawner.run_options_from_form(form) == {
        "fields": ["memory"],
        "by": "OutpostSpawner",
        "system": "hpc",
        "flavor": "gpu",
    }
    # without the flavors field, exactly what options_from_form returns
    assert await spawner.run_options_from_form({"memory": ["4"]}) == {
        "fields": ["memory"],
        "by": "OutpostSpawner",
    }
    with pytest.raises(ValueError, match="Choose one of the flavors"):
        await spawner.run_options_from_form({FIELD: ["<b>x</b>"]})
