"""`failover-exporter drill`: inject a primary outage and time the whole alerting chain.

Timeline, each measured from the moment the outage is injected:
  detect  - every probe of the region fails (seen in Prometheus, or at an exporter's /metrics)
  alert   - the failover alert is firing in Prometheus
  page    - Alertmanager delivered the notification to the drill's own webhook receiver
then, after recovery is injected:
  recover - probes succeed again, the alert stops firing, the resolved notification arrives.

`--repeat N` runs the outage N times, run i injected i/N of a scrape interval later in the scrape
cycle than the first (after the previous run resolved), because detect and page depend on where
the first failed probe falls against the scrape and evaluation cycles: one run samples one phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from exporter import flags
from exporter import log as logsetup

log = logging.getLogger("exporter.drill")

POLL = 0.5
COMMAND_TIMEOUT = 120.0


@dataclasses.dataclass
class DrillOptions:
    prometheus: str
    service: str
    region: str
    inject: list[str]
    recover: list[str] | None
    alert: str = "FailoverPrimaryRegionDown"
    webhook: tuple[str, int] = ("127.0.0.1", 10078)
    timeout: float = 300.0
    recover_after: float = 0.0
    # How long to wait for the alert to resolve after recovery (keep_firing_for holds it).
    resolve_timeout: float = 420.0
    repeat: int = 1
    # The cycle the repeats spread their injects over (the bundle's scrape/eval interval).
    scrape_interval: float = 15.0


class Clock:
    """Time as the drill sees it; tests pass a virtual one instead of sleeping."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


CLOCK = Clock()
Command = Callable[[list[str]], Awaitable[None]]


