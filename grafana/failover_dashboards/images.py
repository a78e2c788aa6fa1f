"""The image leaderboard dashboard: which variant is fastest in each region, by how much."""

from __future__ import annotations

from grafana_foundation_sdk.builders import heatmap, prometheus, table, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm_models

from exporter import metrics
from failover_dashboards.panels import (
    BURN_PAGE_FAST,
    BURN_PAGE_SLOW,
    BURN_TICKET,
    DS,
    F_REGION,
    F_SERVICE,
    F_VANTAGE,
    IMAGE_PROBES,
    IMAGE_SUCCESS_MIN,
    JOB,
    RTO_BUDGET_S,
    RULE,
    SLO_THRESHOLD_S,
    colored,
    dashboard,
    instant_table,
    override,
    query,
    row,
    sel,
    steps,
    ts,
)


def _per_image(expr: str, ref: str) -> prometheus.Dataquery:
    # One label set (service, target_region, image) for every column so `merge` joins the rows.
    return query(
        f"max by (service, target_region, image) ({expr})", instant=True, fmt="table", ref=ref
    )


# `failover-exporter bench` results (Pushgateway job="failover_bench", or node_exporter's
# textfile collector): one series per service, image and bench `region`. Selected by name only,
# so either way of shipping them works. Present only once the catalogue has the bench families.
BENCH_COLUMNS = {
    "A": ("Bench rank", "failover_bench_rank"),
    "C": ("Bench p50", "failover_bench_latency_p50_seconds"),
    "D": ("Bench p95", "failover_bench_latency_p95_seconds"),
    "E": ("Bench cold start", "failover_bench_cold_start_seconds"),
    "F": ("Bench size", "failover_bench_image_size_bytes"),
}


def last_bench() -> table.Panel | None:
    """The last bench of each variant next to its live leaderboard rank, or None when the
    metric catalogue has no bench families."""
    names = [m for _, m in BENCH_COLUMNS.values()] + ["failover_bench_timestamp_seconds"]
    if not all(n in metrics.BY_NAME for n in names):
        return None
    bs = sel(F_SERVICE)

    def col(expr: str, ref: str) -> prometheus.Dataquery:
        by = f"max by (service, image, region) ({expr})"
        return query(by, instant=True, fmt="table", ref=ref)

    targets = [col(f"{m}{bs}", ref) for ref, (_, m) in BENCH_COLUMNS.items()]
    targets.append(
        col(
            f"failover_bench_rank{bs} * 0 + on (service, image) group_left () "
            f"service_image:failover_image_rank:p50_slowdown{bs}",
            "B",
        )
    )
    targets.append(col(f"time() - failover_bench_timestamp_seconds{bs}", "G"))
    rename = {"service": "Service", "image": "Image", "region": "Bench region"}
    rename.update({f"Value #{ref}": name for ref, (name, _) in BENCH_COLUMNS.items()})
    rename.update({"Value #B": "Live rank (service)", "Value #G": "Bench age"})
    return (
        instant_table(
            "Last bench per variant: $service",
            "The last `failover-exporter bench` of each variant (failover_bench_*: rank by p95 "
            "under load, ties share a rank; p50/p95, cold start, size), next to the live rank "
            "of the leaderboard across regions (service_image:failover_image_rank:p50_slowdown). "
            "A variant that benches fast but ranks slow live (or the reverse) is worth a look; "
            "Bench age says how old the comparison is.",
            targets,
            "s",
            rename=rename,
            hide=("Time",),
            sort_by="Bench rank",
            overrides=[
                override("Bench rank", unit="none", decimals=0),
                override("Live rank (service)", unit="none", decimals=0),
                override("Bench size", unit="bytes"),
                override("Bench age", unit="dtdurations"),
            ],
            height=8,
        )
        .repeat("service")
        .repeat_direction("v")
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
            "over vantages; p99 (histogram) and success over 5m. "
            f"Red: p95 over the {SLO_THRESHOLD_S}s latency SLO threshold, "
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

    exact = ts(
        "Exact p50 / p95 per image (what ranks)",
        "service_target_region_image:failover_probe_duration_p50_seconds:median and _p95_: the "
        "exporter's order statistics of each target's last 120 successful latencies, median over "
        "the vantages that count (not isolated, not overloaded, target not failing, at least "
        "global:failover_rank_min_samples:constant samples). No bucket interpolation.",
        [
            query(
                f"service_target_region_image:failover_probe_duration_p50_seconds:median{rs}",
                "p50 {{target_region}} {{image}}",
                ref="A",
            ),
            query(
                f"service_target_region_image:failover_probe_duration_p95_seconds:median{rs}",
                "p95 {{target_region}} {{image}}",
                ref="B",
            ),
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
        "service_target_region_image:failover_image_rank:p50 (1 = fastest; tied images share "
        "a rank).",
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
            *([bench] if (bench := last_bench()) is not None else []),
            row("Latency over time"),
            exact,
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
