"""HTTP handlers: /metrics, the status page, /probe, health, readiness and reload."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Iterable

from aiohttp import web

from exporter import __version__, exposition, status_view
from exporter.engine import Engine
from exporter.log import rfc3339
from exporter.metrics import BY_NAME, TARGET_LABELS, Role
from exporter.model import Target
from exporter.probes import REGISTRY
from exporter.state import Result, label_text

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
PROBE_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("probe_slots", asyncio.Semaphore)

# Often enough to follow an outage (probes every 5 s, scrapes every 15 s by default).
REFRESH_SECONDS = 10

_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", status_page),
        web.get("/metrics", metrics),
        web.get("/probe", probe),
        web.get("/-/healthy", healthy),
        web.get("/-/ready", ready),
        web.post("/-/reload", reload),
        web.post("/-/maintenance", maintenance),
    ]


async def metrics(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    regions = engine.config.regions if engine.config else ()
    fleet = exposition.fleet_lines(engine.config, engine.maintenance) if engine.config else ""
    # Streamed chunk by chunk as rendered: joining a 10,000-target body (tens of MB) in one step
    # would stall the probes on the same loop.
    headers = {"Content-Type": exposition.CONTENT_TYPE}
    # Compressed here, not by aiohttp's enable_compression: that uses zlib's default level.
    gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    if gzip:
        headers["Content-Encoding"] = "gzip"
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    packer = exposition.gzip_compressor() if gzip else None
    states = engine.scheduler.snapshot()
    async for chunk in exposition.chunks(states, regions, engine.registry, fleet):
        data = packer.compress(chunk) if packer else chunk
        if data:
            await resp.write(data)
    if packer:
        await resp.write(packer.flush())
    await resp.write_eof()
    return resp


async def healthy(_request: web.Request) -> web.Response:
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[ENGINE].config is None:
        return web.Response(status=503, text="Not ready: no config loaded\n")
    return web.Response(text="Ready\n")


async def reload(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if await engine.reload():
        return web.Response(text="config reloaded\n")
    errors = "\n".join(engine.last_reload_errors)
    return web.Response(status=500, text=f"config reload failed, previous config kept:\n{errors}\n")


async def maintenance(request: web.Request) -> web.Response:
    """`POST /-/maintenance?service=S&region=R&state=on|off|config`: take a region out of the
    failover choice (or back) without a reload. Behind the web config's auth like every route."""
    engine = request.app[ENGINE]
    service, region = request.query.get("service", ""), request.query.get("region", "")
    state = request.query.get("state", "on")
    cfg = engine.config
    if cfg is None or not any((r.service, r.name) == (service, region) for r in cfg.regions):
        return web.Response(status=404, text="unknown service/region (only configured ones)\n")
    if state not in ("on", "off", "config"):
        return web.Response(status=400, text="state is on, off or config\n")
    if state == "config":
        engine.maintenance.pop((service, region), None)
    else:
        engine.maintenance[(service, region)] = state == "on"
    now = "in maintenance" if engine.in_maintenance(service, region) else "not in maintenance"
    return web.Response(text=f"{service}/{region}: {now}\n")


async def probe(request: web.Request) -> web.Response:
    """Run one configured target now. Only configured names: this never probes a given URL."""
    engine = request.app[ENGINE]
    name = request.query.get("target")
    if not name:
        return web.Response(status=400, text="missing ?target=NAME (a configured target)\n")
    matches = engine.scheduler.find(name, request.query.get("vantage"))
    if not matches:
        return web.Response(status=404, text="unknown target (only configured targets)\n")
    if len(matches) > 1:
        vantages = ", ".join(sorted(t.vantage for t in matches))
        return web.Response(status=400, text=f"ambiguous target; add &vantage= ({vantages})\n")
    slots = request.app[PROBE_SLOTS]
    if slots.locked():
        return web.Response(status=429, text="too many /probe requests in flight\n")
    async with slots:
        result = await engine.runner.run(matches[0])
    text = _probe_exposition(result)
    if request.query.get("debug", "").lower() in ("1", "true", "yes"):
        lines = "\n".join(result.debug)
        text = f"Logs for the probe:\n{lines}\n\nMetrics that would have been returned:\n{text}"
        return web.Response(text=text)
    return web.Response(body=text.encode(), headers={"Content-Type": exposition.CONTENT_TYPE})


