"""Fleet scale: memory per target, scrape bytes per target and config load time at 1,000 /
10,000 / 50,000 targets, printed as a table (docs/performance.md).

usage: .venv/bin/python perf/scale.py [SIZES] (default 1000,10000,50000)

Each size is one template (4 regions × 5 images × N/20 endpoints) of tcp probes at a 10 min
interval to a closed loopback port, so the probe rate stays far under one core (50,000 targets
= 83 probes/s) and what is measured is the exporter holding and exposing the targets. Memory is
the RSS of a real `failover-exporter run` after its first scrape, less the RSS of the same
exporter with 20 targets; load time is `config.load` in this process (parse, validate, build).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter import config  # noqa: E402

REGIONS, IMAGES = 4, 5


def config_text(targets: int) -> str:
    endpoints = max(1, targets // (REGIONS * IMAGES))
    regions = "\n".join(
        f"      - {{name: r{i}, role: {'primary' if i == 0 else 'standby'}, priority: {i + 1}}}"
        for i in range(REGIONS)
    )
    images = "\n".join(f"      - {{name: i{i}, ref: 'x:{i}'}}" for i in range(IMAGES))
    return (
        "vantage: bench\n"
        "defaults: {interval: 10m, timeout: 1s}\n"
        "services:\n"
        "  - name: shop\n"
        "    labels: {team: payments}\n"
        f"    regions:\n{regions}\n"
        f"    images:\n{images}\n"
        "    templates:\n"
        '      - name: "{image}-{region}-{n}"\n'
        f"        dimensions: {{n: [{', '.join(str(n) for n in range(endpoints))}]}}\n"
        '        probe: {kind: tcp, address: "127.0.0.1:9"}\n'
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run_exporter(path: Path, work: Path) -> tuple[int, int]:
    """RSS (KiB) after the first scrape and the scrape's size in bytes."""
    log = work / f"{path.stem}.log"
    argv = [sys.executable, "-m", "exporter", "run", "--config", str(path)]
    argv += ["--web.listen-address", "127.0.0.1:0", "--log.format", "json", "--log.level", "info"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(3000):  # up to 5 min: 50,000 targets load in well under that
            for line in log.read_text().splitlines():
                entry = json.loads(line) if line.startswith("{") else {}
                if entry.get("msg") == "listening":
                    port = int(entry["address"].rsplit(":", 1)[1])
            if port is not None or proc.poll() is not None:
                break
            time.sleep(0.1)
        if port is None:
            raise RuntimeError(log.read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as resp:
            size = len(resp.read())
        return rss_kib(proc.pid), size
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1000,10000,50000").split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_path = work / "base.yml"
        base_path.write_text(config_text(REGIONS * IMAGES))
        base_rss, base_bytes = run_exporter(base_path, work)
        rows = []
        for n in sizes:
            path = work / f"t{n}.yml"
            path.write_text(config_text(n))
            start = time.process_time()
            cfg = config.load(path)
            load = time.process_time() - start
            rss, size = run_exporter(path, work)
            count = len(cfg.targets)
            rows.append(
                (
                    count,
                    load,
                    load / count * 1e6,
                    (rss - base_rss) * 1024 / (count - REGIONS * IMAGES),
                    size / count,
                    rss / 1024,
                    size / 1e6,
                )
            )
    print(
        f"baseline ({REGIONS * IMAGES} targets): RSS {base_rss / 1024:.1f} MiB, "
        f"scrape {base_bytes / 1e3:.1f} kB; load {os.cpu_count()} CPUs, load average "
        + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    )
    print(
        "| targets | config load s (CPU) | load µs/target | memory bytes/target "
        "| scrape bytes/target | RSS MiB | scrape MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for count, load, per, mem, scrape, rss, size in rows:
        print(
            f"| {count:,} | {load:.2f} | {per:.0f} | {mem:,.0f} | {scrape:,.0f} | {rss:.0f} "
            f"| {size:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
