"""`failover-exporter bench`: build and run each image variant of a service, rank by latency.

For each variant: optional build (timed), size and layers, then runs: each a fresh container
(its cold start timed) loaded with N requests at fixed concurrency (its p50/p95). Per metric the
median over runs with a confidence interval (bench_stats), ranked by p95 latency with ties where
intervals overlap; optionally gated against a baseline (bench_gate) and published (bench_report,
bench_publish). Containers are removed whatever happens, like the cold_start probe's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from exporter import config
from exporter.commands import bench_gate, bench_publish, bench_report
from exporter.commands.bench_results import Options, VariantResult, quantile, rank, summarize
from exporter.commands.bench_stats import Estimate, estimate, precise_enough
from exporter.docker.client import DockerError, DockerHandle
from exporter.docker.containers import ensure_image, started_container
from exporter.docker.settings import DockerSettings
from exporter.model import Config, Image, Region
from exporter.resources import Resources
from exporter.source import ConfigError

BUILD_TIMEOUT = 1800.0


class Progress:
    """One status line per step; redrawn in place on a terminal, appended otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, text: str, done: bool = False) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{text}" + ("\n" if done else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def pick_region(cfg: Config, service: str, name: str | None) -> Region:
    regions = [r for r in cfg.regions if r.service == service]
    if not regions:
        raise ValueError(f"no service {service!r} in the config")
    if name is not None:
        regions = [r for r in regions if r.name == name]
        if not regions:
            raise ValueError(f"service {service!r} has no region {name!r}")
    with_docker = sorted((r for r in regions if r.docker is not None), key=lambda r: r.priority)
    if not with_docker:
        raise ValueError(f"no region of service {service!r} has a docker endpoint")
    return with_docker[0]


def _build(client: Any, image: Image, base: Path, no_cache: bool) -> None:
    problem = config.build_problem(base, image.dockerfile, image.context)
    if problem is not None:
        raise DockerError(f"cannot build {image.ref}: {problem}")
    context = (base / (image.context or ".")).resolve()
    stream = client.api.build(
        path=str(context),
        dockerfile=image.dockerfile or "Dockerfile",
        tag=image.ref,
        target=image.build_target,
        buildargs=dict(image.build_args),
        rm=True,
        forcerm=True,
        nocache=no_cache,
        decode=True,
    )
    for chunk in stream:
        if isinstance(chunk, dict) and chunk.get("error"):
            raise DockerError(f"build of {image.ref} failed: {str(chunk['error']).strip()}")


async def _load(
    host: str, port: int, path: str, requests: int, concurrency: int
) -> tuple[list[float], int]:
    """`requests` GETs with `concurrency` in flight; latencies of the good ones, error count."""
    latencies: list[float] = []
    errors = 0
    remaining = requests
    url = f"http://{host}:{port}{path}"
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> float | None:
            t0 = time.perf_counter()
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        return None
            except (OSError, TimeoutError, aiohttp.ClientError):
                return None
            return time.perf_counter() - t0

        # Not measured: the first requests pay for lazy start-up work in the server.
        await asyncio.gather(*(one() for _ in range(min(concurrency, requests))))

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                latency = await one()
                if latency is None:
                    errors += 1
                else:
                    latencies.append(latency)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


