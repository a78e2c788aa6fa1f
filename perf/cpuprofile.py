"""Where one probe's CPU goes: the exporter's engine in-process under cProfile (CPU-time clock,
so time spent preempted by other processes is not counted) against the C target on loopback.

usage: .venv/bin/python perf/cpuprofile.py [TARGETS] [SECONDS] [asyncio|uvloop] [--no-profile]
(defaults 1000 targets, 5 s, asyncio). Prints CPU per probe split by where the code lives, then the
top functions by own time; with --no-profile only the CPU per probe, which the profiler inflates.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import logging
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402

from exporter import config  # noqa: E402
from exporter.engine import Engine  # noqa: E402

AREAS = (
    ("exporter/", "exporter (scheduler, http probe, state)"),
    ("aiohappyeyeballs", "aiohappyeyeballs (connect)"),
    ("aiohttp/", "aiohttp client"),
    ("asyncio/", "asyncio event loop"),
    ("selectors", "asyncio event loop"),
    ("prometheus_client", "prometheus_client"),
    ("logging", "logging"),
)


def area(filename: str) -> str:
    for needle, name in AREAS:
        if needle in filename:
            return name
    return "builtins, sockets, other" if filename == "~" else "other Python"


async def measure(
    cfg_path: Path, secs: float, profile: bool
) -> tuple[pstats.Stats | None, float, int]:
    engine = Engine()
    engine.start(config.load(cfg_path))
    # As `failover-exporter` does after start-up (cli.serve): the start-up heap is never scanned.
    gc.collect()
    gc.freeze()
    try:
        await asyncio.sleep(1.5)
        before = sum(s.probes for s in engine.scheduler.states.values())
        prof = cProfile.Profile(time.process_time)
        c0 = time.process_time()
        if profile:
            prof.enable()
        await asyncio.sleep(secs)
        prof.disable()
        cpu = time.process_time() - c0
        probes = sum(s.probes for s in engine.scheduler.states.values()) - before
    finally:
        await engine.aclose()
    return (pstats.Stats(prof) if profile else None), cpu, probes


def main() -> int:
    argv = [a for a in sys.argv[1:] if a != "--no-profile"]
    profile = "--no-profile" not in sys.argv
    n = int(argv[0]) if len(argv) > 0 else 1000
    secs = float(argv[1]) if len(argv) > 1 else 5.0
    loop = argv[2] if len(argv) > 2 else "asyncio"
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    logging.disable(logging.WARNING)
    prober, other = bench.cpus()
    os.sched_setaffinity(0, {prober})
    work = Path(tempfile.mkdtemp(prefix="fxprofile-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(["cc", "-O2", "-o", str(work / "target"), str(HERE / "target.c")], check=True)
    target = subprocess.Popen(
        ["taskset", "-c", str(other), str(work / "target"), "127.0.0.1", str(port), "10000"],
        stdout=subprocess.PIPE,
    )
    try:
        assert target.stdout is not None
        target.stdout.readline()
        cfg = work / "profile.yml"
        cfg.write_text(
            bench.config_text(range(n), 1.0, 0.5).replace(
                f"{bench.SRV_ADDR}:{bench.TARGET_PORT}", f"127.0.0.1:{port}"
            )
        )
        with asyncio.Runner(loop_factory=factory) as runner:
            stats, cpu, probes = runner.run(measure(cfg, secs, profile))
    finally:
        target.terminate()
        target.wait(5)
        shutil.rmtree(work, ignore_errors=True)
    per_probe = 1000 * cpu / max(probes, 1)
    print(f"{n} targets at 1 s for {secs:g} s on {loop}: {probes} probes, CPU {cpu:.2f} s "
          f"({cpu / secs:.0%} of one core), {per_probe:.3f} ms CPU per probe")  # fmt: skip
    if stats is None:
        return 0
    per_area: dict[str, float] = defaultdict(float)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        per_area[area(filename)] += tottime
    total = sum(per_area.values()) or 1.0
    for name, t in sorted(per_area.items(), key=lambda kv: -kv[1]):
        print(f"  {name:45} {1000 * t / max(probes, 1):7.3f} ms/probe  {t / total:6.1%}")
    stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
