"""OutpostSpawner with Kubernetes Services: forwarded starts against the
reference Outpost and the fake Kubernetes API."""

from __future__ import annotations

import asyncio
import logging

import pytest
from jupyterhub import orm

from outpostspawner import OutpostSpawnError, k8s
from outpostspawner.k8s.objects import label_value, make_service, owner_selector
from outpostspawner.testing import Fault

NS = "jhub"
HUB_SELECTOR = {"app": "jupyterhub", "component": "hub", "release": "jhub"}


@pytest.fixture
def logs(caplog):
    """The records of the spawners' logger (which need not propagate to the root)."""
    from traitlets.log import get_logger

    logger = get_logger()
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=logger.name)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def forwards():
    """What the stand-in forward hooks were asked to do."""
    return []


@pytest.fixture
def k8s_spawner(outpost_spawner_factory, fake_k8s, forwards):
    """Build spawners that forward with no-op hooks and make Services in the fake API."""
    fake_k8s.add_hub_service(NS, HUB_SELECTOR)

    async def ssh_custom_forward(spawner, port_forward_info):
        forwards.append(("add", port_forward_info["local_port"], port_forward_info["service"]))

    def ssh_custom_forward_remove(spawner, port_forward_info):
        forwards.append(("remove", port_forward_info["local_port"]))

    def factory(**traits):
        settings = {
            "ssh_during_startup": True,
            "ssh_custom_forward": ssh_custom_forward,
            "ssh_custom_forward_remove": ssh_custom_forward_remove,
            "k8s_api_host": fake_k8s.url,
            "namespace": NS,
            "k8s_request_timeout": 2.0,
            "k8s_max_attempts": 3,
            "k8s_retry_delay": 0.01,
            "svc_hub_id": "jhub",
        }
        settings.update(traits)
        return outpost_spawner_factory(**settings)

    return factory


def posts(api):
    return api.calls("POST", "/services$")


def expected_service(spawner, port, *, name="jupyter-alice", server="", extra=None):
    return make_service(
        name=name,
        port=port,
        selector=HUB_SELECTOR,
        labels={
            "component": "singleuser-server",
            **(extra or {}),
            "app.kubernetes.io/managed-by": "outpostspawner",
            "app.kubernetes.io/instance": "jhub",
            "hub.jupyter.org/username": spawner.user.name,
            "hub.jupyter.org/servername": server,
        },
        annotations={
            "hub.jupyter.org/username": spawner.user.name,
            "hub.jupyter.org/servername": server,
            "outpostspawner/user-id": str(spawner.user.id),
        },
    )


async def test_forwarded_start_creates_service(k8s_spawner, fake_k8s, reference_outpost, forwards):
    spawner = k8s_spawner()
    url = await spawner.start()
    port = spawner.port
    record = reference_outpost.get_service(spawner.outpost_name)
    assert forwards == [("add", port, record.address)]
    assert url == f"http://jupyter-alice.{NS}.svc.cluster.local:{port}"

    (post,) = posts(fake_k8s)
    assert post.json == expected_service(spawner, port)
    svc = fake_k8s.get_service(NS, "jupyter-alice")
    assert svc["spec"]["selector"] == HUB_SELECTOR
    assert svc["spec"]["ports"] == [
        {"name": "http", "protocol": "TCP", "port": port, "targetPort": port}
    ]
    info = spawner.get_state()["port_forward_info"]
    assert info["svc"] is True and info["forward"] is True
    assert info["svc_name"] == "jupyter-alice" and info["namespace"] == NS
    messages = [e["message"] for e in spawner.events.to_list()]
    assert "Creating the port forward to the server." in messages

    await spawner.stop()
    assert fake_k8s.get_service(NS, "jupyter-alice") is None
    assert [r.path for r in fake_k8s.calls("DELETE")] == [
        f"/api/v1/namespaces/{NS}/services/jupyter-alice"
    ]
    assert forwards[-1] == ("remove", port)
    assert reference_outpost.services == {}
    assert set(fake_k8s.services) == {(NS, "hub")}


async def test_named_server_labels_and_dns_template(k8s_spawner, fake_k8s, reference_outpost):
    def extra_labels(spawner, user_options):
        return {
            "system": user_options["system"],
            "hub.jupyter.org/username": "not allowed to change",
            "group": "a b/c",
        }

    spawner = k8s_spawner(
        user="Alice@Example.org",
        server="My Lab",
        user_options={"system": "A"},
        extra_labels=extra_labels,
        dns_name_template="{name}.{namespace}.svc",
    )
    url = await spawner.start()
    (post,) = posts(fake_k8s)
    name = post.json["metadata"]["name"]
    assert name == k8s.service_name(spawner)
    assert name.startswith("jupyter-alice-example-org-")
    assert url == f"http://{name}.{NS}.svc:{spawner.port}"
    labels = post.json["metadata"]["labels"]
    assert labels["system"] == "A"
    assert labels["group"] == label_value("a b/c")
    assert labels["hub.jupyter.org/username"] == label_value("Alice@Example.org")
    assert labels["hub.jupyter.org/servername"] == label_value("My Lab")
    assert post.json["metadata"]["annotations"]["hub.jupyter.org/servername"] == "My Lab"
    await spawner.stop()
    assert fake_k8s.get_service(NS, name) is None


