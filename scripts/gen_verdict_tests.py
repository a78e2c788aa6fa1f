"""Writes prometheus/tests/verdicts.test.yml: promtool scenarios for the region verdicts.

The input series are what a Prometheus scraping three vantages every 15 s stores from exporters
probing every 5 s: each scrape reads failover_probe_consecutive_failures as the last probe before
it left it. The outage is swept over phases of the probe and scrape cycles, and the expected
alert times come from the same model (`detect`), which tests/prometheus/test_verdicts.py bounds
against the detection budget. Run `python scripts/gen_verdict_tests.py` after changing it; a test
checks the committed file is what this script writes.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import yaml

SCRAPE = 15.0
PROBE = 5.0
VANTAGES = ("v1", "v2", "v3")
# Each vantage's probes start at its own offset within the 5 s cycle.
PROBE_OFFSETS = {"v1": 0.0, "v2": 1.7, "v3": 3.3}
SAMPLES = 60  # 15 min
OUTAGE_START = 120.0
OUTAGE_END = 300.0
PHASES = (0.0, 2.5, 5.0, 7.5, 10.0, 12.5)
KEEP_FIRING = 240.0
REGIONS = (("eu", "primary", 1), ("us", "standby", 10), ("ap", "standby", 2))
OUT = Path(__file__).resolve().parent.parent / "prometheus" / "tests" / "verdicts.test.yml"
PROMETHEUS = Path(__file__).resolve().parent.parent / "prometheus"
RULE_FILES = ("rules/regional.rules.yml", "rules/global.rules.yml", "alerts/failover.alerts.yml")
# The rule files' own group order: promtool then evaluates votes before the quorum before alerts.
GROUP_ORDER = tuple(
    group["name"]
    for name in RULE_FILES
    for group in yaml.safe_load((PROMETHEUS / name).read_text())["groups"]
)
JOB = 'job="failover-exporter"'


def streaks(failing: list[bool]) -> list[int]:
    out, n = [], 0
    for f in failing:
        n = n + 1 if f else 0
        out.append(n)
    return out


def scraped(vantage: str, fails: object, samples: int = SAMPLES) -> list[int]:
    """The consecutive-failure count each scrape reads; `fails(v, t)` says if the probe at t fails."""
    off = PROBE_OFFSETS[vantage]
    times = [off + PROBE * j for j in range(int(samples * SCRAPE / PROBE) + 3)]
    counts = streaks([fails(vantage, t) for t in times])  # type: ignore[operator]
    out = []
    for k in range(samples):
        t = k * SCRAPE
        done = [j for j, pt in enumerate(times) if pt <= t]
        out.append(counts[done[-1]] if done else 0)
    return out


def values(xs: list[int]) -> str:
    return " ".join(str(x) for x in xs)


def target(vantage: str, region: str, role: str) -> str:
    return (
        f'failover_probe_consecutive_failures{{{JOB},instance="{vantage}:10077",vantage="{vantage}",'
        f'service="shop",target_region="{region}",role="{role}",image="slim",'
        f'target="shop-{region}-slim",probe="http"}}'
    )


def control(vantage: str) -> str:
    return (
        f'failover_probe_consecutive_failures{{{JOB},instance="{vantage}:10077",vantage="{vantage}",'
        f'role="control",target="control-{vantage}",probe="http"}}'
    )


def config_series(samples: int = SAMPLES) -> list[str]:
    out = []
    for v in VANTAGES:
        for region, role, prio in REGIONS:
            labels = f'{JOB},instance="{v}:10077",vantage="{v}",service="shop",target_region="{region}",role="{role}"'
            out.append(f'failover_region_info{{{labels},priority="{prio}"}}|1x{samples - 1}')
            out.append(f"failover_region_priority{{{labels}}}|{prio}x{samples - 1}")
    return out


def scenario_inputs(
    fails: object, control_fails: object = None, samples: int = SAMPLES
) -> list[tuple[str, str]]:
    rows = []
    for v in VANTAGES:
        cf = control_fails or (lambda _v, _t: False)
        rows.append((control(v), values(scraped(v, cf, samples))))
        for region, role, _ in REGIONS:
            rows.append(
                (
                    target(v, region, role),
                    values(scraped(v, lambda vv, t, r=region: fails(vv, r, t), samples)),
                )
            )  # type: ignore[operator]
    return rows


def down_times(rows: list[tuple[str, str]], isolated: set[str] = frozenset()) -> list[float]:  # type: ignore[assignment]
    """Scrape times at which a quorum (>= 50 % of >= 2 voting vantages) sees eu failing."""
    eu = {
        r[0].split('vantage="')[1].split('"')[0]: [int(x) for x in r[1].split()]
        for r in rows
        if 'target_region="eu"' in r[0]
    }
    out = []
    for k in range(len(next(iter(eu.values())))):
        voters = [v for v in VANTAGES if v not in isolated]
        failing = sum(1 for v in voters if eu[v][k] >= 2)
        if len(voters) >= 2 and failing / len(voters) >= 0.5:
            out.append(k * SCRAPE)
    return out


def detect(phase: float) -> tuple[float, float, list[float]]:
    """(first failed probe, first eval with the alert firing, down times) for an outage at phase."""
    start = OUTAGE_START + phase

    def fails(v: str, region: str, t: float) -> bool:
        return region == "eu" and start <= t < OUTAGE_END + phase

    rows = scenario_inputs(fails)
    first_fail = min(
        PROBE_OFFSETS[v] + PROBE * j
        for v in VANTAGES
        for j in range(200)
        if PROBE_OFFSETS[v] + PROBE * j >= start
    )
    downs = down_times(rows)
    return first_fail, downs[0], downs


def ratio_at(rows: list[tuple[str, str]], t: float) -> str:
    """humanizePercentage of the share of vantages that see eu failing at scrape time t."""
    k = int(t // SCRAPE)
    eu = [int(vals.split()[k]) >= 2 for series, vals in rows if 'target_region="eu"' in series]
    share = 100 * sum(eu) / len(eu)
    return f"{share:.4g}%"


def fmt(t: float) -> str:
    m, s = divmod(int(t), 60)
    return f"{m}m{s}s" if s else f"{m}m"


def alert(eval_t: float, name: str, firing: list[str]) -> str:
    if not firing:
        return (
            f"      - eval_time: {fmt(eval_t)}\n        alertname: {name}\n        exp_alerts: []\n"
        )
    return (
        f"      - eval_time: {fmt(eval_t)}\n        alertname: {name}\n        exp_alerts:\n"
        + "".join(firing)
    )


def page(failover_to: str, prio: int, ratio: str = "100%") -> str:
    return f"""          - exp_labels:
              severity: critical
              job: failover-exporter
              service: shop
              target_region: eu
            exp_annotations:
              summary: The primary region is down by quorum of the vantages; fail over.
              description: >-
                {ratio} of the voting vantages see the primary region eu of shop failing.
                Fail over to {failover_to} (priority {prio}, the first ready standby).
              failover_to: {failover_to}
              runbook_url: https://github.com/failover-exporter/failover_exporter/blob/main/docs/runbooks/README.md#failoverprimaryregiondown
              dashboard_url: https://grafana.example.com/d/failover-overview?var-service=shop
