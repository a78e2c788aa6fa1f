"""`failover-exporter bench`: build and run each image variant of a service, rank by latency.

For each variant: optional build (timed), size and layers, N cold starts (median, p95), then
latency under load against one running container (N requests at fixed concurrency). Ranked by
p95 latency; containers are removed whatever happens, like the cold_start probe's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from exporter import config
from exporter.docker.client import DockerError, DockerHandle
from exporter.docker.containers import ensure_image, started_container
from exporter.docker.settings import DockerSettings
from exporter.model import Config, Image, Region
from exporter.resources import Resources
from exporter.source import ConfigError

RANKING_RULE = (
    "Ranked by p95 latency under load (lower is better); ties by median cold start. "
    "Variants that failed are listed last."
)
BUILD_TIMEOUT = 1800.0


@dataclasses.dataclass
class Options:
    service: str
    region: str | None = None
    runs: int = 5
    requests: int = 200
    concurrency: int = 8
    build: bool = False
    no_cache: bool = False
    path: str | None = None
    timeout: float = 60.0


@dataclasses.dataclass
class VariantResult:
    image: str
    ref: str
    build_seconds: float | None = None
    pull_seconds: float | None = None
    size_bytes: int | None = None
    layers: int | None = None
    cold_start_seconds: list[float] = dataclasses.field(default_factory=list)
    cold_start_median: float | None = None
    cold_start_p95: float | None = None
    requests: int = 0
    errors: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    error: str | None = None
    rank: int | None = None


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile: always one of the measured values."""
    if not values:
        return None
    data = sorted(values)
    return data[max(0, math.ceil(q * len(data)) - 1)]


def rank(results: list[VariantResult]) -> list[VariantResult]:
    def key(r: VariantResult) -> tuple[bool, float, float, str]:
        return (
            r.error is not None or r.latency_p95 is None,
            r.latency_p95 if r.latency_p95 is not None else math.inf,
            r.cold_start_median if r.cold_start_median is not None else math.inf,
            r.image,
        )

    ranked = sorted(results, key=key)
    for i, r in enumerate(ranked, 1):
        r.rank = i if r.error is None and r.latency_p95 is not None else None
    return ranked


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
        for i in range(opts.runs):
            async with (
                asyncio.timeout(opts.timeout),
                started_container(handle, image.ref, run, target) as started,
            ):
                res.cold_start_seconds.append(started.cold_start)
            progress(f"[{image.name}] cold start {i + 1}/{opts.runs}: {started.cold_start:.3f}s")
        res.cold_start_median = quantile(res.cold_start_seconds, 0.5)
        res.cold_start_p95 = quantile(res.cold_start_seconds, 0.95)
        path = opts.path or run.readiness.path
        progress(
            f"[{image.name}] {opts.requests} requests at concurrency {opts.concurrency} to {path}"
        )
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(opts.timeout):
                started = await stack.enter_async_context(
                    started_container(handle, image.ref, run, target)
                )
            latencies, errors = await _load(
                started.host, started.port, path, opts.requests, opts.concurrency
            )
        res.requests, res.errors = opts.requests, errors
        res.latency_p50 = quantile(latencies, 0.5)
        res.latency_p95 = quantile(latencies, 0.95)
        res.latency_p99 = quantile(latencies, 0.99)
        if not latencies:
            res.error = f"all {opts.requests} requests failed"
    except DockerError as exc:
        res.error = exc.message
    except TimeoutError:
        res.error = f"container not ready within {opts.timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - one variant must not lose the others
        # The Docker SDK raises TypeError/ValueError/requests errors of its own; the row says
        # which, and the remaining variants are still measured and ranked.
        res.error = f"{type(exc).__name__}: {exc}"
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


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.2f}"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(results: list[VariantResult], opts: Options) -> str:
    head = (
        "rank",
        "image",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "cold start p50 s",
        "cold start p95 s",
        "size MB",
        "layers",
        "build s",
    )
    rows = [head]
    for r in results:
        rows.append(
            (
                str(r.rank) if r.rank is not None else "-",
                r.image,
                _ms(r.latency_p50),
                _ms(r.latency_p95),
                _ms(r.latency_p99),
                f"{r.errors}/{r.requests}",
                _s(r.cold_start_median),
                _s(r.cold_start_p95),
                "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f}",
                "-" if r.layers is None else str(r.layers),
                _s(r.build_seconds),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append("")
    lines.append(
        f"{RANKING_RULE} Load: {opts.requests} requests at concurrency {opts.concurrency}; "
        f"cold start: {opts.runs} runs."
    )
    for r in results:
        if r.error is not None:
            lines.append(f"{r.image}: FAILED: {r.error}")
    return "\n".join(lines) + "\n"


def report(region: Region, results: list[VariantResult], opts: Options) -> dict[str, Any]:
    return {
        "service": opts.service,
        "region": region.name,
        "docker": region.docker.host if region.docker else None,
        "runs": opts.runs,
        "requests": opts.requests,
        "concurrency": opts.concurrency,
        "ranking_rule": RANKING_RULE,
        "variants": [dataclasses.asdict(r) for r in results],
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Build and/or run each image variant of a service on its region's Docker endpoint; "
        "measure build time, size, layers, cold start and latency under load; print a table "
        "ranked by p95 latency."
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config")
    p.add_argument("--service", required=True, help="service whose images to compare")
    p.add_argument("--region", help="region whose docker endpoint to use (default: first)")
    p.add_argument("--runs", type=int, default=5, help="cold starts per variant (5)")
    p.add_argument("--requests", type=int, default=200, help="requests per variant (200)")
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
        help="also write the results as JSON ('-': stdout, and the table to stderr)",
    )


def main(args: argparse.Namespace) -> int:
    for name in ("runs", "requests", "concurrency"):
        if getattr(args, name) < 1:
            print(f"failover-exporter bench: --{name} must be at least 1", file=sys.stderr)
            return 2
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        exc.report()
        return 1
    opts = Options(
        service=args.service,
        region=args.region,
        runs=args.runs,
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
        print(f"failover-exporter bench: {exc}", file=sys.stderr)
        return 2
    # JSON on stdout is for a pipe (`| jq`): then the table goes to stderr.
    (sys.stderr if args.json == "-" else sys.stdout).write(table(results, opts))
    if args.json:
        text = json.dumps(report(region, results, opts), indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    return 0 if all(r.error is None for r in results) else 1
