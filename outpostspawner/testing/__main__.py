"""Run a standalone reference Outpost.

``python -m outpostspawner.testing --port 8090 --credentials hub:secret``

Prints ``outpost listening on <services url>`` once it listens and runs until
SIGTERM or SIGINT; then it stops every service it started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
import sys

from .outpost import ReferenceOutpost


def _credentials(values: list[str] | None) -> dict[str, str]:
    if not values:
        return {"hub": "secret"}
    creds = {}
    for value in values:
        hub, sep, password = value.partition(":")
        if not sep or not hub:
            raise argparse.ArgumentTypeError(f"credentials must be hub:password, not {value!r}")
        creds[hub] = password
    return creds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    :param argv: arguments without the program name; ``sys.argv[1:]`` if None.
    """
    p = argparse.ArgumentParser(
        prog="python -m outpostspawner.testing", description=__doc__.splitlines()[0]
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=8090,
        help="port to listen on, 0 for a free one (default %(default)s)",
    )
    p.add_argument(
        "--credentials",
        action="append",
        metavar="HUB:PASSWORD",
        help="accepted Hub credentials; repeat for several Hubs (default hub:secret)",
    )
    p.add_argument(
        "--start-delay", type=float, default=0.0, help="seconds a start takes (default %(default)s)"
    )
    p.add_argument("--backend", choices=("process", "inprocess"), default="process")
    p.add_argument(
        "--command", help="command per service, split like a shell would (no shell is run)"
    )
    p.add_argument("--service-host", default="127.0.0.1", help="host services bind and report")
    p.add_argument("--log-file-dir", help="directory for service logs (default: a temporary one)")
    p.add_argument(
        "--list-extras",
        action="store_true",
        help="an extension: the service list also gives each service's address and status",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    args = p.parse_args(argv)
    try:
        args.credentials = _credentials(args.credentials)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    args.command = shlex.split(args.command) if args.command else None
    return args


async def run(args: argparse.Namespace) -> None:
    """Run the Outpost until SIGTERM or SIGINT.

    :param args: parsed command line.
    """
    outpost = ReferenceOutpost(
        credentials=args.credentials,
        command=args.command,
        backend=args.backend,
        host=args.host,
        port=args.port,
        start_delay=args.start_delay,
        service_host=args.service_host,
        log_file_dir=args.log_file_dir,
        list_extras=args.list_extras,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await outpost.start()
    try:
        print(f"outpost listening on {outpost.services_url}", flush=True)
        await stop.wait()
    finally:
        await outpost.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point.

    :param argv: arguments without the program name.
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