async def bench_variant(
    handle: DockerHandle,
    image: Image,
    base: Path,
    opts: Options,
    progress: Callable[[str], None],
) -> VariantResult:
    res = VariantResult(image=image.name, ref=image.ref)
    try:
        if opts.build and image.dockerfile is not None:
            progress(f"[{image.name}] building {image.ref}")
            t0 = time.perf_counter()
            await handle.call(
                "build image",
                lambda c: _build(c, image, base, opts.no_cache),
                timeout=BUILD_TIMEOUT,
            )
            res.build_seconds = time.perf_counter() - t0
        res.pull_seconds = await ensure_image(handle, image.ref, "if_missing")
        attrs = await handle.call("inspect image", lambda c: c.api.inspect_image(image.ref))
        res.size_bytes = int(attrs.get("Size") or 0)
        res.layers = len((attrs.get("RootFS") or {}).get("Layers") or [])
        run = image.run
        if run is None:
            raise DockerError(f"image {image.name!r} has no run settings (images[].run.port)")
        target = f"bench:{image.name}"
        path = opts.path or run.readiness.path
        for i in range(opts.max_runs):
            # Each run a fresh container: its cold start, then its latency under load, so runs
            # are independent samples of both (what the intervals assume).
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(opts.timeout):
                    started = await stack.enter_async_context(
                        started_container(handle, image.ref, run, target)
                    )
                res.cold_start_seconds.append(started.cold_start)
                latencies, errors = await _load(
                    started.host, started.port, path, opts.requests, opts.concurrency
                )
            res.runs += 1
            res.requests += opts.requests
            res.errors += errors
            if not latencies:
                raise DockerError(f"all {opts.requests} requests to {path} failed in run {i + 1}")
            for q, into in (
                (0.5, res.latency_p50_runs),
                (0.95, res.latency_p95_runs),
                (0.99, res.latency_p99_runs),
            ):
                value = quantile(latencies, q)
                assert value is not None
                into.append(value)
            progress(
                f"[{image.name}] run {i + 1}/{opts.max_runs}: "
                f"cold start {started.cold_start:.3f}s, "
                f"p95 {res.latency_p95_runs[-1] * 1000:.1f}ms "
                f"({opts.requests} requests at concurrency {opts.concurrency} to {path})"
            )
            if res.runs >= opts.runs and precise_enough(
                estimate(res.latency_p95_runs, opts.confidence), opts.precision, opts.confidence
            ):
                break
    except DockerError as exc:
        res.error = exc.message
    except TimeoutError:
        res.error = f"container not ready within {opts.timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - one variant must not lose the others
        # The Docker SDK raises TypeError/ValueError/requests errors of its own; the row says
        # which, and the remaining variants are still measured and ranked.
        res.error = f"{type(exc).__name__}: {exc}"
    summarize(res, opts.confidence)
    return res


