"""`make bench`: failover_exporter against Debian's prometheus-blackbox-exporter, side by side.

Topology: two private network namespaces joined by a veth pair (no route anywhere else). The
ground-truth target (perf/target.c, answers 10 ms after the request) lives in the server
namespace; the prober under test (our exporter, or blackbox_exporter) in the client namespace,
pinned to CPU 0; target, tcpdump and this harness (blackbox's load driver) on CPU 1.

Ground truth is the packet capture on the client-side veth, per probe: TCP handshake round trip
(SYN -> SYN-ACK) plus server time (request packet -> last response byte). The prober's own gap
between SYN-ACK and its request is its scheduling delay and counts as its error. Every probe URL
carries ?id=N so a prober's reported value can be joined to the packets of that probe.

The pass rule is the same for both probers: every due probe completed, none failed or skipped,
start delay p99 <= 10 ms (as the prober or driver measured it, and due -> SYN on the wire).
Saturation: ours offered more than its core runs, blackbox driven closed-loop; CPU per probe is
CPU seconds over probes actually completed.

Needs root (namespaces, tcpdump). Run as: .venv/bin/python perf/run.py [--profile full|quick|smoke]
Every phase is bounded in probe count and wall time; all traffic stays in the namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gzip
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import pcap  # noqa: E402

CLI_ADDR, SRV_ADDR, TARGET_PORT = "10.213.0.1", "10.213.0.2", 8080
OURS_PORT, BB_PORT = 10077, 9115
TARGET_DELAY_US = 10_000
PHASE_TIMEOUT = 120  # no single prober run may take longer than this, whatever happens
SATURATION_TIMEOUT = 240
# Keep captures and logs for a post-mortem (FXBENCH_KEEP=1).
KEEP = os.environ.get("FXBENCH_KEEP") == "1"

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "accuracy_rates": [100, 1000, 2500],
        "accuracy_secs": 10,
        # Saturation: ours offered more than one core runs (the scheduler skips what it cannot
        # start); blackbox driven closed-loop with this many probes always in flight.
        "sat_ours": 8000,
        "sat_bb_conns": 64,
        "sat_secs": 8,
        # The sustained-rate ladder: fractions of each prober's own saturation throughput,
        # climbed until the first rung that fails the pass rule.
        "ladder": [0.15, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3],
        "ladder_secs": 8,
        "scrape_sizes": [100, 1000, 10000],
        "scrapes": 3,
        "baseline_secs": 3.0,
        "churn_secs": 120,
        "churn_period": 3.0,
        "churn_targets": 1000,
        "warm": 2.0,
        # Our exporter's event loops (--event-loop); scrape and churn use the first.
        "loops": ["uvloop", "asyncio"],
    },
    # The quiet-machine run of docs/performance.md: every measure of the table, one loop,
    # shorter windows and a coarser ladder; about 8-10 minutes with perf/scale.py.
    "quick": {
        "accuracy_rates": [100, 1000],
        "accuracy_secs": 6,
        "sat_ours": 4000,
        "sat_bb_conns": 64,
        "sat_secs": 6,
        "ladder": [0.15, 0.3, 0.5, 0.7, 0.85, 1.0, 1.15],
        "ladder_secs": 6,
        "scrape_sizes": [1000, 10000],
        "scrapes": 2,
        "baseline_secs": 2.0,
        "churn_secs": 30,
        "churn_period": 3.0,
        "churn_targets": 1000,
        "warm": 2.0,
        "loops": ["uvloop"],
    },
    "smoke": {
        "accuracy_rates": [50],
        "accuracy_secs": 1,
        # One small saturation run and one rung each, so that those paths cannot rot either.
        "sat_ours": 200,
        "sat_bb_conns": 4,
        "sat_secs": 1,
        "ladder": [0.25],
        "ladder_secs": 1,
        "scrape_sizes": [50],
        "scrapes": 1,
        "baseline_secs": 1.0,
        "churn_secs": 3,
        "churn_period": 1.0,
        "churn_targets": 50,
        "warm": 0.5,
        "loops": ["auto"],
    },
}

# Probe rates of the scrape and churn runs: well inside what the exporter sustains, so that the
# figures show the scrape's and the reload's own cost.
SCRAPE_RATE = 500
CHURN_INTERVAL = 4.0

# The pass rule, the same for both probers (issue 20): every due probe completed, none failed or
# skipped, start delay p99 <= 10 ms. Accuracy is reported beside it, not part of it.
MAX_START_DELAY_P99 = 0.010
# Of the probes due in the window; the window's edges cut a few probes either way.
MIN_COMPLETED = 0.995
# Above this the driver's own loop, not blackbox, is late: the run is marked driver_limited.
DRIVER_LATE_P99 = 0.002


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return data[min(len(data) - 1, round(q * (len(data) - 1)))]


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def ms_stats(values: list[float]) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "p50_ms": r(pct(values, 0.5)),
        "p99_ms": r(pct(values, 0.99)),
        "max_ms": r(max(values) if values else None),
        "n": len(values),
    }


# -- outer: namespaces -------------------------------------------------------------------------


def sh(*args: str) -> None:
    subprocess.run(args, check=True, timeout=30)


def cpus() -> tuple[int, int]:
    """(prober core, everything-else core)."""
    avail = sorted(os.sched_getaffinity(0))
    return (avail[0], avail[1]) if len(avail) > 1 else (avail[0], avail[0])


def missing_tools() -> list[str]:
    tools = ["ip", "taskset", "tcpdump", "prometheus-blackbox-exporter", "cc"]
    return [t for t in tools if shutil.which(t) is None]


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        log("needs root: network namespaces and tcpdump")
        return 2
    absent = missing_tools()
    if absent:
        log(f"missing: {' '.join(absent)} (perf/system-deps installs them)")
        return 2
    tag = f"fxb{os.getpid()}"
    cli, srv, veth_c, veth_s = f"{tag}c", f"{tag}s", f"{tag}a", f"{tag}b"
    work = Path(tempfile.mkdtemp(prefix="fxbench-"))
    try:
        sh("cc", "-O2", "-o", str(work / "target"), str(HERE / "target.c"))
        sh("ip", "netns", "add", cli)
        sh("ip", "netns", "add", srv)
        sh("ip", "link", "add", "name", veth_c, "netns", cli, "type", "veth",
           "peer", "name", veth_s, "netns", srv)  # fmt: skip
        for ns, dev, addr in ((cli, veth_c, CLI_ADDR), (srv, veth_s, SRV_ADDR)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Only inside the namespaces: many short connections per second from one client.
        sh("ip", "netns", "exec", cli, "sysctl", "-q", "-w",
           "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1")  # fmt: skip
        sh("ip", "netns", "exec", srv, "sysctl", "-q", "-w", "net.core.somaxconn=8192",
           "net.ipv4.tcp_max_syn_backlog=8192")  # fmt: skip
        inner_cmd = [
            "ip", "netns", "exec", cli, sys.executable, str(Path(__file__).resolve()), "--inner",
            "--srv-ns", srv, "--veth", veth_c, "--work", str(work), "--profile", args.profile,
            "--json", str(Path(args.json).resolve()), *(["--only", args.only] if args.only else []),
            *(["--rates", args.rates] if args.rates else []),
            *(["--sizes", args.sizes] if args.sizes else []),
            *(["--loops", args.loops] if args.loops else []),
        ]  # fmt: skip
        return subprocess.run(
            inner_cmd,
            check=False,
            timeout=args.timeout or (780 if args.profile == "quick" else 1500),
            preexec_fn=_die_with_parent,
        ).returncode
    finally:
        for ns in (cli, srv):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        if KEEP:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# -- inner: processes ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Children get SIGKILL when the harness dies, however it dies: no prober outlives a run."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    """A child process pinned to one core; always stopped, by its own pid."""

    def __init__(self, cmd: list[str], cpu: int, ns: str | None = None, **kw: Any) -> None:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        # ip netns exec and taskset both exec: the pid is the program's own.
        self.p = subprocess.Popen(
            [*prefix, "taskset", "-c", str(cpu), *cmd],
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **kw,
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Env:
    def __init__(self, a: argparse.Namespace) -> None:
        self.srv_ns: str = a.srv_ns
        self.veth: str = a.veth
        self.work = Path(a.work)
        self.prof = dict(PROFILES[a.profile])
        if a.rates:
            self.prof["accuracy_rates"] = [int(r) for r in a.rates.split(",")]
        if a.sizes:
            self.prof["scrape_sizes"] = [int(n) for n in a.sizes.split(",")]
        if a.loops:
            self.prof["loops"] = a.loops.split(",")
        self.loop: str = self.prof["loops"][0]
        self.prober_cpu, self.other_cpu = cpus()
        self.exporter = str(Path(sys.executable).parent / "failover-exporter")

    @contextlib.contextmanager
    def capture(self, name: str) -> Iterator[dict[str, Any]]:
        """tcpdump on the client-side veth; yields a dict filled with the connections."""
        path = self.work / f"{name}.pcap"
        errpath = self.work / f"{name}.tcpdump.err"
        with errpath.open("wb") as err:
            proc = Proc(
                ["tcpdump", "-i", self.veth, "-n", "-s", "192", "-B", "65536", "-Z", "root",
                 # Without it packets in a half-filled ring block are lost at SIGINT.
                 "--immediate-mode",
                 "--time-stamp-precision", "nano", "-w", str(path), "tcp", "port",
                 str(TARGET_PORT)],
                self.other_cpu, stderr=err,
            )  # fmt: skip
        out: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + 10
            while b"listening on" not in errpath.read_bytes():
                if time.monotonic() > deadline or proc.p.poll() is not None:
                    raise RuntimeError(f"tcpdump did not start: {errpath.read_text()}")
                time.sleep(0.05)
            yield out
        finally:
            time.sleep(0.3)  # let the last packets reach tcpdump before it stops reading
            proc.stop(signal.SIGINT)
            text = errpath.read_text()
            dropped = [ln for ln in text.splitlines() if "dropped by kernel" in ln]
            out["dropped"] = int(dropped[0].split()[0]) if dropped else None
            if path.exists():
                out["conns"] = pcap.read(path, TARGET_PORT)
                if not KEEP:
                    path.unlink()

    @contextlib.contextmanager
    def target(self) -> Iterator[None]:
        proc = Proc(
            [str(self.work / "target"), SRV_ADDR, str(TARGET_PORT), str(TARGET_DELAY_US)],
            self.other_cpu, ns=self.srv_ns, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.p.stdout is not None
            if proc.p.stdout.readline().strip() != b"ready":
                raise RuntimeError("target server did not start")
            yield
        finally:
            proc.stop()


def config_text(
    ids: range | list[int], interval: float, timeout: float, concurrency: int = 4096
) -> str:
    lines = [
        "vantage: bench",
        f"defaults: {{interval: {interval}s, timeout: {timeout}s, max_concurrency: {concurrency}}}",
        "services:",
        "  - name: bench",
        "    regions: [{name: r1, role: primary, priority: 1}]",
        "    images: [{name: i1, ref: perf/target:1}]",
        "    targets:",
    ]
    url = f"http://{SRV_ADDR}:{TARGET_PORT}/?id="
    lines += [
        f"      - {{name: t{i}, region: r1, image: i1, probe: {{kind: http, url: '{url}{i}'}}}}"
        for i in ids
    ]
    return "\n".join(lines) + "\n"


async def http_get(
    host: str, port: int, path: str, headers: dict[str, str] | None = None, wait: float = 30
) -> tuple[int, bytes]:
    """A bare HTTP/1.1 GET: the harness's own client must cost little and hide nothing."""
    status, body, _ = await timed_get(host, port, path, headers, wait)
    return status, body


