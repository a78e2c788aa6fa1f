"""deploy/compose.yaml: parses, references only files that exist, and its pieces agree with each
other (exporter configs, scrape targets, rule and dashboard mounts, Alertmanager and Prometheus
configs checked by promtool and amtool with the container paths mapped back to the repository)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from exporter import config
from exporter.cli import parser
from exporter.commands.demo import IMAGES, REGIONS
from tests.tools import need

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of the service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through the bind mounts."""
    for target, source in sorted(bind_mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted into the container")


def test_every_bind_mount_and_build_file_exists(compose: dict[str, Any]) -> None:
    count = 0
    for name, service in services(compose).items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert ROOT in source.parents, f"{name}: {source} is outside the repository"
            count += 1
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()
            assert context == ROOT
    assert count >= 10
    # Named volumes are declared.
    for service in services(compose).values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"]


def test_exporter_image_commands_parse(compose: dict[str, Any]) -> None:
    """Every container of the exporter image runs a command the CLI accepts."""
    served = set()
    for name, service in services(compose).items():
        if "build" not in service:
            continue
        args = parser().parse_args(service["command"])
        if args.command == "demo":
            assert args.serve is not None, name
            assert name in (f"region-{args.serve}", args.serve)
            served.add(args.serve)
        else:
            assert args.command == "run"
            host_path(service, args.config)
    assert served == {*(r for r, _, _ in REGIONS), "control"}


def exporter_configs(compose: dict[str, Any]) -> dict[str, config.Config]:
    out = {}
    for name, service in services(compose).items():
        if "build" in service and service["command"][0] == "run":
            args = parser().parse_args(service["command"])
            out[name] = config.load(host_path(service, args.config))
    return out


def test_three_vantages_probe_every_region_and_image(compose: dict[str, Any]) -> None:
    configs = exporter_configs(compose)
    assert {c.vantage for c in configs.values()} == {r for r, _, _ in REGIONS}
    regions = {name: int(port) for name, port in _demo_ports(compose).items()}
    for name, cfg in configs.items():
        assert name == f"exporter-{cfg.vantage}"
        probed = set()
        for target in cfg.targets:
            url = urlsplit(target.settings.url)  # type: ignore[attr-defined]
            assert url.hostname in services(compose), f"{name}: {url.hostname} is no service"
            assert url.port == regions[url.hostname]
            if target.role != "control":
                assert url.hostname == f"region-{target.region}"
                assert url.path.startswith(f"/{cfg.vantage}/")
                probed.add((target.region, target.image))
        assert probed == {(r, i) for r, _, _ in REGIONS for i in IMAGES}


def _demo_ports(compose: dict[str, Any]) -> dict[str, str]:
    ports = {}
    for name, service in services(compose).items():
        if "build" in service and service["command"][0] == "demo":
            args = parser().parse_args(service["command"])
            ports[name] = args.listen.rpartition(":")[2]
    return ports


def test_prometheus_scrapes_the_exporters_with_the_bundle_conventions(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = services(compose)["prometheus"]
    flags = dict(c.removeprefix("--").split("=", 1) for c in prometheus["command"] if "=" in c)
    cfg_path = host_path(prometheus, flags["config.file"])
    cfg = yaml.safe_load(cfg_path.read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "failover-exporter"]
    assert job["honor_labels"] is True
    targets = {
        t: group["labels"]["vantage"] for group in job["static_configs"] for t in group["targets"]
    }
    expected = {}
    for name, exporter_cfg in exporter_configs(compose).items():
        expected[f"{name}:10077"] = exporter_cfg.vantage
    assert targets == expected
    # Rule files: each glob resolves, through the mounts, to exactly the bundle's rule files.
    rule_files = []
    for pattern in cfg["rule_files"]:
        directory, _, glob = pattern.rpartition("/")
        rule_files += sorted(host_path(prometheus, directory).glob(glob))
    assert sorted(rule_files) == sorted(
        [*ROOT.glob("prometheus/rules/*.yml"), *ROOT.glob("prometheus/alerts/*.yml")]
    )
    (am,) = cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am.partition(":")[0] in services(compose)
    # promtool on the same config with the container paths mapped back to the repository.
    cfg["rule_files"] = [str(p) for p in rule_files]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(cfg))
    promtool = need("promtool")
    proc = subprocess.run(
        [promtool, "check", "config", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alertmanager_uses_the_bundled_config(compose: dict[str, Any], tmp_path: Path) -> None:
    am = services(compose)["alertmanager"]
    flags = dict(c.removeprefix("--").split("=", 1) for c in am["command"])
    path = host_path(am, flags["config.file"])
    assert path == ROOT / "prometheus" / "alertmanager" / "alertmanager.yml"
    cfg = yaml.safe_load(path.read_text())
    # Every file the config reads is mounted.
    for receiver in cfg["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            if "routing_key_file" in pd:
                assert host_path(am, pd["routing_key_file"]).is_file()
    amtool = need("amtool")
    proc = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_gets_the_bundled_provisioning_and_dashboards(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == ROOT / "grafana" / "provisioning"
    dashboards = 0
    for path in sorted((provisioning / "dashboards").glob("*.y*ml")):
        for provider in yaml.safe_load(path.read_text())["providers"]:
            directory = host_path(grafana, provider["options"]["path"])
            assert directory == ROOT / "grafana" / "dashboards"
            dashboards += len(list(directory.glob("*.json")))
    assert dashboards >= 1
    for path in sorted((provisioning / "datasources").glob("*.y*ml")):
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            url = urlsplit(ds["url"])
            assert url.hostname in services(compose)
            assert url.port == 9090
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()
