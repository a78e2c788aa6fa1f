"""Two tiers on real Prometheus servers, on loopback.

Three vantages (v1 as two shards), each scraped by its own regional Prometheus that
remote-writes to a global Prometheus with an Alertmanager, in the two deployments of
docs/deploy.md: regional Prometheus servers running regional.rules.yml, the global one running
global.rules.yml and the alerts; or agents, the global Prometheus running both tiers. Two
services run side by side so that both scenarios share one stack and its wall time:
- `shop` (labels team=payments): its primary region `eu` fails from every vantage; the page
  arrives once, names the standby `us`, and routes to the team receiver;
- `cart`: only vantage v3 loses its primary (a one-vantage partition); nothing pages;
and shard 1 of v1 is killed at the start: FailoverShardMissing fires and v1 keeps voting.

Every wait is for an event (an alert, a notification) with a bounded deadline; the "no page"
checks read what the global Prometheus recorded over the whole run.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import config
from tests import stack
from tests.prometheus import bundle
from tests.tools import listening_port, need

VANTAGES = ("v1", "v2", "v3")
SERVICES = ("shop", "cart")
REGIONS = ("eu", "us")
ENDPOINTS = tuple(range(1, 7))


class World(http.server.ThreadingHTTPServer):
    """Regions on loopback: /SERVICE/REGION/VANTAGE/N answers 200 unless that view is down.
    Doubles as the Alertmanager webhook receiver (POST /hook/RECEIVER)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.down: set[tuple[str, str, str]] = set()  # (service, region, vantage or "*")
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: World

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        failing = False
        if len(parts) == 4:
            service, region, vantage, _ = parts
            with self.server.lock:
                down = self.server.down
                failing = (service, region, "*") in down or (service, region, vantage) in down
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.notifications.append((self.path.rsplit("/", 1)[-1], json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def exporter_config(vantage: str, port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    services = []
    for service in SERVICES:
        services.append(
            {
                "name": service,
                **({"labels": {"team": "payments", "tier": "gold"}} if service == "shop" else {}),
                "regions": [
                    {"name": "eu", "role": "primary", "priority": 1},
                    {"name": "us", "role": "standby", "priority": 2},
                ],
                "images": [{"name": "slim", "ref": f"{service}:slim"}],
                "templates": [
                    {
                        "name": "{service}-{region}-{n}",
                        "dimensions": {"n": list(ENDPOINTS)},
                        "probe": {
                            "kind": "http",
                            "url": base + "/{service}/{region}/{vantage}/{n}",
                        },
                    }
                ],
            }
        )
    doc = {
        "vantage": vantage,
        "defaults": {"interval": "1s", "timeout": "500ms"},
        "control": [{"name": f"ctl-{vantage}", "probe": {"kind": "http", "url": base + "/ok"}}],
        "services": services,
    }
    return yaml.safe_dump(doc)


@contextlib.contextmanager
def exporter(workdir: Path, cfg: Path, shard: str | None = None) -> Iterator[tuple[str, Any]]:
    log = workdir / f"{cfg.stem}-{shard or 'all'}.log".replace("/", "of")
    argv = [sys.executable, "-m", "exporter", "run", "--config", str(cfg)]
    argv += ["--web.listen-address", "127.0.0.1:0", "--log.format", "json", "--log.level", "info"]
    argv += ["--shard", shard] if shard else []
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = listening_port(proc, log)
        assert port is not None, log.read_text()[-2000:]
        yield f"127.0.0.1:{port}", proc
    finally:
        stack._stop(proc)


@contextlib.contextmanager
def regional(
    workdir: Path, mode: str, vantage: str, targets: list[str], global_url: str
) -> Iterator[str]:
    """The regional Prometheus of one vantage, remote-writing to the global one.

    mode "servers": a Prometheus server running the regional tier, forwarding its records and the
    raw series the global tier reads, with a `prometheus` external label that must not reach the
    global side (it would split every `without (vantage)` aggregation) and a harmless `vantage`
    one. mode "agents": an agent (no rules) forwarding everything."""
    workdir.mkdir(parents=True, exist_ok=True)
    remote_write: dict[str, Any] = {
        "url": f"{global_url}/api/v1/write",
        "queue_config": {"batch_send_deadline": "500ms", "min_backoff": "100ms"},
    }
    doc: dict[str, Any] = {
        "global": {
            "scrape_interval": "1s",
            "evaluation_interval": "1s",
            "external_labels": {"vantage": vantage, "prometheus": f"regional-{vantage}"},
        },
        "scrape_configs": [
            {
                "job_name": "failover-exporter",
                "honor_labels": True,
                "static_configs": [{"targets": targets, "labels": {"vantage": vantage}}],
            }
        ],
        "remote_write": [remote_write],
    }
    remote_write["write_relabel_configs"] = [{"action": "labeldrop", "regex": "prometheus"}]
    argv = [need("prometheus"), f"--config.file={workdir / 'regional.yml'}"]
    if mode == "servers":
        doc["rule_files"] = stack.REGIONAL_RULE_FILES
        keep = "|".join(bundle.regional_server_forwards())
        remote_write["write_relabel_configs"].insert(
            0, {"source_labels": ["__name__"], "regex": keep, "action": "keep"}
        )
        argv += [f"--storage.tsdb.path={workdir / 'data'}"]
    else:
        argv += ["--enable-feature=agent", f"--storage.agent.path={workdir / 'wal'}"]
    (workdir / "regional.yml").write_text(yaml.safe_dump(doc))
    port = stack.free_port()
    argv += [f"--web.listen-address=127.0.0.1:{port}"]
    with stack._serving(argv, workdir / "regional.log", f"http://127.0.0.1:{port}") as url:
        yield url


def alerts(prom: str, name: str) -> list[dict[str, Any]]:
    data = stack.get_json(f"{prom}/api/v1/alerts")
    return [a for a in data["data"]["alerts"] if a["labels"]["alertname"] == name]


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s")


def pages(world: World, receiver: str | None = None) -> list[dict[str, Any]]:
    with world.lock:
        return [
            a
            for r, body in world.notifications
            if receiver in (None, r)
            for a in body["alerts"]
            if a["labels"]["alertname"] == "FailoverPrimaryRegionDown" and a["status"] == "firing"
        ]


@pytest.mark.parametrize("mode", ["servers", "agents"])
def test_two_tiers_page_once_ignore_a_partition_and_alert_a_missing_shard(
    tmp_path: Path, mode: str
) -> None:
    world = World()
    threading.Thread(target=world.serve_forever, daemon=True).start()
    port = world.server_address[1]
    configs = {}
    for v in VANTAGES:
        configs[v] = tmp_path / f"{v}.yml"
        configs[v].write_text(exporter_config(v, port))
    # v1's shards must each own targets of every region of every service, or killing one
    # would take a whole region out of v1's vote instead of shrinking it.
    v1 = config.load(configs["v1"])
    for i in (0, 1):
        owned = {
            (t.service, t.region)
            for t in v1.targets
            if config.Shard(i, 2).owns("v1", t.service, t.name)
        }
        assert owned >= {(s, r) for s in SERVICES for r in REGIONS}, (i, owned)

    hook = f"http://127.0.0.1:{port}/hook"
    am_config = {
        "route": {
            "receiver": "default",
            "group_by": ["service", "target_region"],
            "group_wait": "1s",
            "group_interval": "1m",
            "repeat_interval": "1h",
            "routes": [{"matchers": ['team="payments"'], "receiver": "payments"}],
        },
        "receivers": [
            {"name": n, "webhook_configs": [{"url": f"{hook}/{n}"}]}
            for n in ("default", "payments")
        ],
    }
    with contextlib.ExitStack() as es:
        am = es.enter_context(stack.alertmanager(tmp_path / "am", am_config))
        glob = es.enter_context(
            stack.prometheus(
                tmp_path / "global",
                [],
                # Regional servers ran the regional tier; with agents it runs here.
                rule_files=stack.GLOBAL_RULE_FILES if mode == "servers" else stack.RULE_FILES,
                alertmanager_url=am,
                extra_flags=("--web.enable-remote-write-receiver",),
            )
        )
        shard0, _ = es.enter_context(exporter(tmp_path, configs["v1"], "0/2"))
        shard1, shard1_proc = es.enter_context(exporter(tmp_path, configs["v1"], "1/2"))
        v2, _ = es.enter_context(exporter(tmp_path, configs["v2"]))
        v3, _ = es.enter_context(exporter(tmp_path, configs["v3"]))
        for v, targets in (("v1", [shard0, shard1]), ("v2", [v2]), ("v3", [v3])):
            es.enter_context(regional(tmp_path / f"regional-{v}", mode, v, targets, glob))

        def shards_seen() -> bool:
            result = stack.query(glob, "vantage:failover_exporter_shards:count")
            return {r["metric"]["vantage"]: r["value"][1] for r in result} == {
                "v1": "2",
                "v2": "1",
                "v3": "1",
            }

        wait_for("both shards of v1 through remote write", shards_seen, 40)
        # The outage, the partition and the shard kill start together.
        with world.lock:
            world.down |= {("shop", "eu", "*"), ("cart", "eu", "v3")}
        stack._stop(shard1_proc)

        page = wait_for("the shop page at the team receiver", lambda: pages(world, "payments"), 100)
        assert page[0]["labels"]["service"] == "shop"
        assert page[0]["labels"]["target_region"] == "eu"
        assert page[0]["labels"]["team"] == "payments"
        assert page[0]["annotations"]["failover_to"] == "us"
        missing = wait_for(
            "FailoverShardMissing",
            lambda: [a for a in alerts(glob, "FailoverShardMissing") if a["state"] == "firing"],
            # From the kill, not from the page (which now comes sooner): the shard's series go
            # stale (5 min lookback is cut by staleness markers only for a clean stop), then an
            # evaluation and `for:`; measured from the page this was ~60-90 s.
            150,
        )
        assert [a["labels"]["vantage"] for a in missing] == ["v1"]

        # Once, and only for shop/eu: the partitioned cart never paged, nor reached a verdict of
        # down, and v1 kept voting after losing a shard.
        assert len(pages(world)) == 1, pages(world)
        worst = stack.query(
            glob,
            'max_over_time(service_target_region:failover_region_down:bool{service="cart"}[10m])',
        )
        assert {r["metric"]["target_region"]: r["value"][1] for r in worst} == {
            "eu": "0",
            "us": "0",
        }
        votes = stack.query(
            glob, 'vantage_service_target_region:failover_region_healthy:bool{vantage="v1"}'
        )
        # Once each (no copy from both tiers), without the regional `prometheus` label.
        assert len(votes) == 4, votes
        assert all("prometheus" not in r["metric"] for r in votes), votes
        shop_us = stack.query(
            glob,
            'service_target_region:failover_region_down:bool{service="shop",target_region="us"}',
        )
        assert [r["value"][1] for r in shop_us] == ["0"]
    world.shutdown()
