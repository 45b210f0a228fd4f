"""JupyterHub configuration of the demo: servers start through a JupyterHub Outpost
and are reached through SSH port forwards.

``run_demo.py`` starts a reference Outpost, an SSH node and then JupyterHub with
this file, and passes the settings below through the environment. To run it by
hand, start an Outpost first::

    python -m outpostspawner.testing --port 8090 --credentials hub:secret \\
        --command jupyterhub-singleuser
    jupyterhub -f examples/demo/jupyterhub_config.py

Without ``DEMO_SSH_PORT`` (and an SSH node to match) the servers are reached
directly at the address the Outpost reports.
"""

import base64
import os
from html import escape

from tornado import web

c = get_config()  # noqa: F821

here = os.path.dirname(os.path.abspath(__file__))
data_dir = os.environ.get("DEMO_DATA_DIR") or os.path.join(here, "..", "..", ".demo")
data_dir = os.path.abspath(data_dir)
os.makedirs(data_dir, exist_ok=True)

# --- the Hub: everything on 127.0.0.1, state in .demo/ --------------------------

c.JupyterHub.bind_url = "http://127.0.0.1:{}".format(os.environ.get("DEMO_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("DEMO_HUB_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{}".format(
    os.environ.get("DEMO_PROXY_API_PORT", "8001")
)
c.ConfigurableHTTPProxy.pid_file = os.path.join(data_dir, "jupyterhub-proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(data_dir, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(data_dir, "jupyterhub_cookie_secret")

# any user name, password "demo"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "demo"
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True

# --- the spawner: ask the Outpost ---------------------------------------------

c.JupyterHub.spawner_class = "outpostspawner.OutpostSpawner"
c.OutpostSpawner.request_url = os.environ.get("DEMO_OUTPOST_URL", "http://127.0.0.1:8090/services")
_credentials = os.environ.get("DEMO_OUTPOST_CREDENTIALS", "hub:secret")
c.OutpostSpawner.request_headers = {
    "Authorization": "Basic " + base64.b64encode(_credentials.encode()).decode("ascii")
}

# --- SSH: every server is reached through a port forward ----------------------
# run_demo.py starts an SSH node "on the Outpost side" (OpenSSH's sshd, or an
# asyncssh server) and passes its port, user and client key. The Hub's forwarder
# process keeps one SSH connection to it and, for each server, listens on
# 127.0.0.1:{port} and forwards to the address the Outpost reported. The proxy
# connects to that port (no Kubernetes Service: svc_create = False).

if os.environ.get("DEMO_SSH_PORT"):
    c.OutpostSpawner.ssh_during_startup = True
    c.OutpostSpawner.svc_create = False
    c.OutpostSpawner.ssh_node = "127.0.0.1"
    c.OutpostSpawner.ssh_port = int(os.environ["DEMO_SSH_PORT"])
    c.OutpostSpawner.ssh_username = os.environ["DEMO_SSH_USER"]
    c.OutpostSpawner.ssh_key = os.environ["DEMO_SSH_KEY"]
    # run_demo.py writes the node's host key here before the Hub starts
    c.OutpostSpawner.ssh_known_hosts = os.environ.get(
        "DEMO_SSH_KNOWN_HOSTS", os.path.join(data_dir, "ssh_known_hosts")
    )
    # the forwards are for the proxy on this machine only
    c.OutpostSpawner.ssh_forward_listen_address = "127.0.0.1"

# --- user options: pick a system -----------------------------------------------

SYSTEMS = {
    "A": {"label": "System A (small)", "image": "quay.io/jupyter/minimal-notebook:latest"},
    "B": {"label": "System B (large)", "image": "quay.io/jupyter/scipy-notebook:latest"},
}

c.Spawner.options_form = "\n".join(
    [
        '<label for="system">System</label>',
        '<select name="system" id="system" class="form-control">',
        *(
            f'<option value="{escape(key)}">{escape(system["label"])}</option>'
            for key, system in SYSTEMS.items()
        ),
        "</select>",
    ]
)
# {"system": ["A"]} from the form becomes {"system": "A"}
c.Spawner.options_from_form = "simple"


def apply_user_options(spawner, user_options):
    """Refuse unknown systems; JupyterHub shows the message to the user."""
    system = user_options.get("system", "A")
    if system not in SYSTEMS:
        raise web.HTTPError(400, f"Unknown system {system!r}, choose one of {sorted(SYSTEMS)}")


c.Spawner.apply_user_options = apply_user_options


# --- hooks: what the Outpost receives --------------------------------------------
# A hook gets the spawner and then only the arguments its signature names; it may
# be async. Its result is checked before it is used.


async def custom_env(spawner, user_options):
    """Extra environment variables for the remote server."""
    return {"DEMO_SYSTEM": user_options.get("system", "A")}


def custom_misc(spawner, user_options):
    """Settings for the spawner at the Outpost (``c.<Spawner>.<key>`` there).

    The reference Outpost runs local processes and ignores them; a Kubernetes
    Outpost would start this image.
    """
    return {"image": SYSTEMS[user_options.get("system", "A")]["image"]}


c.OutpostSpawner.custom_env = custom_env
c.OutpostSpawner.custom_misc = custom_misc
