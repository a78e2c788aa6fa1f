"""The status page, rendered by headless Chromium against a running exporter.

One browser and one exporter (a real `failover-exporter run` subprocess) per module; the probed
servers are a threaded HTTP server in this process and a closed port. Debian's Chromium is
driven by Python playwright through `executable_path`: no browser is ever downloaded.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import need

EXE = str(Path(sys.executable).parent / "failover-exporter")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE_TARGET = "<img src=x onerror=alert(1)>\"'&"
HOSTILE_IMAGE = '"><script>alert(2)</script>'


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 500
        body = b"ok\n" if status == 200 else b"broken\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(ok: str, refused: str) -> str:
    q = json.dumps  # JSON strings are valid YAML scalars, whatever they contain
    return f"""\
vantage: v1
defaults: {{interval: 400ms, timeout: 300ms}}
control:
  - {{name: ctl-ok, probe: {{kind: http, url: {q(ok + "/ok")}}}}}
services:
  - name: shop
    regions:
      - {{name: eu-west, role: primary, priority: 1}}
      - {{name: us-east, role: standby, priority: 2}}
    images:
      - {{name: slim, ref: "x/shop:slim"}}
      - {{name: {q(HOSTILE_IMAGE)}, ref: "x/shop:full"}}
    targets:
      - {{name: eu-slim, region: eu-west, image: slim, probe: {{kind: http, url: {q(ok + "/ok")}}}}}
      - {{name: eu-full, region: eu-west, image: {q(HOSTILE_IMAGE)},
          probe: {{kind: http, url: {q(refused + "/")}}}}}
      - {{name: us-slim, region: us-east, image: slim, probe: {{kind: http, url: {q(ok + "/ok")}}}}}
      - {{name: {q(HOSTILE_TARGET)}, region: us-east, image: {q(HOSTILE_IMAGE)},
          probe: {{kind: http, url: {q(ok + "/fail")}}}}}
