"""Two minutes of the soak in tests/soak.py (`make soak` runs thirty): a real exporter process on a
few hundred healthy and hostile targets, reloaded and scraped throughout, whose RSS, open file
descriptors and asyncio tasks must stay flat from the first quarter of the run to the last."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import soak
from tests.tools import missing


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_two_minute_soak_stays_flat(tmp_path: Path) -> None:
    if not soak.EXE.exists():
        missing(f"the failover-exporter console script at {soak.EXE}")
    opts = soak.Options(duration=120, reload_every=8)
    summary = await soak.soak(opts, tmp_path / "soak.json")
    print("\n" + soak.report(summary))
    assert (tmp_path / "soak.json").exists()
    assert summary["reloads"]["good"] >= 10, summary["reloads"]
    assert summary["reloads"]["broken"] >= 3, summary["reloads"]
    assert summary["ok"], summary["failures"]
