"""Generate the Grafana dashboards of the bundle from code.

    python grafana/generate.py            # write grafana/dashboards/*.json
    python grafana/generate.py --check    # exit 1 if the committed JSON differs

Built with grafana-foundation-sdk (pinned in pyproject's `test` extra: unpinned, pip resolves to
its Grafana 10.1 build). The queries read the recording rules of prometheus/rules where one
exists, so a dashboard shows exactly what the alerts judge; thresholds are the alert thresholds
and budgets of prometheus/ (tests/grafana checks every query against a real Prometheus).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import (
    heatmap,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm_models
from grafana_foundation_sdk.models import prometheus as pm

OUT = Path(__file__).resolve().parent / "dashboards"

TAGS = ["failover", "failover-exporter"]
JOB = 'job="failover-exporter"'
# Every panel and target reads the datasource variable, so provisioning (fixed uid) and UI
# import (any Prometheus) both work; see ecosystem research §3.4.
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
PROVISIONED_DS_UID = "failover-prometheus"

UIDS = {
    "overview": "failover-overview",
    "images": "failover-images",
    "target": "failover-target",
    "exporter": "failover-exporter",
}

# Thresholds, as in prometheus/rules (budgets) and prometheus/alerts.
VOTE_HEALTHY = 0.5  # a vantage votes failing when >= 50 % of its targets failed twice in a row
IMAGE_SUCCESS_MIN = 0.8  # FailoverImageDown
SLO_THRESHOLD_S = 0.5  # global:failover_latency_slo_threshold_seconds:constant (le="0.5")
RPO_BUDGET_S = 30.0  # global:failover_rpo_budget_seconds:constant
RTO_BUDGET_S = 30.0  # global:failover_rto_budget_seconds:constant
CERT_WARN_S = 14 * 86400  # FailoverCertificateExpiry, warning
CERT_CRIT_S = 3 * 86400  # FailoverCertificateExpiry, critical
START_DELAY_P99_S = 0.25  # FailoverExporterOverloaded
LOOP_LAG_P99_S = 0.1  # FailoverExporterOverloaded
PROBES_STALE_RATIO = 0.5  # FailoverProbesStale
BURN_TICKET, BURN_PAGE_SLOW, BURN_PAGE_FAST = 3.0, 6.0, 14.4  # FailoverLatencySLOBurn
# Colours of the vantage -> region network matrix only: no alert judges round trip or loss, which
# are context for a failover decision (a standby far from the primary replicates late) rather than
# a reason for one. Every synchronous commit waits at least one round trip to its standby.
RTT_WARN_S, RTT_CRIT_S = 0.05, 0.15
ICMP_LOSS_WARN, ICMP_LOSS_CRIT = 0.01, 0.05

# Label filters from the dashboard variables. `All` is `.*`, which also matches a missing label
# (image metadata has no vantage; control targets have no service).
F_SERVICE = 'service=~"$service"'
F_REGION = 'target_region=~"$target_region"'
F_VANTAGE = 'vantage=~"$vantage"'
F_IMAGE = 'image=~"$image"'
F_TARGET = 'target=~"$target"'
# Probe series that feed image figures, as the failover.images rules select them.
# Kinds whose latencies rank images (exporter.probes: ranks_images), as the rules select them.
RANKING_KINDS = "grpc|http|postgres|tcp"
IMAGE_PROBES = f'role!="control", probe=~"{RANKING_KINDS}", image!=""'


def sel(*filters: str) -> str:
    return "{" + ", ".join(filters) + "}"


RAW = (JOB, F_SERVICE, F_REGION, F_VANTAGE)
RULE = (F_SERVICE, F_REGION)
TARGET_SEL = sel(JOB, F_SERVICE, F_REGION, F_VANTAGE, F_IMAGE, F_TARGET)


# --- small builders ---------------------------------------------------------------------------


def query(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str | None = None
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    q = q.legend_format(legend or "__auto")
    q = q.instant() if instant else q.range()
    if fmt is not None:
        q = q.format(pm.PromQueryFormat(fmt))
    return q


def steps(*pairs: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
    )


def mapping(**texts: tuple[str, str]) -> list[dm.ValueMap]:
    """Value mappings: value -> (text, colour)."""
    return [
        dm.ValueMap(
            options={
                k.removeprefix("v"): dm.ValueMappingResult(text=t, color=c, index=i)
                for i, (k, (t, c)) in enumerate(texts.items())
            }
        )
    ]


UP_DOWN = mapping(v0=("UP", "green"), v1=("DOWN", "red"))
OK_FAIL = mapping(v0=("FAIL", "red"), v1=("OK", "green"))
GREEN_ONLY = steps((None, "green"))


def dash_link(title: str, uid: str) -> db.DashboardLink:
    return (
        db.DashboardLink(title)
        .type(dm.DashboardLinkType.LINK)
        .url(f"/d/{uid}")
        .include_vars(True)
        .keep_time(True)
        .icon("dashboard")
        .tooltip(title)
    )


def override(name: str, **props: Any) -> tuple[str, list[dm.DynamicConfigValue]]:
    return name, [
        dm.DynamicConfigValue(id_val=k.replace("_", "."), value=v) for k, v in props.items()
    ]


def ts(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    thresholds: db.ThresholdsConfig = GREEN_ONLY,
    show_thresholds: bool = False,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    bars: bool = False,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .unit(unit)
        .thresholds(thresholds)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            cb.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if show_thresholds:
        p = p.thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    if stacked:
        p = p.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(60)
    if bars:
        p = p.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    return p


def single(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    thresholds: db.ThresholdsConfig = GREEN_ONLY,
    mappings: list[dm.ValueMap] | None = None,
    width: int = 8,
    height: int = 5,
    no_value: str | None = None,
) -> stat.Panel:
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .unit(unit)
        .thresholds(thresholds)
        .span(width)
        .height(height)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        p = p.mappings(mappings)
    if no_value:
        p = p.no_value(no_value)
    return p


def timeline(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    thresholds: db.ThresholdsConfig,
    mappings: list[dm.ValueMap] | None = None,
    width: int = 24,
    height: int = 7,
) -> statetimeline.Panel:
    p = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .unit(unit)
        .thresholds(thresholds)
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .span(width)
        .height(height)
        .show_value(common.VisibilityMode.NEVER)
    )
    if mappings:
        p = p.mappings(mappings)
    return p


def instant_table(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    rename: dict[str, str],
    hide: Iterable[str] = ("Time", "job", "__name__"),
    sort_by: str | None = None,
    overrides: Sequence[tuple[str, list[dm.DynamicConfigValue]]] = (),
    thresholds: db.ThresholdsConfig = GREEN_ONLY,
    width: int = 24,
    height: int = 8,
    extra_transforms: Sequence[dm.DataTransformerConfig] = (),
) -> table.Panel:
    """Instant queries in table format, merged on their labels into one row per series."""
    p = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .unit(unit)
        .thresholds(thresholds)
        .span(width)
        .height(height)
        .transformations(
            [
                dm.DataTransformerConfig(id_val="merge", options={}),
                *extra_transforms,
                dm.DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {h: True for h in hide},
                        "renameByName": rename,
                        "indexByName": {k: i for i, k in enumerate(rename)},
                    },
                ),
            ]
        )
    )
    if sort_by is not None:
        p = p.sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(False)])
    for name, props in overrides:
        p = p.override_by_name(name, props)
    return p


def colored(
    unit: str, thresholds: db.ThresholdsConfig, decimals: int | None = None
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "unit": unit,
        "thresholds": thresholds.build().to_json(),
        "custom_cellOptions": {"type": "color-text"},
    }
    if decimals is not None:
        props["decimals"] = decimals
    return props


def row(title: str) -> db.Row:
    return db.Row(title)


# --- variables --------------------------------------------------------------------------------


def label_var(name: str, label: str, source: str, description: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DS)
        .query(f"label_values({source}, {name})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def variables(extra: Sequence[str] = ()) -> list[cogbuilder.Builder[dm.VariableModel]]:
    out: list[cogbuilder.Builder[dm.VariableModel]] = [
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text="Prometheus", value=PROVISIONED_DS_UID)),
        label_var(
            "service",
            "Service",
            f"failover_region_info{{{JOB}}}",
            "Logical service whose regions and images are compared.",
        ),
        label_var(
            "target_region",
            "Region",
            f"failover_region_info{{{JOB}, {F_SERVICE}}}",
            "Region of the probed endpoints (label target_region).",
        ),
        label_var(
            "vantage",
            "Vantage",
            f"failover_probe_success{{{JOB}}}",
            "Where the probing exporter runs. Rule-based panels aggregate vantages away.",
        ),
    ]
    if "image" in extra:
        out.append(
            label_var(
                "image",
                "Image",
                f"failover_probe_success{{{JOB}, {F_SERVICE}, {F_REGION}}}",
                "Image variant (empty for targets without an image, such as a database).",
            )
        )
    if "target" in extra:
        out.append(
            label_var(
                "target",
                "Target",
                f"failover_probe_success{{{JOB}, {F_SERVICE}, {F_REGION}, {F_IMAGE}}}",
                "Endpoint name from the exporter config.",
            )
        )
    return out


def dashboard(
    key: str,
    title: str,
    description: str,
    panels: Sequence[db.Row | cogbuilder.Builder[dm.Panel]],
    extra_vars: Sequence[str] = (),
) -> dm.Dashboard:
    d = (
        db.Dashboard(title)
        .uid(UIDS[key])
        .description(description)
        .tags(TAGS)
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .links(
            [
                dash_link(t, UIDS[k])
                for k, t in (
                    ("overview", "Overview"),
                    ("images", "Image leaderboard"),
                    ("target", "Target drill-down"),
                    ("exporter", "Exporter health"),
                )
                if k != key
            ]
        )
        .variables(variables(extra_vars))
        .annotation(
            db.AnnotationQuery()
            .name("Failover alerts")
            .datasource(DS)
            .enable(True)
            .icon_color("red")
            .expr('ALERTS{alertname=~"Failover.*", alertstate="firing", severity="critical"}')
        )
    )
    for p in panels:
        d = d.with_row(p) if isinstance(p, db.Row) else d.with_panel(p)
    return d.build()


def data_link(title: str, uid: str, params: str) -> dict[str, Any]:
    return {
        "title": title,
        "url": f"/d/{uid}?{params}&${{__url_time_range}}&${{datasource:queryparam}}",
    }


# --- Overview ---------------------------------------------------------------------------------


def network_matrix(
    title: str,
    description: str,
    metric: str,
    unit: str,
    thresholds: db.ThresholdsConfig,
    decimals: int | None = None,
) -> table.Panel:
    """A vantage (rows) x target_region (columns) table of a failover.network rule."""
    p = instant_table(
        title,
        description,
        [query(f"{metric}{sel(F_REGION, F_VANTAGE)}", instant=True, fmt="table")],
        unit,
        rename={"vantage\\target_region": "Vantage \\ region"},
        hide=(),
        thresholds=thresholds,
        width=12,
        extra_transforms=[
            dm.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={
                    "columnField": "target_region",
                    "rowField": "vantage",
                    "valueField": "Value",
                    "emptyValue": "null",
                },
            )
        ],
    ).cell_options(common.TableColoredBackgroundCellOptions())
    return p.decimals(decimals) if decimals is not None else p


def overview() -> dm.Dashboard:
    to_images = data_link(
        "Image leaderboard for ${__field.labels.target_region}",
        UIDS["images"],
        "var-service=${__field.labels.service}&var-target_region=${__field.labels.target_region}",
    )
    verdict = single(
        "Quorum verdict",
        "service_target_region:failover_region_down:bool per region: DOWN when at least 50 % of "
        "at least 2 non-isolated vantages see the region failing (FailoverPrimaryRegionDown "
        "fires on it for a primary). No value = no quorum (FailoverQuorumLost).",
        [
            query(
                f"service_target_region:failover_region_down:bool{sel(*RULE)}",
                "{{service}} {{target_region}}",
            )
        ],
        "none",
        steps((None, "green"), (1, "red")),
        UP_DOWN,
        no_value="no quorum",
    ).data_links([db.DashboardLink(to_images["title"]).url(to_images["url"])])
    ready = single(
        "Standby readiness",
        "service_target_region:failover_standby_ready:bool: a standby is READY when it is up by "
        f"quorum, its replication lag is within the RPO budget ({RPO_BUDGET_S:.0f}s) and its "
        f"cold start p95 over 1h within the RTO budget ({RTO_BUDGET_S:.0f}s), wherever those "
        "are measured. The first READY standby by priority is where FailoverPrimaryRegionDown "
        "sends you.",
        [
            query(
                f"service_target_region:failover_standby_ready:bool{sel(*RULE)}",
                "{{target_region}} (priority {{priority}})",
            )
        ],
        "none",
        steps((None, "red"), (1, "green")),
        mapping(v0=("NOT READY", "red"), v1=("READY", "green")),
        no_value="no quorum",
    )
    healthy = single(
        "Vantages seeing the region healthy",
        "service_target_region:failover_region_healthy_vantages:ratio: share of voting vantages "
        "that see the region healthy. At 50 % or less the region is down by quorum.",
        [
            query(
                f"service_target_region:failover_region_healthy_vantages:ratio{sel(*RULE)}",
                "{{service}} {{target_region}}",
            )
        ],
        "percentunit",
        steps((None, "red"), (VOTE_HEALTHY + 0.001, "green")),
    )
    voting = single(
        "Voting vantages",
        "service_target_region:failover_voting_vantages:count: non-isolated vantages that vote on "
        "the region. Fewer than 2 = no verdict (FailoverQuorumLost).",
        [
            query(
                f"service_target_region:failover_voting_vantages:count{sel(*RULE)}",
                "{{service}} {{target_region}}",
            )
        ],
        "short",
        steps((None, "red"), (2, "green")),
    )
    maintenance = single(
        "Maintenance",
        "service_target_region:failover_region_maintenance:max: a region in maintenance (config "
        "`maintenance: true` or POST /-/maintenance on an exporter) is out of the failover "
        "choice, and its page and standby tickets are suppressed by the rules.",
        [
            query(
                f"service_target_region:failover_region_maintenance:max{sel(*RULE)}",
                "{{service}} {{target_region}}",
            )
        ],
        "none",
        steps((None, "green"), (1, "blue")),
        mapping(v0=("in service", "green"), v1=("MAINTENANCE", "blue")),
    )
    matrix = (
        instant_table(
            "Health matrix: $service",
            "vantage_service_target_region:failover_probe_success:avg1m: share of the last "
            "minute's "
            "probes that succeeded, per region (rows) and vantage (columns). A vantage votes the "
            f"region failing when {VOTE_HEALTHY:.0%} or more of its targets there failed twice in "
            "a row (failover_probe_consecutive_failures). Isolated vantages still show here "
            "but do "
            "not vote.",
            [
                query(
                    f"vantage_service_target_region:failover_probe_success:avg1m"
                    f"{sel(F_SERVICE, F_REGION, F_VANTAGE)}",
                    instant=True,
                    fmt="table",
                )
            ],
            "percentunit",
            rename={"target_region\\vantage": "Region \\ vantage"},
            hide=(),
            thresholds=steps((None, "red"), (VOTE_HEALTHY, "green")),
            width=12,
            extra_transforms=[
                dm.DataTransformerConfig(
                    id_val="groupingToMatrix",
                    options={
                        "columnField": "vantage",
                        "rowField": "target_region",
                        "valueField": "Value",
                        "emptyValue": "null",
                    },
                )
            ],
        )
        .cell_options(common.TableColoredBackgroundCellOptions())
        .repeat("service")
        .repeat_direction("h")
        .max_per_row(2)
    )
    isolated = single(
        "Vantage isolation",
        "vantage:failover_vantage_isolated:bool: ISOLATED when a vantage's known-good control "
        "target mostly fails over the last minute; its votes are ignored "
        "(FailoverVantageIsolated).",
        [query(f"vantage:failover_vantage_isolated:bool{sel(F_VANTAGE)}", "{{vantage}}")],
        "none",
        steps((None, "green"), (1, "red")),
        mapping(v0=("OK", "green"), v1=("ISOLATED", "red")),
        width=12,
    )
    alerts = instant_table(
        "Firing Failover alerts",
        'ALERTS{alertname=~"Failover.*", alertstate="firing"}, whatever the variables: '
        "FailoverWatchdog always fires (it proves the alert pipeline works).",
        [
            query(
                'ALERTS{alertname=~"Failover.*", alertstate="firing"}',
                instant=True,
                fmt="table",
            )
        ],
        "none",
        rename={
            "alertname": "Alert",
            "severity": "Severity",
            "service": "Service",
            "target_region": "Region",
            "image": "Image",
            "target": "Target",
            "vantage": "Vantage",
            "reason": "Reason",
        },
        hide=("Time", "Value", "__name__", "alertstate", "job", "instance"),
        sort_by="Severity",
        overrides=[
            override(
                "Severity",
                custom_cellOptions={"type": "color-background"},
                mappings=[
                    {
                        "type": "value",
                        "options": {
                            "critical": {"color": "red", "index": 0},
                            "warning": {"color": "orange", "index": 1},
                            "info": {"color": "blue", "index": 2},
                        },
                    }
                ],
            )
        ],
    )
    rtt = network_matrix(
        "Round trip, vantage → region (ICMP p50)",
        "vantage_target_region:failover_probe_duration_seconds:icmp_p50_5m: median echo round "
        "trip over 5m from each vantage (rows) to each region's icmp targets (columns), "
        f"services aggregated. Orange from {RTT_WARN_S * 1000:.0f}ms, red from "
        f"{RTT_CRIT_S * 1000:.0f}ms: every synchronous commit to a standby waits at least one "
        "round trip. No alert uses these colours. Empty without icmp probes.",
        "vantage_target_region:failover_probe_duration_seconds:icmp_p50_5m",
        "s",
        steps((None, "green"), (RTT_WARN_S, "orange"), (RTT_CRIT_S, "red")),
    )
    loss = network_matrix(
        "ICMP packet loss, vantage → region",
        "vantage_target_region:failover_icmp_packets_lost:ratio_rate5m: echo requests without a "
        "reply over 5m / echo requests sent, per vantage (rows) and region (columns), services "
        f"aggregated. Orange from {ICMP_LOSS_WARN:.0%}, red from {ICMP_LOSS_CRIT:.0%}. No alert "
        "uses these colours. Empty without icmp probes.",
        "vantage_target_region:failover_icmp_packets_lost:ratio_rate5m",
        "percentunit",
        steps((None, "green"), (ICMP_LOSS_WARN, "orange"), (ICMP_LOSS_CRIT, "red")),
        decimals=1,
    )
    history = timeline(
        "Region verdict over time",
        "service_target_region:failover_region_down:bool over the time range. Gaps = no quorum.",
        [
            query(
                f"service_target_region:failover_region_down:bool{sel(*RULE)}",
                "{{service}} {{target_region}}",
            )
        ],
        "none",
        steps((None, "green"), (1, "red")),
        UP_DOWN,
        width=12,
    )
    dns_region = timeline(
        "DNS answer region per vantage",
        "vantage_service_target_answer_region:failover_dns_answer_points_to:max: 1 = the "
        "vantage's answer for the dns target points into answer_region (its `regions:`), beside "
        "the region verdict. After a failover every row of the old primary should turn grey "
        "within the TTL; FailoverDNSStillPointsAtDownPrimary pages if a quorum's does not. "
        "Isolated vantages are left out. Empty without dns targets that declare `regions:`.",
        [
            query(
                "vantage_service_target_answer_region:failover_dns_answer_points_to:max"
                f"{sel(F_SERVICE, F_VANTAGE)}",
                "{{vantage}} {{target}} → {{answer_region}}",
            )
        ],
        "none",
        steps((None, "text"), (1, "blue")),
        mapping(v0=("elsewhere", "text"), v1=("POINTS HERE", "blue")),
        width=12,
    )
    return dashboard(
        "overview",
        "Failover / Overview",
        "Is each region up by quorum of the vantages, is each standby ready to take over, and "
        "what is firing. Time since the last failover drill is not shown: `failover-exporter "
        "drill` prints a report but exports no metric of it.",
        [
            row("Failover readiness"),
            verdict,
            ready,
            healthy,
            voting.span(24).height(4),
            maintenance.span(24).height(4),
            row("Region × vantage"),
            matrix,
            isolated.height(8),
            history,
            dns_region,
            row("Network, vantage → region"),
            rtt,
            loss,
            row("Alerts"),
            alerts,
        ],
    )


# --- Image leaderboard ------------------------------------------------------------------------


def _per_image(expr: str, ref: str) -> prometheus.Dataquery:
    # One label set (service, target_region, image) for every column so `merge` joins the rows.
    return query(
        f"max by (service, target_region, image) ({expr})", instant=True, fmt="table", ref=ref
    )


def images() -> dm.Dashboard:
    rs = sel(*RULE)
    raw_image = sel(JOB, F_SERVICE, F_REGION, F_VANTAGE, IMAGE_PROBES)
    cols = {
        "A": ("Rank in region", f"service_target_region_image:failover_image_rank:p50{rs}"),
        "B": (
            "Rank in service",
            f"service_target_region_image:failover_image_rank:p50{rs} * 0"
            " + on (service, image) group_left ()"
            f" service_image:failover_image_rank:p50_slowdown{sel(F_SERVICE)}",
        ),
        "C": ("p50", f"service_target_region_image:failover_probe_duration_p50_seconds:median{rs}"),
        "D": ("p95", f"service_target_region_image:failover_probe_duration_p95_seconds:median{rs}"),
        "E": ("p99", f"service_target_region_image:failover_probe_duration_seconds:p99_5m{rs}"),
        "F": ("Success", f"service_target_region_image:failover_probe_success:ratio_rate5m{rs}"),
        "G": ("Size", f"failover_image_size_bytes{sel(JOB, *RULE)}"),
        "H": ("Layers", f"failover_image_layers{sel(JOB, *RULE)}"),
        "I": (
            "Cold start p95 (1h)",
            f"service_target_region_image:failover_container_cold_start_seconds:p95_1h{rs}",
        ),
    }
    rename = {"service": "Service", "target_region": "Region", "image": "Image"}
    rename.update({f"Value #{ref}": name for ref, (name, _) in cols.items()})
    latency = steps((None, "green"), (SLO_THRESHOLD_S, "red"))
    leaderboard = (
        instant_table(
            "Leaderboard: $service",
            "One row per region and image. Rank in region: 1 = fastest p50 in that region (the "
            "exporter's exact p50 of the last 120 probes, median over vantages); images within "
            "max(3 %, 0.05 ms) of a faster one tie; a vantage's gauge counts from "
            "global:failover_rank_min_samples:constant samples. Rank in service: the image's "
            "place by mean slowdown against each region's fastest p50. p50/p95: exact, median "
            "over vantages; p99 (histogram) and success over 5m. Red: p95 over the {SLO_THRESHOLD_S}s latency SLO threshold, "
            f"success under {IMAGE_SUCCESS_MIN:.0%} (FailoverImageDown), cold start over the "
            f"{RTO_BUDGET_S:.0f}s RTO budget. Size, layers and cold start exist only where the "
            "exporter reads a Docker Engine or runs cold_start probes.",
            [_per_image(expr, ref) for ref, (_, expr) in cols.items()],
            "s",
            rename=rename,
            hide=("Time",),
            sort_by="Rank in region",
            overrides=[
                override("Rank in region", unit="none", decimals=0),
                override("Rank in service", unit="none", decimals=0),
                override("p50", **colored("s", latency)),
                override("p95", **colored("s", latency)),
                override("p99", **colored("s", latency)),
                override(
                    "Success",
                    **colored("percentunit", steps((None, "red"), (IMAGE_SUCCESS_MIN, "green")), 2),
                ),
                override("Size", unit="bytes"),
                override("Layers", unit="short", decimals=0),
                override(
                    "Cold start p95 (1h)",
                    **colored("s", steps((None, "green"), (RTO_BUDGET_S, "red"))),
                ),
            ],
            height=10,
        )
        .repeat("service")
        .repeat_direction("v")
    )
    overall = (
        instant_table(
            "Leaderboard across regions: $service",
            "service_image:failover_image_rank:p50_slowdown and the mean over regions of the "
            "image's p50 / the region's fastest p50 (1 = fastest everywhere; tied within 3 %).",
            [
                query(
                    "max by (service, image) "
                    f"(service_image:failover_image_rank:p50_slowdown{sel(F_SERVICE)})",
                    instant=True,
                    fmt="table",
                    ref="A",
                ),
                query(
                    "max by (service, image) "
                    f"(service_image:failover_image_slowdown:p50_ratio_avg{sel(F_SERVICE)})",
                    instant=True,
                    fmt="table",
                    ref="B",
                ),
            ],
            "none",
            rename={
                "service": "Service",
                "image": "Image",
                "Value #A": "Rank",
                "Value #B": "Slowdown vs fastest",
            },
            hide=("Time",),
            sort_by="Rank",
            overrides=[override("Slowdown vs fastest", unit="suffix:×", decimals=2)],
            width=12,
            height=7,
        )
        .repeat("service")
        .repeat_direction("h")
        .max_per_row(2)
    )

    def quantile_panel(q: str) -> timeseries.Panel:
        return ts(
            f"{q} latency per image",
            f"service_target_region_image:failover_probe_duration_seconds:{q}_5m: successful "
            f"probes, vantages aggregated. Dashed line: the {SLO_THRESHOLD_S}s latency SLO "
            "threshold.",
            [
                query(
                    f"service_target_region_image:failover_probe_duration_seconds:{q}_5m{rs}",
                    "{{target_region}} {{image}}",
                )
            ],
            "s",
            latency,
            show_thresholds=True,
        )

    per_vantage = ts(
        "p95 latency per image and vantage",
        "From the raw histogram, so the vantage filter applies: how each vantage sees each image.",
        [
            query(
                "histogram_quantile(0.95, sum by (le, target_region, image, vantage) ("
                f"rate(failover_probe_duration_seconds_bucket{raw_image}[$__rate_interval])))",
                "{{target_region}} {{image}} from {{vantage}}",
            )
        ],
        "s",
        latency,
        show_thresholds=True,
    )
    hm = (
        heatmap.Panel()
        .title("Latency distribution")
        .description(
            "failover_probe_duration_seconds buckets of the selected regions, images' probes "
            "only, vantages as selected: probes per bucket per interval."
        )
        .datasource(DS)
        .targets(
            [
                query(
                    "sum by (le) (increase(failover_probe_duration_seconds_bucket"
                    f"{raw_image}[$__rate_interval]))",
                    "{{le}}",
                    fmt="heatmap",
                )
            ]
        )
        .unit("s")
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .cell_values(heatmap.CellValues().unit("short"))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(hm_models.HeatmapColorMode.SCHEME)
            .scheme("Spectral")
            .steps(64)
            .fill("dark-orange")
            .scale(hm_models.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
        )
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .span(12)
        .height(9)
    )
    success = ts(
        "Success ratio per image",
        "service_target_region_image:failover_probe_success:ratio_rate5m. Dashed line: "
        f"{IMAGE_SUCCESS_MIN:.0%}, under which FailoverImageDown fires (after 5m).",
        [
            query(
                f"service_target_region_image:failover_probe_success:ratio_rate5m{rs}",
                "{{target_region}} {{image}}",
            )
        ],
        "percentunit",
        steps((None, "red"), (IMAGE_SUCCESS_MIN, "green")),
        show_thresholds=True,
    )
    rank = ts(
        "Rank in region over time",
        "service_target_region_image:failover_image_rank:p50 (1 = fastest; tied images share a rank).",
        [
            query(
                f"service_target_region_image:failover_image_rank:p50{rs}",
                "{{target_region}} {{image}}",
            )
        ],
        "none",
    )
    burn = ts(
        "Latency SLO burn rate (1h)",
        "Error ratio over 1h / (1 - objective): 1 = burning the 30-day budget exactly. "
        f"FailoverLatencySLOBurn pages at {BURN_PAGE_FAST}× (1h and 5m) or {BURN_PAGE_SLOW}× "
        f"(6h and 30m) and opens a ticket at {BURN_TICKET}× (1d and 2h).",
        [
            query(
                f"service_target_region_image:failover_latency_slo_errors:ratio_rate1h{rs}"
                " / on () group_left () (1 - global:failover_latency_slo_objective:constant)",
                "{{target_region}} {{image}}",
            )
        ],
        "suffix:×",
        steps((None, "green"), (BURN_TICKET, "orange"), (BURN_PAGE_FAST, "red")),
        show_thresholds=True,
    )
    cold = ts(
        "Cold start p95 per image (1h)",
        "service_target_region_image:failover_container_cold_start_seconds:p95_1h: container "
        "create -> ready, pulls excluded. Dashed line: the RTO budget "
        f"({RTO_BUDGET_S:.0f}s), over which a standby is not ready.",
        [
            query(
                f"service_target_region_image:failover_container_cold_start_seconds:p95_1h{rs}",
                "{{target_region}} {{image}}",
            )
        ],
        "s",
        steps((None, "green"), (RTO_BUDGET_S, "red")),
        show_thresholds=True,
    )
    return dashboard(
        "images",
        "Failover / Image leaderboard",
        "Which image variant is fastest in each region, by how much, at what size and "
        "cold-start cost. Ranks come from the failover.ranking recording rules.",
        [
            row("Leaderboard"),
            leaderboard,
            overall,
            row("Latency over time"),
            quantile_panel("p95"),
            quantile_panel("p99"),
            quantile_panel("p50"),
            per_vantage,
            hm,
            success,
            row("Ranking, SLO and cold start"),
            rank,
            burn,
            cold.span(24),
        ],
    )


# --- Target drill-down ------------------------------------------------------------------------


def target() -> dm.Dashboard:
    s = TARGET_SEL
    who = "{{target}} from {{vantage}}"
    last = single(
        "Last result",
        "failover_probe_success: the last probe of each selected target and vantage.",
        [query(f"failover_probe_success{s}", who)],
        "none",
        steps((None, "red"), (1, "green")),
        OK_FAIL,
        width=24,
        height=4,
    )
    ratio = ts(
        "Success ratio",
        "Share of probes that succeeded over the interval. A vantage votes its region failing "
        f"when {VOTE_HEALTHY:.0%} or more of its targets there failed twice in a row.",
        [query(f"avg_over_time(failover_probe_success{s}[$__rate_interval])", who)],
        "percentunit",
        steps((None, "red"), (VOTE_HEALTHY, "green")),
        show_thresholds=True,
    )
    latency = ts(
        "Latency p50 / p95",
        "From failover_probe_duration_seconds (successful probes only).",
        [
            query(
                "histogram_quantile(0.5, sum by (le, target, vantage) ("
                f"rate(failover_probe_duration_seconds_bucket{s}[$__rate_interval])))",
                "p50 " + who,
                ref="A",
            ),
            query(
                "histogram_quantile(0.95, sum by (le, target, vantage) ("
                f"rate(failover_probe_duration_seconds_bucket{s}[$__rate_interval])))",
                "p95 " + who,
                ref="B",
            ),
        ],
        "s",
        steps((None, "green"), (SLO_THRESHOLD_S, "red")),
        show_thresholds=True,
    )
    phases = ts(
        "Phase timings (last probe)",
        "failover_probe_phase_duration_seconds: http dns, connect, tls, first_byte, transfer; "
        "tcp dns, connect, tls, expect; postgres connect, read, write; icmp dns, rtt. Stacked.",
        [query(f"failover_probe_phase_duration_seconds{s}", "{{phase}} " + who)],
        "s",
        stacked=True,
        width=24,
    )
    status = timeline(
        "HTTP status code",
        "failover_http_status_code of the last response (0 = no response arrived).",
        [query(f"failover_http_status_code{s}", who)],
        "none",
        steps((None, "red"), (200, "green"), (300, "blue"), (400, "orange"), (500, "red")),
        mapping(v0=("no response", "red")),
        width=12,
        height=8,
    )
    reasons = ts(
        "Failures by reason",
        "increase(failover_probe_failures_total) per reason: timeout, dns, connect, tls, reset, "
        "protocol, http_status, body, expect, auth, query, ...",
        [
            query(
                f"sum by (reason) (increase(failover_probe_failures_total{s}[$__rate_interval]))",
                "{{reason}}",
            )
        ],
        "short",
        bars=True,
    )
    tls = single(
        "TLS certificate expires in",
        "failover_tls_cert_not_after_timestamp_seconds - now, for targets that use TLS. "
        "FailoverCertificateExpiry: warning under 14 days, critical under 3 days.",
        [query(f"failover_tls_cert_not_after_timestamp_seconds{s} - time()", who)],
        "dtdurations",
        steps((None, "red"), (CERT_CRIT_S, "orange"), (CERT_WARN_S, "green")),
        width=12,
        height=8,
        no_value="no TLS",
    )
    lag = ts(
        "Replication lag",
        "failover_postgres_replication_lag_seconds (heartbeat written on the primary, read on "
        f"the replica). Orange: half the RPO budget (FailoverReplicationLagHigh); red: the RPO "
        f"budget ({RPO_BUDGET_S:.0f}s), over which the standby is not ready.",
        [query(f"failover_postgres_replication_lag_seconds{s}", who)],
        "s",
        steps((None, "green"), (RPO_BUDGET_S / 2, "orange"), (RPO_BUDGET_S, "red")),
        show_thresholds=True,
    )
    since = ts(
        "Time since last success",
        "now - failover_probe_last_success_timestamp_seconds.",
        [query(f"time() - failover_probe_last_success_timestamp_seconds{s}", who)],
        "s",
    )
    cold = ts(
        "Cold start p95",
        "failover_container_cold_start_seconds of cold_start probes. Red: the RTO budget "
        f"({RTO_BUDGET_S:.0f}s).",
        [
            query(
                "histogram_quantile(0.95, sum by (le, target, vantage) ("
                f"rate(failover_container_cold_start_seconds_bucket{s}[$__rate_interval])))",
                who,
            )
        ],
        "s",
        steps((None, "green"), (RTO_BUDGET_S, "red")),
        show_thresholds=True,
    )
    return dashboard(
        "target",
        "Failover / Target drill-down",
        "One endpoint at a time, from each vantage: result, latency, phases, status codes, "
        "failure reasons, certificate expiry, replication lag.",
        [
            row("Result and latency"),
            last,
            ratio,
            latency,
            phases,
            row("Why it fails"),
            status,
            reasons,
            row("Certificates, replication, cold start"),
            tls,
            lag,
            since,
            cold,
        ],
        extra_vars=("image", "target"),
    )


# --- Exporter health --------------------------------------------------------------------------


def exporter() -> dm.Dashboard:
    ev = sel(JOB, F_VANTAGE)
    inst = "{{instance}} {{vantage}}"
    up = single(
        "Scrape up",
        "up of each exporter (FailoverExporterDown after 2m at 0).",
        [query(f"up{ev}", inst)],
        "none",
        steps((None, "red"), (1, "green")),
        mapping(v0=("DOWN", "red"), v1=("UP", "green")),
    )
    overloaded = single(
        "Overloaded",
        "failover_exporter_overloaded: 1 while the exporter's own delays exceed its budget; its "
        "latency figures are then left out of ranking and the SLO.",
        [query(f"failover_exporter_overloaded{ev}", inst)],
        "none",
        steps((None, "green"), (1, "red")),
        mapping(v0=("OK", "green"), v1=("OVERLOADED", "red")),
    )
    reload_ok = single(
        "Config reload",
        "failover_exporter_config_last_reload_successful: FAILED = the last reload was rejected "
        "and the previous config keeps running (FailoverConfigReloadFailed).",
        [query(f"failover_exporter_config_last_reload_successful{ev}", inst)],
        "none",
        steps((None, "red"), (1, "green")),
        mapping(v0=("FAILED", "red"), v1=("OK", "green")),
    )
    loop = ts(
        "Event-loop lag p99",
        "instance:failover_exporter_event_loop_lag_seconds:p99_rate5m. Dashed line: "
        f"{LOOP_LAG_P99_S * 1000:.0f}ms, over which FailoverExporterOverloaded fires.",
        [query(f"instance:failover_exporter_event_loop_lag_seconds:p99_rate5m{ev}", inst)],
        "s",
        steps((None, "green"), (LOOP_LAG_P99_S, "red")),
        show_thresholds=True,
    )
    delay = ts(
        "Probe start delay p99",
        "instance:failover_exporter_probe_start_delay_seconds:p99_rate5m: how late probes start "
        f"against their schedule. Dashed line: {START_DELAY_P99_S * 1000:.0f}ms "
        "(FailoverExporterOverloaded).",
        [query(f"instance:failover_exporter_probe_start_delay_seconds:p99_rate5m{ev}", inst)],
        "s",
        steps((None, "green"), (START_DELAY_P99_S, "red")),
        show_thresholds=True,
    )
    skips = ts(
        "Skipped probes",
        "rate(failover_exporter_probes_skipped_total) by reason: overrun (the previous run of "
        "the target was still going) and concurrency (the global cap stayed full).",
        [
            query(
                "sum by (instance, reason) (rate(failover_exporter_probes_skipped_total"
                f"{ev}[$__rate_interval]))",
                "{{instance}} {{reason}}",
            )
        ],
        "ops",
        steps((None, "green"), (1e-9, "orange")),
    )
    completion = ts(
        "Probes completed vs configured",
        "Per vantage, the lowest over its targets of probes completed / probes configured "
        f"(rate × interval). Under {PROBES_STALE_RATIO:.0%}: FailoverProbesStale.",
        [
            query(
                "min by (vantage) ("
                f"rate(failover_probes_total{sel(*RAW)}[$__rate_interval])"
                f" * failover_probe_interval_seconds{sel(*RAW)})",
                "{{vantage}}",
            )
        ],
        "percentunit",
        steps((None, "red"), (PROBES_STALE_RATIO, "green")),
        show_thresholds=True,
    )
    targets_ = ts(
        "Targets and probes in flight",
        "failover_exporter_targets (per vantage), probes running now and the concurrency cap.",
        [
            query(f"failover_exporter_targets{ev}", "targets {{vantage}}", ref="A"),
            query(f"failover_exporter_probes_in_flight{ev}", "in flight {{instance}}", ref="B"),
            query(f"failover_exporter_max_concurrency{ev}", "cap {{instance}}", ref="C"),
        ],
        "short",
    )
    scrape = ts(
        "Scrape duration",
        "scrape_duration_seconds of the exporter's /metrics (Prometheus's own measurement).",
        [query(f"scrape_duration_seconds{ev}", inst)],
        "s",
    )
    control = ts(
        "Control target success (1m)",
        "vantage:failover_control_probe_success:avg1m: under 50 % the vantage is isolated and "
        "does not vote (FailoverVantageIsolated).",
        [query(f"vantage:failover_control_probe_success:avg1m{sel(F_VANTAGE)}", "{{vantage}}")],
        "percentunit",
        steps((None, "red"), (VOTE_HEALTHY, "green")),
        show_thresholds=True,
    )
    since_reload = single(
        "Since last successful reload",
        "now - failover_exporter_config_last_reload_success_timestamp_seconds.",
        [
            query(
                f"time() - failover_exporter_config_last_reload_success_timestamp_seconds{ev}", inst
            )
        ],
        "dtdurations",
    )
    build = instant_table(
        "Versions",
        "failover_exporter_build_info.",
        [query(f"failover_exporter_build_info{ev}", instant=True, fmt="table")],
        "none",
        rename={"instance": "Instance", "version": "Version", "python_version": "Python"},
        hide=("Time", "Value", "__name__", "job"),
        width=16,
        height=5,
    )
    return dashboard(
        "exporter",
        "Failover / Exporter health",
        "Can the exporters' measurements be trusted: scrapes, event-loop lag, probe start "
        "delay, skipped probes, config reloads, targets.",
        [
            row("Status"),
            up,
            overloaded,
            reload_ok,
            build,
            since_reload,
            row("Lateness"),
            loop,
            delay,
            skips,
            completion,
            row("Load and scrapes"),
            targets_,
            scrape,
            control.span(24),
        ],
    )


# --- output -----------------------------------------------------------------------------------

BUILDERS = {"overview": overview, "images": images, "target": target, "exporter": exporter}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for key, build in BUILDERS.items():
        doc = json.loads(JSONEncoder().encode(build()))
        # Stable panel ids in layout order: Grafana needs them unique within a dashboard.
        for n, panel in enumerate(doc["panels"], start=1):
            panel["id"] = n
        out[f"{UIDS[key]}.json"] = (
            json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = ap.parse_args(argv)
    rendered = render()
    stale = [
        n
        for n, text in rendered.items()
        if not (OUT / n).is_file() or (OUT / n).read_text() != text
    ]
    if args.check:
        for n in stale:
            print(f"stale: grafana/dashboards/{n} (run make dashboards)", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for n in stale:
        (OUT / n).write_text(rendered[n])
        print(f"wrote grafana/dashboards/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
