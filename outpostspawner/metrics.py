"""Prometheus metrics, served with JupyterHub's own on ``/hub/metrics``.

JupyterHub exposes the default ``prometheus_client`` registry; the metrics here
are registered there when the package is imported.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTPOST_REQUEST_DURATION = Histogram(
    "outpostspawner_outpost_request_duration_seconds",
    "Requests to Outposts, by action and HTTP status (599: no answer)",
    ["action", "status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf")),
)

ACTIVE_FORWARDS = Gauge(
    "outpostspawner_active_forwards",
    "Port forwards of the running servers of this Hub",
)
_forwards: set[str] = set()  # the start ids of servers with a forward
ACTIVE_FORWARDS.set_function(lambda: len(_forwards))

FORWARDER_RESTARTS = Counter(
    "outpostspawner_forwarder_restarts_total",
    "Restarts of a forwarder process (a supervised child that died, or a standalone "
    "forwarder found restarted)",
)

TUNNEL_REBUILDS = Counter(
    "outpostspawner_tunnel_rebuilds_total",
    "Tunnels rebuilt after a Hub restart or an SSH node restart, by outcome",
    ["reason", "outcome"],
)


_request_children: dict[tuple[str, int], Histogram] = {}


def observe_request(action: str, status: int, seconds: float) -> None:
    # the labelled child is looked up once per (action, status): polls call this
    # hundreds of times a second
    child = _request_children.get((action, status))
    if child is None:
        child = OUTPOST_REQUEST_DURATION.labels(action=action, status=str(status))
        _request_children[(action, status)] = child
    child.observe(seconds)


def forward_opened(start_id: str) -> None:
    _forwards.add(start_id)


def forward_closed(start_id: str) -> None:
    _forwards.discard(start_id)
