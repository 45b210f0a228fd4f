"""A reference Outpost with flavors and credits, and the Hub configuration that
asks it: shared by the flavors and browser tests.

The flavors are a YAML file, as a JupyterHub Outpost has them; the user
``flavor-vip`` has flavors of their own (``POST /userflavors``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from outpostspawner.testing import ReferenceOutpost

from .conftest import OUTPOST_CREDENTIALS, SINGLEUSER_COMMAND

SYSTEM = "e2e"
#: the system's title in the spawn form
TITLE = "Cluster <i>E2E</i>"
VIP = "flavor-vip"
#: seconds a server of the ``short`` flavor may run (its start, up to ready, included)
SHORT_RUNTIME = 20

FLAVORS_YAML = f"""\
small:
  max: 1
  weight: 1
  display_name: "Small <b>1 CPU</b>"
  description: "One at a time, for all users <script>window.__outpost_xss = 1</script>"
medium:
  max: 10
  maxPerUser: 1
  weight: 2
  display_name: Medium
  description: One per user
short:
  max: -1
  weight: 3
  display_name: Short
  runtime:
    seconds: {SHORT_RUNTIME}
"""

VIP_FLAVORS = {"huge": {"max": 2, "weight": 1, "display_name": "Huge"}}
CREDITS = {"hours": 1000}

#: appended to the Hub's configuration: the flavors of the Outpost, with credits
HUB_CONFIG = f"""
c.OutpostFlavors.outposts = {{
    {SYSTEM!r}: {{
        "url": settings["outpost_url"].rsplit("/services", 1)[0],
        "credits": True,
        "display_name": {TITLE!r},
    }},
}}
"""


def user_flavors(hub: str, authentication: Any) -> dict | None:
    """The Outpost's per-user flavors: the VIP's own, everyone else those of the Hub."""
    if isinstance(authentication, dict) and authentication.get("name") == VIP:
        return VIP_FLAVORS
    return None


def user_credits(hub: str, authentication: Any) -> dict:
    name = authentication.get("name") if isinstance(authentication, dict) else None
    return {"hours": 5, "user": name}


def options(flavor: str, **more: Any) -> dict:
    """``user_options`` of a start of ``flavor``."""
    return {"system": SYSTEM, "flavor": flavor, **more}


@asynccontextmanager
async def flavors_outpost(tmp: Path):
    """A reference Outpost whose flavors come from a YAML file in ``tmp``."""
    path = tmp / "flavors.yaml"
    path.write_text(FLAVORS_YAML)
    async with ReferenceOutpost(
        credentials=dict([OUTPOST_CREDENTIALS]),
        command=SINGLEUSER_COMMAND,
        flavors_path=str(path),
        user_flavors=user_flavors,
        credits=CREDITS,
        user_credits=user_credits,
    ) as outpost:
        yield outpost
