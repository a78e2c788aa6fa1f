"""The tcp probe against the wire: its reported latency vs the packet capture, beside http's.

The same topology, target and ground truth as perf/run.py (`make bench`): two network
namespaces on a veth pair, perf/target.c answering 10 ms after the request, tcpdump on the
client-side veth. The tcp probe sends an HTTP request (`send`, with ?id=N so its packets join
to its log line) and `expect`s the answer, so the truth is the same as for http: handshake
round trip (SYN -> SYN-ACK) plus request packet -> last response byte. Each rate runs the tcp
probe and then, for comparison, the http probe.

Needs root. Run as: .venv/bin/python perf/tcp_wire.py [--rates 100,1000] [--secs 10]
  [--exporter-src DIR]  (another checkout's exporter/, e.g. to measure a commit before a change)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402

SEND = "GET /?id={i} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n"
EXPECT = "^HTTP/1\\.1 200 OK"


def tcp_config(ids: range, interval: float, timeout: float) -> str:
    lines = bench.config_text([], interval, timeout).splitlines()
    address = f"{bench.SRV_ADDR}:{bench.TARGET_PORT}"
    for i in ids:
        send = SEND.format(i=i, host=bench.SRV_ADDR)
        probe = f"{{kind: tcp, address: '{address}', send: '{send}', expect: '{EXPECT}'}}"
        lines.append(f"      - {{name: t{i}, region: r1, image: i1, probe: {probe}}}")
    return "\n".join(lines) + "\n"


async def run_tcp(env: bench.Env, rate: int, secs: float) -> dict[str, Any]:
    """perf/run.py's run_ours with tcp targets: `rate` targets at a 1 s interval."""
    interval = 1.0
    ids = range(rate)
    with env.capture(f"tcp-{rate}") as cap:
        ours = bench.Ours(env, ids, interval, 0.5)
        ours.cfg.write_text(tcp_config(ids, interval, 0.5))
        async with ours:
            await asyncio.sleep(env.prof["warm"] + interval)
            t0, c0 = time.time(), bench.cpu_seconds(ours.proc.pid)
            await asyncio.sleep(secs)
            t1, c1 = time.time(), bench.cpu_seconds(ours.proc.pid)
            rss = bench.status_kib(ours.proc.pid, "VmRSS")
            await asyncio.sleep(0.6)  # let probes started in the window finish
            sm = await ours.self_metrics()
    recs = [r for r in ours.records() if t0 <= r["started"] < t1]
    pairs = bench.join_ours([r for r in recs if r["success"]], cap.get("conns", []))
    ok = sum(1 for r in recs if r["success"])
    return bench.summarize(
        "tcp",
        rate,
        expected=len(ids) * (t1 - t0) / interval,
        ok=ok,
        failed=len(recs) - ok,
        skipped=sum(v for k, v in sm.items() if "skipped_total" in k),
        errors=[r["duration"] - c.truth for r, c in pairs],
        gaps=[c.client_gap for _, c in pairs],
        truths=[c.truth for _, c in pairs],
        delays=[r["start_delay"] for r in recs],
        cpu=(c1 - c0) / (t1 - t0),
        rss_kib=rss,
        dropped=cap.get("dropped"),
        extra={"loop": env.loop},
    )


