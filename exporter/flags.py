"""The flags every serving command shares (`run`, `demo`) and what they resolve to.

Listen address, log level and format, `--web.config.file` and `--event-loop`: declared once here
so that the CLI and each command's own parser (exporter/commands/) spell them alike, and resolved
once into what `app.serve` and `app.run_async` take.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from exporter import log as logsetup
from exporter import webconfig
from exporter.app import loop_factory
from exporter.fields import split_host_port
from exporter.source import ConfigError
from exporter.webconfig import WebConfig

DEFAULT_LISTEN = ":10077"
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address for /metrics, the status page and /probe (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="minimum level of log lines (default info)",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="log line format (default logfmt)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        default=None,
        metavar="FILE",
        help="TLS and basic auth for every endpoint, in the Prometheus exporter-toolkit format",
    )
    p.add_argument(
        "--event-loop",
        dest="event_loop",
        default="auto",
        choices=EVENT_LOOPS,
        help="event loop: uvloop (about 20 %% less CPU per probe, tighter timings; the `uvloop` "
        "extra), asyncio, or auto: uvloop when it is installed (default auto)",
    )


def parse_listen(address: str) -> tuple[str | None, int]:
    try:
        host, port = split_host_port(address, empty_host=True)
    except ValueError as exc:
        raise ValueError(f"invalid --web.listen-address {address!r}: {exc}") from None
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid --web.listen-address {address!r}: use HOST:PORT or :PORT")
    return (host or None), int(port)


@dataclasses.dataclass(frozen=True)
class Server:
    listen: tuple[str | None, int]
    web_config: WebConfig | None
    event_loop: str


def server(args: argparse.Namespace) -> Server | int:
    """Set up logging and resolve the shared flags; an int is the exit code of a flag error,
    already reported on stderr."""
    logsetup.setup("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    try:
        listen = parse_listen(args.listen)
    except ValueError as exc:
        print(f"failover-exporter: {exc}", file=sys.stderr)
        return 2
    web_config = None
    if args.web_config is not None:
        try:
            web_config = webconfig.load(args.web_config)
        except ConfigError as exc:
            exc.report("web config")
            return 1
    try:
        loop_factory(args.event_loop)
    except ImportError:
        print(
            "failover-exporter: --event-loop=uvloop needs uvloop: "
            "pip install 'failover-exporter[uvloop]'",
            file=sys.stderr,
        )
        return 2
    return Server(listen, web_config, args.event_loop)
