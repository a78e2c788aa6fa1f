"""Shared pieces of the dashboards: constants (the alerts' thresholds and budgets), label
filters, small panel builders, the variables and the dashboard frame."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import (
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

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
VOTE_FAILS_IN_A_ROW = 2  # ... failover_probe_consecutive_failures >= 2 (regional.rules.yml)
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
        p = p.mappings([*mappings])
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
        p = p.mappings([*mappings])
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