"""


class Exporter:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [EXE, "run", "--config", str(config), "--web.listen-address", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.port = 0
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"msg=listening address=\S*:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(self.url + path, method=method)  # noqa: S310 - loopback http
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def wait_until_probed(self, times: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, text = self.request("/metrics")
            counts = [
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "failover_probes_total"
            ]
            if len(counts) == 5 and min(counts) >= times:
                return
            time.sleep(0.2)
        raise AssertionError("targets were not probed in time:\n" + "".join(self.lines))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


@pytest.fixture(scope="module")
def exporter(backend: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    path = tmp_path_factory.mktemp("status") / "config.yml"
    path.write_text(config_text(f"http://127.0.0.1:{backend}", f"http://127.0.0.1:{closed_port()}"))
    exp = Exporter(path)
    try:
        assert exp._listening.wait(30), "exporter did not start:\n" + "".join(exp.lines)
        exp.wait_until_probed(2)
        yield exp
    finally:
        exp.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or need("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def cell(page: Page, region: str, column: int) -> str:
    row = page.locator("table.matrix tr").filter(
        has=page.locator("th", has_text=re.compile(f"^{region} "))
    )
    # td 0 is the region's view (up / down / isolated); the images follow.
    return row.locator("td").nth(column + 1).inner_text()


def cell_verdict(page: Page, region: str, column: int) -> str | None:
    row = page.locator("table.matrix tr").filter(
        has=page.locator("th", has_text=re.compile(f"^{region} "))
    )
    return row.locator("td").nth(column + 1).get_attribute("data-verdict")


LATENCY = re.compile(r"p50 \d+\.\d ms · p95 \d+\.\d ms")


def test_matrix_controls_and_recent_probes(exporter: Exporter, page: Page) -> None:
    page.goto(exporter.url + "/")
    headers = page.locator("table.matrix tr").first.locator("th").all_inner_texts()
    assert headers == ["region", "view", "slim", HOSTILE_IMAGE, "ranking"]

    assert cell_verdict(page, "eu-west", 0) == "healthy"
    assert LATENCY.search(cell(page, "eu-west", 0))
    assert cell_verdict(page, "us-east", 0) == "healthy"
    assert LATENCY.search(cell(page, "us-east", 0))
    assert cell_verdict(page, "eu-west", 1) == "failing"
    assert "connect" in cell(page, "eu-west", 1)
    assert cell_verdict(page, "us-east", 1) == "failing"
    assert "http_status" in cell(page, "us-east", 1)
    assert "primary" in page.locator("table.matrix th", has_text="eu-west").inner_text()

    controls = page.locator("h2", has_text="Control targets").locator("xpath=following::table[1]")
    assert "ctl-ok" in controls.inner_text()
    assert controls.locator("td[data-verdict=healthy]").count() == 1

    recent = page.locator("h2", has_text="Recent probes").locator("xpath=following::table[1]")
    assert recent.locator("td.ok", has_text="success").count() >= 6

    failures = page.locator("h2", has_text="Recent failures").locator("xpath=following::table[1]")
    refused = failures.locator("tr").filter(has=page.locator("td.fail", has_text="connect"))
    assert refused.count() >= 2
    row = refused.first
    assert "eu-full" in row.inner_text()
    assert "connection refused" in row.inner_text()
    log = row.locator("details pre")
    assert not log.is_visible()
    row.locator("summary").click()
    assert log.is_visible()
    lines = log.inner_text()
    # Debug lines carry RFC 3339 times with the zone, as the exporter's log lines do.
    rfc3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.search(rf"^{rfc3339} GET http://127\.0\.0\.1:\d+/$", lines, re.M), lines
    assert "failed (connect)" in lines
    status = failures.locator("tr").filter(has=page.locator("td.fail", has_text="http_status"))
    assert status.count() >= 2
    assert "status 500" in status.first.inner_text()


def test_hostile_names_are_text(exporter: Exporter, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(exporter.url + "/")
    page.wait_for_load_state("load")
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 0
    assert page.get_by_text(HOSTILE_TARGET, exact=True).count() >= 1
    assert page.get_by_text(HOSTILE_IMAGE, exact=True).count() >= 1
    body = page.locator("body").inner_text()
    assert HOSTILE_TARGET in body
    assert dialogs == []
    assert errors == []


def test_failed_reload_is_shown(exporter: Exporter, page: Page) -> None:
    good = exporter.config.read_text()
    try:
        exporter.config.write_text(good.replace("interval: 400ms", "interval: 400ms, colour: 1"))
        status, text = exporter.request("/-/reload", "POST")
        assert status == 500, text
        page.goto(exporter.url + "/")
        banner = page.locator("div.fail", has_text="Last reload failed")
        assert banner.is_visible()
        assert re.search(r"config\.yml:2: defaults\.colour: unknown key", banner.inner_text())
        # The old config still runs and is still on the page.
        assert cell_verdict(page, "eu-west", 0) == "healthy"
    finally:
        exporter.config.write_text(good)
        status, text = exporter.request("/-/reload", "POST")
    assert status == 200, text
    page.goto(exporter.url + "/")
    assert page.locator("div.fail", has_text="Last reload failed").count() == 0


def _row(page: Page, region: str) -> Locator:
    return page.locator("table.matrix tr").filter(
        has=page.locator("th", has_text=re.compile(f"^{region} "))
    )


def test_verdicts_ranking_refresh_and_zoned_times(exporter: Exporter, page: Page) -> None:
    page.goto(exporter.url + "/")
    # One image answers in each region: this exporter sees both regions up.
    for region in ("eu-west", "us-east"):
        view = _row(page, region).locator("td[data-region-state]")
        assert view.get_attribute("data-region-state") == "up"
        assert view.inner_text() == "up"
    # A failing cell shows no latency, although its target's ring may hold older samples.
    assert "p50 – · p95 –" in cell(page, "eu-west", 1)
    # The ranking lists only images with a live p50; one image alone is not a tie.
    items = _row(page, "eu-west").locator("td.ranking li")
    assert items.count() == 1
    assert items.first.get_attribute("data-image") == "slim"
    assert items.first.get_attribute("data-rank") == "1"
    assert items.first.get_attribute("data-tied") == "false"
    assert re.fullmatch(r"1 slim \d+\.\d ms", items.first.inner_text())

    refresh = page.locator('meta[http-equiv="refresh"]')
    assert refresh.count() == 1
    assert int(refresh.get_attribute("content") or "0") > 0

    zoned = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    generated = page.locator("time.generated")
    assert re.fullmatch(zoned, generated.get_attribute("datetime") or "")
    recent = page.locator("h2", has_text="Recent probes").locator("xpath=following::table[1]")
    assert "time (UTC)" in recent.locator("th").first.inner_text()
    times = recent.locator("tr td:first-child").all_inner_texts()
    assert times
    assert all(re.fullmatch(zoned, t) for t in times), times
