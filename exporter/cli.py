"""Command line: `failover-exporter [run] | check-config | demo | drill | bench`.

Argument parsing and dispatch only; the server lifecycle (serve, signals, event loop) is app.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter import __version__, config, webconfig
from exporter import log as logsetup
from exporter.app import loop_factory, run_async, serve
from exporter.commands import bench
from exporter.config import ConfigError
from exporter.engine import Engine
from exporter.fields import split_host_port

DEFAULT_LISTEN = ":10077"
COMMANDS = ("run", "check-config", "demo", "drill", "bench")
log = logging.getLogger("exporter")


def _common_web(p: argparse.ArgumentParser) -> None:
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


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def _event_loop_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--event-loop",
        dest="event_loop",
        default="auto",
        choices=EVENT_LOOPS,
        help="event loop: uvloop (about 20 %% less CPU per probe, tighter timings; the `uvloop` "
        "extra), asyncio, or auto: uvloop when it is installed (default auto)",
    )


def _shard_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="probe only shard I (0-based) of N of the vantage's targets, by a stable hash of "
        "the target name (docs/config.md, Sharding)",
    )


def _shard(text: str) -> config.Shard:
    try:
        return config.Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    # Lazy: the demo's simulated regions load only when the parser is built.
    from exporter.demo import REGIONS as DEMO_REGIONS

    top = argparse.ArgumentParser(
        prog="failover-exporter",
        description="Probe every image of a service in every region and expose latency and "
        "failover health to Prometheus. `run` is the default command.",
    )
    top.add_argument("--version", action="version", version=f"failover-exporter {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the exporter daemon (default)")
    run.add_argument("--config", dest="config", required=True, metavar="FILE", help="YAML config")
    _common_web(run)
    _event_loop_arg(run)
    _shard_arg(run)
    check = sub.add_parser("check-config", help="validate a config file, print every error")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--expand",
        action="store_true",
        help="also print every target after template expansion (and sharding), one a line",
    )
    _shard_arg(check)
    demo = sub.add_parser(
        "demo",
        help="simulated regions on loopback probed from three vantages; needs nothing else",
    )
    _common_web(demo)
    _event_loop_arg(demo)
    demo.add_argument(
        "--outage-after",
        dest="outage_after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="take the primary region down after this many seconds",
    )
    demo.add_argument(
        "--serve",
        choices=[*(name for name, _, _ in DEMO_REGIONS), "control"],
        default=None,
        metavar="REGION",
        help="serve only this simulated region (or `control`) on --web.listen-address, without "
        "the exporter: regions as separate containers, as in deploy/compose.yaml",
    )
    _drill_parser(sub.add_parser("drill", help="inject a primary outage, time detect/alert/page"))
    bench.add_arguments(sub.add_parser("bench", help="run each image variant, rank by latency"))
    return top


def _drill_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Inject a primary-region outage (a command you give: stop its containers, flip a "
        "firewall rule, ...) and measure time to detect (probes fail), time to alert (firing "
        "in Prometheus) and time to page (Alertmanager notifies the drill's webhook), then "
        "recovery. Point an Alertmanager webhook receiver at --webhook.listen-address."
    )
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    p.add_argument("--service", required=True, help="service to drill")
    p.add_argument("--region", required=True, help="the primary region to take down")
    p.add_argument(
        "--inject", required=True, metavar="COMMAND", help="command that causes the outage"
    )
    p.add_argument("--recover", metavar="COMMAND", help="command that ends the outage")
    p.add_argument(
        "--alert", default="FailoverPrimaryRegionDown", help="alert expected to fire and page"
    )
    p.add_argument(
        "--webhook.listen-address",
        dest="webhook",
        default="127.0.0.1:10078",
        metavar="HOST:PORT",
        help="where the drill receives Alertmanager's webhook (default 127.0.0.1:10078)",
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for each step (300)"
    )
    p.add_argument(
        "--recover-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the outage this long after the page before recovering (0)",
    )
    p.add_argument(
        "--resolve-timeout",
        type=float,
        default=420.0,
        metavar="SECONDS",
        help="how long to wait for the alert to resolve after recovery (420; the alert is "
        "held by keep_firing_for)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the outage N times (needs --recover), each inject a further 1/N of "
        "--scrape-interval into the scrape cycle, after the previous run resolved; prints each "
        "run and min/median/max of detect/alert/page (1)",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="the scrape/evaluation cycle --repeat spreads its injects over (15)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def parse_listen(address: str) -> tuple[str | None, int]:
    try:
        host, port = split_host_port(address, empty_host=True)
    except ValueError as exc:
        raise ValueError(f"invalid --web.listen-address {address!r}: {exc}") from None
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid --web.listen-address {address!r}: use HOST:PORT or :PORT")
    return (host or None), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args_list.insert(0, "run")
    args = parser().parse_args(args_list)
    if args.command == "check-config":
        return check_config(args.file, args.expand, args.shard)
    if args.command == "drill":
        return _drill(args)
    if args.command == "bench":
        logsetup.setup("warning", "logfmt")
        return bench.main(args)
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
    if args.command == "demo":
        from exporter import demo

        return demo.main(listen, args.outage_after, web_config, args.serve, args.event_loop)
    engine = Engine(path=Path(args.config), shard=args.shard)
    try:
        cfg = config.load(args.config, args.shard, engine.sd_cache)
    except ConfigError as exc:
        exc.report()
        return 1
    return run_async(serve(engine, cfg, listen, web_config=web_config), args.event_loop)


def _drill(args: argparse.Namespace) -> int:
    import shlex

    from exporter import drill

    logsetup.setup("info", "logfmt")
    try:
        host, port = parse_listen(args.webhook)
    except ValueError as exc:
        print(f"failover-exporter: {exc}", file=sys.stderr)
        return 2
    opts = drill.DrillOptions(
        prometheus=args.prometheus,
        service=args.service,
        region=args.region,
        inject=shlex.split(args.inject),
        recover=shlex.split(args.recover) if args.recover else None,
        alert=args.alert,
        webhook=(host or "0.0.0.0", port),  # noqa: S104 - Alertmanager may be remote
        timeout=args.timeout,
        recover_after=args.recover_after,
        resolve_timeout=args.resolve_timeout,
        repeat=max(1, args.repeat),
        scrape_interval=args.scrape_interval,
    )
    return drill.main(opts, args.json)


def check_config(file: str, expand: bool = False, shard: config.Shard | None = None) -> int:
    try:
        cfg = config.load(file, shard)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{file}: {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    path = Path(file)
    build_issues = config.build_input_issues(
        config.read_yaml(config.read_text(path), file), path.parent
    )
    if build_issues:
        for issue in build_issues:
            print(issue, file=sys.stderr)
        print(f"{file}: {len(build_issues)} error(s)", file=sys.stderr)
        return 1
    print(
        f"{file}: OK: vantage {cfg.vantage}, {len(cfg.services)} service(s), "
        f"{len(cfg.regions)} region(s), {len(cfg.images)} image(s), {len(cfg.targets)} target(s)"
        + (f", {cfg.expanded} expanded from templates" if cfg.expanded else "")
        + (f" (shard {shard.index}/{shard.count} of {cfg.total_targets})" if shard else "")
    )
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if expand:
        from exporter.probes import REGISTRY

        for t in cfg.targets:
            # `describe` is what the status page shows: the endpoint, never a secret.
            what = REGISTRY[t.kind].describe(t.settings)
            print(
                f"{t.service or '-'}\t{t.name}\tregion={t.region or '-'}\timage={t.image or '-'}"
                f"\t{t.kind}: {what}"
            )
    return 0
