"""The overview dashboard: where each service's regions stand, by quorum of the vantages."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

from failover_dashboards.panels import (
    F_REGION,
    F_SERVICE,
    F_VANTAGE,
    ICMP_LOSS_CRIT,
    ICMP_LOSS_WARN,
    RAW,
    RPO_BUDGET_S,
    RTO_BUDGET_S,
    RTT_CRIT_S,
    RTT_WARN_S,
    RULE,
    UIDS,
    UP_DOWN,
    VOTE_FAILS_IN_A_ROW,
    VOTE_HEALTHY,
    dashboard,
    data_link,
    instant_table,
    mapping,
    override,
    query,
    row,
    sel,
    single,
    steps,
    timeline,
    ts,
)


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


NOT_CONTROL = 'role!="control"'


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
    priority = single(
        "Failover order",
        "service_target_region:failover_region_priority:min: each region's priority as a number "
        "(1 = first; compared as numbers, not as the text of the `priority` label), and "
        '"fail over to": the standby FailoverPrimaryRegionDown names now, the ready standby '
        "with the smallest number (service_target_region:failover_standby_first_ready:priority).",
        [
            query(
                f"service_target_region:failover_region_priority:min{sel(*RULE)}",
                "{{target_region}} ({{role}})",
                ref="A",
            ),
            query(
                f"service_target_region:failover_standby_first_ready:priority{sel(*RULE)}",
                "fail over to {{target_region}}",
                ref="B",
            ),
        ],
        "none",
        steps((None, "blue")),
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
    streaks = ts(
        "Consecutive failures, region × vantage",
        "The longest run of failed probes among each vantage's targets in a region "
        "(failover_probe_consecutive_failures). A vantage votes a region failing when half or "
        f"more of its targets there are at {VOTE_FAILS_IN_A_ROW} or more; a single lost probe "
        "never counts.",
        [
            query(
                "max by (target_region, vantage) (failover_probe_consecutive_failures"
                f"{sel(*RAW, NOT_CONTROL)})",
                "{{target_region}} from {{vantage}}",
            )
        ],
        "short",
        steps((None, "green"), (VOTE_FAILS_IN_A_ROW, "red")),
        show_thresholds=True,
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
            priority.span(24).height(4),
            healthy,
            voting.span(24).height(4),
            maintenance.span(24).height(4),
            row("Region × vantage"),
            matrix,
            streaks,
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
