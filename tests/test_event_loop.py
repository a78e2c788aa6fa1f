"""`--event-loop`: the exporter run as a subprocess on each loop, probing and serving /metrics."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from exporter import cli
from tests.support.configs import config_text
from tests.support.daemon import daemon, poll_metrics, probes_by_target, run
from tests.support.servers import StartServer, counting_server
from tests.tools import missing

__all__ = ["counting_server"]  # a fixture, re-exported for the tests below


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_run_on_each_loop_probes_and_serves_metrics(
    counting_server: StartServer, tmp_path: Path, loop: str
) -> None:
    if loop == "uvloop" and cli.loop_factory("auto") is None:
        missing("uvloop (pip install '.[uvloop]')")
    srv = await counting_server()
    path = tmp_path / "config.yml"
    path.write_text(config_text({"a": srv.url("a")}, "interval: 200ms, timeout: 100ms"))
    args = ("--config", str(path), "--web.listen-address", "127.0.0.1:0", f"--event-loop={loop}")
    async with daemon(*args) as d:
        await d.listening()
        samples = await poll_metrics(d, lambda s: probes_by_target(s).get("a", 0) >= 2, 10)
        ok = {lb["target"]: v for lb, v in samples["failover_probe_success"]}
        assert ok["a"] == 1.0
        code = await d.stop(signal.SIGTERM)
    assert code == 0, d.log
    assert f'msg="event loop" loop={loop}' in d.log
    assert "Traceback" not in d.log


def test_event_loop_flag_in_help() -> None:
    for command in ("run", "demo"):
        result = run(command, "--help")
        assert result.returncode == 0
        assert "--event-loop" in result.stdout
        assert "uvloop" in result.stdout


def test_unknown_event_loop_rejected(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "none.yml"), "--event-loop=trio")
    assert result.returncode == 2
    assert "invalid choice: 'trio'" in result.stderr
