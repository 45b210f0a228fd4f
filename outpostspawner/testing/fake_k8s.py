"""A fake Kubernetes API server for the core/v1 Services endpoints.

A real tornado HTTP server that answers the requests ``kubernetes_asyncio``
sends for Services (create, read, replace, merge patch, delete, list with a
label selector and pagination), with Kubernetes' status codes and ``Status``
bodies, server-side fields (``uid``, ``resourceVersion``, ``clusterIP``) and
validation of names and labels. Faults (an error status, a slow answer, a
dropped connection) can be injected; every request is recorded::

    async with FakeKubernetes() as api:
        api.add_hub_service("jhub", {"component": "hub", "release": "jhub"})
        api.fail("POST", "/services$", status=500, count=1)
        spawner.k8s_api_host = api.url
        ...
        assert api.get_service("jhub", "jupyter-alice")["spec"]["ports"][0]["port"] == port
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tornado import httpserver, web
from tornado.netutil import bind_sockets

log = logging.getLogger("outpostspawner.testing.fake_k8s")

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@dataclass
class K8sRequest:
    """One request the fake API received.

    :param method: HTTP method
    :param path: URL path without the query
    :param query: query arguments (last value of each)
    :param headers: request headers; ``Authorization`` is redacted to ``***``
    :param json: the parsed JSON body, ``None`` if there was none
    :param time: ``time.time()`` when it arrived
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    time: float


@dataclass(eq=False)
class K8sFault:
    """An injected misbehaviour for the matching requests.

    :param method: HTTP method it applies to, or ``"*"``
    :param path: regular expression searched in the request path; ``""`` matches all
    :param status: answer with this status and a ``Status`` body; ``0`` closes
        the connection without an answer; ``None`` answers normally (after ``delay``)
    :param delay: seconds to wait before answering (a slow API)
    :param count: how many requests it applies to; ``None``: all
    :param message: the ``Status`` message
    :param late: carry the request out first and then wait ``delay`` before the
        answer (a change whose answer is lost to a client timeout)
    """

    method: str = "*"
    path: str = ""
    status: int | None = 500
    delay: float = 0.0
    count: int | None = 1
    message: str = "injected fault"
    late: bool = False

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and (
            not self.path or bool(re.search(self.path, path))
        )


