"""Soak: a real `failover-exporter run` on a few hundred targets, reloaded and scraped for a while.

    python tests/soak.py --duration 1800 --json build/soak.json      # `make soak`: 30 minutes
    (tests/test_soak.py runs two minutes of it in `make test`)

The targets are real servers on 127.0.0.1 in this process: healthy HTTP (some on kept-alive
connections) and TCP ones, and every kind of hostile server from tests/probes/hostile.py. The
config is reloaded periodically, alternately by SIGHUP and POST /-/reload, swapping a set of
targets in and out; every few reloads the new file is broken and must change nothing. /metrics
is scraped continuously. The exporter's RSS and open file descriptors are read from /proc, its
asyncio task count from the scrape (failover_exporter_tasks).

After a warm-up (sessions opened, bounded histories filled), the run is cut in quarters: the
medians of the last quarter must stay within a tolerance of the first quarter's. The figures are
printed and written as JSON; the exit status is 0 when everything held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.probes import hostile

EXE = Path(sys.executable).with_name("failover-exporter")
HOSTILE_KINDS = (
    "hanging",
    "slow_loris",
    "endless_body",
    "resetting",
    "garbage",
    "closing",
    "refused",
    "tls_stall",
    "gzip_bomb",
)
OWN = re.compile(r"^(failover_exporter_[a-z_]+|process_[a-z_]+)(?:\{[^}]*\})? (\S+)$", re.M)
PROBES = re.compile(r"^failover_probes_total\{[^}]*\} (\S+)$", re.M)


@dataclasses.dataclass
class Options:
    duration: float = 1800.0
    healthy: int = 240
    # Kept-alive connections stay pooled at the highest concurrency seen (aiohttp reuses them
    # round robin, so none idles out): a few such targets keep the fd figure meaningful.
    keep_alive_every: int = 20
    hostile_each: int = 2
    churn: int = 20
    interval: float = 3.0
    timeout: float = 1.0
    reload_every: float = 10.0
    broken_every: int = 4  # every Nth reload writes a broken file
    scrape_every: float = 1.0
    warm_up: float = 0.1  # fraction of the run before the first quarter starts
    # Tolerances: last-quarter median <= first-quarter median * (1 + rel) + abs.
    rss_rel: float = 0.10
    rss_abs: float = 8 << 20
    fds_abs: float = 10  # plus one per kept-alive target (the most the pool can grow)
    tasks_abs: float = 10


@dataclasses.dataclass
class Sample:
    t: float
    rss: int
    fds: int
    tasks: float
    probes: float
    overloaded: float


class Healthy:
    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text="ok\n")


@contextlib.asynccontextmanager
async def targets(opts: Options) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """Start every server; yield name -> probe settings for all targets (churn ones included)."""
    healthy = Healthy()
    async with contextlib.AsyncExitStack() as stack:
        app = web.Application()
        app.router.add_get("/{name}", healthy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        async def line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"ok\n")
            await writer.drain()
            writer.close()

        tcp = await stack.enter_async_context(hostile.serve(line))
        probes: dict[str, dict[str, Any]] = {}
        for i in range(opts.healthy + opts.churn):
            name = f"ok{i:03d}" if i < opts.healthy else f"churn{i - opts.healthy:03d}"
            if i % 6 == 5:
                probes[name] = {
                    "kind": "tcp",
                    "address": f"{tcp[0]}:{tcp[1]}",
                    "send": "hello\\n",
                    "expect": "^ok",
                }
            else:
                probes[name] = {
                    "kind": "http",
                    "url": f"http://127.0.0.1:{http_port}/{name}",
                    "keep_alive": i % opts.keep_alive_every == 0,
                }
        for kind in HOSTILE_KINDS:
            for j in range(opts.hostile_each):
                host, port = await stack.enter_async_context(getattr(hostile, kind)())
                scheme = "https" if kind == "tls_stall" else "http"
                probes[f"{kind}{j}"] = {"kind": "http", "url": f"{scheme}://{host}:{port}/"}
        probes["nxdomain"] = {"kind": "http", "url": "http://no-such-host.invalid/"}
        yield probes


def config_text(probes: dict[str, dict[str, Any]], opts: Options, variant: int) -> str:
    """All targets but half the churn ones: variant 0 keeps the even ones, 1 the odd ones."""
    lines = [
        "vantage: soak",
        f"defaults: {{interval: {opts.interval:g}s, timeout: {opts.timeout:g}s}}",
        "services:",
        "  - name: svc",
        "    regions: [{name: r1, role: primary, priority: 1}]",
        "    images: [{name: i1, ref: example/svc:1}]",
        "    targets:",
    ]
    for name, probe in probes.items():
        if name.startswith("churn") and int(name[5:]) % 2 != variant:
            continue
        lines.append(f"      - {{name: {name}, region: r1, image: i1, probe: {json.dumps(probe)}}}")
    return "\n".join(lines) + "\n"


def proc_usage(pid: int) -> tuple[int, int]:
    """RSS in bytes and open file descriptors of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Exporter:
    def __init__(self, workdir: Path, config: Path) -> None:
        self.log_path = workdir / "exporter.log"
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(EXE),
                "run",
                "--config",
                str(self.config),
                "--web.listen-address",
                "127.0.0.1:0",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        for _ in range(300):
            match = re.search(r"msg=listening address=\S*:(\d+)", self.log_path.read_text())
            if match:
                self.port = int(match[1])
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        raise RuntimeError(f"exporter did not start:\n{self.log_path.read_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                return -9
        return self.proc.returncode


async def scrape(session: aiohttp.ClientSession, port: int) -> tuple[dict[str, float], float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}")
        text = await resp.text()
    own: dict[str, float] = {}
    for m in OWN.finditer(text):
        own[m[1]] = own.get(m[1], 0.0) + float(m[2])
    return own, sum(float(v) for v in PROBES.findall(text))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def soak(opts: Options, json_path: Path | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {"options": dataclasses.asdict(opts)}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        cfg = workdir / "config.yml"
        async with targets(opts) as probes, aiohttp.ClientSession() as session:
            cfg.write_text(config_text(probes, opts, 0))
            exporter = Exporter(workdir, cfg)
            await exporter.start()
            try:
                summary.update(await drive(opts, probes, exporter, session, cfg))
            finally:
                code = await exporter.stop()
            log = exporter.log_path.read_text(errors="replace")
            summary["exit_code"] = code
            summary["tracebacks_in_log"] = log.count("Traceback")
            if code != 0:
                summary["failures"].append(f"exporter exited {code}")
            if "Traceback" in log:
                summary["failures"].append("a traceback in the exporter's log")
            if summary["failures"]:
                summary["log_tail"] = exporter.log_tail()
    summary["ok"] = not summary["failures"]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


async def drive(
    opts: Options,
    probes: dict[str, dict[str, Any]],
    exporter: Exporter,
    session: aiohttp.ClientSession,
    cfg: Path,
) -> dict[str, Any]:
    samples: list[Sample] = []
    failures: list[str] = []
    reloads = {"good": 0, "broken": 0, "sighup": 0, "post": 0}
    variant = 0
    expected = {v: config_text(probes, opts, v).count("\n      - {name: ") for v in (0, 1)}
    started = time.monotonic()
    next_reload = started + opts.reload_every
    n_reload = 0
    while (now := time.monotonic()) < started + opts.duration:
        if now >= next_reload:
            n_reload += 1
            next_reload += opts.reload_every
            broken = n_reload % opts.broken_every == 0
            good_text = config_text(probes, opts, 1 - variant)
            cfg.write_text(good_text + "  colour: blue\n" if broken else good_text)
            how = "sighup" if n_reload % 2 else "post"
            reloads[how] += 1
            before, _ = await scrape(session, exporter.port)
            stamp = before.get("failover_exporter_config_last_reload_success_timestamp_seconds")
            if how == "post":
                async with session.post(f"http://127.0.0.1:{exporter.port}/-/reload") as resp:
                    if resp.status != (500 if broken else 200):
                        failures.append(f"reload {n_reload}: POST answered {resp.status}")
            else:
                assert exporter.proc is not None
                exporter.proc.send_signal(signal.SIGHUP)
            # SIGHUP answers nothing: wait (bounded) for the reload to show in the metrics.
            for _ in range(100):
                own, _ = await scrape(session, exporter.port)
                ok = own.get("failover_exporter_config_last_reload_successful")
                new_stamp = own.get(
                    "failover_exporter_config_last_reload_success_timestamp_seconds"
                )
                if (broken and ok == 0) or (not broken and ok == 1 and new_stamp != stamp):
                    break
                await asyncio.sleep(0.05)
            else:
                failures.append(f"reload {n_reload} ({how}, broken={broken}) never showed")
            if broken:
                reloads["broken"] += 1
                want = expected[variant]
            else:
                reloads["good"] += 1
                variant = 1 - variant
                want = expected[variant]
            running = own.get("failover_exporter_targets")
            if running != want:
                failures.append(f"reload {n_reload}: {running} targets running, not {want}")
        t = time.monotonic() - started
        try:
            own, probes_total = await scrape(session, exporter.port)
            rss, fds = proc_usage(exporter.pid)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            failures.append(f"scrape at {t:.0f}s failed: {exc!r}")
            break
        samples.append(
            Sample(
                t,
                rss,
                fds,
                own.get("failover_exporter_tasks", float("nan")),
                probes_total,
                own.get("failover_exporter_overloaded", float("nan")),
            )
        )
        await asyncio.sleep(opts.scrape_every)

    elapsed = time.monotonic() - started
    start = opts.warm_up * elapsed
    quarter = (elapsed - start) / 4
    first = [s for s in samples if start <= s.t < start + quarter]
    last = [s for s in samples if s.t >= elapsed - quarter]
    figures: dict[str, Any] = {}
    keep_alive = sum(1 for p in probes.values() if p.get("keep_alive"))
    checks = {
        "rss": (opts.rss_rel, opts.rss_abs),
        "fds": (0.0, opts.fds_abs + keep_alive),
        "tasks": (0.0, opts.tasks_abs),
    }
    for field, (rel, slack) in checks.items():
        a = median([getattr(s, field) for s in first])
        b = median([getattr(s, field) for s in last])
        bound = a * (1 + rel) + slack
        figures[field] = {
            "first_quarter_median": a,
            "last_quarter_median": b,
            "bound": bound,
            "max": max((getattr(s, field) for s in samples), default=None),
        }
        if not b <= bound:
            failures.append(f"{field}: last quarter {b:g} > {bound:g} (first quarter {a:g})")
    if len(first) < 3 or len(last) < 3:
        failures.append(f"too few samples: {len(first)} and {len(last)}")
    rate = 0.0
    if len(samples) >= 2:
        rate = (samples[-1].probes - samples[0].probes) / (samples[-1].t - samples[0].t)
    scheduled = len(probes) / opts.interval
    # Counters of targets removed by a reload leave the sum, so this is a lower bound.
    if rate < 0.5 * scheduled:
        failures.append(f"probes ran at {rate:.0f}/s of {scheduled:.0f}/s scheduled")
    return {
        "seconds": round(elapsed, 1),
        "targets": expected[0],
        "probes_per_second": round(rate, 1),
        "scheduled_per_second": round(scheduled, 1),
        "reloads": reloads,
        "scrapes": len(samples),
        "overloaded_samples": sum(1 for s in samples if s.overloaded == 1),
        "figures": figures,
        "samples": [dataclasses.asdict(s) for s in samples[:: max(1, len(samples) // 200)]],
        "failures": failures,
    }


def report(summary: dict[str, Any]) -> str:
    out = [
        f"soak: {summary.get('seconds')}s, {summary.get('targets')} targets, "
        f"{summary.get('probes_per_second')} probes/s "
        f"(of {summary.get('scheduled_per_second')}/s scheduled), "
        f"reloads {summary.get('reloads')}, {summary.get('scrapes')} scrapes, "
        f"{summary.get('overloaded_samples')} scrapes with the exporter overloaded",
    ]
    for field, f in summary.get("figures", {}).items():
        scale, unit = (1 / (1 << 20), "MiB") if field == "rss" else (1, "")
        out.append(
            f"  {field}: first quarter {f['first_quarter_median'] * scale:.1f}{unit}, "
            f"last quarter {f['last_quarter_median'] * scale:.1f}{unit} "
            f"(bound {f['bound'] * scale:.1f}{unit}, max {f['max'] * scale:.1f}{unit})"
        )
    out.append("  OK" if summary["ok"] else "  FAILED: " + "; ".join(summary["failures"]))
    if not summary["ok"] and "log_tail" in summary:
        out.append(summary["log_tail"])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    defaults = Options()
    for field in dataclasses.fields(Options):
        p.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
        )
    p.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = vars(p.parse_args(argv))
    json_path = args.pop("json")
    summary = asyncio.run(soak(Options(**args), json_path))
    print(report(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
