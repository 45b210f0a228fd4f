"""The OpenAPI document of the Hub endpoints matches the handlers the package registers:
every route is documented, every documented path and method exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from jupyterhub import apihandlers
from openapi_spec_validator import validate
from tornado import web

from outpostspawner.handlers import handlers

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "_static" / "hub-callbacks.openapi.yaml"
METHODS = ("get", "post", "put", "patch", "delete")
#: a value for each path parameter that the handlers' patterns accept
SAMPLES = {"index": "1"}


def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def sample_path(path: str) -> str:
    """``/job/{user}/{server}`` -> ``/api/job/user/server`` (as the handlers see it)."""
    return "/api" + re.sub(r"\{(\w+)\}", lambda m: SAMPLES.get(m.group(1), m.group(1)), path)


def handler_for(path: str) -> type[web.RequestHandler] | None:
    """The handler tornado routes a request path to: the first matching route."""
    for pattern, handler, *_ in handlers:
        if re.fullmatch(pattern, path):
            return handler
    return None


def implemented(handler: type[web.RequestHandler]) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)}


@pytest.mark.parametrize("path", sorted(document()["paths"]))
def test_every_documented_path_and_method_exists(path):
    handler = handler_for(sample_path(path))
    assert handler is not None, f"{path} is documented but no handler serves it"
    documented = {m for m in document()["paths"][path] if m in METHODS}
    assert documented == implemented(handler), path


@pytest.mark.parametrize("pattern", [route[0] for route in handlers])
def test_every_registered_route_is_documented(pattern):
    paths = [p for p in document()["paths"] if re.fullmatch(pattern, sample_path(p))]
    assert paths, f"the route {pattern} is not in {DOCUMENT.name}"


def test_the_routes_are_registered_with_jupyterhub():
    registered = {route[0] for route in apihandlers.default_handlers}
    assert {route[0] for route in handlers} <= registered


def test_every_operation_lists_its_answers():
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                codes = set(operation.get("responses", {}))
                assert codes, f"{method.upper()} {path} lists no answers"
                assert any(c.startswith("2") for c in codes), f"{method.upper()} {path}"


def test_the_document_is_valid_openapi():
    validate(document())


def test_no_value_lost_to_yaml_flow_syntax():
    """``{description: a, b}`` is two keys in YAML: the second has no value."""

    def nulls(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if value is None and key != "nullable":
                    yield f"{where}/{key}"
                yield from nulls(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from nulls(value, f"{where}/{i}")

    assert list(nulls(document(), "")) == []
