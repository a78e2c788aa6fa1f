"""The recent probe results the status page lists, and the failing/recovered log lines.

Failures are kept longer than successes: they are what an operator comes to look at.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping

from exporter.model import Target
from exporter.state import Outcome, Result

log = logging.getLogger("exporter.scheduler")

RECENT = 100
RECENT_FAILURES = 200


class History:
    def __init__(self, recent: int = RECENT, failures: int = RECENT_FAILURES) -> None:
        self.recent: collections.deque[Result] = collections.deque(maxlen=recent)
        self.failures: collections.deque[Result] = collections.deque(maxlen=failures)

    def remember(self, result: Result, previous: Outcome | None) -> None:
        """Keep `result`; log when its target starts failing or recovers (vs `previous`)."""
        self.recent.append(result)
        if not result.success:
            self.failures.append(result)
        was_ok = previous is None or previous.success
        if was_ok and not result.success:
            log.warning(
                "target failing",
                extra={
                    "target": result.target.name,
                    "vantage": result.target.vantage,
                    "reason": result.reason,
                    "error": result.message,
                },
            )
        elif not was_ok and result.success:
            log.info(
                "target recovered",
                extra={"target": result.target.name, "vantage": result.target.vantage},
            )

    def forget_replaced(self, targets: Mapping[tuple[str, str, str], Target]) -> None:
        """Drop results of targets no longer in `targets` (removed, or changed): they would keep
        their old settings, TLS contexts and secrets alive until newer results pushed them out."""
        for ring in (self.recent, self.failures):
            kept = [r for r in ring if targets.get(r.target.key) is r.target]
            if len(kept) != len(ring):
                ring.clear()
                ring.extend(kept)