"""


def inputs_yaml(rows: list[tuple[str, str]], samples: int = SAMPLES) -> str:
    out = "    input_series:\n"
    for series, vals in rows:
        out += f"      - {{series: '{series}', values: '{vals}'}}\n"
    for line in config_series(samples):
        series, vals = line.split("|")
        out += f"      - {{series: '{series}', values: '{vals}'}}\n"
    return out


def quiet(name: str, rows: list[tuple[str, str]], extra: str = "") -> str:
    checks = "".join(
        alert(t, a, [])
        for t in (60.0, 150.0, 240.0, 420.0, 600.0, 840.0)
        for a in ("FailoverPrimaryRegionDown", "FailoverAllRegionsDown")
    )
    return (
        f"  - name: {name}\n    interval: 15s\n"
        + inputs_yaml(rows)
        + extra
        + "    alert_rule_test:\n"
        + checks
    )


# Critical (page-route) alerts of the bundle that probe results can raise.
PAGES = (
    "FailoverPrimaryRegionDown",
    "FailoverAllRegionsDown",
    "FailoverLatencySLOBurn",
    "FailoverExporterAbsent",
    "FailoverDNSStillPointsAtDownPrimary",
)
# Alertmanager's group_interval on the page route: the resolved notification waits for it.
PAGE_GROUP_INTERVAL = 60.0
SLOW_SAMPLES = 361  # 90 min: long enough for the 1h burn window and its short-history guard
SLOW_FROM = 120  # scrape index (30 min)
FLAP_SAMPLES = 100  # 25 min
# (start, end) of each outage of the flapping primary: down 3 min, up 2 min, down 3 min, up
# 2 min, down 1 min, then recovered for good.
FLAPS = ((120.0, 300.0), (420.0, 600.0), (720.0, 780.0))


def slow_primary() -> str:
    """The primary answers every probe, 5 times slower from 30 min on (p50 60 -> 300 ms, every
    probe still within the 0.5 s latency SLO): no page, for 90 minutes of history."""
    n = SLOW_SAMPLES
    rows = [(series, vals) for series, vals in scenario_inputs(lambda v, r, t: False, None, n)]
    for v in VANTAGES:
        rows.append((f'up{{{JOB},instance="{v}:10077",vantage="{v}"}}', f"1x{n - 1}"))
        for region, role, _ in REGIONS:
            lab = (
                f'{JOB},instance="{v}:10077",vantage="{v}",service="shop",target_region="{region}",'
                f'role="{role}",image="slim",target="shop-{region}-slim",probe="http"'
            )
            every = f"0+3x{n - 1}"
            fast = f"0+3x{SLOW_FROM} {3 * SLOW_FROM}x{n - SLOW_FROM - 2}" if region == "eu" else every
            rows.append((f"failover_probes_total{{{lab}}}", every))
            rows.append((f'failover_probe_duration_seconds_bucket{{{lab},le="0.1"}}', fast))
            for le in ("0.5", "+Inf"):
                rows.append((f'failover_probe_duration_seconds_bucket{{{lab},le="{le}"}}', every))
            rows.append((f"failover_probe_duration_seconds_count{{{lab}}}", every))
            slow = region == "eu"
            for metric, before, after in (
                ("failover_probe_duration_p50_seconds", 0.06, 0.3),
                ("failover_probe_duration_p95_seconds", 0.07, 0.35),
            ):
                tail = after if slow else before
                rows.append((f"{metric}{{{lab}}}", f"{before}x{SLOW_FROM - 1} {tail}x{n - SLOW_FROM - 1}"))
            rows.append((f"failover_probe_duration_recent_samples{{{lab}}}", f"120x{n - 1}"))
    checks = "".join(
        alert(t, a, []) for t in (600.0, 1860.0, 2700.0, 3660.0, 4500.0, 5385.0) for a in PAGES
    )
    exprs = f"""    promql_expr_test:
      # The rules do see the primary slow, and within the SLO.
      - expr: service_target_region_image:failover_probe_duration_p50_seconds:median{{target_region="eu"}}
        eval_time: 45m
        exp_samples:
          - labels: 'service_target_region_image:failover_probe_duration_p50_seconds:median{{{JOB},service="shop",target_region="eu",image="slim"}}'
            value: 0.3
      - expr: service_target_region_image:failover_latency_slo_errors:ratio_rate1h{{target_region="eu"}}
        eval_time: 89m45s
        exp_samples:
          - labels: 'service_target_region_image:failover_latency_slo_errors:ratio_rate1h{{{JOB},service="shop",target_region="eu",image="slim"}}'
            value: 0
