"""The Kubernetes Service builder and client.

The client tests use ``k8s_backend``: the fake API, plus (``-m k8s_cluster``)
the cluster of ``KUBECONFIG`` when it is set (see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass

import pytest
import pytest_asyncio

from outpostspawner import k8s
from outpostspawner.k8s.client import ClientSettings, KubernetesError, ServiceClient
from outpostspawner.k8s.objects import (
    check_label_key,
    dns_label,
    is_dns_label,
    is_label_value,
    label_selector,
    label_value,
    make_service,
    owner_selector,
    service_annotations,
    service_labels,
    service_name,
)
from outpostspawner.testing.fake_k8s import FakeKubernetes, parse_label_selector
from outpostspawner.testing.spawner import make_spawner

# --- the builder -------------------------------------------------------------


def test_make_service():
    svc = make_service(
        name="jupyter-alice",
        port=40123,
        selector={"app": "jupyterhub", "component": "hub", "release": "jhub"},
        labels={"component": "singleuser-server"},
        annotations={"hub.jupyter.org/username": "alice"},
    )
    assert svc == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "jupyter-alice",
            "labels": {"component": "singleuser-server"},
            "annotations": {"hub.jupyter.org/username": "alice"},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": "jupyterhub", "component": "hub", "release": "jhub"},
            "ports": [{"name": "http", "protocol": "TCP", "port": 40123, "targetPort": 40123}],
        },
    }


def test_make_service_copies_its_inputs():
    selector, labels = {"component": "hub"}, {"a": "b"}
    svc = make_service(name="s", port=1, selector=selector, labels=labels, target_port=2)
    selector["x"] = labels["x"] = "y"
    assert svc["spec"]["selector"] == {"component": "hub"}
    assert svc["metadata"] == {"name": "s", "labels": {"a": "b"}, "annotations": {}}
    assert svc["spec"]["ports"][0]["targetPort"] == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "Jupyter-Alice"}, "not a valid Service name"),
        ({"name": "1abc"}, "not a valid Service name"),
        ({"name": "a" * 64}, "not a valid Service name"),
        ({"port": 0}, "invalid port"),
        ({"port": 65536}, "invalid port"),
        ({"port": True}, "invalid port"),
        ({"target_port": 70000}, "invalid port"),
        ({"selector": {}}, "selector must not be empty"),
    ],
)
def test_make_service_rejects(kwargs, match):
    args = {"name": "jupyter-alice", "port": 8888, "selector": {"component": "hub"}} | kwargs
    with pytest.raises(ValueError, match=match):
        make_service(**args)


@pytest.mark.parametrize("name", ["a", "jupyter-alice", "jupyter-alice--work", "a" * 63, "x-1"])
def test_dns_label_keeps_valid_names(name):
    assert dns_label(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Jupyter-Alice",
        "1alice",
        "jupyter-alice@example.org",
        "-x-",
        "jupyter-" + "a" * 80,
        "jupyter-ällice",
        "---",
        "x" * 63 + "-",
    ],
)
def test_dns_label_makes_valid_names(name):
    out = dns_label(name)
    assert is_dns_label(out), out
    assert len(out) <= 63
    assert dns_label(name) == out  # deterministic
    assert dns_label(out) == out  # a fixed point


def test_dns_label_keeps_names_apart():
    names = ["jupyter-Alice", "jupyter-alice_", "jupyter-ALICE", "jupyter-" + "a" * 70]
    names.append(names[-1] + "b")
    out = [dns_label(n) for n in names]
    assert len(set(out)) == len(out)
    assert out[-1].startswith("jupyter-aaaa") and len(out[-1]) == 63


@pytest.mark.parametrize("value", ["", "alice", "a.b_c-d", "A1", "x" * 63])
def test_label_value_keeps_valid_values(value):
    assert label_value(value) == value


@pytest.mark.parametrize(
    "value", ["alice@example.org", "-alice-", "x" * 64, "ä", "@@@", "a b", "user/name"]
)
def test_label_value_escapes(value):
    out = label_value(value)
    assert out != value
    assert is_label_value(out), out
    assert label_value(value) == out
    assert label_value(value + "x") != out


def test_label_value_keeps_readable_part():
    assert label_value("alice@example.org").startswith("alice-example.org-")


@pytest.mark.parametrize(
    "key", ["a", "component", "hub.jupyter.org/username", "app.kubernetes.io/managed-by", "A_b.c"]
)
def test_label_keys(key):
    assert check_label_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "/a", "a/", "Example.org/a", "a b", "-a", "a" * 64, "x/y/z", "hub..org/a"]
)
def test_invalid_label_keys(key):
    with pytest.raises(ValueError, match="label key"):
        check_label_key(key)


def test_service_labels():
    labels = service_labels(
        username="alice@example.org",
        servername="My Server",
        hub_id="jhub",
        extra={
            "component": "remote-server",
            "sidecar.istio.io/inject": "false",
            "group": "a group",
            "hub.jupyter.org/username": "alice@example.org",
            "app.kubernetes.io/managed-by": "someone-else",
        },
    )
    assert labels == {
        "component": "remote-server",
        "sidecar.istio.io/inject": "false",
        "group": label_value("a group"),
        "app.kubernetes.io/managed-by": "outpostspawner",
        "app.kubernetes.io/instance": "jhub",
        "hub.jupyter.org/username": label_value("alice@example.org"),
        "hub.jupyter.org/servername": label_value("My Server"),
    }
    assert all(is_label_value(v) for v in labels.values())


def test_service_labels_defaults_and_bad_keys():
    labels = service_labels(username="alice", servername="", hub_id="jupyterhub")
    assert labels["component"] == "singleuser-server"
    assert labels["hub.jupyter.org/servername"] == ""
    with pytest.raises(ValueError, match="label key"):
        service_labels(username="a", servername="", hub_id="h", extra={"bad key": "x"})


def test_annotations_selector_helpers():
    assert service_annotations(username="Älice", servername="s 1", user_id=7) == {
        "hub.jupyter.org/username": "Älice",
        "hub.jupyter.org/servername": "s 1",
        "outpostspawner/user-id": "7",
    }
    assert owner_selector("my hub") == {
        "app.kubernetes.io/managed-by": "outpostspawner",
        "app.kubernetes.io/instance": label_value("my hub"),
    }
    assert label_selector({"b": "2", "a": "1"}) == "a=1,b=2"


@pytest.mark.parametrize(
    "template, user, server, expected",
    [
        ("jupyter-{username}--{servername}", "alice", "", "jupyter-alice"),
        ("jupyter-{username}--{servername}", "alice", "work", "jupyter-alice--work"),
        ("svc-{userid}-{servername}", "alice", "", "svc-1"),
        ("{username}", "alice", "", "alice"),
    ],
)
def test_service_name(template, user, server, expected):
    spawner = make_spawner(user=user, server=server, svc_name_template=template)
    assert service_name(spawner) == expected


@pytest.mark.parametrize(
    "template, user, server",
    [
        ("jupyter-{unescaped_username}--{unescaped_servername}", "Alice@Example.org", "Ö"),
        ("{userid}-{username}", "alice", ""),  # starts with a digit
        ("jupyter-{username}--{servername}", "a" * 60, "b" * 60),
        ("{unescaped_servername}", "alice", ""),  # empty
        ("jupyter-{hubnamespace}-{unescaped_username}", "bob.smith", "x"),
    ],
)
def test_service_name_is_always_valid_and_stable(template, user, server):
    spawner = make_spawner(user=user, server=server, svc_name_template=template)
    name = service_name(spawner)
    assert is_dns_label(name), name
    # the same after a Hub restart: a new spawner object for the same server
    again = make_spawner(user=user, server=server, svc_name_template=template)
    assert service_name(again) == name


def test_service_names_are_unique_per_user_and_server():
    db = make_spawner(user="alice").user.db
    names = {
        service_name(make_spawner(user=u, server=s, db=db))
        for u in ("alice", "Alice", "alice-", "bob")
        for s in ("", "work", "Work", "work-")
    }
    assert len(names) == 16


def test_fake_label_selector():
    match = parse_label_selector("a=1,b==2,c!=3,d,!e")
    assert match({"a": "1", "b": "2", "d": ""})
    assert not match({"a": "1", "b": "2", "c": "3", "d": ""})
    assert not match({"a": "1", "b": "2", "d": "", "e": "x"})
    assert not match({"a": "1", "b": "2"})


# --- the client: the fake API, and a real cluster with -m k8s_cluster -----------


@dataclass
class Backend:
    name: str
    settings: ClientSettings
    namespace: str
    hub_id: str
    fake: FakeKubernetes | None = None

    @property
    def owner(self) -> dict[str, str]:
        return owner_selector(self.hub_id)

    async def client(self, **changes) -> ServiceClient:
        settings = ClientSettings(**{**self.settings.__dict__, **changes})
        return await ServiceClient.shared(settings)

    def service(self, name: str, port: int = 8888, **labels: str) -> dict:
        return make_service(
            name=name,
            port=port,
            selector={"component": "outpostspawner-test-selects-nothing"},
            labels={**self.owner, **labels},
        )


def unique_name() -> str:
    return f"ost-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def k8s_backend(request):
    """Where the client tests run (parametrized in tests/conftest.py)."""
    hub_id = f"test-{uuid.uuid4().hex[:8]}"
    k8s.clear_caches()
    if request.param == "fake":
        async with FakeKubernetes() as api:
            settings = ClientSettings(
                host=api.url, request_timeout=2, max_attempts=3, retry_delay=0.01
            )
            try:
                yield Backend("fake", settings, "jhub", hub_id, api)
            finally:
                await k8s.close_clients()
        return
    namespace = os.environ.get("OUTPOSTSPAWNER_TEST_NAMESPACE", "default")
    backend = Backend(
        "cluster", ClientSettings(request_timeout=10, max_attempts=3), namespace, hub_id
    )
    try:
        yield backend
    finally:
        try:
            client = await backend.client()
            for svc in await client.list(namespace, backend.owner):
                await client.delete(namespace, svc["metadata"]["name"])
        except KubernetesError as e:  # the test has failed already
            print(f"cleanup in the cluster failed: {e}")
        await k8s.close_clients()
        k8s.clear_caches()


async def test_create_read_list_delete(k8s_backend):
    client = await k8s_backend.client()
    ns, name = k8s_backend.namespace, unique_name()
    created = await client.create(ns, k8s_backend.service(name), owner=k8s_backend.owner)
    assert created["metadata"]["name"] == name
    assert created["metadata"]["resourceVersion"]
    read = await client.read(ns, name)
    assert read["spec"]["ports"][0]["port"] == 8888
    assert read["spec"]["ports"][0]["targetPort"] == 8888
    assert read["metadata"]["labels"] == k8s_backend.owner
    listed = await client.list(ns, k8s_backend.owner)
    assert [s["metadata"]["name"] for s in listed] == [name]
    assert await client.list(ns, {**k8s_backend.owner, "component": "nothing"}) == []
    assert await client.delete(ns, name) is True
    await client.wait_deleted(ns, name, timeout=30)
    assert await client.read(ns, name) is None
    assert await client.delete(ns, name) is False  # 404: done


async def test_create_replaces_own_service(k8s_backend):
    client = await k8s_backend.client()
    ns, name = k8s_backend.namespace, unique_name()
    first = await client.create(ns, k8s_backend.service(name, 8888), owner=k8s_backend.owner)
    second = await client.create(
        ns, k8s_backend.service(name, 9999, extra="yes"), owner=k8s_backend.owner
    )
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert second["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    assert second["spec"]["clusterIP"] == first["spec"]["clusterIP"]
    read = await client.read(ns, name)
    assert read["spec"]["ports"][0]["port"] == 9999
    assert read["metadata"]["labels"]["extra"] == "yes"


async def test_create_refuses_a_foreign_service(k8s_backend):
    client = await k8s_backend.client()
    ns, name = k8s_backend.namespace, unique_name()
    # made by another Hub: same manager, other instance
    other = owner_selector("another-hub")
    await client.create(
        ns,
        make_service(name=name, port=1, selector={"a": "b"}, labels=other),
        owner=other,
    )
    try:
        with pytest.raises(k8s.ServiceConflictError) as e:
            await client.create(ns, k8s_backend.service(name), owner=k8s_backend.owner)
        assert e.value.status == 409
        read = await client.read(ns, name)
        assert read["metadata"]["labels"] == other
        assert read["spec"]["ports"][0]["port"] == 1
    finally:
        await client.delete(ns, name)


async def test_delete_with_precondition(k8s_backend):
    client = await k8s_backend.client()
    ns, name = k8s_backend.namespace, unique_name()
    first = await client.create(ns, k8s_backend.service(name), owner=k8s_backend.owner)
    await client.create(ns, k8s_backend.service(name, 1234), owner=k8s_backend.owner)
    with pytest.raises(KubernetesError) as e:
        await client.delete(ns, name, resource_version=first["metadata"]["resourceVersion"])
    assert e.value.status == 409
    current = await client.read(ns, name)
    assert await client.delete(ns, name, resource_version=current["metadata"]["resourceVersion"])


async def test_list_pages(k8s_backend):
    client = await k8s_backend.client()
    ns = k8s_backend.namespace
    names = sorted(unique_name() for _ in range(5))
    for name in names:
        await client.create(ns, k8s_backend.service(name), owner=k8s_backend.owner)
    listed = await client.list(ns, k8s_backend.owner, page_size=2)
    assert sorted(s["metadata"]["name"] for s in listed) == names
    if k8s_backend.fake:
        lists = k8s_backend.fake.calls("GET", "/services$")
        assert [r.query.get("limit") for r in lists] == ["2", "2", "2"]
        assert [r.query.get("continue") for r in lists] == [None, "2", "4"]


# --- faults (fake API only) ------------------------------------------------------


@pytest_asyncio.fixture
async def fake(fake_k8s):
    return fake_k8s


def settings_for(api: FakeKubernetes, **kw) -> ClientSettings:
    return ClientSettings(
        **{"host": api.url, "request_timeout": 2, "max_attempts": 3, "retry_delay": 0.01, **kw}
    )


async def test_retries_5xx_then_succeeds(fake):
    client = await ServiceClient.shared(settings_for(fake))
    fake.fail("POST", "/services$", status=503, count=2)
    svc = make_service(name="jupyter-alice", port=1, selector={"a": "b"})
    await client.create("jhub", svc, owner={})
    assert len(fake.calls("POST")) == 3
    assert fake.get_service("jhub", "jupyter-alice")


async def test_gives_up_after_max_attempts(fake, caplog):
    client = await ServiceClient.shared(settings_for(fake, max_attempts=4))
    fake.fail("GET", status=500, count=None, message="etcd is down")
    with pytest.raises(KubernetesError) as e:
        await client.read("jhub", "x")
    assert e.value.status == 500
    assert e.value.message == "etcd is down"
    assert len(fake.calls("GET")) == 4
    assert "attempt 3 of 4" in caplog.text


async def test_backoff_grows(fake, monkeypatch):
    delays = []

    async def pause(seconds):
        delays.append(seconds)

    monkeypatch.setattr("outpostspawner.k8s.client._pause", pause)
    client = await ServiceClient.shared(settings_for(fake, max_attempts=7, retry_delay=1.0))
    fake.fail("GET", status=429, count=None)
    with pytest.raises(KubernetesError):
        await client.read("jhub", "x")
    assert len(delays) == 6
    for base, delay in zip([1, 2, 4, 8, 10, 10], delays, strict=True):
        assert base <= delay <= base * 1.25


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(fake, status):
    client = await ServiceClient.shared(settings_for(fake))
    fake.fail("POST", status=status, count=None)
    with pytest.raises(KubernetesError) as e:
        await client.create("jhub", make_service(name="a", port=1, selector={"a": "b"}), owner={})
    assert e.value.status == status
    assert len(fake.calls("POST")) == 1


async def test_slow_answer_times_out_and_is_retried(fake):
    client = await ServiceClient.shared(settings_for(fake, request_timeout=0.3))
    fake.add_hub_service("jhub", {"component": "hub"})
    fake.fail("GET", status=None, delay=5, count=1)
    started = time.monotonic()
    svc = await client.read("jhub", "hub")
    assert svc["spec"]["selector"] == {"component": "hub"}
    assert time.monotonic() - started < 3
    assert len(fake.calls("GET")) == 2


async def test_dropped_connection_is_retried(fake):
    client = await ServiceClient.shared(settings_for(fake))
    fake.fail("DELETE", status=0, count=1)
    assert await client.delete("jhub", "missing") is False
    assert len(fake.calls("DELETE")) == 2


async def test_unreachable_api():
    fake = FakeKubernetes()
    await fake.start()
    url = fake.url
    await fake.stop()  # nothing listens there any more
    try:
        client = await ServiceClient.shared(
            ClientSettings(host=url, request_timeout=1, max_attempts=2, retry_delay=0.01)
        )
        with pytest.raises(KubernetesError) as e:
            await client.list("jhub", {"a": "b"})
        assert e.value.status == 0
    finally:
        await k8s.close_clients()


async def test_lost_create_answer_is_replaced(fake):
    # the API creates the Service but the answer comes too late: the retry finds it
    client = await ServiceClient.shared(settings_for(fake, request_timeout=0.3))
    fake.fail("POST", status=None, delay=0.6, late=True)
    owner = owner_selector("h")
    svc = make_service(name="jupyter-alice", port=7, selector={"a": "b"}, labels=owner)
    await client.create("jhub", svc, owner=owner)
    await asyncio.sleep(0.5)  # the slow first request has finished as well
    assert [r.method for r in fake.requests] == ["POST", "POST", "GET", "PUT"]
    assert fake.get_service("jhub", "jupyter-alice")["spec"]["ports"][0]["port"] == 7


async def test_replace_refused_deletes_and_recreates(fake):
    client = await ServiceClient.shared(settings_for(fake))
    owner = owner_selector("h")
    svc = make_service(name="jupyter-alice", port=7, selector={"a": "b"}, labels=owner)
    old = fake.add_service("jhub", svc)
    fake.fail("PUT", status=422, count=1, message="spec.type: field is immutable")
    created = await client.create("jhub", svc, owner=owner)
    assert created["metadata"]["uid"] != old["metadata"]["uid"]
    methods = [r.method for r in fake.requests]
    assert methods[:4] == ["POST", "GET", "PUT", "DELETE"]
    assert methods[-1] == "POST"


async def test_replace_conflict_reads_again(fake):
    client = await ServiceClient.shared(settings_for(fake))
    owner = owner_selector("h")
    svc = make_service(name="jupyter-alice", port=7, selector={"a": "b"}, labels=owner)
    fake.add_service("jhub", svc)
    fake.fail("PUT", status=409, count=1)
    await client.create("jhub", svc, owner=owner)
    assert [r.method for r in fake.requests] == ["POST", "GET", "PUT", "GET", "PUT"]


async def test_wait_deleted_times_out(fake):
    client = await ServiceClient.shared(settings_for(fake))
    fake.add_service("jhub", make_service(name="stays", port=1, selector={"a": "b"}))
    with pytest.raises(KubernetesError, match="still there"):
        await client.wait_deleted("jhub", "stays", timeout=0.3)


async def test_one_shared_api_client_per_loop(fake):
    clients = await asyncio.gather(*(k8s.shared_api_client(fake.url) for _ in range(5)))
    assert all(c is clients[0] for c in clients)
    assert await k8s.shared_api_client(fake.url) is clients[0]
    session = clients[0].rest_client.pool_manager
    await k8s.close_clients()
    assert session.closed
    assert await k8s.shared_api_client(fake.url) is not clients[0]


# --- configuration ----------------------------------------------------------------


@pytest.fixture
def clean_config(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    k8s.clear_caches()
    yield monkeypatch
    k8s.clear_caches()


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
users:
- name: test
  user:
    token: not-a-real-token
"""