@dataclasses.dataclass
class Report:
    service: str
    region: str
    alert: str
    injected_at: float
    detect_seconds: float | None = None
    alert_seconds: float | None = None
    page_seconds: float | None = None
    recovered_at: float | None = None
    probes_recovered_seconds: float | None = None
    alert_resolved_seconds: float | None = None
    resolved_page_seconds: float | None = None
    failover_to: str | None = None
    # Where this run's inject fell in the scrape cycle, relative to the first run's (repeats).
    phase_seconds: float | None = None
    errors: list[str] = dataclasses.field(default_factory=list)
    # What recovery did not show in time: informational, since `keep_firing_for` deliberately
    # holds a failover alert for minutes after the region is back.
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        measured = (self.detect_seconds, self.alert_seconds, self.page_seconds)
        recovered = self.recovered_at is None or self.probes_recovered_seconds is not None
        return not self.errors and None not in measured and recovered

    def text(self) -> str:
        def s(v: float | None) -> str:
            return "not observed" if v is None else f"{v:7.1f} s"

        rows = [
            f"Failover drill: {self.service} / {self.region} (alert {self.alert})",
            f"  time to detect (all probes failing)   {s(self.detect_seconds)}",
            f"  time to alert (firing in Prometheus)  {s(self.alert_seconds)}",
            f"  time to page (webhook notified)       {s(self.page_seconds)}",
            f"  alert names failover target           {self.failover_to or '-'}",
        ]
        if self.recovered_at is not None:
            rows += [
                "  after recovery was injected:",
                f"    probes succeeding again             {s(self.probes_recovered_seconds)}",
                f"    alert no longer firing              {s(self.alert_resolved_seconds)}",
                f"    resolved notification               {s(self.resolved_page_seconds)}",
            ]
        rows += [f"  error: {e}" for e in self.errors]
        rows += [f"  note: {n}" for n in self.notes]
        rows.append("  result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(rows)


class _Webhook:
    """Alertmanager webhook receiver: records when a firing/resolved notification arrives."""

    def __init__(self, alert: str, service: str, region: str, clock: Clock = CLOCK) -> None:
        self.match = {"alertname": alert, "service": service, "target_region": region}
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget the previous run's notifications (repeats): each run waits for its own."""
        self.firing = asyncio.Event()
        self.resolved = asyncio.Event()
        self.firing_at = 0.0
        self.resolved_at = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except (ValueError, aiohttp.ContentTypeError):
            return web.Response(status=400)
        for alert in payload.get("alerts", []):
            labels = alert.get("labels", {})
            if any(labels.get(k) != v for k, v in self.match.items()):
                continue
            if alert.get("status") == "firing" and not self.firing.is_set():
                self.firing_at = self.clock.monotonic()
                self.firing.set()
            elif alert.get("status") == "resolved" and self.firing.is_set():
                self.resolved_at = self.clock.monotonic()
                self.resolved.set()
        return web.Response(text="ok")


async def _run_command(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, _ = await proc.communicate()
    except BaseException:
        # A hung or cancelled inject/recover command must not outlive the drill.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        text = out.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {text}")


class _Prometheus:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.rstrip("/")

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            data = await r.json()
        if data.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {data.get('error')}")
        return list(data["data"]["result"])

    async def firing(self, alert: str, service: str, region: str) -> dict[str, Any] | None:
        async with self.session.get(f"{self.url}/api/v1/alerts") as r:
            data = await r.json()
        for a in data.get("data", {}).get("alerts", []):
            labels = a.get("labels", {})
            if (
                a.get("state") == "firing"
                and labels.get("alertname") == alert
                and labels.get("service") == service
                and labels.get("target_region") == region
            ):
                return dict(a)
        return None


async def _until(
    check: Callable[[], Awaitable[bool]],
    deadline: float,
    what: str,
    missed: list[str],
    clock: Clock = CLOCK,
) -> float | None:
    while clock.monotonic() < deadline:
        try:
            if await check():
                return clock.monotonic()
        except (aiohttp.ClientError, RuntimeError, ValueError) as exc:
            log.warning("drill poll failed", extra={"what": what, "error": str(exc)})
        await clock.sleep(POLL)
    missed.append(f"{what}: not observed within the timeout")
    return None


async def run(opts: DrillOptions) -> list[Report]:
    hook = _Webhook(opts.alert, opts.service, opts.region)
    app = web.Application()
    # Any path: Alertmanager configs put the receiver under a path of their own (/page, ...).
    app.router.add_post("/{path:.*}", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, *opts.webhook)
    await site.start()
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            chain = Chain(opts, _Prometheus(session, opts.prometheus), hook)
            if opts.repeat <= 1:
                return [await _drill(chain)]
            return await repeat(chain)
    finally:
        await runner.cleanup()


def phase_offset(run: int, runs: int, interval: float) -> float:
    """Where run `run` (0-based) of `runs` injects in the cycle, relative to the first run."""
    return (run * interval / runs) % interval


def phase_delay(now: float, anchor: float, interval: float, offset: float) -> float:
    """Seconds from `now` to the next moment `offset` into a cycle that began at `anchor`."""
    return (anchor + offset - now) % interval


def summary(values: list[float | None]) -> tuple[float, float, float] | None:
    seen = [v for v in values if v is not None]
    if not seen:
        return None
    return min(seen), statistics.median(seen), max(seen)


@dataclasses.dataclass
class Chain:
    """What a drill run drives and watches; tests pass a modelled world and a virtual clock."""

    opts: DrillOptions
    prom: _Prometheus
    hook: _Webhook
    clock: Clock = CLOCK
    command: Command = _run_command


async def repeat(chain: Chain) -> list[Report]:
    """Run the drill `opts.repeat` times, each inject `scrape_interval / repeat` further into the
    scrape cycle. Each run must end resolved (alert gone, resolved notification) before the next:
    a next run against a still-firing alert would time nothing."""
    opts, hook, clock = chain.opts, chain.hook, chain.clock
    reports: list[Report] = []
    anchor = clock.monotonic()
    for i in range(opts.repeat):
        if i:
            offset = phase_offset(i, opts.repeat, opts.scrape_interval)
            await clock.sleep(phase_delay(clock.monotonic(), anchor, opts.scrape_interval, offset))
        hook.reset()
        report = await _drill(chain, anchor)
        reports.append(report)
        if not report.ok or report.resolved_page_seconds is None:
            if report.resolved_page_seconds is None and not report.errors:
                report.errors.append("not resolved before the next repeat; repeats stopped")
            break
    return reports


async def _step(chain: Chain, argv: list[str], name: str, report: Report) -> bool:
    """Run the inject or recover command; False (the failure in the report) ends the run."""
    try:
        await chain.command(argv)
    except (OSError, RuntimeError, TimeoutError) as exc:
        report.errors.append(f"{name} failed: {exc or 'timed out'}")
        return False
    return True


async def _drill(chain: Chain, anchor: float | None = None) -> Report:
    opts, prom, hook, clock = chain.opts, chain.prom, chain.hook, chain.clock
    sel = f'service="{opts.service}",target_region="{opts.region}"'
    healthy = await prom.query(f"max(failover_probe_success{{{sel}}}) == 1")
    start = clock.monotonic()
    report = Report(opts.service, opts.region, opts.alert, injected_at=clock.time())
    if anchor is not None:
        report.phase_seconds = (start - anchor) % opts.scrape_interval
    if not healthy:
        report.errors.append("the region is not healthy before the drill; nothing to measure")
        return report
    log.info("injecting outage", extra={"command": shlex.join(opts.inject)})
    if not await _step(chain, opts.inject, "inject", report):
        return report
    deadline = start + opts.timeout

    async def all_failing() -> bool:
        return bool(await prom.query(f"max(failover_probe_success{{{sel}}}) == 0"))

    async def alert_firing() -> bool:
        alert = await prom.firing(opts.alert, opts.service, opts.region)
        if alert is not None:
            report.failover_to = alert.get("annotations", {}).get("failover_to")
        return alert is not None

    async def paged() -> bool:
        return hook.firing.is_set()

    detected = await _until(all_failing, deadline, "detect", report.errors, clock)
    report.detect_seconds = detected - start if detected else None
    alerted = await _until(alert_firing, deadline, "alert", report.errors, clock)
    report.alert_seconds = alerted - start if alerted else None
    if await _until(paged, deadline, "page", report.errors, clock) is not None:
        report.page_seconds = hook.firing_at - start
    if opts.recover is None:
        return report
    await clock.sleep(opts.recover_after)
    log.info("injecting recovery", extra={"command": shlex.join(opts.recover)})
    if not await _step(chain, opts.recover, "recover", report):
        return report
    rstart = clock.monotonic()
    report.recovered_at = clock.time()
    deadline = rstart + opts.timeout

    async def probes_ok() -> bool:
        return bool(await prom.query(f"min(failover_probe_success{{{sel}}}) == 1"))

    async def alert_gone() -> bool:
        return await prom.firing(opts.alert, opts.service, opts.region) is None

    async def resolved() -> bool:
        return hook.resolved.is_set()

    ok = await _until(probes_ok, deadline, "probes recovered", report.errors, clock)
    report.probes_recovered_seconds = ok - rstart if ok else None
    deadline = rstart + opts.resolve_timeout
    gone = await _until(alert_gone, deadline, "alert resolved", report.notes, clock)
    report.alert_resolved_seconds = gone - rstart if gone else None
    if await _until(resolved, deadline, "resolved notification", report.notes, clock) is not None:
        report.resolved_page_seconds = hook.resolved_at - rstart
    return report


def summary_text(reports: list[Report], runs: int) -> str:
    def s(v: float | None) -> str:
        return "      -" if v is None else f"{v:7.1f}"

    rows = [
        f"Repeated drill: {len(reports)} of {runs} runs, injects spread over the scrape cycle",
        "  run  phase s  detect s  alert s   page s",
    ]
    rows += [
        f"  {i:3d}  {s(r.phase_seconds)}  {s(r.detect_seconds)}  {s(r.alert_seconds)}  "
        f"{s(r.page_seconds)}"
        for i, r in enumerate(reports, 1)
    ]
    for name, values in (
        ("detect", [r.detect_seconds for r in reports]),
        ("alert", [r.alert_seconds for r in reports]),
        ("page", [r.page_seconds for r in reports]),
    ):
        got = summary(values)
        figures = "not observed" if got is None else "min {:.1f} s, median {:.1f} s, max {:.1f} s"
        rows.append(f"  {name:6s} {figures.format(*got) if got else figures}")
    ok = len(reports) == runs and all(r.ok for r in reports)
    rows.append("  result: " + ("PASS" if ok else "FAIL"))
    return "\n".join(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace) -> int:
    logsetup.setup("info", "logfmt")
    try:
        host, port = flags.parse_listen(args.webhook)
    except ValueError as exc:
        print(f"failover-exporter: {exc}", file=sys.stderr)
        return 2
    opts = DrillOptions(
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
    return execute(opts, args.json)


def execute(opts: DrillOptions, json_path: str | None) -> int:
    if opts.repeat > 1 and opts.recover is None:
        print("failover-exporter drill: --repeat needs --recover (each run must end resolved)")
        return 2
    reports = asyncio.run(run(opts))
    for r in reports:
        print(r.text())
    ok = all(r.ok for r in reports)
    if opts.repeat > 1:
        print(summary_text(reports, opts.repeat))
        ok = ok and len(reports) == opts.repeat
    if json_path:
        runs = [dataclasses.asdict(r) | {"ok": r.ok} for r in reports]
        data: dict[str, Any] = runs[0] if opts.repeat <= 1 else {"runs": runs, "ok": ok}
        if opts.repeat > 1:
            for name in ("detect", "alert", "page"):
                got = summary([getattr(r, f"{name}_seconds") for r in reports])
                data[f"{name}_seconds"] = (
                    None if got is None else dict(zip(("min", "median", "max"), got, strict=True))
                )
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
    return 0 if ok else 1