def status_body(code: int, message: str, *, name: str = "") -> dict[str, Any]:
    """A Kubernetes ``Status`` answer."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if name:
        body["details"] = {"name": name, "kind": "services"}
    return body


class ApiError(Exception):
    def __init__(self, code: int, message: str, name: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name


def _label_problems(labels: Any) -> list[str]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return ["metadata.labels: must be a map"]
    problems = []
    for key, value in labels.items():
        prefix, sep, name = str(key).rpartition("/")
        if (sep and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.fullmatch(prefix))) or (
            not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name)
        ):
            problems.append(f"metadata.labels: Invalid value: {key!r}: invalid label key")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            problems.append(f"metadata.labels: Invalid value: {value!r}: invalid label value")
    return problems


def _validate_service(body: Any) -> None:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    if body.get("kind", "Service") != "Service":
        raise ApiError(400, f"kind {body.get('kind')!r} is not Service")
    meta = body.get("metadata") or {}
    name = meta.get("name", "")
    problems = []
    if not isinstance(name, str) or len(name) > 63 or not _DNS_1035.fullmatch(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a DNS-1035 label is required")
    problems += _label_problems(meta.get("labels"))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        problems.append("metadata.annotations: values must be strings")
    spec = body.get("spec") or {}
    ports = spec.get("ports") or []
    if not ports:
        problems.append("spec.ports: Required value")
    for i, port in enumerate(ports):
        p = port.get("port")
        if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535:
            problems.append(f"spec.ports[{i}].port: Invalid value: {p!r}")
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        problems.append("spec.selector: must be a map of strings")
    if problems:
        raise ApiError(422, f'Service "{name}" is invalid: ' + "; ".join(problems), name)


def parse_label_selector(selector: str):
    """A predicate for an equality- or existence-based label selector
    (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, comma-separated).

    :raises ApiError: 400 for a set-based selector (not supported here)
    """
    tests: list[tuple[str, str, str]] = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if " in " in term or " notin " in term or "(" in term:
            raise ApiError(400, f"unsupported label selector {term!r}")
        if "!=" in term:
            k, v = term.split("!=", 1)
            tests.append(("!=", k.strip(), v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            tests.append(("=", k.strip(), v.strip()))
        elif term.startswith("!"):
            tests.append(("!", term[1:].strip(), ""))
        else:
            tests.append(("", term, ""))

    def holds(op: str, k: str, v: str, labels: dict[str, str]) -> bool:
        if op == "!=":
            return labels.get(k) != v
        if op == "=":
            return labels.get(k) == v
        if op == "!":
            return k not in labels
        return k in labels

    def match(labels: dict[str, str]) -> bool:
        return all(holds(op, k, v, labels) for op, k, v in tests)

    return match


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _Handler(web.RequestHandler):
    def initialize(self, api: FakeKubernetes) -> None:
        self.api = api

    def check_xsrf_cookie(self) -> None:
        return None

    def compute_etag(self) -> None:
        return None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    async def prepare(self) -> None:
        try:
            body = json.loads(self.request.body) if self.request.body else None
        except ValueError:
            body = None
        headers = {
            k: ("***" if k.lower() == "authorization" else v)
            for k, v in self.request.headers.get_all()
        }
        query = {
            k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()
        }
        method = self.request.method or ""
        self.api.requests.append(
            K8sRequest(method, self.request.path, query, headers, body, time.time())
        )
        self.body = body
        self.late = 0.0
        fault = self.api._take_fault(method, self.request.path)
        if fault is None:
            return
        log.info("fake k8s: fault %s for %s %s", fault, method, self.request.path)
        if fault.late:
            self.late = fault.delay
            return
        if fault.delay:
            await self.api._pause(fault.delay)
            if self.api._stopping.is_set():
                fault.status = 0
        if fault.status is None:
            return
        if fault.status == 0:
            self.request.connection.stream.close()  # type: ignore[attr-defined]
            self._finished = True
            return
        self.answer(fault.status, status_body(fault.status, fault.message))

    def answer(self, code: int, data: Any) -> None:
        if self._finished:
            return
        self.set_status(code)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(json.dumps(status_body(status_code, self._reason)))

    async def run(self, func, *args) -> None:
        try:
            code, data = func(*args)
        except ApiError as e:
            code, data = e.code, status_body(e.code, e.message, name=e.name)
        if self.late:
            await self.api._pause(self.late)
        self.answer(code, data)


class _CollectionHandler(_Handler):
    async def get(self, namespace: str) -> None:
        await self.run(self.api._list, namespace, self.request.query_arguments)

    async def post(self, namespace: str) -> None:
        await self.run(self.api._create, namespace, self.body)


class _ItemHandler(_Handler):
    async def get(self, namespace: str, name: str) -> None:
        await self.run(self.api._read, namespace, name)

    async def put(self, namespace: str, name: str) -> None:
        await self.run(self.api._replace, namespace, name, self.body)

    async def patch(self, namespace: str, name: str) -> None:
        await self.run(self.api._patch, namespace, name, self.body)

    async def delete(self, namespace: str, name: str) -> None:
        await self.run(self.api._delete, namespace, name, self.body)


class _NotFound(_Handler):
    async def get(self, *args: str) -> None:
        self.answer(404, status_body(404, "the server could not find the requested resource"))

    post = put = patch = delete = get


class FakeKubernetes:
    """A fake Kubernetes API for Services.

    :param host: address to listen on
    :param port: 0 picks a free port
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        #: (namespace, name) -> the stored Service
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[K8sRequest] = []
        self.faults: list[K8sFault] = []
        self._version = 1000
        self._ip = 0
        self._server: httpserver.HTTPServer | None = None
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        """The API URL (the spawner's ``k8s_api_host``)."""
        return f"http://{self.host}:{self.port}"

    # --- for tests ------------------------------------------------------------

    def fail(
        self,
        method: str = "*",
        path: str = "",
        *,
        status: int | None = 500,
        delay: float = 0.0,
        count: int | None = 1,
        message: str = "injected fault",
        late: bool = False,
    ) -> K8sFault:
        """Inject a fault (see :class:`K8sFault`); the first matching fault applies."""
        fault = K8sFault(method.upper(), path, status, delay, count, message, late)
        self.faults.append(fault)
        return fault

    def add_service(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Store a Service as if it had been created; returns the stored object."""
        _, stored = self._create(namespace, manifest)
        return stored

    def add_hub_service(
        self, namespace: str, selector: dict[str, str], name: str = "hub"
    ) -> dict[str, Any]:
        """Store the Hub's own Service, as zero-to-jupyterhub makes it."""
        return self.add_service(
            namespace,
            {
                "metadata": {"name": name, "labels": {"app": "jupyterhub", "component": "hub"}},
                "spec": {
                    "type": "ClusterIP",
                    "selector": dict(selector),
                    "ports": [{"port": 8081, "targetPort": 8081, "protocol": "TCP"}],
                },
            },
        )

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.services.get((namespace, name))

    def calls(self, method: str | None = None, path: str = "") -> list[K8sRequest]:
        """The recorded requests with this method whose path matches ``path`` (a regex)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (not path or re.search(path, r.path))
        ]

    # --- server ---------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        args = {"api": self}
        app = web.Application(
            [
                (r"/api/v1/namespaces/([^/]+)/services/?", _CollectionHandler, args),
                (r"/api/v1/namespaces/([^/]+)/services/([^/]+)/?", _ItemHandler, args),
            ],
            default_handler_class=_NotFound,
            default_handler_args=args,
            log_function=lambda handler: None,
        )
        sockets = bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self._server = httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        """Stop listening and end slow answers; safe to call twice."""
        self._stopping.set()
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()
            try:
                await asyncio.wait_for(server.close_all_connections(), timeout=5)
            except asyncio.TimeoutError:
                log.warning("fake k8s: connections still open after stop")

    async def __aenter__(self) -> FakeKubernetes:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the API --------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, but not beyond :meth:`stop`."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    def _take_fault(self, method: str, path: str) -> K8sFault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                return copy.copy(fault)
        return None

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _create(self, namespace: str, body: Any) -> tuple[int, dict]:
        _validate_service(body)
        name = body["metadata"]["name"]
        if (namespace, name) in self.services:
            raise ApiError(409, f'services "{name}" already exists', name)
        svc = copy.deepcopy(body)
        svc["apiVersion"] = "v1"
        svc["kind"] = "Service"
        meta = svc["metadata"]
        meta.pop("resourceVersion", None)
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            creationTimestamp=datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        )
        spec = svc.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if "clusterIP" not in spec:
            self._ip += 1
            spec["clusterIP"] = f"10.96.{self._ip // 250}.{self._ip % 250 + 1}"
            spec["clusterIPs"] = [spec["clusterIP"]]
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        svc["status"] = {"loadBalancer": {}}
        self.services[(namespace, name)] = svc
        return 201, svc

    def _get(self, namespace: str, name: str) -> dict:
        svc = self.services.get((namespace, name))
        if svc is None:
            raise ApiError(404, f'services "{name}" not found', name)
        return svc

    def _read(self, namespace: str, name: str) -> tuple[int, dict]:
        return 200, self._get(namespace, name)

    def _replace(self, namespace: str, name: str, body: Any) -> tuple[int, dict]:
        old = self._get(namespace, name)
        _validate_service(body)
        if body["metadata"]["name"] != name:
            raise ApiError(400, "the name of the object does not match the name on the URL")
        version = body["metadata"].get("resourceVersion")
        if not version:
            raise ApiError(
                422, f'Service "{name}" is invalid: metadata.resourceVersion: must be specified'
            )
        if version != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on services "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name,
            )
        spec = copy.deepcopy(body.get("spec") or {})
        old_ip = old["spec"].get("clusterIP")
        if spec.get("clusterIP", old_ip) != old_ip:
            raise ApiError(
                422, f'Service "{name}" is invalid: spec.clusterIP: field is immutable', name
            )
        spec.setdefault("clusterIP", old_ip)
        spec.setdefault("clusterIPs", old["spec"].get("clusterIPs", [old_ip]))
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        svc = copy.deepcopy(body)
        svc["apiVersion"], svc["kind"], svc["spec"] = "v1", "Service", spec
        for key in ("namespace", "uid", "creationTimestamp"):
            svc["metadata"][key] = old["metadata"][key]
        svc["metadata"]["resourceVersion"] = self._next_version()
        svc["status"] = old.get("status", {})
        self.services[(namespace, name)] = svc
        return 200, svc

    def _patch(self, namespace: str, name: str, body: Any) -> tuple[int, dict]:
        old = self._get(namespace, name)
        merged = merge_patch(old, body or {})
        merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        merged["metadata"]["name"] = name
        return self._replace(namespace, name, merged)

    def _delete(self, namespace: str, name: str, body: Any) -> tuple[int, dict]:
        svc = self._get(namespace, name)
        pre = (body or {}).get("preconditions") or {}
        for key in ("uid", "resourceVersion"):
            if pre.get(key) and pre[key] != svc["metadata"][key]:
                raise ApiError(
                    409,
                    f"Precondition failed: {key} in precondition: {pre[key]}, "
                    f"{key} in object meta: {svc['metadata'][key]}",
                    name,
                )
        del self.services[(namespace, name)]
        return 200, svc

    def _list(self, namespace: str, args: dict[str, list[bytes]]) -> tuple[int, dict]:
        def arg(key: str) -> str:
            return args[key][-1].decode() if key in args else ""

        match = parse_label_selector(arg("labelSelector"))
        items = [
            svc
            for (ns, _), svc in sorted(self.services.items())
            if ns == namespace and match(svc["metadata"].get("labels") or {})
        ]
        start = int(arg("continue") or 0)
        limit = int(arg("limit") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(self._version)}
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
            page = items[start : start + limit]
        else:
            page = items[start:]
        return 200, {"kind": "ServiceList", "apiVersion": "v1", "metadata": meta, "items": page}