def _probe_exposition(r: Result) -> str:
    labels = label_text(TARGET_LABELS, r.target.labels)
    lines = [
        "# HELP failover_probe_success 1 if this probe succeeded.",
        "# TYPE failover_probe_success gauge",
        f"failover_probe_success{{{labels}}} {int(r.success)}",
        "# HELP failover_probe_duration_seconds Duration of this probe.",
        "# TYPE failover_probe_duration_seconds gauge",
        f"failover_probe_duration_seconds{{{labels}}} {exposition.fmt(r.duration)}",
        "# HELP failover_probe_phase_duration_seconds Duration of each phase of this probe.",
        "# TYPE failover_probe_phase_duration_seconds gauge",
    ]
    lines += [
        f'failover_probe_phase_duration_seconds{{{labels},phase="{p}"}} {exposition.fmt(v)}'
        for p, v in r.phases.items()
    ]
    # The kind's per-probe gauges (an HTTP status code) that this probe set.
    for name in REGISTRY[r.target.kind].gauges:
        if name in r.gauges:
            spec = BY_NAME[name]
            lines += [
                f"# HELP {name} {spec.help}",
                f"# TYPE {name} gauge",
                f"{name}{{{labels}}} {exposition.fmt(r.gauges[name])}",
            ]
    if r.reason:
        lines += [
            "# HELP failover_probe_failure_info Why this probe failed, value 1.",
            "# TYPE failover_probe_failure_info gauge",
            f'failover_probe_failure_info{{{labels},reason="{r.reason}"}} 1',
        ]
    return "\n".join(lines) + "\n"