def wrapper(work: Path, src: str) -> str:
    """A command that runs another checkout's exporter/ with this venv's packages."""
    path = work / "exporter-src"
    path.write_text(
        f'#!/bin/sh\nPYTHONPATH={Path(src).resolve()} exec {sys.executable} -m exporter "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


async def inner(a: argparse.Namespace) -> int:
    env = bench.Env(a)
    if a.exporter_src:
        env.exporter = wrapper(env.work, a.exporter_src)
    os.sched_setaffinity(0, {env.other_cpu})
    rates = [int(r) for r in a.rates.split(",")]
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": bench.machine(),
        "commit": a.commit,
        "exporter_src": a.exporter_src,
        "loop": env.loop,
        "runs": [],
    }
    with env.target():
        for rate in rates:
            for fn in (run_tcp, bench.run_ours):
                try:
                    got = await asyncio.wait_for(fn(env, rate, a.secs), bench.PHASE_TIMEOUT)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    bench.log(f"{fn.__name__} {rate}/s FAILED: {exc}"[:500])
                    got = {"tool": fn.__name__, "rate": rate, "run_error": str(exc)[:500]}
                res["runs"].append({**got, "tool": "tcp" if fn is run_tcp else "http"})
    res["machine"]["loadavg_at_end"] = bench.loadavg()
    rows = ["| probe @ rate | error vs wire p50 / p99 / max (ms) | joined | truth p50 (ms) | CPU |"]
    rows.append("|---|---|---|---|---|")
    for r in res["runs"]:
        if "run_error" in r:
            rows.append(f"| {r['tool']} @ {r['rate']}/s | run failed | | | |")
            continue
        e = r["error"]
        rows.append(
            f"| {r['tool']} @ {r['rate']}/s | {e['p50_ms']} / {e['p99_ms']} / {e['max_ms']} | "
            f"{r['joined_to_pcap']}/{r['ok']} | {r['truth']['p50_ms']} | {r['cpu']} |"
        )
    res["table"] = "\n".join(rows)
    bench.write_json(Path(a.json), res)
    print(res["table"])
    bench.log(f"JSON written to {a.json}; load {res['machine']['loadavg_at_start']} -> "
              f"{res['machine']['loadavg_at_end']}")  # fmt: skip
    return 0


def outer(a: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        bench.log("needs root: network namespaces and tcpdump")
        return 2
    absent = [t for t in ("ip", "taskset", "tcpdump", "cc") if shutil.which(t) is None]
    if absent:
        bench.log(f"missing: {' '.join(absent)} (perf/system-deps installs them)")
        return 2
    tag = f"fxt{os.getpid()}"
    cli, srv, veth_c, veth_s = f"{tag}c", f"{tag}s", f"{tag}a", f"{tag}b"
    work = Path(tempfile.mkdtemp(prefix="fxtcpwire-"))
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    try:
        bench.sh("cc", "-O2", "-o", str(work / "target"), str(HERE / "target.c"))
        bench.sh("ip", "netns", "add", cli)
        bench.sh("ip", "netns", "add", srv)
        bench.sh("ip", "link", "add", "name", veth_c, "netns", cli, "type", "veth",
                 "peer", "name", veth_s, "netns", srv)  # fmt: skip
        for ns, dev, addr in ((cli, veth_c, bench.CLI_ADDR), (srv, veth_s, bench.SRV_ADDR)):
            bench.sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            bench.sh("ip", "-n", ns, "link", "set", dev, "up")
            bench.sh("ip", "-n", ns, "link", "set", "lo", "up")
        bench.sh("ip", "netns", "exec", cli, "sysctl", "-q", "-w",
                 "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1")  # fmt: skip
        bench.sh("ip", "netns", "exec", srv, "sysctl", "-q", "-w", "net.core.somaxconn=8192",
                 "net.ipv4.tcp_max_syn_backlog=8192")  # fmt: skip
        cmd = [
            "ip", "netns", "exec", cli, sys.executable, str(Path(__file__).resolve()), "--inner",
            "--srv-ns", srv, "--veth", veth_c, "--work", str(work), "--rates", a.rates,
            "--secs", str(a.secs), "--json", str(Path(a.json).resolve()), "--commit", commit,
            "--loops", a.loops, *(["--exporter-src", a.exporter_src] if a.exporter_src else []),
        ]  # fmt: skip
        return subprocess.run(
            cmd, check=False, timeout=a.timeout, preexec_fn=bench._die_with_parent
        ).returncode
    finally:
        for ns in (cli, srv):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="100,1000", help="probes per second, e.g. 100,1000")
    p.add_argument("--secs", type=float, default=10, help="measured seconds per run (10)")
    p.add_argument("--loops", default="uvloop", help="our exporter's event loop (uvloop)")
    p.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "tcp_wire.json"))
    p.add_argument("--exporter-src", help="a checkout whose exporter/ to run instead")
    p.add_argument("--timeout", type=float, default=600, help="whole run, seconds (600)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--srv-ns", help=argparse.SUPPRESS)
    p.add_argument("--veth", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--commit", help=argparse.SUPPRESS)
    a = p.parse_args()
    # What perf/run.py's Env reads.
    a.profile, a.sizes = "full", None
    if a.inner:
        return asyncio.run(inner(a))
    return outer(a)


if __name__ == "__main__":
    sys.exit(main())
