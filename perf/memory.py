"""Where a target's bytes go: tracemalloc, per source file, at 1,000 and 10,000 targets.

    .venv/bin/python perf/memory.py [SIZES] [--top N]     (default 1000,10000, top 12)

Targets are built in-process the way perf/render.py builds them (a bench-like config of http
targets parsed and validated, one TargetState each fed five probe Results shaped like the http
probe's), inside a tracemalloc window; the difference of the snapshots, grouped by the file that
allocated, divided by the target count, is the Python heap a target costs and who holds it.
The exporter's start-up objects (imports, the engine) are outside the window. RSS per target
of a real exporter is in perf/scale.py; this says where it goes.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import render  # noqa: E402


def short(filename: str) -> str:
    for marker in ("site-packages/", "/exporter/", "/lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return ("exporter/" + tail) if marker == "/exporter/" else tail
    return filename


def measure(n: int, top: int) -> None:
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    states, engine = render.build_states(n)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = after.compare_to(before, "filename")
    lines = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff)
    print(f"\n{n:,} targets: {total / n:,.0f} bytes a target of Python heap (tracemalloc)")
    print("| allocated in | bytes/target | share |")
    print("|---|---|---|")
    for d in sorted(diff, key=lambda d: -d.size_diff)[:top]:
        name = short(d.traceback[0].filename)
        print(f"| {name} | {d.size_diff / n:,.0f} | {d.size_diff / total:.0%} |")
    print(f"\ntop {top} lines at {n:,} targets")
    print("| line | bytes/target |")
    print("|---|---|")
    for d in sorted(lines, key=lambda d: -d.size_diff)[:top]:
        frame = d.traceback[0]
        print(f"| {short(frame.filename)}:{frame.lineno} | {d.size_diff / n:,.0f} |")
    del states, engine


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sizes", nargs="?", default="1000,10000")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    for n in (int(s) for s in a.sizes.split(",")):
        measure(n, a.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