async def test_kubeconfig_is_loaded(clean_config, tmp_path, fake):
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(server=fake.url))
    clean_config.setenv("KUBECONFIG", str(path))
    config = await k8s.load_configuration()
    assert config.host == fake.url
    assert config.api_key["BearerToken"].endswith("not-a-real-token")
    assert await k8s.load_configuration() is config  # loaded once
    client = await ServiceClient.shared(ClientSettings(retry_delay=0.01))
    assert await client.read("jhub", "hub") is None
    assert fake.requests[-1].headers["Authorization"] == "***"


async def test_missing_kubeconfig(clean_config, tmp_path):
    clean_config.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubernetesError, match="kubeconfig"):
        await k8s.load_configuration()


async def test_in_cluster_configuration(clean_config, tmp_path):
    from kubernetes_asyncio.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("in-cluster-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    clean_config.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    clean_config.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    clean_config.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    clean_config.setenv("KUBERNETES_SERVICE_PORT", "443")
    clean_config.setenv("KUBECONFIG", str(tmp_path / "not-used"))
    config = await k8s.load_configuration()
    assert config.host == "https://10.0.0.1:443"
    assert config.ssl_ca_cert == str(ca)
    assert "in-cluster-token" in await config.get_api_key_with_prefix("BearerToken")


async def test_api_host_needs_no_credentials(clean_config, tmp_path):
    clean_config.setenv("KUBECONFIG", str(tmp_path / "missing"))
    config = await k8s.load_configuration("http://127.0.0.1:8001/")
    assert config.host == "http://127.0.0.1:8001"
    assert not config.api_key
