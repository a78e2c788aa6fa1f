"""Helpers shared by the test suite."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """Skip loudly when a real component is absent locally; under CI=true that is a failure."""
    message = f"MISSING COMPONENT: {what} (.ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def need(binary: str) -> str:
    """Return the path of a required binary, or skip/fail as `missing` says."""
    path = shutil.which(binary)
    if path is None:
        missing(f"{binary} not found on PATH")
    assert path is not None
    return path


def listening_port(proc: subprocess.Popen[bytes], log_path: Path) -> int | None:
    """The port a `failover-exporter` started with `--log.format json` bound, read from its
    "listening" log line; None if it exited first or gave no such line within 15 s."""
    for _ in range(300):
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("msg") == "listening":
                    return int(entry["address"].rsplit(":", 1)[1])
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None
