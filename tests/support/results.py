"""Probe results built by hand, for tests of what state and views make of them."""

from __future__ import annotations

from exporter.metrics import HTTP_STATUS
from exporter.model import Target
from exporter.state import Result


def result(
    target: Target,
    duration: float,
    reason: str | None = None,
    *,
    message: str | None = None,
    phases: dict[str, float] | None = None,
    debug: list[str] | None = None,
) -> Result:
    """A result at a fixed time: a success when `reason` is None, else that failure."""
    return Result(
        target=target,
        started=1_700_000_000.0,
        duration=duration,
        success=reason is None,
        reason=reason,
        message=message if message is not None else ("ok" if reason is None else "refused"),
        phases=phases if phases is not None else {"connect": duration / 2},
        debug=debug if debug is not None else ["a debug line"],
        gauges={HTTP_STATUS.name: 200.0} if reason is None and target.kind == "http" else {},
    )
