"""The dashboards as files: generated = committed, valid PromQL on known series, units, sources."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from exporter import metrics
from tests.prometheus import bundle
from tests.tools import need

from . import dashboards as d

DS_REF = {"type": "prometheus", "uid": "${datasource}"}
BUILTIN = {"up", "ALERTS", "scrape_duration_seconds"}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return d.committed()


def test_committed_json_equals_generated_json() -> None:
    rendered = d.generator().render()
    on_disk = {p.name: p.read_text() for p in d.DASHBOARDS.glob("*.json")}
    assert set(on_disk) == set(rendered), "run `make dashboards`"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"grafana/dashboards/{name} is stale: run `make dashboards`"


def test_uids_are_the_ones_the_alerts_link_to(docs: dict[str, dict[str, Any]]) -> None:
    uids = [doc["uid"] for doc in docs.values()]
    assert sorted(uids) == sorted(bundle.DASHBOARD_UIDS)
    assert {f"{doc['uid']}.json" for doc in docs.values()} == set(docs)


def test_alert_dashboard_urls_name_existing_dashboards_and_variables(
    docs: dict[str, dict[str, Any]],
) -> None:
    by_uid = {doc["uid"]: doc for doc in docs.values()}
    seen = set()
    for rule in bundle.alert_rules():
        url = urlsplit(rule["annotations"]["dashboard_url"])
        uid = url.path.removeprefix("/d/")
        assert uid in by_uid, (rule["alert"], uid)
        names = {v["name"] for v in by_uid[uid]["templating"]["list"]}
        for param in parse_qs(url.query):
            assert param.startswith("var-"), (rule["alert"], param)
            assert param[4:] in names, (rule["alert"], param)
        seen.add(uid)
    assert seen == set(by_uid), "every dashboard is the target of some alert"


def test_panel_ids_unique_and_tags_and_links_shared(docs: dict[str, dict[str, Any]]) -> None:
    for name, doc in docs.items():
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), name
        assert {"failover", "failover-exporter"} <= set(doc["tags"]), name
        linked = {link["url"].removeprefix("/d/") for link in doc["links"]}
        assert linked == set(bundle.DASHBOARD_UIDS) - {doc["uid"]}, name
        assert all(link["includeVars"] and link["keepTime"] for link in doc["links"]), name


def test_variables(docs: dict[str, dict[str, Any]]) -> None:
    for name, doc in docs.items():
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert {"datasource", "service", "target_region", "vantage"} <= set(variables), name
        ds = variables["datasource"]
        assert ds["type"] == "datasource", name
        assert ds["query"] == "prometheus", name
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"] == DS_REF, (name, v["name"])
                # `.*` also matches series without the label (image metadata has no vantage).
                assert v["allValue"] == ".*", (name, v["name"])
    target = next(doc for doc in docs.values() if doc["uid"] == "failover-target")
    assert {"image", "target"} <= {v["name"] for v in target["templating"]["list"]}


def _datasources(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every `datasource` value anywhere in the document, with where it is."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                found.append((path, v))
            found += _datasources(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _datasources(v, f"{path}[{i}]")
    return found


def test_no_hard_coded_datasource_outside_the_variable(docs: dict[str, dict[str, Any]]) -> None:
    for name, doc in docs.items():
        for p in d.panels(doc):
            assert p.get("datasource") == DS_REF, (name, p["title"])
            for t in p["targets"]:
                assert t.get("datasource") == DS_REF, (name, p["title"])
        for where, ref in _datasources(doc):
            assert ref == DS_REF, (name, where, ref)
        text = json.dumps({k: v for k, v in doc.items() if k != "templating"})
        provisioned = d.constants().PROVISIONED_DS_UID
        assert provisioned not in text, f"{name}: datasource uid outside the variable"


def test_every_target_has_a_unique_ref_id(docs: dict[str, dict[str, Any]]) -> None:
    for name, doc in docs.items():
        for p in d.panels(doc):
            refs = [t.get("refId") for t in p["targets"]]
            assert refs, (name, p["title"])
            assert all(refs), (name, p["title"])
            assert len(refs) == len(set(refs)), (name, p["title"])


def test_every_panel_has_a_unit_title_and_description(docs: dict[str, dict[str, Any]]) -> None:
    for name, doc in docs.items():
        for p in d.panels(doc):
            assert p["fieldConfig"]["defaults"].get("unit"), (name, p["title"])
            assert p["title"], name
            assert p.get("description"), (name, p["title"])
            for o in p["fieldConfig"].get("overrides", []):
                for prop in o["properties"]:
                    if prop["id"] == "unit":
                        assert prop["value"], (name, p["title"], o["matcher"])


def _threshold_values(p: dict[str, Any]) -> set[float]:
    steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return {s["value"] for s in steps if s["value"] is not None}


def test_thresholds_match_the_alerts_and_budgets(docs: dict[str, dict[str, Any]]) -> None:
    """The numbers the dashboards colour on are the ones the rule files decide on."""
    constants = {r["record"]: r["expr"] for r in bundle.recording_rules()}
    alerts = "\n".join(r["expr"] for r in bundle.alert_rules())
    gen = d.constants()
    assert (
        constants["global:failover_rpo_budget_seconds:constant"] == f"vector({gen.RPO_BUDGET_S:g})"
    )
    assert (
        constants["global:failover_rto_budget_seconds:constant"] == f"vector({gen.RTO_BUDGET_S:g})"
    )
    assert (
        constants["global:failover_latency_slo_threshold_seconds:constant"]
        == f"vector({gen.SLO_THRESHOLD_S:g})"
    )
    for needle in (
        f"ratio_rate5m < {gen.IMAGE_SUCCESS_MIN:g}",
        f"p99_rate5m > {gen.START_DELAY_P99_S:g}",
        f"p99_rate5m > {gen.LOOP_LAG_P99_S:g}",
        f"< {gen.CERT_WARN_S // 86400} * 86400",
        f"< {gen.CERT_CRIT_S // 86400} * 86400",
        f"< {gen.PROBES_STALE_RATIO:g}",
        f"> {gen.BURN_PAGE_FAST:g}",
        f"> {gen.BURN_PAGE_SLOW:g}",
        f"> {gen.BURN_TICKET:g}",
        "(0.5 * global:failover_rpo_budget_seconds:constant)",
    ):
        assert needle in alerts, needle
    quorum = constants["vantage_service_target_region:failover_region_healthy:bool"]
    assert f"< bool {gen.VOTE_HEALTHY:g}" in quorum

    by_title = {(doc["uid"], p["title"]): p for doc in docs.values() for p in d.panels(doc)}
    expected = {
        ("failover-images", "Success ratio per image"): {gen.IMAGE_SUCCESS_MIN},
        ("failover-images", "p95 latency per image"): {gen.SLO_THRESHOLD_S},
        ("failover-images", "Cold start p95 per image (1h)"): {gen.RTO_BUDGET_S},
        ("failover-target", "Replication lag"): {gen.RPO_BUDGET_S / 2, gen.RPO_BUDGET_S},
        ("failover-target", "TLS certificate expires in"): {gen.CERT_CRIT_S, gen.CERT_WARN_S},
        ("failover-exporter", "Event-loop lag p99"): {gen.LOOP_LAG_P99_S},
        ("failover-exporter", "Probe start delay p99"): {gen.START_DELAY_P99_S},
        ("failover-exporter", "Probes completed vs configured"): {gen.PROBES_STALE_RATIO},
        ("failover-overview", "Voting vantages"): {2},
        ("failover-overview", "Round trip, vantage → region (ICMP p50)"): {
            gen.RTT_WARN_S,
            gen.RTT_CRIT_S,
        },
        ("failover-overview", "ICMP packet loss, vantage → region"): {
            gen.ICMP_LOSS_WARN,
            gen.ICMP_LOSS_CRIT,
        },
    }
    for key, values in expected.items():
        assert _threshold_values(by_title[key]) == values, key


def _allowed_metrics() -> set[str]:
    exposed = {n for spec in metrics.CATALOGUE for n in metrics.exposed_names(spec)}
    recorded = {r["record"] for r in bundle.recording_rules()}
    return exposed | recorded | BUILTIN


def test_queries_use_only_catalogue_metrics_and_recording_rules(
    docs: dict[str, dict[str, Any]],
) -> None:
    allowed = _allowed_metrics()
    # Bench results are not scraped from the exporter (Pushgateway or textfile collector): no
    # job convention, and their own `region` label (the Docker endpoint that ran the bench).
    bench = {spec.name for spec in metrics.CATALOGUE if spec.name.startswith("failover_bench_")}
    exporter_series = {n for spec in metrics.CATALOGUE for n in metrics.exposed_names(spec)} - bench
    qs = d.queries(docs)
    assert len(qs) > 50
    for q in qs:
        scan = bundle.scan(q.promql)
        assert scan.selectors, q.where
        for s in scan.selectors:
            assert s.metric in allowed, (q.where, s.metric)
            # Same convention as the rules: raw exporter series are selected by job.
            if s.metric in exporter_series or s.metric in {"up", "scrape_duration_seconds"}:
                assert 'job = "failover-exporter"' in s.matchers, (q.where, s)
        labels = scan.label_names - {"le", "reason", "phase", "alertname", "alertstate", "job"}
        contract = set(metrics.TARGET_LABELS) | {"priority", "severity", "instance"}
        if any(sel.metric in bench for sel in scan.selectors):
            contract.add("region")
        assert labels <= contract, (q.where, labels - contract)


def test_every_query_is_valid_promql(docs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """promtool parses each query, wrapped as a recording rule with the macros filled in."""
    qs = d.queries(docs)
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{n}:check", "expr": q.promql}
                    for n, q in enumerate(qs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run(
        [need("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        bad = [int(n) for n in re.findall(r"query_(\d+)", result.stdout + result.stderr)]
        pytest.fail(f"{[qs[n].where for n in bad]}\n{result.stdout}{result.stderr}")
    assert f"SUCCESS: {len(qs)} rules found" in result.stdout


def test_provisioning_files() -> None:
    gen = d.constants()
    (ds_file,) = sorted((d.PROVISIONING / "datasources").glob("*.yaml"))
    ds_doc = yaml.safe_load(ds_file.read_text())
    assert ds_doc["apiVersion"] == 1
    (ds,) = ds_doc["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["uid"] == gen.PROVISIONED_DS_UID
    (db_file,) = sorted((d.PROVISIONING / "dashboards").glob("*.yaml"))
    db_doc = yaml.safe_load(db_file.read_text())
    assert db_doc["apiVersion"] == 1
    (provider,) = db_doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


def test_network_matrices_are_vantage_rows_by_region_columns(
    docs: dict[str, dict[str, Any]],
) -> None:
    """The RTT and loss panels pivot the failover.network rules: one row a vantage."""
    overview = next(doc for doc in docs.values() if doc["uid"] == "failover-overview")
    by_title = {p["title"]: p for p in d.panels(overview)}
    network = {r["record"] for r in bundle.recording_rules()} & {
        "vantage_target_region:failover_probe_duration_seconds:icmp_p50_5m",
        "vantage_target_region:failover_icmp_packets_lost:ratio_rate5m",
    }
    assert len(network) == 2, "failover.network rules renamed"
    for title, unit in (
        ("Round trip, vantage → region (ICMP p50)", "s"),
        ("ICMP packet loss, vantage → region", "percentunit"),
    ):
        p = by_title[title]
        assert p["type"] == "table", title
        assert p["fieldConfig"]["defaults"]["unit"] == unit, title
        (target,) = p["targets"]
        assert target["instant"], title
        assert target["format"] == "table", title
        assert bundle.scan(target["expr"]).selectors[0].metric in network, title
        (pivot,) = [t for t in p["transformations"] if t["id"] == "groupingToMatrix"]
        assert pivot["options"]["rowField"] == "vantage", title
        assert pivot["options"]["columnField"] == "target_region", title
        assert pivot["options"]["valueField"] == "Value", title
