"""The CPU one kept-alive HTTP request costs on the Hub's event loop.

A tornado server in a process of its own answers ``GET /services/<name>`` with a
poll answer; a client process sends ``--rate`` requests a second, spread evenly as
the Hub's polls are, to ``--servers`` different URLs for ``--seconds``, and
measures its own CPU time per request. Clients:

- ``ordinary``: ``OutpostClient.fetch`` as for starts and stops (tornado's curl
  client, every request set up from scratch);
- ``prepared``: ``OutpostClient.fetch(..., reuse=True)`` as for polls (one
  prepared libcurl handle per URL);
- ``aiohttp``: an ``aiohttp.ClientSession`` GET with the answer's JSON decoded, a
  reference for a well-kept asyncio keep-alive client (``bench`` extra).

    python benchmarks/request_cost.py --repeat 3

Writes ``request-cost.json`` beside this file (``--results``) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CLIENTS = ["ordinary", "prepared", "aiohttp"]

ANSWER = b'{"status": null, "service": "http://10.0.0.1:8888"}'


def serve(port: int) -> None:
    from tornado import web

    class Service(web.RequestHandler):
        def get(self, name):
            self.set_header("Content-Type", "application/json")
            self.finish(ANSWER)

    async def main():
        web.Application([(r"/services/(.*)", Service)]).listen(port, "127.0.0.1")
        await asyncio.Event().wait()

    asyncio.run(main())


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _client(kind: str, port: int, servers: int, rate: float, seconds: float) -> dict:
    urls = [f"http://127.0.0.1:{port}/services/user{i}/{i:08x}" for i in range(servers)]
    headers = {"Authorization": "Basic b3V0cG9zdDpzZWNyZXQ=", "Accept": "application/json"}
    closers = []
    if kind in ("ordinary", "prepared"):
        from tornado.httpclient import HTTPRequest

        from outpostspawner.outpost import OutpostClient

        client = OutpostClient(start_limit=10, request_limit=50)
        closers.append(client.close)
        requests = [HTTPRequest(u, headers=headers, request_timeout=20) for u in urls]
        reuse = kind == "prepared"

        async def one(i: int) -> None:
            await client.fetch("poll", requests[i], reuse=reuse)

    elif kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50))

        async def one(i: int) -> None:
            async with session.get(urls[i], headers=headers) as resp:
                json.loads(await resp.read())

        closers.append(session.close)
    else:
        raise SystemExit(f"unknown client {kind}")

    async def paced(count: int) -> float:
        loop = asyncio.get_running_loop()
        tasks = set()
        begin = loop.time()
        for n in range(count):
            delay = begin + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(n % servers))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        return loop.time() - begin

    await paced(min(servers, int(rate)))  # connections opened, handles prepared
    cpu0 = _cpu()
    count = int(rate * seconds)
    wall = await paced(count)
    cpu = _cpu() - cpu0
    for close in closers:
        result = close()
        if asyncio.iscoroutine(result):
            await result
    return {
        "client": kind,
        "requests": count,
        "wall_s": wall,
        "cpu_us_per_request": cpu / count * 1e6,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated (%(default)s)")
    p.add_argument("--servers", type=int, default=300, help="distinct URLs (%(default)s)")
    p.add_argument("--rate", type=float, default=300, help="requests per second (%(default)s)")
    p.add_argument("--seconds", type=float, default=10, help="measuring window (%(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="runs per client, alternating")
    p.add_argument("--results", default=str(HERE / "request-cost.json"))
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.client:
        result = asyncio.run(_client(args.client, args.port, args.servers, args.rate, args.seconds))
        print(json.dumps(result))
        return

    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    runs: dict[str, list[dict]] = {k: [] for k in args.clients.split(",")}
    try:
        _wait_for(port)
        for _ in range(args.repeat):
            for kind in runs:
                out = subprocess.run(
                    [sys.executable, __file__, "--client", kind, "--port", str(port)]
                    + ["--servers", str(args.servers), "--rate", str(args.rate)]
                    + ["--seconds", str(args.seconds)],
                    capture_output=True,
                    text=True,
                    timeout=args.seconds * 4 + 60,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs[kind].append(result)
                print(f"{kind:>9}: {result['cpu_us_per_request']:.0f} µs CPU per request")
    finally:
        server.terminate()
        server.wait(10)
    summary = {
        kind: {
            "cpu_us_per_request_median": statistics.median(r["cpu_us_per_request"] for r in rs),
            "range": [
                min(r["cpu_us_per_request"] for r in rs),
                max(r["cpu_us_per_request"] for r in rs),
            ],
        }
        for kind, rs in runs.items()
    }
    doc = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "settings": {"servers": args.servers, "rate": args.rate, "seconds": args.seconds},
        "summary": summary,
        "runs": runs,
    }
    Path(args.results).write_text(json.dumps(doc, indent=1) + "\n")
    print("\n| client | CPU per request (µs), median [range] |\n|---|---|")
    for kind, s in summary.items():
        lo, hi = s["range"]
        print(f"| {kind} | {s['cpu_us_per_request_median']:.0f} [{lo:.0f}-{hi:.0f}] |")


if __name__ == "__main__":
    main()
