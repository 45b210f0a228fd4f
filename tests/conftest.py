"""Shared test configuration.

Tests that use the ``k8s_backend`` fixture run against the fake Kubernetes API
(:mod:`outpostspawner.testing.fake_k8s`) and, when ``KUBECONFIG`` is set, a
second time against that cluster. The cluster variants carry the
``k8s_cluster`` marker (``pytest -m k8s_cluster`` runs only them); without
``KUBECONFIG`` they are not generated at all.
"""

from __future__ import annotations

import os

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings

from outpostspawner import k8s
from outpostspawner.testing.fake_k8s import FakeKubernetes

# Hypothesis: a fixed seed and a bounded number of examples in CI (the default);
# HYPOTHESIS_PROFILE=long for a search of many more
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return f"k8s_cluster tests: against the cluster of KUBECONFIG={kubeconfig}"
    return "k8s_cluster tests: not generated (KUBECONFIG is not set)"


def pytest_generate_tests(metafunc):
    if "k8s_backend" in metafunc.fixturenames:
        params = ["fake"]
        if os.environ.get("KUBECONFIG"):
            params.append(pytest.param("cluster", marks=pytest.mark.k8s_cluster))
        metafunc.parametrize("k8s_backend", params, indirect=True)


@pytest_asyncio.fixture
async def fake_k8s():
    """A running fake Kubernetes API; the shared clients of the test's event
    loop are closed and the selector cache is cleared afterwards."""
    k8s.clear_caches()
    async with FakeKubernetes() as api:
        try:
            yield api
        finally:
            await k8s.close_clients()
            k8s.clear_caches()
