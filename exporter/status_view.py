"""The status page's verdicts, computed apart from the HTML so they can be tested as data.

Per service: this exporter's view of each region (up / down / isolated / pending), a cell per
(region, image) whose p50/p95 come only from targets whose latest probe succeeded, and the
ranking per region with ties marked by the same rule the docs give for the bundle.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable

from exporter.metrics import Role
from exporter.model import Config
from exporter.state import TargetState, _nearest_rank

# Two images are reported tied when the slower one's p50 is within this of the next faster one's,
# the rule of the bundle's ranking (prometheus/rules/global.rules.yml), so the status page and
# Grafana never disagree. 0.05 ms, not more: images 10 % apart at 1 ms must not tie.
TIE_RELATIVE = 0.03
TIE_ABSOLUTE = 0.00005


@dataclasses.dataclass(frozen=True, slots=True)
class Cell:
    image: str
    verdict: str  # healthy / failing / partial / pending / not probed
    ok: int
    done: int
    p50: float | None
    p95: float | None
    reasons: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Rank:
    image: str
    rank: int
    tied: bool
    p50: float


@dataclasses.dataclass(frozen=True, slots=True)
class RegionView:
    name: str
    role: str
    priority: int
    maintenance: bool
    state: str  # up / down / isolated / pending
    cells: tuple[Cell, ...]
    ranking: tuple[Rank, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    images: tuple[str, ...]
    regions: tuple[RegionView, ...]


def isolated_vantages(states: Iterable[TargetState]) -> set[str]:
    """Vantages whose control targets have all failed their latest probe: what such a vantage
    sees of the regions says nothing about them (the quorum does not count it either)."""
    verdicts: dict[str, list[bool]] = collections.defaultdict(list)
    for st in states:
        if st.target.role == Role.CONTROL and st.last is not None:
            verdicts[st.target.vantage].append(st.last.success)
    return {v for v, oks in verdicts.items() if oks and not any(oks)}


def cell(image: str, states: list[TargetState]) -> Cell:
    if not states:
        return Cell(image, "not probed", 0, 0, None, None, ())
    done = [s for s in states if s.last is not None]
    good = [s for s in done if s.last is not None and s.last.success]
    if not done:
        verdict = "pending"
    elif len(good) == len(done):
        verdict = "healthy"
    elif not good:
        verdict = "failing"
    else:
        verdict = "partial"
    # Only targets whose latest probe succeeded: a failing target's ring still holds the
    # latencies of before the failure, which would read as a live figure.
    samples = sorted(d for s in good for d in s.recent)
    p50 = _nearest_rank(samples, 0.50) if samples else None
    p95 = _nearest_rank(samples, 0.95) if samples else None
    reasons = tuple(sorted({s.last.reason for s in done if s.last and s.last.reason}))
    return Cell(image, verdict, len(good), len(done), p50, p95, reasons)


def tied(faster: float, slower: float) -> bool:
    return slower - faster <= max(TIE_RELATIVE * faster, TIE_ABSOLUTE)


def ranking(cells: Iterable[Cell]) -> tuple[Rank, ...]:
    """Images with a live p50, fastest first. An image tied with the next faster one shares its
    rank (1, 1, 3), and every member of a tie group is marked."""
    live = sorted((c for c in cells if c.p50 is not None), key=lambda c: (c.p50, c.image))
    ranks: list[int] = []
    ties: list[bool] = [False] * len(live)
    for i, c in enumerate(live):
        prev = live[i - 1].p50 if i else None
        assert c.p50 is not None
        if prev is not None and tied(prev, c.p50):
            ranks.append(ranks[-1])
            ties[i] = ties[i - 1] = True
        else:
            ranks.append(i + 1)
    return tuple(
        Rank(c.image, r, t, c.p50 or 0.0) for c, r, t in zip(live, ranks, ties, strict=True)
    )


def region_state(states: list[TargetState], isolated: set[str]) -> str:
    by_vantage: dict[str, list[bool]] = collections.defaultdict(list)
    for st in states:
        if st.last is not None:
            by_vantage[st.target.vantage].append(st.last.success)
    if not by_vantage:
        return "pending"
    counted = {v: oks for v, oks in by_vantage.items() if v not in isolated}
    if not counted:
        return "isolated"
    return "up" if any(any(oks) for oks in counted.values()) else "down"


def build(
    cfg: Config, states: list[TargetState], in_maintenance: Callable[[str, str], bool]
) -> list[ServiceView]:
    isolated = isolated_vantages(states)
    by_cell: dict[tuple[str, str, str], list[TargetState]] = collections.defaultdict(list)
    for st in states:
        t = st.target
        if t.role != Role.CONTROL:
            by_cell[(t.service, t.region, t.image)].append(st)
    out = []
    for service in cfg.services:
        regions = sorted((r for r in cfg.regions if r.service == service), key=lambda r: r.priority)
        images = tuple(i.name for i in cfg.images if i.service == service)
        views = []
        for r in regions:
            cells = tuple(cell(i, by_cell.get((service, r.name, i), [])) for i in images)
            in_region = [s for i in images for s in by_cell.get((service, r.name, i), [])]
            views.append(
                RegionView(
                    name=r.name,
                    role=str(r.role),
                    priority=r.priority,
                    maintenance=in_maintenance(service, r.name),
                    state=region_state(in_region, isolated),
                    cells=cells,
                    ranking=ranking(cells),
                )
            )
        out.append(ServiceView(service, images, tuple(views)))
    return out