async def run_bench(
    cfg: Config, opts: Options, progress: Callable[[str], None]
) -> tuple[Region, list[VariantResult]]:
    region = pick_region(cfg, opts.service, opts.region)
    images = [i for i in cfg.images if i.service == opts.service]
    settings: DockerSettings | None = region.docker
    assert settings is not None
    base = Path(cfg.source).parent
    # Its own instance id: a bench never sweeps an exporter's containers, nor another bench's.
    instance = f"bench-{socket.gethostname()}-{os.getpid()}"
    resources = Resources(max_blocking_threads=4)
    results = []
    try:
        async with DockerHandle.open(settings, instance, resources) as handle:
            # Nothing to sweep for a fresh instance id; skip the listing.
            handle.swept = True
            for n, image in enumerate(images, 1):
                progress(f"[{n}/{len(images)} {image.name}] starting")
                results.append(await bench_variant(handle, image, base, opts, progress))
    finally:
        await resources.aclose()
    return region, rank(results)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Build and/or run each image variant of a service on its region's Docker endpoint; "
        "per run (a fresh container) measure cold start and latency under load; report each "
        "metric's median over runs with a confidence interval, rank by p95 latency with ties, "
        "optionally gate against a baseline and publish the results to Prometheus."
    )
    p.epilog = (
        "Exit status: 0 all variants ran (and the gate passed); 1 a variant failed, a "
        "significant regression, or publishing failed; 2 bad flags or baseline file."
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config")
    p.add_argument("--service", required=True, help="service whose images to compare")
    p.add_argument("--region", help="region whose docker endpoint to use (default: first)")
    p.add_argument(
        "--runs", type=int, default=6, help="runs per variant, each a fresh container (6)"
    )
    p.add_argument(
        "--max-runs",
        dest="max_runs",
        type=int,
        metavar="N",
        help="adaptive: after --runs, keep running until the p95 interval reaches --confidence "
        "and ±--precision, at most N runs (default: --runs, no adaptive runs)",
    )
    p.add_argument(
        "--precision",
        type=float,
        default=0.05,
        help="adaptive stop: interval half-width relative to the p95 estimate (0.05)",
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="interval coverage to aim for (0.95)"
    )
    p.add_argument("--requests", type=int, default=200, help="requests per run (200)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    p.add_argument("--build", action="store_true", help="build images that have a dockerfile")
    p.add_argument("--no-cache", dest="no_cache", action="store_true", help="build without cache")
    p.add_argument("--path", help="URL path to load (default: the readiness path)")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds for a container to be ready (60)"
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="also write the results as JSON ('-': stdout, and the table to stderr); "
        "the file is what --baseline reads",
    )
    p.add_argument("--baseline", metavar="FILE", help="a stored --json result to compare with")
    p.add_argument(
        "--max-regression",
        dest="max_regression",
        metavar="SPEC",
        default=bench_gate.DEFAULT_MAX_REGRESSION,
        help="with --baseline: METRIC=N%%,... for "
        f"{', '.join(bench_gate.METRICS)} (%(default)s); fails only "
        "on a significant regression",
    )
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML (a case per variant/metric)")
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown summary (CI job summary)")
    p.add_argument(
        "--textfile",
        metavar="FILE",
        help="write the results for node_exporter's textfile collector",
    )
    p.add_argument(
        "--pushgateway",
        metavar="URL",
        help=f"push the results to a Pushgateway (job={bench_publish.JOB})",
    )


def _fail(message: str) -> int:
    print(f"failover-exporter bench: {message}", file=sys.stderr)
    return 2


def _check_args(args: argparse.Namespace) -> str | None:
    for name in ("runs", "requests", "concurrency"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1"
    if args.max_runs is not None and args.max_runs < args.runs:
        return f"--max-runs {args.max_runs} is less than --runs {args.runs}"
    if not 0 < args.confidence < 1:
        return f"--confidence {args.confidence:g}: must be between 0 and 1"
    if not args.precision > 0:
        return f"--precision {args.precision:g}: must be above 0"
    for flag in ("json", "junit", "markdown", "textfile"):
        path = getattr(args, flag)
        if path and path != "-" and not Path(path).resolve().parent.is_dir():
            return f"--{flag} {path}: directory {Path(path).resolve().parent} does not exist"
    if args.pushgateway:
        return bench_publish.check_pushgateway_url(args.pushgateway)
    return None


def _write(flag: str, path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise bench_publish.PublishError(
            f"--{flag} {path}: cannot write: {exc.strerror or exc}"
        ) from None


def main(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem is not None:
        return _fail(problem)
    thresholds: dict[str, float] = {}
    baseline: dict[str, dict[str, Estimate]] | None = None
    try:
        if args.baseline:
            thresholds = bench_gate.parse_thresholds(args.max_regression)
            baseline = bench_gate.load_baseline(args.baseline)
        elif args.max_regression != bench_gate.DEFAULT_MAX_REGRESSION:
            return _fail("--max-regression needs --baseline FILE")
    except bench_gate.GateError as exc:
        return _fail(str(exc))
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        exc.report()
        return 1
    opts = Options(
        service=args.service,
        region=args.region,
        runs=args.runs,
        max_runs=args.max_runs or args.runs,
        precision=args.precision,
        confidence=args.confidence,
        requests=args.requests,
        concurrency=args.concurrency,
        build=args.build,
        no_cache=args.no_cache,
        path=args.path,
        timeout=args.timeout,
    )
    try:
        region, results = asyncio.run(run_bench(cfg, opts, Progress(sys.stderr)))
    except ValueError as exc:
        return _fail(str(exc))
    finished = time.time()
    checks: list[bench_gate.Check] = []
    if baseline is not None:
        current = {r.image: r.estimates for r in results if r.error is None}
        checks = bench_gate.gate(baseline, current, thresholds)
    docker = region.docker.host if region.docker else None
    # JSON on stdout is for a pipe (`| jq`): then the table goes to stderr.
    (sys.stderr if args.json == "-" else sys.stdout).write(
        bench_report.table(results, opts, checks)
    )
    status = 0 if all(r.error is None for r in results) else 1
    if any(c.failed for c in checks):
        status = 1
    try:
        if args.json:
            doc = bench_report.report(opts.service, region.name, docker, results, opts, checks)
            text = json.dumps(doc, indent=2) + "\n"
            if args.json == "-":
                sys.stdout.write(text)
            else:
                _write("json", args.json, text)
        if args.markdown:
            _write(
                "markdown",
                args.markdown,
                bench_report.markdown(opts.service, results, opts, checks),
            )
        if args.junit:
            _write("junit", args.junit, bench_report.junit(opts.service, results, checks))
        if args.textfile or args.pushgateway:
            reg = bench_publish.registry(opts.service, region.name, results, finished)
            if args.textfile:
                bench_publish.write_textfile(args.textfile, reg)
            if args.pushgateway:
                bench_publish.push(args.pushgateway, opts.service, region.name, reg, 30.0)
    except bench_publish.PublishError as exc:
        print(f"failover-exporter bench: {exc}", file=sys.stderr)
        return 1
    return status
