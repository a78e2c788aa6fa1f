"""rfc3339 keeps the last second's text: the cached path must write what strftime would."""

from __future__ import annotations

import time

from exporter.log import rfc3339


def _reference(ts: float) -> str:
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}Z"


def test_rfc3339_matches_strftime_across_second_boundaries() -> None:
    base = 1_764_750_000.0
    # Same second twice (cache hit), the next second, back again, and sub-millisecond edges.
    stamps = [base, base + 0.5, base + 0.9995, base + 1.0, base + 0.25, base + 86_400.001, 0.0]
    for ts in stamps:
        assert rfc3339(ts) == _reference(ts), ts
    assert rfc3339(base + 1.0) == "2025-12-03T08:20:01.000Z"
