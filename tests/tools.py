"""Helpers shared by the test suite."""

from __future__ import annotations

import os
import shutil

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
