"""Command line: `failover-exporter [run] | check-config | demo | drill | bench`.

Argument parsing and dispatch only; the server lifecycle (serve, signals, event loop) is app.py,
the flags `run` and `demo` share are flags.py, and each program of its own (demo, drill, bench)
declares its flags and runs in exporter/commands/.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter import __version__, config, flags
from exporter import log as logsetup
from exporter.app import loop_factory, run_async, serve
from exporter.commands import bench
from exporter.engine import Engine
from exporter.flags import parse_listen
from exporter.source import ConfigError

# loop_factory and parse_listen are re-exported: tests resolve loops and addresses as the CLI does.
__all__ = ["COMMANDS", "check_config", "loop_factory", "main", "parse_listen", "parser"]

COMMANDS = ("run", "check-config", "demo", "drill", "bench")
log = logging.getLogger("exporter")


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
    # Lazy: each command module (the demo's simulated regions, the drill) loads only when the
    # parser is built.
    from exporter.commands import demo, drill

    top = argparse.ArgumentParser(
        prog="failover-exporter",
        description="Probe every image of a service in every region and expose latency and "
        "failover health to Prometheus. `run` is the default command.",
    )
    top.add_argument("--version", action="version", version=f"failover-exporter {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the exporter daemon (default)")
    run.add_argument("--config", dest="config", required=True, metavar="FILE", help="YAML config")
    flags.add_server_arguments(run)
    _shard_arg(run)
    check = sub.add_parser("check-config", help="validate a config file, print every error")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--expand",
        action="store_true",
        help="also print every target after template expansion (and sharding), one a line",
    )
    _shard_arg(check)
    demo.add_arguments(
        sub.add_parser(
            "demo",
            help="simulated regions on loopback probed from three vantages; needs nothing else",
        )
    )
    drill.add_arguments(
        sub.add_parser("drill", help="inject a primary outage, time detect/alert/page")
    )
    bench.add_arguments(sub.add_parser("bench", help="run each image variant, rank by latency"))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args_list.insert(0, "run")
    args = parser().parse_args(args_list)
    if args.command == "check-config":
        return check_config(args.file, args.expand, args.shard)
    if args.command == "demo":
        from exporter.commands import demo

        return demo.main(args)
    if args.command == "drill":
        from exporter.commands import drill

        return drill.main(args)
    if args.command == "bench":
        logsetup.setup("warning", "logfmt")
        return bench.main(args)
    server = flags.server(args)
    if isinstance(server, int):
        return server
    engine = Engine(path=Path(args.config), shard=args.shard)
    try:
        cfg = config.load(args.config, args.shard, engine.sd_cache)
    except ConfigError as exc:
        exc.report()
        return 1
    return run_async(
        serve(engine, cfg, server.listen, web_config=server.web_config), server.event_loop
    )


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
