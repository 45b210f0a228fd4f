"""``python -m outpostspawner.forwarder``: the forwarder process.

Supervised by the Hub (the default), it listens on a Unix socket in a private
directory, prints one ``{"ready": ...}`` line and exits when its standard input
closes, that is when the Hub is gone. Standalone (in its own pod or container),
it listens on TCP and every request needs the bearer token::

    python -m outpostspawner.forwarder --listen 0.0.0.0:8080 \\
        --token-file /etc/forwarder/token --known-hosts /data/known_hosts

The token can also come from the environment variable
``OUTPOSTSPAWNER_FORWARDER_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import ssl
import sys

from tornado.netutil import bind_unix_socket

from .client import TOKEN_ENV
from .core import Forwarder, ForwarderSettings
from .options import STRICT_MODES
from .server import make_server

__all__ = ["TOKEN_ENV", "main"]
log = logging.getLogger("outpostspawner.forwarder")


def raise_open_file_limit() -> int:
    """Raise the soft limit of open files to the hard limit (each forwarded
    connection needs a socket). Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1048576)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m outpostspawner.forwarder",
        description="SSH port forwarder for outpostspawner, controlled over HTTP.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix-socket", help="listen on this Unix socket (mode 0600)")
    where.add_argument("--listen", help="listen on HOST:PORT (TCP; needs a token)")
    p.add_argument("--token-file", help=f"file with the bearer token (else ${TOKEN_ENV})")
    p.add_argument("--certfile", help="TLS certificate for --listen")
    p.add_argument("--keyfile", help="TLS key for --listen")
    d = ForwarderSettings()
    p.add_argument(
        "--known-hosts", default=d.known_hosts, help="known_hosts file (default: %(default)s)"
    )
    p.add_argument(
        "--strict-host-key-checking",
        choices=STRICT_MODES,
        default=d.strict_host_key_checking,
        help="default for forwards that do not say (default: %(default)s)",
    )
    p.add_argument("--keepalive-interval", type=float, default=d.keepalive_interval)
    p.add_argument("--keepalive-count-max", type=int, default=d.keepalive_count_max)
    p.add_argument("--connect-timeout", type=float, default=d.connect_timeout)
    p.add_argument("--reconnect-delay", type=float, default=d.reconnect_delay)
    p.add_argument("--reconnect-max-delay", type=float, default=d.reconnect_max_delay)
    p.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes")
    p.add_argument("--ready-line", action="store_true", help='print {"ready": ...} when listening')
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-name", default="forwarder", help="shown in every log line")
    return p.parse_args(argv)


def _read_token(args) -> str:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.pop(TOKEN_ENV, "").strip()


def resolve_ip_literals_inline(loop: asyncio.AbstractEventLoop) -> None:
    """Let ``loop.getaddrinfo`` answer for IP literals at once.

    asyncssh resolves the listen address of every local forward with
    ``loop.getaddrinfo``, which runs in the default thread pool even for an IP
    literal such as ``0.0.0.0``: a round trip through a thread that costs as much
    as the rest of making a forward. An IP literal needs no lookup
    (``AI_NUMERICHOST``: no DNS); host names still go through the thread pool.
    """
    resolve = loop.getaddrinfo

    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        if isinstance(host, str) and isinstance(port, int | None):
            try:
                ipaddress.ip_address(host)
            except ValueError:
                pass
            else:
                flags |= socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
                return socket.getaddrinfo(host, port, family, type, proto, flags)
        return await resolve(host, port, family=family, type=type, proto=proto, flags=flags)

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


async def serve(args: argparse.Namespace, token: str) -> int:
    settings = ForwarderSettings(
        known_hosts=args.known_hosts,
        strict_host_key_checking=args.strict_host_key_checking,
        keepalive_interval=args.keepalive_interval,
        keepalive_count_max=args.keepalive_count_max,
        connect_timeout=args.connect_timeout,
        reconnect_delay=args.reconnect_delay,
        reconnect_max_delay=args.reconnect_max_delay,
    )
    resolve_ip_literals_inline(asyncio.get_running_loop())
    forwarder = Forwarder(settings)
    ssl_ctx = None
    if args.certfile:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.certfile, args.keyfile)
    server = make_server(forwarder, token, ssl_options=ssl_ctx)
    if args.unix_socket:
        server.add_socket(bind_unix_socket(args.unix_socket, mode=0o600))
        where = args.unix_socket
    else:
        host, _, port = args.listen.rpartition(":")
        server.listen(int(port), address=host.strip("[]") or None)
        where = args.listen
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport = None
    if args.exit_on_stdin_eof:
        transport = await _watch_stdin(loop, stop)
    log.info("listening on %s (pid %d, open files %d)", where, os.getpid(), raise_open_file_limit())
    if args.ready_line:
        sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        server.stop()
        await forwarder.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), 2)
        if transport is not None:
            transport.close()
    return 0


async def _watch_stdin(loop, stop: asyncio.Event):
    class _Watcher(asyncio.Protocol):
        def data_received(self, data):
            pass

        def eof_received(self):
            log.info("stdin closed: the Hub is gone")
            stop.set()

        def connection_lost(self, exc):
            stop.set()

    transport, _ = await loop.connect_read_pipe(_Watcher, sys.stdin)
    return transport


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"[%(levelname)1.1s %(asctime)s.%(msecs).03d {args.log_name}] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        token = _read_token(args)
    except OSError as e:
        log.error("cannot read the token file: %s", e.strerror)
        return 2
    if not token:
        log.error("no token: use --token-file or $%s", TOKEN_ENV)
        return 2
    args.known_hosts = os.path.abspath(args.known_hosts)
    return asyncio.run(serve(args, token))
