"""Configuration of :class:`~outpostspawner.ForwardBaseSpawner`: forwarding,
Kubernetes Services, events and lifecycle hooks.

Value-or-callable traits are resolved by :func:`outpostspawner.hooks.resolve`:
a callable gets the spawner and then only those documented arguments its
signature accepts, and may be async.
"""

from __future__ import annotations

from traitlets import Any, Bool, Callable, Dict, Float, Integer, List, Unicode, Union, default
from traitlets.config import LoggingConfigurable

_NS_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _hook(traits, default_value, help):
    """A trait that takes a value or a callable (see :mod:`outpostspawner.hooks`)."""
    return Union(
        traits, default_value=default_value, allow_none=default_value is None, help=help
    ).tag(config=True)


class ForwardTraits(LoggingConfigurable):
    """Traits of ForwardBaseSpawner."""

    # --- ports and addresses -------------------------------------------------

    custom_port = _hook(
        [Integer(), Callable()],
        0,
        """
        The port of the single-user server, or a hook returning it.

        ``0`` picks a free port. The port is resolved once per start, stored in the
        spawner's state and sent to the Outpost (``misc.port``).

        Example::

            from jupyterhub.utils import random_port

            def custom_port(spawner, user_options):
                if user_options.get("system", "") == "A":
                    return 8080
                return random_port()

            c.OutpostSpawner.custom_port = custom_port
        """,
    )

    public_api_url = Any(
        None,
        help="""
        The Hub API URL that remote servers use (``JUPYTERHUB_API_URL``), a string
        or a hook ``(spawner)``. Remote servers usually cannot reach the Hub's
        internal URL. Default: ``hub_connect_url`` or the Hub's API URL.
        """,
    ).tag(config=True)

    ssl_alt_names = Union(
        [List(Unicode()), Callable()],
        default_value=[],
        help="""
        Subject alternative names for the server's internal_ssl certificate, a list
        or a hook ``(spawner)`` returning one, e.g. ``["DNS:jupyter-alice.example"]``.
        """,
    ).tag(config=True)

    # --- events --------------------------------------------------------------

    show_first_default_event = Any(
        True,
        help="""
        Whether the ``0%: Server requested`` event is shown; a bool or a hook
        ``(spawner)``, which may be async.
        """,
    ).tag(config=True)

    cancelling_event = _hook(
        [Dict(), Callable()],
        {
            "failed": False,
            "ready": False,
            "progress": 99,
            "message": "",
            "html_message": "JupyterLab is cancelling the start.",
        },
        """
        Event shown when a pending start is cancelled: a dict or a hook
        ``(spawner)``, which may be async.

        Example::

            async def cancelling_event(spawner):
                return {
                    "failed": False,
                    "progress": 99,
                    "message": "Cancelling the start ...",
                }

            c.ForwardBaseSpawner.cancelling_event = cancelling_event
        """,
    )

    filter_events = Callable(
        None,
        allow_none=True,
        help="""
        A hook ``(spawner, event)`` that rewrites each progress event before it is
        shown, for example to unify events sent by different remote servers. Return
        the event, or an empty dict to hide it. May be async.

        Example::

            def filter_events(spawner, event):
                event["html_message"] = event.get("message", "No message available")
                return event

            c.ForwardBaseSpawner.filter_events = filter_events
        """,
    ).tag(config=True)

    events_max = Integer(
        100,
        help="""
        The most progress events kept per server (in memory and in the Hub
        database). Older events are dropped; the first one is kept.
        """,
    ).tag(config=True)

    # --- lifecycle hooks -----------------------------------------------------

    poll_batch_window = Float(
        0.005,
        min=0.0,
        help="""
        Every server is polled on a grid of its own, every ``poll_interval`` (or
        ``custom_poll_interval``) at a stable phase derived from its name, so the
        polls of all servers are spread evenly over the interval, also after a Hub
        restart; ``poll_jitter`` moves single polls off the grid. One timer serves
        all servers and wakes up at most once per this many seconds (at multiples
        of it), starting the polls that fell due since in one pass: the default
        5 ms joins only neighbouring polls, which saves the Hub CPU (fewer
        wake-ups) while its own requests never wait behind a burst. ``0`` starts
        each poll at its own time, at most four per turn of the event loop; larger
        windows batch more (fewer wake-ups, burstier).
        """,
    ).tag(config=True)

    pre_poll_hook = Any(
        False,
        help="""
        A hook ``(spawner)`` run before each poll, which may be async. Its result:

        - ``True``: status unknown, ask the Outpost;
        - ``False``: status unknown, do not ask; the server is treated as running;
        - ``None``: the server is running, do not ask;
        - an integer: the server has stopped with this exit code, do not ask.
        """,
    ).tag(config=True)

    pre_stop_hook = Any(
        False,
        help="""
        A hook ``(spawner)`` run before a stop, which may be async. Errors are
        logged and the stop goes on.
        """,
    ).tag(config=True)

    update_start_response = Any(
        False,
        help="""
        A hook ``(spawner, start_response)`` that may rewrite the Outpost's
        ``service`` answer before forwarding is set up. May be async.
        """,
    ).tag(config=True)

    update_expected_path = Any(
        False,
        help="""
        A hook ``(spawner, url)`` that may rewrite the URL returned from
        ``start()``, where JupyterHub looks for the server. May be async.
        """,
    ).tag(config=True)

    # --- ssh forwarding --------------------------------------------------------

    ssh_during_startup = _hook(
        [Bool(), Callable()],
        False,
        """
        Whether to open an SSH port forward to the server's address once the
        Outpost has answered the start; a bool or a hook ``(spawner)``.

        Use it when the server runs where the Hub cannot reach it directly but its
        address is known (for example another Kubernetes cluster).

        Example::

            def ssh_during_startup(spawner):
                return spawner.user_options.get("system", "") == "A"

            c.ForwardBaseSpawner.ssh_during_startup = ssh_during_startup
        """,
    )

    ssh_recreate_at_start = _hook(
        [Bool(), Callable()],
        False,
        """
        Whether the SSH forwards of running servers are rebuilt when JupyterHub
        starts; a bool or a hook ``(spawner)``. Leave it off when a standalone
        forwarder keeps the tunnels through Hub restarts.
        """,
    )

    ssh_node = _hook(
        [Unicode(), Callable()],
        None,
        """
        The SSH host the forward goes through; a string or a hook ``(spawner)``.

        Example::

            def ssh_node(spawner):
                if spawner.user_options.get("system", "") == "A":
                    return "outpost.namespace.svc"
                return "outpost.example.org"

            c.ForwardBaseSpawner.ssh_node = ssh_node
        """,
    )

    ssh_node_mapping = Callable(
        None,
        allow_none=True,
        help="""
        A hook ``(spawner, ssh_node)`` mapping the SSH node to another name, e.g.
        an internal name to an external one. May be async.

        Example::

            def ssh_node_mapping(spawner, ssh_node):
                if ssh_node == "login01":
                    return "login01.example.org"
                return ssh_node

            c.ForwardBaseSpawner.ssh_node_mapping = ssh_node_mapping
        """,
    ).tag(config=True)

    ssh_port = _hook(
        [Integer(), Unicode(), Callable()],
        22,
        """
        The SSH port of ``ssh_node``; a number or a hook ``(spawner)``.

        Example::

            def ssh_port(spawner):
                return 22 if spawner.user_options.get("system", "") == "A" else 2222

            c.ForwardBaseSpawner.ssh_port = ssh_port
        """,
    )

    ssh_username = _hook(
        [Unicode(), Callable()],
        "jhuboutpost",
        """
        The SSH user on ``ssh_node``; a string or a hook ``(spawner)``.

        Example::

            def ssh_username(spawner):
                if spawner.user_options.get("system", "") == "A":
                    return "jhuboutpost"
                return "ubuntu"

            c.ForwardBaseSpawner.ssh_username = ssh_username
        """,
    )

    ssh_key = _hook(
        [Unicode(), Callable()],
        "/home/jovyan/.ssh/id_rsa",
        """
        Path of the SSH private key; a string or a hook ``(spawner)`` or
        ``(spawner, port_forward_info)``.

        Example::

            def ssh_key(spawner):
                if spawner.user_options.get("system", "") == "A":
                    return "/mnt/private_keys/a"
                return "/mnt/private_keys/b"

            c.ForwardBaseSpawner.ssh_key = ssh_key
        """,
    )

    ssh_forward_options = _hook(
        [Dict(), Callable()],
        {},
        """
        SSH options for the forward (OpenSSH option names, e.g.
        ``{"ServerAliveInterval": "15"}``); a dict or a hook ``(spawner)``. Only
        options the forwarder understands are accepted; anything else is a
        configuration error.
        """,
    )

    ssh_custom_forward = Any(
        None,
        help="""
        A hook ``(spawner, port_forward_info)`` that creates the port forward
        instead of the built-in forwarder, for example by asking an external
        forwarding service. May be async.

        Example::

            import json
            from tornado.httpclient import HTTPRequest

            async def ssh_custom_forward(spawner, port_forward_info):
                req = HTTPRequest(
                    url="http://forwarder:8080/forwards",
                    method="POST",
                    headers={"Content-Type": "application/json"},
                    body=json.dumps(port_forward_info),
                )
                await spawner.send_request(req, action="setuptunnel")

            c.ForwardBaseSpawner.ssh_custom_forward = ssh_custom_forward
        """,
    ).tag(config=True)

    ssh_custom_forward_remove = Any(
        None,
        help="""
        A hook ``(spawner, port_forward_info)`` that removes a forward made by
        ``ssh_custom_forward``. May be async.

        Example::

            import json
            from tornado.httpclient import HTTPRequest

            async def ssh_custom_forward_remove(spawner, port_forward_info):
                req = HTTPRequest(
                    url="http://forwarder:8080/forwards",
                    method="DELETE",
                    headers={"Content-Type": "application/json"},
                    body=json.dumps(port_forward_info),
                    allow_nonstandard_methods=True,
                )
                await spawner.send_request(req, action="removetunnel")

            c.ForwardBaseSpawner.ssh_custom_forward_remove = ssh_custom_forward_remove
        """,
    ).tag(config=True)

    ssh_create_remote_forward = Any(
        False,
        help="""
        Whether a remote port forward from the remote system back to the Hub is
        needed; a bool or a hook ``(spawner, remote_port_forward_info)``. The remote
        system must be prepared for it.
        """,
    ).tag(config=True)

    ssh_custom_forward_remote = Any(
        None,
        help="A hook ``(spawner, remote_port_forward_info)`` that creates the remote forward itself.",
    ).tag(config=True)

    ssh_custom_forward_remote_remove = Any(
        None,
        help="A hook ``(spawner, remote_port_forward_info)`` that removes the remote forward.",
    ).tag(config=True)

    ssh_remote_node = _hook(
        [Unicode(), Callable()],
        None,
        "SSH host for the remote forward; a string or a hook ``(spawner)``.",
    )

    ssh_remote_port = _hook(
        [Integer(), Unicode(), Callable()],
        22,
        "SSH port for the remote forward; a number or a hook ``(spawner)``.",
    )

    ssh_remote_username = _hook(
        [Unicode(), Callable()],
        "jhuboutpost",
        "SSH user for the remote forward; a string or a hook ``(spawner)``.",
    )

    ssh_remote_key = _hook(
        [Unicode(), Callable()],
        "/home/jovyan/.ssh/id_rsa_remote",
        "Private key path for the remote forward; a string or a hook ``(spawner)``.",
    )

    ssh_forward_remote_options = _hook(
        [Dict(), Callable()],
        {},
        "SSH options for the remote forward; a dict or a hook ``(spawner)``.",
    )

    # --- kubernetes service ----------------------------------------------------

    svc_create = _hook(
        [Bool(), Callable()],
        True,
        """
        Whether a Kubernetes Service is created for a forwarded server, so that the
        proxy can reach the forward; a bool or a hook ``(spawner)``.

        Example::

            async def svc_create(spawner):
                return spawner.user_options.get("system", "") != "A"

            c.ForwardBaseSpawner.svc_create = svc_create
        """,
    )

    ssh_custom_svc = Any(
        None,
        help="""
        A hook ``(spawner, port_forward_info)`` that creates the Kubernetes Service
        itself and returns ``(host, port)`` under which the proxy reaches the server.

        Example::

            def ssh_custom_svc(spawner, port_forward_info):
                ...
                return spawner.svc_name, spawner.port

            c.ForwardBaseSpawner.ssh_custom_svc = ssh_custom_svc
        """,
    ).tag(config=True)

    ssh_custom_svc_remove = Any(
        None,
        help="""
        A hook ``(spawner, port_forward_info)`` that removes a Service made by
        ``ssh_custom_svc``. May be async.
        """,
    ).tag(config=True)

    extra_labels = _hook(
        [Dict(), Callable()],
        {},
        """
        Extra labels for the Kubernetes Service, also sent to the Outpost (see
        ``custom_misc_disable_default``); a dict or a hook ``(spawner)`` or
        ``(spawner, user_options)``.

        Example::

            def extra_labels(spawner):
                return {
                    "hub.jupyter.org/username": spawner.user.name,
                    "sidecar.istio.io/inject": "false",
                }

            c.ForwardBaseSpawner.extra_labels = extra_labels
        """,
    )

    svc_name_template = Unicode(
        "jupyter-{username}--{servername}",
        help="""
        Name of the Kubernetes Service of a forwarded server, also sent to the
        Outpost as ``pod_name_template``.

        ``{username}``, ``{userid}``, ``{servername}``, ``{hubnamespace}``,
        ``{unescaped_username}`` and ``{unescaped_servername}`` are expanded; the
        escaped names follow the DNS label rules. Trailing ``-`` are stripped, so
        the default server gets no dangling separator. The name must be unique in
        the namespace.
        """,
    ).tag(config=True)

    dns_name_template = Unicode(
        "{name}.{namespace}.svc.cluster.local",
        help="Template of the DNS name of the Service (``{name}``, ``{namespace}``).",
    ).tag(config=True)

    namespace = Unicode(
        help="""
        Kubernetes namespace for Services. Default: the namespace of the Hub's own
        service account when running in a cluster, else ``default``.
        """,
    ).tag(config=True)

    @default("namespace")
    def _namespace_default(self):
        try:
            with open(_NS_PATH) as f:  # read once, at configuration time
                return f.read().strip()
        except OSError:
            return "default"