async def timed_get(
    host: str, port: int, path: str, headers: dict[str, str] | None = None, wait: float = 30
) -> tuple[int, bytes, float]:
    """http_get, plus the time the last byte arrived (before the harness parses anything)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), wait)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        raw = bytearray()
        # Big reads: a 60 MB body in 64 KB reads would time the harness's loop, not the server.
        buf = bytearray(4 << 20)
        async with asyncio.timeout(wait):
            while n := await loop.sock_recv_into(sock, buf):
                raw += memoryview(buf)[:n]
        done = time.time()
    finally:
        sock.close()
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return status, body, done


def dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[eol + 2 : eol + 2 + size])
        pos = eol + 4 + size


async def wait_http(port: int, path: str, proc: Proc, wait: float = 120) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"process on :{port} exited with {proc.p.returncode}")
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            # An overloaded loop (a saturation run) answers late, not never: a generous limit.
            status, _ = await http_get("127.0.0.1", port, path, wait=15)
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing answered on :{port}{path} within {wait}s")


# -- our exporter ------------------------------------------------------------------------------


class Ours:
    """One failover-exporter process on the prober core with per-probe debug log lines."""

    def __init__(
        self,
        env: Env,
        ids: range,
        interval: float,
        timeout: float,
        debug: bool = True,
        concurrency: int = 4096,
    ):
        self.env = env
        self.cfg = env.work / "ours.yml"
        self.cfg.write_text(config_text(ids, interval, timeout, concurrency))
        self.logpath = env.work / "ours.log"
        self.debug = debug

    async def __aenter__(self) -> Ours:
        self.logfile = self.logpath.open("wb")
        self.proc = Proc(
            [self.env.exporter, "run", "--config", str(self.cfg), "--web.listen-address",
             f"127.0.0.1:{OURS_PORT}", "--log.level", "debug" if self.debug else "info",
             f"--event-loop={self.env.loop}",
             "--log.format", "json"],
            self.env.prober_cpu, stderr=self.logfile, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_http(OURS_PORT, "/-/ready", self.proc)
        except BaseException:
            self.proc.stop()
            self.logfile.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        code = self.proc.stop()
        self.logfile.close()
        if code not in (0, -signal.SIGTERM) and exc[0] is None:
            raise RuntimeError(f"exporter exited with {code}: {self.logpath.read_text()[-2000:]}")

    def records(self) -> list[dict[str, Any]]:
        out = []
        with self.logpath.open("rb") as f:
            for line in f:
                if b'"probe finished"' in line:
                    out.append(json.loads(line))
        return out

    async def self_metrics(self, wait: float = 60) -> dict[str, float]:
        _, body = await http_get("127.0.0.1", OURS_PORT, "/metrics", wait=wait)
        wanted = (
            b"failover_exporter_probe_start_delay_seconds",
            b"failover_exporter_probes_skipped_total",
        )
        out = {}
        for line in body.splitlines():
            if line.startswith(wanted):
                key, _, value = line.rpartition(b" ")
                out[key.decode()] = float(value)
        return out


def self_delay_p99_bound(m: dict[str, float]) -> float | None:
    """Smallest histogram bucket bound under which 99 % of start delays fall (whole run)."""
    name = "failover_exporter_probe_start_delay_seconds"
    count = m.get(f"{name}_count", 0)
    if not count:
        return None
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v) for k, v in m.items() if "_bucket{" in k
    )
    for le, cum in buckets:
        if cum >= 0.99 * count:
            return le
    return None


def join_ours(recs: list[dict[str, Any]], conns: list[pcap.Conn]) -> list[tuple[dict, pcap.Conn]]:
    """Probe log lines carry the target (t<id>) and start time; each target's connections are
    matched in time order to its probes."""
    by_id: dict[int, list[pcap.Conn]] = defaultdict(list)
    for c in conns:
        if c.complete and c.probe_id is not None:
            by_id[c.probe_id].append(c)
    for lst in by_id.values():
        lst.sort(key=lambda c: c.syn)
    pairs = []
    recs_by_id: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        recs_by_id[int(r["target"][1:])].append(r)
    for pid, rs in recs_by_id.items():
        cs = by_id.get(pid, [])
        j = 0
        for r in sorted(rs, key=lambda r: r["started"]):
            while j < len(cs) and cs[j].syn < r["started"] - 0.001:
                j += 1
            # The duration is the wire time, not the wall clock from `started`: allow for the
            # exporter's own delay before the SYN (probes of one target are >= 1 s apart).
            if j < len(cs) and cs[j].syn <= r["started"] + r["duration"] + 0.5:
                pairs.append((r, cs[j]))
                j += 1
    return pairs


async def run_ours(env: Env, rate: int, secs: float, shape: str = "fixed") -> dict[str, Any]:
    """N = rate targets at a 1 s interval: `rate` probes per second, spread over the second.
    At saturation the rate is above what one core runs: the scheduler skips what it cannot
    start, and what completes is the most our exporter does on its core."""
    interval = 1.0
    warm = env.prof["warm"] + interval
    ids = range(rate)
    with env.capture(f"ours-{shape}-{rate}") as cap:
        # Saturation: as many probes in flight as blackbox's closed loop has (max_concurrency);
        # the scheduler skips what finds no free slot. Without a limit an over-offered exporter
        # starts everything and times most of it out (a collapse, not its capacity).
        limit = env.prof["sat_bb_conns"] if shape == "saturation" else 4096
        async with Ours(env, ids, interval, 0.5, concurrency=limit) as ours:
            await asyncio.sleep(warm)
            t0, c0 = time.time(), cpu_seconds(ours.proc.pid)
            await asyncio.sleep(secs)
            t1, c1 = time.time(), cpu_seconds(ours.proc.pid)
            rss = status_kib(ours.proc.pid, "VmRSS")
            await asyncio.sleep(0.6)  # let probes started in the window finish
            try:
                sm = await ours.self_metrics(wait=60 if shape == "fixed" else 20)
            except TimeoutError:
                # A saturated exporter may not render /metrics in time; saturation has no pass
                # rule, so its skips are not needed (they are what it could not start).
                if shape == "fixed":
                    raise
                sm = {}
    recs = [r for r in ours.records() if t0 <= r["started"] < t1]
    pairs = join_ours([r for r in recs if r["success"]], cap.get("conns", []))
    expected = len(ids) * (t1 - t0) / interval
    ok = sum(1 for r in recs if r["success"])
    return summarize(
        "ours",
        shape,
        rate,
        wall=t1 - t0,
        expected=expected,
        ok=ok,
        failed=len(recs) - ok,
        # The whole run's skips, warm-up included (a /metrics scrape to take a first reading
        # would stall the loop inside the window).
        skipped=sum(v for k, v in sm.items() if "skipped_total" in k),
        errors=[r["duration"] - c.truth for r, c in pairs],
        gaps=[c.client_gap for _, c in pairs],
        truths=[c.truth for _, c in pairs],
        delays=[r["start_delay"] for r in recs],
        # Due (wall clock) = the probe's start less its start delay; the SYN is the wire's.
        wire_delays=[c.syn - (r["started"] - r["start_delay"]) for r, c in pairs],
        cpu=c1 - c0,
        driver_cpu=None,
        rss_kib=rss,
        dropped=cap.get("dropped"),
        extra={
            "self_metric_start_delay_p99_le_s": self_delay_p99_bound(sm),
            "loop": env.loop,
            "max_concurrency": limit,
        },
    )


# -- blackbox_exporter ------------------------------------------------------------------------

BB_CONFIG = """modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
"""
BB_PROBE_TIMEOUT = 10.0
# Connections to blackbox opened before the clock starts; more are opened in the background when
# all are busy (up to BB_MAX_CONNS), the due probes queued meanwhile.
BB_CONNS = 256
BB_MAX_CONNS = 2048


def bb_request(i: int) -> bytes:
    target = f"http%3A%2F%2F{SRV_ADDR}%3A{TARGET_PORT}%2F%3Fid%3D{i}"
    return f"GET /probe?module=http_2xx&target={target} HTTP/1.1\r\nHost: bb\r\n\r\n".encode()


def bb_body(head: bytes, rest: bytes) -> bytes | None:
    """The body once it is all there (Content-Length or chunked, as Go's net/http sends)."""
    lower = head.lower()
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        return rest[:length] if len(rest) >= length else None
    if rest.endswith(b"0\r\n\r\n") and (rest == b"0\r\n\r\n" or rest.endswith(b"\r\n0\r\n\r\n")):
        return dechunk(rest)
    return None


class BbConn(asyncio.Protocol):
    """One kept-alive connection to blackbox's /probe, one request at a time. A raw protocol
    with no awaits per probe: the driver's cost per probe must stay far below the prober's."""

    def __init__(self, driver: BbDriver) -> None:
        self.driver = driver
        self.buf = b""
        self.probe: list[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = transport  # type: ignore[assignment]

    def send(self, probe: list[Any]) -> None:
        assert self.transport is not None
        self.probe = probe
        probe[3] = time.perf_counter()
        probe[7] = time.time()
        self.transport.write(bb_request(probe[0]))
        self.timer = self.driver.loop.call_later(BB_PROBE_TIMEOUT, self.expire)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        body = bb_body(head, rest)
        if body is None:
            return
        self.buf = b""
        probe, self.probe = self.probe, None
        if self.timer is not None:
            self.timer.cancel()
        if probe is None:
            return
        probe[4] = time.perf_counter() - probe[3]
        with contextlib.suppress(IndexError, ValueError):
            probe[5] = float(body.split(b"\nprobe_duration_seconds ")[1].split(b"\n")[0])
            probe[6] = b"\nprobe_success 1\n" in body
        self.driver.done(self, probe)

    def expire(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        probe, self.probe = self.probe, None
        if probe is not None:
            self.driver.done(self, probe)


class BbDriver:
    """Load for blackbox through /probe on its own core, in one of two shapes.

    Open loop (`fixed`): probe i is due at t0 + i/rate and sent then on an idle kept-alive
    connection. When all are busy the probe waits in a queue while a new connection opens in
    the background (up to BB_MAX_CONNS), and goes out on the first connection that is free: the
    dispatch never blocks on a connect. Closed loop (`saturate`): `conns` connections, each
    sending its next probe the moment the previous answer arrives: the most blackbox completes
    on one core.

    A probe is a list: [id, due wall time, driver loop lateness, sent (perf), response time,
    reported duration, ok, sent (wall)]. At a fixed rate blackbox's start delay on the wire is
    SYN - due: a wait for a free connection is blackbox's backlog, so it counts. The driver's
    own part, how late its loop noticed the probe was due, is reported apart (its CPU too).
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle: list[BbConn] = []
        self.waiting: collections.deque[tuple[float, float]] = collections.deque()
        self.conns = 0
        self.opening = 0
        self.results: list[list[Any]] = []
        self.pending = 0
        self.closed_loop_until = 0.0
        self.next_id = 0
        self.all_done = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def open(self, n: int) -> None:
        for _ in range(n):
            self.idle.append(await self._connect())

    async def _connect(self) -> BbConn:
        _, conn = await self.loop.create_connection(lambda: BbConn(self), "127.0.0.1", BB_PORT)
        self.conns += 1
        return conn

    async def _grow(self) -> None:
        try:
            conn = await self._connect()
        except OSError:
            return
        finally:
            self.opening -= 1
        self._free(conn)

    def _free(self, conn: BbConn) -> None:
        if self.waiting:
            due_wall, late = self.waiting.popleft()
            self._send(conn, due_wall, late)
        else:
            self.idle.append(conn)

    def done(self, conn: BbConn, probe: list[Any]) -> None:
        self.results.append(probe)
        self.pending -= 1
        if conn.closed:
            self.conns -= 1
        elif self.closed_loop_until and time.perf_counter() < self.closed_loop_until:
            self._send(conn, time.time(), 0.0)
            return
        else:
            self._free(conn)
        if self.pending == 0 and not self.waiting:
            self.all_done.set()

    def _send(self, conn: BbConn, due_wall: float, late: float) -> None:
        probe = [self.next_id, due_wall, late, 0.0, 0.0, 0.0, False, 0.0]
        self.next_id += 1
        self.pending += 1
        self.all_done.clear()
        conn.send(probe)

    def _dispatch(self, due_wall: float, late: float) -> None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self._send(conn, due_wall, late)
                return
            self.conns -= 1
        self.waiting.append((due_wall, late))
        self.all_done.clear()
        if self.conns + self.opening < BB_MAX_CONNS:
            self.opening += 1
            task = asyncio.ensure_future(self._grow())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def fixed(self, rate: int, total: float) -> None:
        n = int(rate * total)
        clock = time.perf_counter
        t0 = clock() + 0.05
        w0 = time.time() + (t0 - clock())
        i = 0
        while i < n:
            now = clock()
            while i < n and t0 + i / rate <= now:
                self._dispatch(w0 + i / rate, now - (t0 + i / rate))
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, t0 + i / rate - clock()))
        await self.drain()

    async def saturate(self, secs: float, conns: int) -> None:
        self.closed_loop_until = time.perf_counter() + secs
        while self.idle and conns > 0:
            self._send(self.idle.pop(), time.time(), 0.0)
            conns -= 1
        await asyncio.sleep(secs)
        await self.drain()

    async def drain(self) -> None:
        if self.pending or self.waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_done.wait(), BB_PROBE_TIMEOUT + 5)
        for task in list(self.tasks):
            task.cancel()

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


class Blackbox:
    def __init__(self, env: Env) -> None:
        self.env = env

    async def __aenter__(self) -> Blackbox:
        cfg = self.env.work / "blackbox.yml"
        cfg.write_text(BB_CONFIG)
        self.proc = Proc(
            ["prometheus-blackbox-exporter", f"--config.file={cfg}",
             f"--web.listen-address=127.0.0.1:{BB_PORT}", "--log.level=warn"],
            self.env.prober_cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_http(BB_PORT, "/-/healthy", self.proc)
        except BaseException:
            self.proc.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.proc.stop()


async def _measure_bb(
    env: Env,
    tag: str,
    conns: int,
    load: Callable[[BbDriver, float], Awaitable[Any]],
    secs: float,
) -> tuple[BbDriver, list[list[Any]], Any, float, float, float, float]:
    """Blackbox under the driver's `load` on `conns` connections; the first `warm` seconds are
    not counted. Returns the driver, the window's probes, the capture, the window's wall,
    blackbox-CPU and driver-CPU seconds and RSS, measured the same way for every blackbox run."""
    warm = env.prof["warm"]
    with env.capture(tag) as cap:
        async with Blackbox(env) as bb:
            driver = BbDriver()
            await driver.open(conns)
            run = asyncio.ensure_future(load(driver, warm + secs))
            await asyncio.sleep(warm)
            t0, c0, d0 = time.time(), cpu_seconds(bb.proc.pid), time.process_time()
            await asyncio.sleep(secs)
            t1, c1, d1 = time.time(), cpu_seconds(bb.proc.pid), time.process_time()
            rss = status_kib(bb.proc.pid, "VmRSS")
            await run
            driver.close()
    window = [p for p in driver.results if t0 <= p[1] < t1]
    return driver, window, cap, t1 - t0, c1 - c0, d1 - d0, rss


async def run_bb(env: Env, rate: int, secs: float) -> dict[str, Any]:
    """Open loop at `rate` probes/s."""
    driver, window, cap, wall, cpu, dcpu, rss = await _measure_bb(
        env, f"bb-{rate}", BB_CONNS, lambda d, t: d.fixed(rate, t), secs
    )
    return bb_summary(env, "fixed", rate, window, cap, wall, cpu, dcpu, rss,
                      extra={"connections": driver.conns})  # fmt: skip


async def run_bb_saturated(env: Env, conns: int, secs: float) -> dict[str, Any]:
    """Closed loop: `conns` probes always in flight; what blackbox completes on its core."""
    _driver, window, cap, wall, cpu, dcpu, rss = await _measure_bb(
        env, f"bb-sat-{conns}", conns, lambda d, t: d.saturate(t, conns), secs
    )
    return bb_summary(env, "saturation", conns, window, cap, wall, cpu, dcpu, rss,
                      extra={"in_flight": conns})  # fmt: skip


def bb_summary(
    env: Env,
    shape: str,
    rate: int,
    window: list[list[Any]],
    cap: dict[str, Any],
    wall: float,
    cpu: float,
    driver_cpu: float,
    rss: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    conns = {c.probe_id: c for c in cap.get("conns", []) if c.complete}
    ok = [p for p in window if p[6]]
    pairs = [(p, conns[p[0]]) for p in ok if p[0] in conns]
    return summarize(
        "blackbox",
        shape,
        rate,
        wall=wall,
        expected=rate * wall if shape == "fixed" else len(window),
        ok=len(ok),
        failed=len(window) - len(ok),
        skipped=0,
        errors=[p[5] - c.truth for p, c in pairs],
        gaps=[c.client_gap for _, c in pairs],
        truths=[c.truth for _, c in pairs],
        # The driver's own loop lateness (closed loop: none, a probe goes out as the last ends).
        delays=[max(0.0, p[2]) for p in window] if shape == "fixed" else [],
        # Fixed rate: from due, a wait for a free connection included (blackbox's backlog);
        # closed loop: from the moment the request was sent.
        wire_delays=[c.syn - (p[1] if shape == "fixed" else p[7]) for p, c in pairs],
        cpu=cpu,
        driver_cpu=driver_cpu,
        rss_kib=rss,
        dropped=cap.get("dropped"),
        extra={"probe_response_time": ms_stats([p[4] for p in ok]), **extra},
    )


def summarize(
    tool: str,
    shape: str,
    rate: int,
    *,
    wall: float,
    expected: float,
    ok: int,
    failed: int,
    skipped: float,
    errors: list[float],
    gaps: list[float],
    truths: list[float],
    delays: list[float],
    wire_delays: list[float],
    cpu: float,
    driver_cpu: float | None,
    rss_kib: int,
    dropped: int | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """One run's figures and the pass rule, the same for both probers: every due probe
    completed (none failed, none skipped) and start delay p99 <= 10 ms, on the wire: from the
    moment the probe was due (our scheduler's slot; for blackbox, its slot in the driver's
    open-loop schedule) to its SYN. Accuracy (error vs wire) is reported, not part of the
    rule: the probers measure different things. A blackbox run whose driver noticed due probes
    late (p99 > DRIVER_LATE_P99) is marked driver_limited: its start delay is partly the
    driver's."""
    err, delay, wire_delay = ms_stats(errors), ms_stats(delays), ms_stats(wire_delays)
    completed = ok / expected if expected else 0.0
    worst_delay = wire_delay["p99_ms"] if wire_delay["n"] else None
    passed = (
        shape == "fixed"
        and completed >= MIN_COMPLETED
        and failed == 0
        and skipped == 0
        and worst_delay is not None
        and worst_delay <= MAX_START_DELAY_P99 * 1000
    )
    out = {
        "tool": tool,
        "shape": shape,
        "rate": rate,
        "seconds": round(wall, 2),
        "expected": round(expected),
        "ok": ok,
        "failed": failed,
        "skipped": skipped,
        "completed": round(completed, 4),
        "completed_per_s": round(ok / wall, 1) if wall else None,
        "joined_to_pcap": len(errors),
        "pcap_dropped": dropped,
        "error": err,
        "truth": ms_stats(truths),
        "client_gap": ms_stats(gaps),
        "start_delay": delay,
        "start_delay_wire": wire_delay,
        "cpu": round(cpu / wall, 3) if wall else None,
        "cpu_per_probe_ms": round(1000 * cpu / ok, 4) if ok else None,
        "driver_cpu": round(driver_cpu / wall, 3) if driver_cpu is not None and wall else None,
        "rss_mib": round(rss_kib / 1024, 1),
        "passed": passed,
        "driver_limited": bool(delay["p99_ms"] and delay["p99_ms"] > DRIVER_LATE_P99 * 1000)
        if tool == "blackbox"
        else None,
        # Other work on the machine shows here; the prober's core is not reserved.
        "loadavg_1m": float(loadavg()[0]),
        **extra,
    }
    log(
        f"{tool:8} {shape:10} {rate:5}: ok {ok}/{round(expected)} failed {failed} skipped "
        f"{skipped:g} ({out['completed_per_s']}/s) err p50/p99 {err['p50_ms']}/{err['p99_ms']} ms "
        f"gap p99 {ms_stats(gaps)['p99_ms']} ms start delay p99 {delay['p99_ms']} (wire "
        f"{wire_delay['p99_ms']}) ms cpu {out['cpu']} ({out['cpu_per_probe_ms']} ms/probe) "
        f"driver {out['driver_cpu']}{' (driver-limited)' if out['driver_limited'] else ''} "
        f"rss {out['rss_mib']} MiB {'PASS' if passed else 'fail'}"
    )
    return out


# -- scrape cost, memory, churn ------------------------------------------------------------------


async def run_scrape(env: Env, n: int) -> dict[str, Any]:
    """n targets probed at up to SCRAPE_RATE/s; scrapes like Prometheus (gzip) and plain; the
    start delay of probes due during a scrape shows the event-loop stall the scrape causes."""
    interval = max(1.0, n / SCRAPE_RATE)
    scrapes: list[dict[str, Any]] = []
    async with Ours(env, range(n), interval, min(0.5, interval / 2)) as ours:
        await asyncio.sleep(interval + env.prof["warm"])
        base0 = time.time()
        await asyncio.sleep(env.prof["baseline_secs"])
        base1 = time.time()
        for i in range(env.prof["scrapes"] * 2):
            enc = "gzip" if i % 2 == 0 else "identity"
            a = time.time()
            status, body, b = await timed_get(
                "127.0.0.1", OURS_PORT, "/metrics", {"Accept-Encoding": enc}, wait=60
            )
            assert status == 200, status
            plain = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
            scrapes.append(
                {
                    "encoding": enc,
                    "start": a,
                    "seconds": b - a,
                    "wire_bytes": len(body),
                    "bytes": len(plain),
                    "lines": plain.count(b"\n"),
                }
            )
            await asyncio.sleep(0.5)
        rss = status_kib(ours.proc.pid, "VmRSS")
        hwm = status_kib(ours.proc.pid, "VmHWM")
        fds = fd_count(ours.proc.pid)
    recs = ours.records()
    due = [(r["started"] - r["start_delay"], r["start_delay"]) for r in recs]
    baseline = [d for t, d in due if base0 <= t < base1]
    out: dict[str, Any] = {"targets": n, "probe_rate": n / interval, "baseline_start_delay":
                           ms_stats(baseline), "rss_mib": round(rss / 1024, 1),
                           "rss_hwm_mib": round(hwm / 1024, 1), "fds": fds}  # fmt: skip
    for enc in ("gzip", "identity"):
        runs = [s for s in scrapes if s["encoding"] == enc]
        during = [d for t, d in due for s in runs if s["start"] <= t < s["start"] + s["seconds"]]
        out[enc] = {
            "scrape_seconds": ms_stats([s["seconds"] for s in runs]),
            "wire_bytes": runs[-1]["wire_bytes"],
            "bytes": runs[-1]["bytes"],
            "lines": runs[-1]["lines"],
            "start_delay_during_scrape": ms_stats(during),
        }
    g = out["gzip"]
    log(
        f"scrape {n:6} targets: gzip {g['scrape_seconds']['max_ms']} ms "
        f"{g['bytes']} B ({g['wire_bytes']} on the wire), start delay during scrape max "
        f"{g['start_delay_during_scrape']['max_ms']} ms (baseline max "
        f"{out['baseline_start_delay']['max_ms']} ms), rss {out['rss_mib']} MiB"
    )
    return out


async def run_churn(env: Env) -> dict[str, Any]:
    """A tenth of the targets replaced by reload (SIGHUP) every few seconds; RSS and fds sampled
    after each reload."""
    n, secs = env.prof["churn_targets"], env.prof["churn_secs"]
    step, period = max(1, n // 10), env.prof["churn_period"]
    samples: list[dict[str, float]] = []
    ours = Ours(env, range(n), CHURN_INTERVAL, 1.0, debug=False)
    async with ours:
        t_end = time.monotonic() + secs
        cycle = 0
        while time.monotonic() < t_end:
            await asyncio.sleep(period)
            cycle += 1
            ids = range(cycle * step, cycle * step + n)
            ours.cfg.write_text(config_text(ids, CHURN_INTERVAL, 1.0))
            os.kill(ours.proc.pid, signal.SIGHUP)
            pid = ours.proc.pid
            samples.append(
                {
                    "t": round(time.monotonic() - (t_end - secs), 1),
                    "rss_mib": round(status_kib(pid, "VmRSS") / 1024, 1),
                    "fds": fd_count(pid),
                }
            )
        reloads = ours.logpath.read_text().count("config reloaded")
    # The first third is warm-up (caches, pools, allocator arenas filling).
    settled = samples[len(samples) // 3 :] or samples
    out = {
        "targets": n,
        "seconds": secs,
        "reloads": reloads,
        "replaced_per_reload": step,
        "samples": samples,
        "rss_mib_settled_first": settled[0]["rss_mib"] if settled else None,
        "rss_mib_last": samples[-1]["rss_mib"] if samples else None,
        "rss_mib_max": max((s["rss_mib"] for s in samples), default=None),
        "fds_settled_first": settled[0]["fds"] if settled else None,
        "fds_last": samples[-1]["fds"] if samples else None,
        "fds_max": max((s["fds"] for s in samples), default=None),
    }
    log(
        f"churn {n} targets {secs}s, {reloads} reloads: rss {out['rss_mib_settled_first']} -> "
        f"{out['rss_mib_last']} MiB (max {out['rss_mib_max']}), fds {out['fds_settled_first']} "
        f"-> {out['fds_last']} (max {out['fds_max']})"
    )
    return out


# -- report --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def fmt(v: Any) -> str:
    return "–" if v is None else str(v)


def pair(r: dict[str, Any] | None, key: str, sub: str | None = None) -> float | None:
    if not r:
        return None
    v = r.get(key)
    return v.get(sub) if sub and isinstance(v, dict) else v


def row(label: str, ov: Any, bv: Any, note: str = "") -> str:
    nums = isinstance(ov, int | float) and isinstance(bv, int | float)
    return (
        f"| {label} | {fmt(ov)} | {fmt(bv)}{note} | {ratio(ov, bv) if nums else '–'} | "
        f"{ratio(bv, ov) if nums else '–'} |"
    )


def run_rows(at: str, o: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """The per-run measures: completion, start delay, the prober's own gap on the wire,
    accuracy, CPU, memory."""
    rows = []
    oc = f"{o['ok']}/{o['expected']}, {o['failed']}, {o['skipped']:g}" if o and "ok" in o else None
    bc = f"{b['ok']}/{b['expected']}, {b['failed']}, 0" if b and "ok" in b else None
    rows.append(f"| {at}: completed/due, failed, skipped | {fmt(oc)} | {fmt(bc)} | – | – |")
    # Not the same measure for the two (ours: the scheduler's slot to the probe's start;
    # blackbox: the driver's own lateness), so no ratio.
    od, bd = pair(o, "start_delay", "p99_ms"), pair(b, "start_delay", "p99_ms")
    rows.append(
        f"| {at}: start delay p99, ours by its scheduler / the driver's lateness (ms) | "
        f"{fmt(od)} | {fmt(bd)} | – | – |"
    )
    rows.append(
        row(
            f"{at}: start delay p99 on the wire, due → SYN (pass rule) (ms)",
            pair(o, "start_delay_wire", "p99_ms"),
            pair(b, "start_delay_wire", "p99_ms"),
        )
    )
    for q in ("p50", "p99"):
        rows.append(
            row(
                f"{at}: own scheduling gap SYN-ACK → request {q} (ms)",
                pair(o, "client_gap", f"{q}_ms"),
                pair(b, "client_gap", f"{q}_ms"),
            )
        )
    for q in ("p50", "p99", "max"):
        rows.append(
            row(
                f"{at}: reported latency − wire, {q} (ms)",
                pair(o, "error", f"{q}_ms"),
                pair(b, "error", f"{q}_ms"),
            )
        )
    rows.append(row(f"{at}: CPU, share of one core", pair(o, "cpu"), pair(b, "cpu")))
    rows.append(
        row(
            f"{at}: CPU per completed probe (ms)",
            pair(o, "cpu_per_probe_ms"),
            pair(b, "cpu_per_probe_ms"),
        )
    )
    rows.append(row(f"{at}: RSS (MiB)", pair(o, "rss_mib"), pair(b, "rss_mib")))
    limited = " (driver-limited)" if b and b.get("driver_limited") else ""
    rows.append(
        f"| {at}: the driver's CPU, share of its core | n/a (config-driven) | "
        f"{fmt(pair(b, 'driver_cpu'))}{limited} | – | – |"
    )
    return rows


def table(res: dict[str, Any]) -> str:
    loops = res.get("loops") or [None]
    rows = [
        "| measure | failover_exporter | blackbox_exporter | ours ÷ blackbox | blackbox ÷ ours |",
        "|---|---|---|---|---|",
    ]
    thr = res.get("throughput", {})
    b = thr.get("blackbox", {})
    for name, t in thr.items():
        if name == "blackbox":
            continue
        on = f", ours on {t['loop']}" if t.get("loop") and len(loops) > 1 else ""
        rows.append(
            row(
                f"sustained probes/s on one core{on} (all due probes completed, none "
                "failed or skipped, start delay p99 ≤ 10 ms)",
                t.get("max_rate") or (f"< {t['below']}" if t.get("below") else None),
                b.get("max_rate") or (f"< {b['below']}" if b.get("below") else None),
            )
        )
        os_, bs = t.get("saturation"), b.get("saturation")
        rows.append(
            row(
                f"saturation{on}: completed probes/s",
                pair(os_, "completed_per_s"),
                pair(bs, "completed_per_s"),
            )
        )
        rows.append(
            row(
                f"saturation{on}: CPU per completed probe (ms)",
                pair(os_, "cpu_per_probe_ms"),
                pair(bs, "cpu_per_probe_ms"),
            )
        )
        if os_ or bs:
            oat = (
                f"{os_['rate']} targets/s offered, ≤ {os_.get('max_concurrency')} in flight"
                if os_
                else "–"
            )
            bat = f"closed loop, {bs['rate']} in flight" if bs else "–"
            rows.append(f"| saturation{on}: load | {oat} | {bat} | – | – |")
            rows += run_rows(f"saturation{on}", os_, bs)
        best = {r["rate"]: r for r in t.get("runs", [])}
        bbest = {r["rate"]: r for r in b.get("runs", [])}
        om, bm = t.get("max_rate"), b.get("max_rate")
        if om in best or bm in bbest:
            rows += run_rows(
                f"at the sustained rate{on} (ours {fmt(om)}/s, blackbox {fmt(bm)}/s)",
                best.get(om),
                bbest.get(bm),
            )
    acc = {
        (r["tool"], r.get("loop") if r["tool"] == "ours" else None, r["rate"]): r
        for r in res.get("accuracy", [])
    }
    for rate in sorted({r for _, _, r in acc}):
        bb = acc.get(("blackbox", None, rate))
        for loop in loops:
            o = acc.get(("ours", loop, rate))
            at = f"{rate}/s" + (f", ours on {loop}" if loop and len(loops) > 1 else "")
            rows += run_rows(at, o, bb)
    for s in res.get("scrape", []):
        n = s["targets"]
        if "run_error" in s:
            rows.append(
                f"| /metrics @ {n} targets | run failed: {s['run_error'][:80]} | n/a | – | – |"
            )
            continue
        g, p = s["gzip"], s["identity"]
        rows.append(
            f"| /metrics @ {n} targets, gzip: time max (ms) / body (bytes) | "
            f"{g['scrape_seconds']['max_ms']} / {g['bytes']} | n/a | – | – |"
        )
        rows.append(
            f"| /metrics @ {n} targets, plain: time max (ms) | "
            f"{p['scrape_seconds']['max_ms']} | n/a | – | – |"
        )
        gd, pd = g["start_delay_during_scrape"], p["start_delay_during_scrape"]
        worst = max(gd["max_ms"] or 0, pd["max_ms"] or 0)
        rows.append(
            f"| start delay during scrape @ {n} targets: p99 / max (ms) | "
            f"{gd['p99_ms']} / {worst} | n/a | – | – |"
        )
        rows.append(f"| RSS @ {n} targets (MiB) | {s['rss_mib']} | n/a | – | – |")
    c = res.get("churn")
    if c:
        rows.append(
            f"| churn {c['seconds']} s, {c['reloads']} reloads: RSS MiB settled → last "
            f"(max) | {c['rss_mib_settled_first']} → {c['rss_mib_last']} "
            f"({c['rss_mib_max']}) | n/a | – | – |"
        )
        rows.append(
            f"| churn: open fds settled → last (max) | {c['fds_settled_first']} → "
            f"{c['fds_last']} ({c['fds_max']}) | n/a | – | – |"
        )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    model = next(
        (ln.split(":", 1)[1].strip() for ln in read("/proc/cpuinfo").splitlines()
         if ln.startswith("model name")), "",
    )  # fmt: skip

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": read("/proc/loadavg").split()[:3],
        "blackbox": version(["prometheus-blackbox-exporter", "--version"]),
        "tcpdump": version(["tcpdump", "--version"]),
    }


async def attempt(
    fn: Any, env: Env, rate: int, secs: float, limit: float = PHASE_TIMEOUT
) -> dict[str, Any]:
    """One prober run; a run that breaks (a collapsed prober that never answers, say) is
    recorded as failed instead of ending the whole bench."""
    try:
        return dict(await asyncio.wait_for(fn(env, rate, secs), limit))
    except (RuntimeError, TimeoutError, OSError) as exc:
        tool = "blackbox" if fn in (run_bb, run_bb_saturated) else "ours"
        # Where it broke (a bare TimeoutError says nothing): the harness's innermost frame.
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
        at = f" at line {frames[-1].lineno} ({frames[-1].name})" if frames else ""
        why = f"{type(exc).__name__}: {exc}{at}"[:500]
        log(f"{tool:8} {rate:5} run FAILED: {why}")
        empty = {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
        return {
            "tool": tool,
            "rate": rate,
            "passed": False,
            "run_error": why,
            "loop": env.loop if tool == "ours" else None,
            "completed_per_s": None,
            "cpu_per_probe_ms": None,
            "driver_cpu": None,
            "client_gap": empty,
            "start_delay_wire": empty,
            "error": empty,
            "start_delay": empty,
            "cpu": None,
            "rss_mib": None,
        }


async def throughput(env: Env, tool: str, loop: str | None) -> dict[str, Any]:
    """Saturation first (what one core completes, and its CPU per completed probe), then the
    ladder: fixed rates at fractions of that, up to the first that fails the pass rule."""
    prof = env.prof
    if tool == "ours":
        if not prof["sat_ours"]:
            return {"max_rate": None, "saturation": None, "runs": [], "loop": loop}
        sat = await attempt(
            lambda e, r, s: run_ours(e, r, s, "saturation"),
            env,
            prof["sat_ours"],
            prof["sat_secs"],
            # Thousands of targets to load, an overloaded loop to stop, a big capture to parse.
            SATURATION_TIMEOUT,
        )
        fixed = run_ours
    else:
        if not prof["sat_bb_conns"]:
            return {"max_rate": None, "saturation": None, "runs": [], "loop": loop}
        sat = await attempt(run_bb_saturated, env, prof["sat_bb_conns"], prof["sat_secs"])
        fixed = run_bb
    # A saturation run that broke: climb from a fifth of the offered rate instead.
    top = sat.get("completed_per_s") or (prof["sat_ours"] if tool == "ours" else 0) / 5
    rungs = sorted({max(50, round(f * top / 50) * 50) for f in prof["ladder"]}) if top else []
    runs, best = [], None
    for rate in rungs:
        r = await attempt(fixed, env, rate, prof["ladder_secs"])
        runs.append(r)
        if not r["passed"]:
            break  # past the cliff; higher rates only take longer to fail
        best = rate
    # Every rung failed: the most that can be said is "below the lowest".
    below = runs[0]["rate"] if runs and best is None else None
    return {"max_rate": best, "below": below, "saturation": sat, "runs": runs, "loop": loop}


def write_json(path: Path, res: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")


async def inner(a: argparse.Namespace) -> int:
    env = Env(a)
    os.sched_setaffinity(0, {env.other_cpu})
    prof = env.prof
    only = set(a.only.split(",")) if a.only else {"accuracy", "throughput", "scrape", "churn"}
    res: dict[str, Any] = {
        "profile": a.profile,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "ground_truth": "pcap on the client-side veth: (SYN-ACK - SYN) + (last response byte - "
        "request packet); the prober's SYN-ACK-to-request gap counts as its error",
        "target_delay_ms": TARGET_DELAY_US / 1000,
        "cores": {"prober": env.prober_cpu, "target_tcpdump_driver": env.other_cpu},
        "loops": prof["loops"],
    }
    log(f"profile {a.profile}; machine {res['machine']}")
    with env.target():
        if "accuracy" in only:
            res["accuracy"] = []
            for rate in prof["accuracy_rates"]:
                for loop in prof["loops"]:
                    env.loop = loop
                    res["accuracy"].append(
                        await attempt(run_ours, env, rate, prof["accuracy_secs"])
                    )
                res["accuracy"].append(await attempt(run_bb, env, rate, prof["accuracy_secs"]))
            env.loop = prof["loops"][0]
        if "throughput" in only:
            res["throughput"] = {}
            for loop in prof["loops"]:
                env.loop = loop
                name = "ours" if loop == prof["loops"][0] else f"ours-{loop}"
                res["throughput"][name] = await throughput(env, "ours", loop)
            res["throughput"]["blackbox"] = await throughput(env, "blackbox", None)
            env.loop = prof["loops"][0]
        if "scrape" in only:
            res["scrape"] = []
            for n in prof["scrape_sizes"]:
                try:
                    # 10k targets: a big config to load and ~60 MB bodies; give it longer.
                    res["scrape"].append(await asyncio.wait_for(run_scrape(env, n), 300))
                except (RuntimeError, TimeoutError, OSError) as exc:
                    why = f"{type(exc).__name__}: {exc}"[:500]
                    log(f"scrape {n:6} targets: run FAILED: {why}")
                    res["scrape"].append({"targets": n, "run_error": why})
        if "churn" in only:
            res["churn"] = await asyncio.wait_for(run_churn(env), prof["churn_secs"] + 60)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["machine"]["loadavg_at_end"] = loadavg()
    res["table"] = table(res)
    write_json(Path(a.json), res)
    print(res["table"])
    log(f"JSON written to {a.json}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    p.add_argument("--only", help="comma list of accuracy,throughput,scrape,churn")
    p.add_argument("--rates", help="override the accuracy rates, e.g. 1000,2500")
    p.add_argument("--sizes", help="override the scrape-cost target counts, e.g. 1000,10000")
    p.add_argument("--loops", help="our exporter's event loops, e.g. uvloop,asyncio (profile's)")
    p.add_argument("--timeout", type=float, help="whole run, seconds (quick 780, otherwise 1500)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--srv-ns", help=argparse.SUPPRESS)
    p.add_argument("--veth", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inner:
        try:
            import uvloop  # the driver's own cost per probe must stay low
        except ImportError:
            return asyncio.run(inner(a))
        return uvloop.run(inner(a))
    return outer(a)


if __name__ == "__main__":
    sys.exit(main())
