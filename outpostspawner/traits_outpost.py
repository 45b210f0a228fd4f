"""Configuration of :class:`~outpostspawner.OutpostSpawner`: the Outpost protocol."""

from __future__ import annotations

from traitlets import Any, Bool, Callable, Dict, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from .traits_forward import _hook


class OutpostTraits(LoggingConfigurable):
    """Traits of OutpostSpawner."""

    request_url = _hook(
        [Unicode(), Callable()],
        "",
        """
        URL of the Outpost's services collection; a string or a hook
        ``(spawner, user_options)``, which may be async.

        Example::

            def request_url(spawner, user_options):
                if user_options.get("system", "") == "A":
                    return "http://outpost.namespace.svc:8080/services/"
                return "https://remote-outpost.example.org/services/"

            c.OutpostSpawner.request_url = request_url
        """,
    )

    request_headers = _hook(
        [Dict(), Callable()],
        {},
        """
        Headers sent with every request to the Outpost, typically the Hub's Basic
        credentials; a dict or a hook ``(spawner, user_options)``, which may be
        async. ``Content-Type`` and ``Accept`` are ``application/json`` unless set
        here. Header values are never logged.

        Example::

            import os

            def request_headers(spawner, user_options):
                if user_options.get("system", "") == "A":
                    auth = os.environ["SYSTEM_A_AUTHENTICATION"]
                else:
                    auth = os.environ["SYSTEM_B_AUTHENTICATION"]
                return {
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "Authorization": f"Basic {auth}",
                }

            c.OutpostSpawner.request_headers = request_headers
        """,
    )

    request_kwargs = _hook(
        [Dict(), Callable()],
        {},
        """
        Keyword arguments for every :class:`tornado.httpclient.HTTPRequest` sent to
        the Outpost; a dict or a hook ``(spawner, user_options)``.

        Example::

            def request_kwargs(spawner, user_options):
                return {
                    "request_timeout": 30,
                    "connect_timeout": 10,
                    "ca_certs": "/etc/outpost/ca.pem",
                    "validate_cert": True,
                }

            c.OutpostSpawner.request_kwargs = request_kwargs
        """,
    )

    request_kwargs_start = _hook(
        [Dict(), Callable()],
        None,
        """
        Keyword arguments for the start request only; a dict or a hook
        ``(spawner, user_options)``. Unset: ``request_kwargs`` is used. Unless a
        ``request_timeout`` is given, the start request may take as long as
        ``start_timeout`` allows, so a slow remote start is never cut short.
        """,
    )

    http_client_defaults = Dict(
        help="""
        Default keyword arguments for the shared HTTP client used for all Outposts
        (passed as ``defaults`` to tornado's client).
        """,
    ).tag(config=True)

    start_concurrency_limit = Integer(
        100,
        help="""
        Start requests in flight to Outposts at once, across all servers. Further
        starts wait for a slot; polls and stops have their own slots
        (``request_concurrency_limit``).
        """,
    ).tag(config=True)

    request_concurrency_limit = Integer(
        50,
        help="Poll, stop and list requests in flight to Outposts at once, across all servers.",
    ).tag(config=True)

    outpost_name_template = Unicode(
        "{userid}-{servername}",
        help="""
        The ``name`` a server has at the Outpost. An Outpost keys services by name
        per Hub, so it must be unique across the Hub's users and servers. The
        fields of ``svc_name_template`` are expanded; trailing ``-`` are stripped
        (the default server of user 7 is ``7``, its server ``gpu`` is ``7-gpu``).
        """,
    ).tag(config=True)

    start_async = _hook(
        [Bool(), Callable()],
        False,
        """
        Whether the Outpost starts the server in the background
        (``execution-type: async``) and answers at once; a bool or a hook
        ``(spawner)``. The spawner then waits for the server's address, reported by
        the server through the tunnel callback or by the Outpost's poll answer.
        """,
    )

    stop_async = _hook(
        [Bool(), Callable()],
        False,
        """
        Whether the Outpost stops the server in the background; a bool or a hook
        ``(spawner)``.
        """,
    )

    async_start_poll_interval = Float(
        1.0,
        help="""
        Seconds between polls of the Outpost while an async start waits for the
        server's address.
        """,
    ).tag(config=True)

    check_allowed = Any(
        None,
        help="""
        A hook ``(spawner, user_options)`` that may refuse a start by raising; its
        message is shown to the user. May be async.

        Example::

            def check_allowed(spawner, user_options):
                if not user_options.get("allowed", True):
                    raise Exception("This is not allowed")

            c.OutpostSpawner.check_allowed = check_allowed
        """,
    ).tag(config=True)

    custom_env = _hook(
        [Dict(), Callable()],
        {},
        """
        Extra environment variables for the remote server; a dict or a hook
        ``(spawner, user_options, jupyterhub_api_url)``, which may be async.

        Example::

            import os

            async def custom_env(spawner, user_options, jupyterhub_api_url):
                env = {"JUPYTERHUB_STAGE": os.environ.get("JUPYTERHUB_STAGE", "")}
                system = user_options.get("system", "")
                if system:
                    env["JUPYTERHUB_FLAVORS_UPDATE_URL"] = (
                        f"{jupyterhub_api_url.rstrip('/')}/outpostflavors/{system}"
                    )
                return env

            c.OutpostSpawner.custom_env = custom_env
        """,
    )

    custom_user_options = _hook(
        [Dict(), Callable()],
        {},
        """
        Extra user options sent to the Outpost; a dict or a hook
        ``(spawner, user_options)``, which may be async.

        Example::

            async def custom_user_options(spawner, user_options):
                user_options["image"] = "jupyter/minimal-notebook:latest"
                return user_options

            c.OutpostSpawner.custom_user_options = custom_user_options
        """,
    )

    custom_misc = _hook(
        [Dict(), Callable()],
        {},
        """
        Overrides of the remote spawner's configuration (``c.<Spawner>.<key>`` at
        the Outpost); a dict or a hook ``(spawner, user_options)``, which may be
        async.

        Example::

            async def custom_misc(spawner, user_options):
                return {"image": "jupyter/base-notebook:latest"}

            c.OutpostSpawner.custom_misc = custom_misc
        """,
    )

    custom_misc_disable_default = Bool(
        False,
        help="""
        Do not add the default ``misc`` entries: ``dns_name_template``,
        ``pod_name_template`` (the ``svc_name_template``), ``internal_ssl``,
        ``ip`` (``"0.0.0.0"``), ``port``, ``services_enabled`` (``True``) and
        ``extra_labels``. Entries of ``custom_misc`` always win over defaults.
        """,
    ).tag(config=True)

    custom_poll_interval = _hook(
        [Integer(), Float(), Callable()],
        0,
        """
        Poll interval in **milliseconds**; a number or a hook
        ``(spawner, user_options)``. ``0`` uses ``Spawner.poll_interval``
        (seconds). Resolved once per start; ``poll_jitter`` applies.

        Example::

            import random

            def custom_poll_interval(spawner, user_options):
                if user_options.get("system", "None") == "A":
                    return 30_000 + random.randint(0, 10_000)
                return 0

            c.OutpostSpawner.custom_poll_interval = custom_poll_interval
        """,
    )

    failed_spawn_request_hook = Any(
        None,
        help="""
        A hook ``(spawner, exception)`` called when the start request failed.
        May be async.
        """,
    ).tag(config=True)

    post_spawn_request_hook = Any(
        None,
        help="""
        A hook ``(spawner, resp_json)`` called with the Outpost's answer when the
        start request succeeded. May be async.
        """,
    ).tag(config=True)

    request_404_poll_keep_running = Bool(
        False,
        help="Treat a 404 answer to a poll as 'still running' instead of 'gone'.",
    ).tag(config=True)

    request_failed_poll_keep_running = Bool(
        True,
        help="Treat a failed poll (Outpost unreachable, 5xx) as 'still running'.",
    ).tag(config=True)

    collect_logs = Bool(False, help="Ask the Outpost for the server's logs on stop.").tag(
        config=True
    )

    collect_logs_polling = Bool(
        False, help="Ask the Outpost for the server's logs on every poll."
    ).tag(config=True)

    additional_cafile = Any(
        None,
        help="""
        With ``internal_ssl``: PEM text of more certificate authorities (or a hook
        ``(spawner)`` returning it) appended to the CA bundle sent to the server.
        Needed when ``JUPYTERHUB_API_URL`` is an external URL.
        """,
    ).tag(config=True)
