"""exporter/history.py: what the status page lists, and what it must let go on reload."""

from __future__ import annotations

import dataclasses

import pytest

from exporter.history import History
from exporter.model import Target
from exporter.state import outcome
from tests.conftest import MakeConfig, one_service
from tests.support.results import result


@pytest.fixture
def targets(make_config: MakeConfig) -> tuple[Target, ...]:
    probe = "{kind: tcp, address: '127.0.0.1:1'}"
    return make_config(one_service({"a": probe, "b": probe})).targets


def test_failures_are_kept_apart_and_longer(targets: tuple[Target, ...]) -> None:
    a = targets[0]
    history = History(recent=2, failures=3)
    for reason in ("connect", None, None, "tls"):
        history.remember(result(a, 0.1, reason), None)
    assert [r.reason for r in history.recent] == [None, "tls"]
    assert [r.reason for r in history.failures] == ["connect", "tls"]


def test_transitions_are_logged_once(
    targets: tuple[Target, ...], caplog: pytest.LogCaptureFixture
) -> None:
    a = targets[0]
    history = History()
    caplog.set_level("INFO", "exporter.scheduler")
    history.remember(result(a, 0.1, "connect"), None)
    history.remember(result(a, 0.1, "connect"), outcome(False, "connect"))
    history.remember(result(a, 0.1), outcome(False, "connect"))
    assert [r.getMessage() for r in caplog.records] == ["target failing", "target recovered"]


def test_replaced_and_removed_targets_are_forgotten(targets: tuple[Target, ...]) -> None:
    a, b = targets
    history = History()
    history.remember(result(a, 0.1, "connect"), None)
    history.remember(result(b, 0.1, "connect"), None)
    changed = dataclasses.replace(a, interval=a.interval * 2)
    history.forget_replaced({changed.key: changed})
    assert list(history.recent) == []
    assert list(history.failures) == []
    history.remember(result(changed, 0.1), None)
    history.forget_replaced({changed.key: changed})
    assert [r.target for r in history.recent] == [changed]