async def test_configured_selector(k8s_spawner, fake_k8s, reference_outpost):
    spawner = k8s_spawner(svc_selector={"app": "outpost-forwarder"})
    await spawner.start()
    assert fake_k8s.calls("GET") == []
    (post,) = posts(fake_k8s)
    assert post.json["spec"]["selector"] == {"app": "outpost-forwarder"}
    await spawner.stop()


async def test_hub_selector_is_read_once(k8s_spawner, fake_k8s, reference_outpost):
    spawners = [k8s_spawner(user=u) for u in ("alice", "bob")]
    for spawner in spawners:
        await spawner.start()
    assert [r.path for r in fake_k8s.calls("GET")] == [f"/api/v1/namespaces/{NS}/services/hub"]
    assert all(r.json["spec"]["selector"] == HUB_SELECTOR for r in posts(fake_k8s))
    for spawner in spawners:
        await spawner.stop()


async def test_selector_fallback_without_hub_service(
    k8s_spawner, fake_k8s, reference_outpost, logs
):
    spawner = k8s_spawner(svc_hub_service_name="no-such-service")
    await spawner.start()
    (post,) = posts(fake_k8s)
    assert post.json["spec"]["selector"] == {"component": "hub"}
    assert "Set svc_selector" in logs.text
    await spawner.stop()


async def test_svc_create_false_makes_no_service(k8s_spawner, fake_k8s, reference_outpost):
    spawner = k8s_spawner(svc_create=False)
    url = await spawner.start()
    assert url == f"http://127.0.0.1:{spawner.port}"
    await spawner.stop()
    assert fake_k8s.requests == []


async def test_api_error_on_create_fails_the_start_cleanly(
    k8s_spawner, fake_k8s, reference_outpost, forwards
):
    fake_k8s.fail("POST", "/services$", status=500, count=None)
    spawner = k8s_spawner()
    with pytest.raises(
        OutpostSpawnError, match=r"Kubernetes Service could not be created \(HTTP 500\)"
    ):
        await spawner.start()
    assert len(posts(fake_k8s)) == 3  # k8s_max_attempts
    # everything is gone: the forward, the remote server, a Service that may exist
    assert forwards[-1][0] == "remove"
    assert reference_outpost.services == {}
    assert len(fake_k8s.calls("DELETE")) == 1
    assert set(fake_k8s.services) == {(NS, "hub")}
    await spawner.stop()  # JupyterHub stops a failed server: nothing more to do
    assert len(fake_k8s.calls("DELETE")) == 1


async def test_failure_after_the_service_exists_removes_it(
    k8s_spawner, fake_k8s, reference_outpost, forwards
):
    def update_expected_path(spawner, expected_path):
        raise RuntimeError("broken hook")

    spawner = k8s_spawner(update_expected_path=update_expected_path)
    with pytest.raises(OutpostSpawnError, match="update_expected_path"):
        await spawner.start()
    assert len(posts(fake_k8s)) == 1
    assert set(fake_k8s.services) == {(NS, "hub")}
    assert reference_outpost.services == {}
    assert forwards[-1][0] == "remove"


async def test_outpost_failure_makes_no_service(k8s_spawner, fake_k8s, reference_outpost):
    reference_outpost.faults.add(Fault("start", "419", body="no quota", count=1))
    spawner = k8s_spawner()
    with pytest.raises(OutpostSpawnError, match="no quota"):
        await spawner.start()
    assert fake_k8s.requests == []


async def test_lost_answer_on_create(k8s_spawner, fake_k8s, reference_outpost):
    # the API creates the Service but answers after the client's timeout
    fake_k8s.fail("POST", "/services$", status=None, delay=0.8, late=True)
    spawner = k8s_spawner(k8s_request_timeout=0.3)
    await spawner.start()
    methods = [r.method for r in fake_k8s.requests]
    assert methods == ["GET", "POST", "POST", "GET", "PUT"]
    assert fake_k8s.get_service(NS, "jupyter-alice")["spec"]["ports"][0]["port"] == spawner.port
    await spawner.stop()
    assert fake_k8s.get_service(NS, "jupyter-alice") is None