"""
    return (
        "  - name: a slow but healthy primary never pages\n    interval: 15s\n"
        + inputs_yaml(rows, n)
        + exprs
        + "    alert_rule_test:\n"
        + checks
    )


def flapping_primary() -> str:
    """Down / up / down / up / down within minutes: one incident (the page fires once and stays
    firing through the gaps, keep_firing_for), resolved within 6 min of the final recovery."""
    n = FLAP_SAMPLES
    rows = scenario_inputs(
        lambda v, r, t: r == "eu" and any(a <= t < b for a, b in FLAPS), None, n
    )
    downs = down_times(rows)
    first, last = downs[0], downs[-1]
    recovered = FLAPS[-1][1]
    resolved = last + KEEP_FIRING + SCRAPE
    # The resolved notification: the alert's end, the next evaluation that sends it (<= 15 s),
    # Alertmanager's group_interval.
    assert resolved + SCRAPE + PAGE_GROUP_INTERVAL - recovered <= 360.0, (resolved, recovered)
    firing = int((resolved - SCRAPE - first) // SCRAPE) + 1
    window = f"{int(resolved - SCRAPE - first) + 10}s"
    sel = 'ALERTS{alertname="FailoverPrimaryRegionDown",alertstate="firing"}'
    exprs = f"""    promql_expr_test:
      # Firing at every evaluation from {fmt(first)} to {fmt(resolved - SCRAPE)}: {firing} samples, no gap.
      - expr: count_over_time({sel}[{window}])
        eval_time: {fmt(resolved - SCRAPE)}
        exp_samples:
          - labels: '{{alertname="FailoverPrimaryRegionDown",alertstate="firing",{JOB},service="shop",severity="critical",target_region="eu"}}'
            value: {firing}
      # ... and never before or after: the whole run holds the same {firing} samples.
      - expr: count_over_time({sel}[{n * int(SCRAPE)}s])
        eval_time: {fmt((n - 1) * SCRAPE)}
        exp_samples:
          - labels: '{{alertname="FailoverPrimaryRegionDown",alertstate="firing",{JOB},service="shop",severity="critical",target_region="eu"}}'
            value: {firing}
