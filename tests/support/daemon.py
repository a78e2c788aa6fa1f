"""The installed `failover-exporter` run as a user runs it: one-shot commands and daemons.

`run` is a one-shot subprocess; `daemon` a running exporter with its stderr collected line by
line, scraped with `poll_metrics` until a condition holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

EXE = str(Path(sys.executable).parent / "failover-exporter")


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Daemon:
    """A running `failover-exporter` with its stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            match = re.search(r"msg=listening address=\S*:(\d+)", text)
            if match:
                self.port = int(match.group(1))
                self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def listening(self, timeout: float = 20) -> int:
        waiter = asyncio.create_task(self._listening.wait())
        # The reader ends first if the daemon exits before listening.
        await asyncio.wait(
            {waiter, self._reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        assert self._listening.is_set(), f"daemon not listening:\n{self.log}"
        return self.port

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return code

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as resp,
        ):
            return resp.status, await resp.text()

    async def post(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{self.port}{path}") as resp,
        ):
            return resp.status, await resp.text()


@contextlib.asynccontextmanager
async def daemon(*args: str) -> AsyncIterator[Daemon]:
    proc = await asyncio.create_subprocess_exec(
        EXE, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    d = Daemon(proc)
    try:
        yield d
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        d._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await d._reader


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


async def poll_metrics(d: Daemon, ready: object, timeout: float) -> Samples:
    """Scrape until `ready(samples)` is true; bounded by `timeout` seconds."""
    assert callable(ready)
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        status, text = await d.get("/metrics")
        assert status == 200
        samples = parse(text)
        if ready(samples):
            return samples
        await asyncio.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout}s; last scrape: {sorted(samples)}")


def probes_by_target(samples: Samples) -> dict[str, float]:
    return {labels["target"]: v for labels, v in samples.get("failover_probes_total", [])}
