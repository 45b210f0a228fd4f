"""JupyterHub configuration for the spawn benchmark (``benchmarks/run.py``).

The same file configures the Hub for every measured package: both
``outpostspawner`` and ``jupyterhub-outpostspawner`` provide
``outpostspawner.OutpostSpawner`` and read the same trait names. ``run.py`` writes
the run's settings (ports, tokens, the Outpost's URL and credentials) to a JSON
file readable only by its owner and passes its path in ``OUTPOST_BENCH_SETTINGS``;
no secret is passed on a command line.
"""

import base64
import json
import os

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

with open(os.environ["OUTPOST_BENCH_SETTINGS"]) as f:
    s = json.load(f)

workdir = s["workdir"]

# --- Hub, proxy, database -------------------------------------------------------
c.JupyterHub.bind_url = f"http://127.0.0.1:{s['hub_port']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{s['hub_api_port']}"
c.JupyterHub.db_url = "sqlite:///" + os.path.join(workdir, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret = bytes.fromhex(s["cookie_secret"])
c.JupyterHub.log_level = s.get("log_level", "INFO")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True

c.ConfigurableHTTPProxy.command = [s["chp"]]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s['proxy_api_port']}"
c.ConfigurableHTTPProxy.auth_token = s["proxy_token"]
c.ConfigurableHTTPProxy.pid_file = os.path.join(workdir, "jupyterhub-proxy.pid")
c.ConfigurableHTTPProxy.log_level = "warn"

# --- users and the benchmark's API token ------------------------------------------
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{"name": "bench", "api_token": s["api_token"]}]
c.JupyterHub.load_roles = [{"name": "admin", "services": ["bench"]}]
# list every user in one answer when the benchmark checks readiness
c.JupyterHub.api_page_max_limit = max(1000, int(s["n"]) * 2)

# --- limits and timers: nothing may throttle or interrupt the measured work ------------
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.last_activity_interval = 3600
c.JupyterHub.init_spawners_timeout = 60

c.JupyterHub.spawner_class = "outpostspawner.OutpostSpawner"
c.Spawner.poll_interval = float(s["poll_interval"])
c.Spawner.start_timeout = 600
c.Spawner.http_timeout = 300
c.Spawner.default_url = "/"

# --- the Outpost ------------------------------------------------------------------
basic = base64.b64encode(f"{s['outpost_user']}:{s['outpost_password']}".encode()).decode()
c.OutpostSpawner.request_url = s["outpost_url"]
c.OutpostSpawner.request_headers = {"Authorization": f"Basic {basic}"}
c.OutpostSpawner.ssh_during_startup = False  # direct: the Outpost's answer is reachable
c.OutpostSpawner.custom_poll_interval = int(float(s["poll_interval"]) * 1000)  # milliseconds

if s.get("poll_batch_window") is not None:  # "ours-batched": the polling as it was
    c.OutpostSpawner.poll_batch_window = float(s["poll_batch_window"])

# --- the event loop's lag, for the steady window's figures ----------------------------
# JupyterHub loads this file inside its running event loop. A 10 ms timer measures how
# late the loop runs it; once a second the samples are appended to lag.jsonl (a few
# hundred bytes), which run.py reads for its measuring windows. The same probe runs in
# the Hub of every package.
if s.get("lag_file"):
    import asyncio
    import time

    _lag_out = open(s["lag_file"], "a", buffering=1)  # noqa: SIM115 - open while the Hub runs

    import gc

    # the garbage collector's pauses, [generation, ms], flushed with the lag samples
    _gc_pauses = []
    _gc_started = [0.0]

    def _gc_timer(phase, info):
        if phase == "start":
            _gc_started[0] = time.perf_counter()
        else:
            ms = (time.perf_counter() - _gc_started[0]) * 1000
            _gc_pauses.append([info["generation"], round(ms, 3)])

    gc.callbacks.append(_gc_timer)

    async def _lag_probe(out, interval=0.01):
        loop = asyncio.get_running_loop()
        samples = []
        flushed = time.time()
        while True:
            t = loop.time()
            await asyncio.sleep(interval)
            samples.append(round(max(0.0, loop.time() - t - interval) * 1000, 3))
            now = time.time()
            if now - flushed >= 1:
                pauses = _gc_pauses[:]
                del _gc_pauses[: len(pauses)]
                line = json.dumps({"t": now, "lag_ms": samples, "gc_ms": pauses}) + "\n"
                await asyncio.to_thread(out.write, line)
                samples, flushed = [], now

    _lag_task = asyncio.get_running_loop().create_task(_lag_probe(_lag_out))