"""
    checks = alert(first - SCRAPE, "FailoverPrimaryRegionDown", [])
    for gap_start, gap_end in zip([b for _, b in FLAPS[:-1]], [a for a, _ in FLAPS[1:]], strict=True):
        # In each up phase between outages: still the same firing page.
        checks += alert(
            gap_end - SCRAPE, "FailoverPrimaryRegionDown", [page("ap", 2, ratio_at(rows, last))]
        )
    checks += alert(resolved, "FailoverPrimaryRegionDown", [])
    checks += "".join(alert(t, "FailoverAllRegionsDown", []) for t in (first, last, resolved))
    return (
        f"  # Outages {', '.join(f'{a:g}-{b:g}s' for a, b in FLAPS)}; down by quorum first at {first:g}s, last at\n"
        f"  # {last:g}s; resolved at {resolved:g}s, {resolved - recovered:g}s after the final recovery.\n"
        "  - name: a flapping primary pages once and resolves within 6 min of the final recovery\n"
        "    interval: 15s\n"
        + inputs_yaml(rows, n)
        + exprs
        + "    alert_rule_test:\n"
        + checks
    )


def main() -> str:
    doc = [
        "# GENERATED by scripts/gen_verdict_tests.py; edit that, then run it.\n",
        "# Region verdicts from failover_probe_consecutive_failures: outage phases against the 5 s probe\n",
        "# and 15 s scrape cycles, partition, isolation, lost probes, 2 % loss, short history, a slow\n",
        "# but healthy primary (no page), a flapping primary (one incident), and the\n",
        "# standby choice (numeric priority, not-ready standbys skipped). Regions: eu primary (1),\n",
        '# us standby (priority 10), ap standby (priority 2): ap is first although "10" < "2" as text.\n',
        "rule_files:\n  - ../rules/regional.rules.yml\n  - ../rules/global.rules.yml\n  - ../alerts/failover.alerts.yml\n",
        "evaluation_interval: 15s\n",
        "group_eval_order:\n" + "".join(f"  - {g}\n" for g in GROUP_ORDER),
        "tests:\n",
    ]
    for phase in PHASES:
        first_fail, detected, downs = detect(phase)
        start = OUTAGE_START + phase
        rows = scenario_inputs(
            lambda v, r, t, s=start, p=phase: r == "eu" and s <= t < OUTAGE_END + p
        )
        last = downs[-1]
        checks = alert(detected - SCRAPE, "FailoverPrimaryRegionDown", [])
        checks += alert(
            detected, "FailoverPrimaryRegionDown", [page("ap", 2, ratio_at(rows, detected))]
        )
        # keep_firing_for: one notification per incident; gone 4m after the last down vote.
        checks += alert(
            last + KEEP_FIRING - 2 * SCRAPE,
            "FailoverPrimaryRegionDown",
            [page("ap", 2, ratio_at(rows, last))],
        )
        checks += alert(last + KEEP_FIRING + SCRAPE, "FailoverPrimaryRegionDown", [])
        exprs = ""
        if phase == 0.0:
            exprs = (
                f"""    promql_expr_test:
      - expr: vantage_service_target_region:failover_probe_failing:ratio{{target_region="eu"}}
        eval_time: {fmt(detected)}
        exp_samples:
