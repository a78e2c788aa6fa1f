""" "DNS follows failover" end to end: a real knotd, three exporter vantages, a real Prometheus
with the bundle's rules.

The primary (eu-west) is down from every vantage while the zone still answers with its address:
FailoverDNSStillPointsAtDownPrimary fires. Then the zone flips to the standby (us-east) and is
reloaded: the answer-region series follow and the alert resolves. Every wait is for an event with
a bounded deadline (the rules' own 15 s groups, `for:` and `keep_firing_for:` set the pace).
"""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import stack
from tests.support.knot import Knot
from tests.tools import listening_port

pytestmark = pytest.mark.slow

VANTAGES = ("v1", "v2", "v3")
ALERT = "FailoverDNSStillPointsAtDownPrimary"
EU, US = "127.0.0.2", "127.0.0.3"


def _zone(address: str, serial: int) -> str:
    return textwrap.dedent(
        f"""\
        $ORIGIN example.
        $TTL 5
        @ SOA ns.example. hostmaster.example. {serial} 3600 600 86400 5
        @ NS ns
        ns A 127.0.0.1
        shop A {address}
        """
    )


class _Ok(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _config(vantage: str, up: int, closed: int, dns_port: int) -> str:
    doc = {
        "vantage": vantage,
        "defaults": {"interval": "1s", "timeout": "500ms"},
        "control": [
            {
                "name": f"ctl-{vantage}",
                "probe": {"kind": "http", "url": f"http://127.0.0.1:{up}/ok"},
            }
        ],
        "services": [
            {
                "name": "shop",
                "regions": [
                    {"name": "eu-west", "role": "primary", "priority": 1},
                    {"name": "us-east", "role": "standby", "priority": 2},
                ],
                "images": [{"name": "slim", "ref": "shop:slim"}],
                "targets": [
                    # Nothing listens there: the primary is down from every vantage.
                    {
                        "name": "shop-eu",
                        "region": "eu-west",
                        "probe": {"kind": "http", "url": f"http://127.0.0.1:{closed}/"},
                    },
                    {
                        "name": "shop-us",
                        "region": "us-east",
                        "probe": {"kind": "http", "url": f"http://127.0.0.1:{up}/shop"},
                    },
                    {
                        "name": "shop-dns",
                        "region": "eu-west",
                        "probe": {
                            "kind": "dns",
                            "server": f"127.0.0.1:{dns_port}",
                            "name": "shop.example.",
                            "regions": {"eu-west": [f"{EU}/32"], "us-east": [f"{US}/32"]},
                        },
                    },
                ],
            }
        ],
    }
    return yaml.safe_dump(doc)


@contextlib.contextmanager
def _exporter(workdir: Path, cfg: Path) -> Iterator[str]:
    log = workdir / f"{cfg.stem}.log"
    argv = [sys.executable, "-m", "exporter", "run", "--config", str(cfg)]
    argv += ["--web.listen-address", "127.0.0.1:0", "--log.format", "json", "--log.level", "info"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = listening_port(proc, log)
        assert port is not None, log.read_text()[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        stack._stop(proc)


def _wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout}s")


def _alert_states(prom: str) -> list[str]:
    data = stack.get_json(f"{prom}/api/v1/alerts")
    return [a["state"] for a in data["data"]["alerts"] if a["labels"]["alertname"] == ALERT]


def _points_to(prom: str, region: str) -> dict[str, str]:
    result = stack.query(
        prom, f'failover_dns_answer_points_to{{service="shop",answer_region="{region}"}}'
    )
    return {r["metric"]["vantage"]: r["value"][1] for r in result}


# The alert's `for: 2m` and `keep_firing_for: 4m` alone take 6 minutes of wall time.
@pytest.mark.timeout(720)
def test_dns_still_pointing_at_the_down_primary_pages_until_the_zone_flips(
    tmp_path: Path,
) -> None:
    ok = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    ok.daemon_threads = True
    threading.Thread(target=ok.serve_forever, daemon=True).start()
    up, closed = ok.server_address[1], stack.free_port()
    knot_dir = tmp_path / "knot"
    knot_dir.mkdir()
    knot = Knot(knot_dir, {"example.": _zone(EU, 1)}, "shop.example.", EU)
    try:
        with contextlib.ExitStack() as es:
            targets = []
            for v in VANTAGES:
                cfg = tmp_path / f"{v}.yml"
                cfg.write_text(_config(v, up, closed, knot.port))
                targets.append(es.enter_context(_exporter(tmp_path, cfg)))
            prom = es.enter_context(stack.prometheus(tmp_path / "prom", targets))

            firing = _wait_for(
                f"{ALERT} firing", lambda: "firing" in _alert_states(prom) or None, 300
            )
            assert firing
            (alert,) = [
                a
                for a in stack.get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == ALERT
            ]
            assert alert["labels"]["service"] == "shop"
            assert alert["labels"]["answer_region"] == "eu-west"
            assert alert["labels"]["severity"] == "critical"
            # What fired it: every vantage sees the answer in eu-west, none in us-east, and the
            # quorum calls eu-west down and us-east up.
            assert _points_to(prom, "eu-west") == {v: "1" for v in VANTAGES}
            assert _points_to(prom, "us-east") == {v: "0" for v in VANTAGES}
            verdict = stack.query(
                prom, 'service_target_region:failover_region_down:bool{service="shop"}'
            )
            assert {r["metric"]["target_region"]: r["value"][1] for r in verdict} == {
                "eu-west": "1",
                "us-east": "0",
            }

            knot.set_zone("example.", _zone(US, 2))
            knot.wait_for(US)
            _wait_for(
                "the answer region follows the flip to us-east",
                lambda: (
                    _points_to(prom, "us-east") == {v: "1" for v in VANTAGES}
                    and _points_to(prom, "eu-west") == {v: "0" for v in VANTAGES}
                ),
                60,
            )
            _wait_for(
                "the quorum answer region flips to us-east",
                lambda: (
                    {
                        r["metric"]["answer_region"]: r["value"][1]
                        for r in stack.query(
                            prom,
                            'service_target_answer_region:failover_dns_points_to:bool{service="shop"}',
                        )
                    }
                    == {"eu-west": "0", "us-east": "1"}
                ),
                60,
            )
            # keep_firing_for (4m) holds the page after the answer moved; bounded by it plus
            # the rules' evaluation intervals.
            _wait_for(f"{ALERT} resolved", lambda: not _alert_states(prom), 360)
            # The primary is still down: only DNS moving resolved it.
            still_down = stack.query(
                prom,
                'service_target_region:failover_region_down:bool{service="shop",target_region="eu-west"}',
            )
            assert [r["value"][1] for r in still_down] == ["1"]
    finally:
        knot.stop()
        ok.shutdown()
        ok.server_close()