async def test_conflict_replaces_a_left_over_service(k8s_spawner, fake_k8s, reference_outpost):
    left = fake_k8s.add_service(
        NS,
        make_service(
            name="jupyter-alice", port=1111, selector=HUB_SELECTOR, labels=owner_selector("jhub")
        ),
    )
    spawner = k8s_spawner()
    url = await spawner.start()
    assert url.endswith(f":{spawner.port}")
    svc = fake_k8s.get_service(NS, "jupyter-alice")
    assert svc["metadata"]["uid"] == left["metadata"]["uid"]
    assert svc["spec"]["ports"][0]["port"] == spawner.port
    assert svc["metadata"]["annotations"]["hub.jupyter.org/username"] == "alice"
    assert [r.method for r in fake_k8s.requests] == ["GET", "POST", "GET", "PUT"]
    await spawner.stop()


async def test_conflict_with_a_foreign_service(k8s_spawner, fake_k8s, reference_outpost):
    foreign = fake_k8s.add_service(
        NS,
        make_service(
            name="jupyter-alice",
            port=8888,
            selector={"component": "singleuser-server"},
            labels={"app": "jupyterhub", "component": "singleuser-server"},
        ),
    )
    spawner = k8s_spawner()
    with pytest.raises(OutpostSpawnError, match="already exists in namespace jhub"):
        await spawner.start()
    assert fake_k8s.calls("DELETE") == []
    assert fake_k8s.get_service(NS, "jupyter-alice") == foreign
    assert reference_outpost.services == {}
    await spawner.stop()
    assert fake_k8s.get_service(NS, "jupyter-alice") == foreign


async def test_invalid_extra_label_key(k8s_spawner, fake_k8s, reference_outpost):
    spawner = k8s_spawner(extra_labels={"bad key": "x"})
    with pytest.raises(OutpostSpawnError, match="invalid Kubernetes Service settings"):
        await spawner.start()
    assert posts(fake_k8s) == []
    assert reference_outpost.services == {}


async def test_stop_when_the_service_is_already_gone(
    k8s_spawner, fake_k8s, reference_outpost, logs
):
    spawner = k8s_spawner()
    await spawner.start()
    del fake_k8s.services[(NS, "jupyter-alice")]
    await spawner.stop()
    assert "was already gone" in logs.text
    assert "removing the Service failed" not in logs.text
    assert spawner.port_forward_info["svc"] is False


async def test_delete_failure_is_logged_and_kept_for_later(
    k8s_spawner, fake_k8s, reference_outpost, logs
):
    spawner = k8s_spawner()
    await spawner.start()
    fake_k8s.fail("DELETE", status=503, count=None)
    await spawner.stop()
    assert "removing the Service failed" in logs.text
    assert spawner.port_forward_info["svc"] is True  # the state still says it exists
    assert fake_k8s.get_service(NS, "jupyter-alice") is not None


async def test_hub_restart_does_not_recreate_the_service(
    k8s_spawner, fake_k8s, reference_outpost, forwards
):
    spawner = k8s_spawner(ssh_recreate_at_start=True)
    await spawner.start()
    state = spawner.get_state()
    requests_before = len(fake_k8s.requests)

    # a new Hub process: the forward is rebuilt, the Service is left as it is
    restored = k8s_spawner(ssh_recreate_at_start=True)
    restored.load_state(state)
    assert await restored.poll() is None
    assert forwards[-1] == ("add", spawner.port, state["port_forward_info"]["service"])
    assert len(fake_k8s.requests) == requests_before
    await restored.stop()
    assert fake_k8s.get_service(NS, "jupyter-alice") is None
    assert forwards[-1] == ("remove", spawner.port)


async def test_cancelled_start_removes_the_service(k8s_spawner, fake_k8s, reference_outpost):
    fake_k8s.fail("PUT", status=None, delay=30)  # hangs until cancelled
    fake_k8s.add_service(
        NS,
        make_service(
            name="jupyter-alice", port=1, selector=HUB_SELECTOR, labels=owner_selector("jhub")
        ),
    )
    spawner = k8s_spawner(k8s_request_timeout=20)
    task = asyncio.ensure_future(spawner.start())
    for _ in range(200):
        if fake_k8s.calls("PUT"):
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake_k8s.get_service(NS, "jupyter-alice") is None
    assert reference_outpost.services == {}


# --- orphans ------------------------------------------------------------------------


def running(spawner):
    """Mark the spawner's server as running in its Hub database."""
    db = spawner.user.db
    spawner.orm_spawner.server = orm.Server(base_url="/user/x/")
    db.commit()