"""
                + "".join(
                    f"""          - labels: 'vantage_service_target_region:failover_probe_failing:ratio{{job="failover-exporter",vantage="{v}",service="shop",target_region="eu"}}'
            value: {1 if int(dict(rows)[target(v, "eu", "primary")].split()[int(detected // SCRAPE)]) >= 2 else 0}
"""
                    for v in VANTAGES
                )
                + f"""      - expr: vantage:failover_control_probe_failing:ratio
        eval_time: {fmt(detected)}
        exp_samples:
"""
                + "".join(
                    f"""          - labels: 'vantage:failover_control_probe_failing:ratio{{job="failover-exporter",vantage="{v}"}}'
            value: 0
"""
                    for v in VANTAGES
                )
                + f"""      - expr: service_target_region:failover_region_priority:min
        eval_time: {fmt(detected)}
        exp_samples:
"""
                + "".join(
                    f"""          - labels: 'service_target_region:failover_region_priority:min{{job="failover-exporter",service="shop",target_region="{r}",role="{role}"}}'
            value: {p}
"""
                    for r, role, p in REGIONS
                )
                + f"""      - expr: service_target_region:failover_standby_first_ready:priority
        eval_time: {fmt(detected)}
        exp_samples:
          - labels: 'service_target_region:failover_standby_first_ready:priority{{job="failover-exporter",service="shop",target_region="ap",role="standby"}}'
            value: 2
"""
            )
        doc.append(
            f"  # Outage at {OUTAGE_START + phase:g}s; first failed probe {first_fail:g}s; down by quorum at {detected:g}s ({detected - first_fail:g}s).\n"
            f"  - name: primary outage at phase {phase:g}s pages and names the numerically first standby\n    interval: 15s\n"
            + inputs_yaml(rows)
            + exprs
            + "    alert_rule_test:\n"
            + checks
        )
    # A standby that is not ready is skipped: ap (priority 2) is down too, us (10) is named.
    rows = scenario_inputs(
        lambda v, r, t: (r == "eu" and t >= OUTAGE_START) or (r == "ap" and t >= 60.0)
    )
    d = down_times(rows)[0]
    doc.append(
        "  - name: a standby that is not ready is skipped\n    interval: 15s\n"
        + inputs_yaml(rows)
        + "    alert_rule_test:\n"
        + alert(d, "FailoverPrimaryRegionDown", [page("us", 10, ratio_at(rows, d))])
    )
    # One vantage partitioned from the primary, for the whole run.
    doc.append(
        quiet(
            "one vantage partitioned from the primary never pages",
            scenario_inputs(lambda v, r, t: v == "v1" and r == "eu" and t >= 60.0),
        )
    )
    # One vantage isolated: its control target and everything else fail.
    doc.append(
        quiet(
            "an isolated vantage never pages",
            scenario_inputs(
                lambda v, r, t: v == "v1" and t >= 60.0, lambda v, t: v == "v1" and t >= 60.0
            ),
            f"""    promql_expr_test:
      - expr: vantage:failover_vantage_isolated:bool{{vantage="v1"}}
        eval_time: 5m
        exp_samples:
          - labels: 'vantage:failover_vantage_isolated:bool{{job="failover-exporter",vantage="v1"}}'
            value: 1
""",
        )
    )
    # Single lost probes, on two vantages at once.
    lost = {
        ("v1", 20),
        ("v2", 20),
        ("v3", 21),
        ("v1", 50),
        ("v2", 51),
        ("v3", 50),
        ("v1", 90),
        ("v2", 90),
        ("v3", 90),
    }
    doc.append(
        quiet(
            "single lost probes never page, even on all vantages at once",
            scenario_inputs(
                lambda v, r, t: r == "eu" and (v, int((t - PROBE_OFFSETS[v]) // PROBE)) in lost
            ),
        )
    )
    # 2 % random loss everywhere (fixed seed).
    rng = random.Random(14)
    drops = {
        (v, r, j)
        for v in VANTAGES
        for r, _, _ in REGIONS
        for j in range(300)
        if rng.random() < 0.02
    }
    doc.append(
        quiet(
            "2 % random loss everywhere never pages",
            scenario_inputs(lambda v, r, t: (v, r, int((t - PROBE_OFFSETS[v]) // PROBE)) in drops),
        )
    )
    # A Prometheus that has just started: its first sample of each vantage says one probe failed
    # (the count, not an average over the few samples there are); no page.
    rows = [
        (s, "1 " + " ".join(vals.split()[1:])) if 'target_region="eu"' in s else (s, vals)
        for s, vals in scenario_inputs(lambda v, r, t: False)
    ]
    doc.append(quiet("a Prometheus that has just started does not page on its first samples", rows))
    doc.append(slow_primary())
    doc.append(flapping_primary())
    return "".join(doc)


if __name__ == "__main__":
    text = main()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