# -- status page ---------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.ok{background:#d8f5d0}.fail{background:#f9d0d0}.partial{background:#fbecc0}.none{color:#888}
pre{margin:0;font-size:85%;white-space:pre-wrap}
small{color:#555}
ol{margin:0;padding:0;list-style:none}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"


_REGION_CSS = {"up": "ok", "down": "fail", "isolated": "partial", "pending": "none"}
_CELL_CSS = {"healthy": "ok", "failing": "fail", "partial": "partial"}


def _cell(c: status_view.Cell) -> str:
    if c.verdict == "not probed":
        return '<td class="none">not probed</td>'
    css = _CELL_CSS.get(c.verdict, "none")
    why = f"<br><small>{_e(', '.join(c.reasons))}</small>" if c.reasons else ""
    return (
        f'<td class="{css}" data-verdict="{c.verdict}"><b>{c.verdict}</b> '
        f"<small>{c.ok}/{c.done} vantages</small><br>"
        f"p50 {_ms(c.p50)} · p95 {_ms(c.p95)}{why}</td>"
    )


def _ranking(ranks: tuple[status_view.Rank, ...]) -> str:
    if not ranks:
        return '<td class="none" data-ranking="">no live latency</td>'
    items = "".join(
        f'<li data-image="{_e(r.image)}" data-rank="{r.rank}" data-tied="{str(r.tied).lower()}">'
        f"{r.rank}{'=' if r.tied else ''} {_e(r.image)} <small>{_ms(r.p50)}"
        f"{' · tied' if r.tied else ''}</small></li>"
        for r in ranks
    )
    return f'<td class="ranking"><ol>{items}</ol></td>'


def _matrix(engine: Engine) -> Iterable[str]:
    cfg = engine.config
    if cfg is None:
        return
    snapshot = engine.scheduler.snapshot()
    for svc in status_view.build(cfg, snapshot, engine.in_maintenance):
        yield f"<h2>Service {_e(svc.name)}</h2>"
        yield '<table class="matrix"><tr><th>region</th><th>view</th>'
        yield "".join(f"<th>{_e(i)}</th>" for i in svc.images) + "<th>ranking</th></tr>"
        for r in svc.regions:
            note = " · maintenance" if r.maintenance else ""
            yield (
                f"<tr><th>{_e(r.name)} <small>{_e(r.role)} · priority {r.priority}{note}"
                "</small></th>"
                f'<td class="{_REGION_CSS[r.state]}" data-region-state="{r.state}">'
                f"<b>{r.state}</b></td>"
            )
            yield "".join(_cell(c) for c in r.cells)
            yield _ranking(r.ranking)
            yield "</tr>"
        yield "</table>"
    controls = [s for s in snapshot if s.target.role == Role.CONTROL]
    if controls:
        isolated = status_view.isolated_vantages(controls)
        yield "<h2>Control targets</h2><table>"
        yield "<tr><th>vantage</th><th>target</th><th>state</th></tr>"
        for st in controls:
            t = st.target
            note = " <small>(vantage isolated)</small>" if t.vantage in isolated else ""
            yield (
                f"<tr><td>{_e(t.vantage)}{note}</td><td>{_e(t.name)}</td>"
                f"{_cell(status_view.cell(t.name, [st]))}</tr>"
            )
        yield "</table>"


def _describe(t: Target) -> str:
    return REGISTRY[t.kind].describe(t.settings)


def _results(title: str, results: Iterable[Result]) -> Iterable[str]:
    yield f"<h2>{_e(title)}</h2><table><tr><th>time (UTC)</th><th>target</th><th>vantage</th>"
    yield "<th>probe</th><th>result</th><th>duration</th><th>message</th><th>debug</th></tr>"
    for r in results:
        t = r.target
        when = rfc3339(r.started)
        css = "ok" if r.success else "fail"
        verdict = "success" if r.success else _e(r.reason)
        lines = _e("\n".join(r.debug))
        yield (
            f"<tr><td>{when}</td><td>{_e(t.name)}</td><td>{_e(t.vantage)}</td>"
            f'<td>{_e(t.kind)}: {_e(_describe(t))}</td><td class="{css}">{verdict}</td>'
            f"<td>{_ms(r.duration)}</td><td>{_e(r.message)}</td>"
            f"<td><details><summary>log</summary><pre>{lines}</pre></details></td></tr>"
        )
    yield "</table>"


async def status_page(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    cfg = engine.config
    vantages = sorted({t.vantage for t in cfg.targets}) if cfg else []
    reload_note = ""
    if engine.last_reload_errors:
        items = "".join(f"<li>{_e(e)}</li>" for e in engine.last_reload_errors)
        reload_note = (
            f'<div class="fail"><b>Last reload failed</b> (old config kept):<ul>{items}</ul></div>'
        )
    overloaded = ""
    if engine.selfwatch.overloaded():
        overloaded = (
            '<p class="fail">Exporter overloaded: latency figures include its own delays.</p>'
        )
    generated = rfc3339(time.time())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>failover_exporter</title>",
        # A meta refresh rather than a script: the page's CSP allows no script at all.
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>failover_exporter <small>{_e(__version__)}</small></h1>",
        f'<p>Generated <time class="generated" datetime="{generated}">{generated}</time> · '
        f"refreshes every {REFRESH_SECONDS} s</p>",
        f"<p>Vantage: {_e(', '.join(vantages))} · config {_e(cfg.digest if cfg else 'none')} · ",
        '<a href="metrics">metrics</a> · <a href="-/healthy">health</a></p>',
        reload_note,
        overloaded,
        *_matrix(engine),
        *_results("Recent failures", reversed(engine.history.failures)),
        *_results("Recent probes", reversed(engine.history.recent)),
        "</body></html>",
    ]
    return web.Response(text="".join(parts), content_type="text/html", headers=_PAGE_HEADERS)