def leftover(api, spawner, *, hub_id="jhub", name=""):
    """A Service as an earlier Hub run would have left it for ``spawner``."""
    return api.add_service(
        NS,
        make_service(
            name=name or k8s.service_name(spawner),
            port=1234,
            selector=HUB_SELECTOR,
            labels=k8s.service_labels(
                username=spawner.user.name, servername=spawner.name, hub_id=hub_id
            ),
            annotations=k8s.service_annotations(
                username=spawner.user.name, servername=spawner.name, user_id=spawner.user.id
            ),
        ),
    )


@pytest.fixture
def hub_db(k8s_spawner):
    """Spawners sharing one Hub database: alice's default server runs; bob's
    default server and alice's server "old" do not."""
    alice = k8s_spawner(user="alice")
    db = alice.user.db
    running(alice)
    return {
        "alice": alice,
        "alice-old": k8s_spawner(user="alice", server="old", db=db),
        "bob": k8s_spawner(user="bob", db=db),
    }


async def test_orphans_are_removed(hub_db, fake_k8s):
    for spawner in hub_db.values():
        leftover(fake_k8s, spawner)
    leftover(fake_k8s, hub_db["bob"], hub_id="other-hub", name="other-bob")
    # a Service without our labels is never listed
    fake_k8s.add_service(
        NS, make_service(name="unrelated", port=1, selector={"a": "b"}, labels={"x": "y"})
    )
    removed = await hub_db["alice"].remove_orphan_services()
    assert sorted(removed) == ["jupyter-alice--old", "jupyter-bob"]
    assert set(fake_k8s.services) == {
        (NS, "hub"),
        (NS, "jupyter-alice"),
        (NS, "other-bob"),
        (NS, "unrelated"),
    }
    (listing,) = fake_k8s.calls("GET", "/services$")
    assert listing.query["labelSelector"] == (
        "app.kubernetes.io/instance=jhub,app.kubernetes.io/managed-by=outpostspawner"
    )


async def test_orphan_changed_since_listing_is_kept(hub_db, fake_k8s, monkeypatch):
    leftover(fake_k8s, hub_db["bob"])
    client = await hub_db["bob"]._k8s_client()
    real_list = client.list

    async def list_then_replace(*args, **kwargs):
        items = await real_list(*args, **kwargs)
        # a start replaces the Service between the listing and the deletion
        svc = fake_k8s.services[(NS, "jupyter-bob")]
        fake_k8s._replace(NS, "jupyter-bob", svc)
        return items

    monkeypatch.setattr(client, "list", list_then_replace)
    removed = await k8s.remove_orphan_services(
        client, NS, "jhub", hub_db["bob"].user.db, hub_db["bob"].log
    )
    assert removed == []
    assert fake_k8s.get_service(NS, "jupyter-bob") is not None
    assert fake_k8s.calls("DELETE")[0].json["preconditions"]["resourceVersion"]


async def test_orphan_sweep_is_scheduled_once(hub_db, fake_k8s, k8s_spawner):
    leftover(fake_k8s, hub_db["bob"])
    assert k8s.orphan_sweep() == []  # off by default outside a cluster
    first = k8s_spawner(
        user="carol", svc_remove_orphans=True, svc_orphan_delay=0.05, db=hub_db["bob"].user.db
    )
    k8s_spawner(
        user="dave", svc_remove_orphans=True, svc_orphan_delay=0.05, db=hub_db["bob"].user.db
    )
    (task,) = k8s.orphan_sweep()
    await asyncio.wait_for(task, timeout=10)
    assert fake_k8s.get_service(NS, "jupyter-bob") is None
    assert fake_k8s.get_service(NS, "jupyter-alice") is None  # never made
    assert first.svc_remove_orphans


async def test_orphan_sweep_survives_api_errors(hub_db, fake_k8s, k8s_spawner, logs):
    fake_k8s.fail("GET", "/services$", status=403, count=None)
    k8s_spawner(user="carol", svc_remove_orphans=True, svc_orphan_delay=0)
    (task,) = k8s.orphan_sweep()
    await asyncio.wait_for(task, timeout=10)
    assert "Could not look for orphaned Services" in logs.text


async def test_orphan_sweep_default(monkeypatch, k8s_spawner):
    assert k8s_spawner().svc_remove_orphans is False
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert k8s_spawner(svc_remove_orphans=False).svc_remove_orphans is False
    spawner = k8s_spawner(svc_create=False)
    assert spawner.svc_remove_orphans is True
    assert k8s.orphan_sweep() == []  # no Services, nothing to sweep


def test_hub_id_default(monkeypatch):
    from outpostspawner import OutpostSpawner

    monkeypatch.delenv("HELM_RELEASE_NAME", raising=False)
    assert OutpostSpawner().svc_hub_id == "jupyterhub"
    monkeypatch.setenv("HELM_RELEASE_NAME", "jhub-prod")
    assert OutpostSpawner().svc_hub_id == "jhub-prod"
