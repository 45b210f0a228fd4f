"""``c.OutpostFlavors``: which Outposts the Hub asks for flavors and credits."""

from __future__ import annotations

import os

from traitlets import Bool, Dict, Float, Unicode, default
from traitlets.config import Configurable

#: the existing implementation's environment variables (``;``-separated lists)
ENV_NAMES = "OUTPOST_FLAVOR_INITIAL_SYSTEM_NAMES"
ENV_URLS = "OUTPOST_FLAVOR_INITIAL_SYSTEM_URLS"
ENV_TOKENS = "OUTPOST_FLAVOR_INITIAL_SYSTEM_TOKENS"


class OutpostFlavors(Configurable):
    """Flavors and credits of the Outposts, e.g.::

        c.OutpostFlavors.outposts = {
            "cluster-a": {
                "url": "https://outpost.cluster-a.example.org/",
                "headers": {"Authorization": "Basic ..."},
            },
        }

    The system names are those the Outposts push their usage for
    (``/hub/api/outpostflavors/{system}``) and the ``system`` of ``user_options``.
    """

    outposts = Dict(
        help="""System name -> ``{"url": <the Outpost's base URL>, "headers": {...},
        "request_kwargs": {...}, "user_flavors": bool, "credits": bool,
        "display_name": str}``. ``url`` is
        the Outpost's root (``/flavors/``, ``/userflavors``, ``/credits/`` and
        ``/usercredits`` are appended). ``headers`` default to
        ``c.OutpostSpawner.request_headers`` when that is a dict. ``user_flavors``
        (default true): ask ``POST /userflavors`` for each user's flavors;
        ``credits`` (default false): read credits too. ``display_name``: the
        system's title in the spawn form (default its name). When empty, the existing
        implementation's ``OUTPOST_FLAVOR_INITIAL_SYSTEM_NAMES``/``_URLS``/``_TOKENS``
        environment variables are read (URLs of ``/flavors/``, tokens for Basic auth).""",
    ).tag(config=True)

    refresh_interval = Float(
        300,
        help="Seconds between fetches of every Outpost's flavors (pushes update them at "
        "once in between). 0: fetch only when the flavors are first needed.",
    ).tag(config=True)

    user_ttl = Float(
        300, help="Seconds a user's flavors and credits are kept before they are asked again."
    ).tag(config=True)

    request_timeout = Float(5, help="Seconds a flavors or credits request may take.").tag(
        config=True
    )

    check_before_start = Bool(
        True,
        help="Refuse a start of an unknown or full flavor before any request to the "
        "Outpost, with the message the Outpost would give.",
    ).tag(config=True)

    set_update_url = Bool(
        True,
        help="Set ``JUPYTERHUB_FLAVORS_UPDATE_URL`` in the start body's env (unless "
        "``custom_env`` sets it) for the configured systems, so that the Outpost pushes "
        "its usage. The Outpost's token for the push comes from its own configuration: "
        "a Hub token in the env would reach the user's server.",
    ).tag(config=True)

    system_key = Unicode("system", help="The ``user_options`` key naming the system.").tag(
        config=True
    )

    flavor_key = Unicode("flavor", help="The ``user_options`` key naming the flavor.").tag(
        config=True
    )

    @default("outposts")
    def _outposts_from_env(self) -> dict:
        names = [n for n in os.environ.get(ENV_NAMES, "").split(";") if n]
        urls = os.environ.get(ENV_URLS, "").split(";")
        tokens = os.environ.get(ENV_TOKENS, "").split(";")
        result = {}
        for i, name in enumerate(names):
            if i >= len(urls) or not urls[i]:
                continue
            url = urls[i].rstrip("/")
            if url.endswith("/flavors"):
                url = url[: -len("/flavors")]
            entry: dict = {"url": url + "/"}
            if i < len(tokens) and tokens[i]:
                entry["headers"] = {"Authorization": f"Basic {tokens[i]}"}
            result[name] = entry
        return result
