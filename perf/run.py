"""`make bench`: failover_exporter against Debian's prometheus-blackbox-exporter, side by side.

Topology: two private network namespaces joined by a veth pair (no route anywhere else). The
ground-truth target (perf/target.c, answers 10 ms after the request) lives in the server
namespace; the prober under test (our exporter, or blackbox_exporter) in the client namespace,
pinned to CPU 0; target, tcpdump and this harness (blackbox's load driver) on CPU 1.

Ground truth is the packet capture on the client-side veth, per probe: TCP handshake round trip
(SYN -> SYN-ACK) plus server time (request packet -> last response byte). The prober's own gap
between SYN-ACK and its request is its scheduling delay and counts as its error. Every probe URL
carries ?id=N so a prober's reported value can be joined to the packets of that probe.

Needs root (namespaces, tcpdump). Run as: .venv/bin/python perf/run.py [--profile full|smoke]
Every phase is bounded in probe count and wall time; all traffic stays in the namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections import defaultdict
from collections.abc import Iterator
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
# Keep captures and logs for a post-mortem (FXBENCH_KEEP=1).
KEEP = os.environ.get("FXBENCH_KEEP") == "1"

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "accuracy_rates": [100, 1000, 2500],
        "accuracy_secs": 10,
        "ladder_ours": [500, 750, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000],
        "ladder_bb": [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000],
        "ladder_secs": 6,
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
    "smoke": {
        "accuracy_rates": [50],
        "accuracy_secs": 1,
        "ladder_ours": [],
        "ladder_bb": [],
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

# Pass criteria of the throughput ladder (from issue 7).
MAX_START_DELAY_P99 = 0.010
MAX_ERROR_P99 = 0.002
# Of the probes due in the window; the window's edges cut a few probes either way.
MIN_COMPLETED = 0.995


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
            inner_cmd, check=False, timeout=args.timeout, preexec_fn=_die_with_parent
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


def config_text(ids: range | list[int], interval: float, timeout: float) -> str:
    lines = [
        "vantage: bench",
        f"defaults: {{interval: {interval}s, timeout: {timeout}s, max_concurrency: 4096}}",
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


async def wait_http(port: int, path: str, proc: Proc, wait: float = 60) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"process on :{port} exited with {proc.p.returncode}")
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            status, _ = await http_get("127.0.0.1", port, path, wait=2)
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing answered on :{port}{path} within {wait}s")


# -- our exporter ------------------------------------------------------------------------------


class Ours:
    """One failover-exporter process on the prober core with per-probe debug log lines."""

    def __init__(self, env: Env, ids: range, interval: float, timeout: float, debug: bool = True):
        self.env = env
        self.cfg = env.work / "ours.yml"
        self.cfg.write_text(config_text(ids, interval, timeout))
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

    async def self_metrics(self) -> dict[str, float]:
        _, body = await http_get("127.0.0.1", OURS_PORT, "/metrics", wait=60)
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


async def run_ours(env: Env, rate: int, secs: float) -> dict[str, Any]:
    """N = rate targets at a 1 s interval: `rate` probes per second, spread over the second."""
    interval = 1.0
    warm = env.prof["warm"] + interval
    ids = range(rate)
    with env.capture(f"ours-{rate}") as cap:
        async with Ours(env, ids, interval, 0.5) as ours:
            await asyncio.sleep(warm)
            t0, c0 = time.time(), cpu_seconds(ours.proc.pid)
            await asyncio.sleep(secs)
            t1, c1 = time.time(), cpu_seconds(ours.proc.pid)
            rss = status_kib(ours.proc.pid, "VmRSS")
            await asyncio.sleep(0.6)  # let probes started in the window finish
            sm = await ours.self_metrics()
    recs = [r for r in ours.records() if t0 <= r["started"] < t1]
    pairs = join_ours([r for r in recs if r["success"]], cap.get("conns", []))
    expected = len(ids) * (t1 - t0) / interval
    ok = sum(1 for r in recs if r["success"])
    return summarize(
        "ours",
        rate,
        expected=expected,
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
        extra={"self_metric_start_delay_p99_le_s": self_delay_p99_bound(sm), "loop": env.loop},
    )


# -- blackbox_exporter ------------------------------------------------------------------------

BB_CONFIG = """modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
"""


async def bb_probe(
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]], i: int
) -> tuple[float, float, bool]:
    """One /probe over a kept-alive connection from the pool: (response time, duration, ok)."""
    reader, writer = await pool.get()
    try:
        target = f"http%3A%2F%2F{SRV_ADDR}%3A{TARGET_PORT}%2F%3Fid%3D{i}"
        t = time.perf_counter()
        writer.write(
            f"GET /probe?module=http_2xx&target={target} HTTP/1.1\r\nHost: bb\r\n\r\n".encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        if b"content-length:" in head:
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        else:  # chunked, as Go's net/http sends a body it did not size up front
            chunks = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append((await reader.readexactly(size + 2))[:-2])
            await reader.readuntil(b"\r\n")
            body = b"".join(chunks)
        elapsed = time.perf_counter() - t
    finally:
        pool.put_nowait((reader, writer))
    duration = float(body.split(b"\nprobe_duration_seconds ")[1].split(b"\n")[0])
    ok = b"\nprobe_success 1\n" in body
    return elapsed, duration, ok


BbResult = tuple[float, float, float, float, bool, int]


async def drive(rate: int, total: float, conns: int) -> list[BbResult]:
    """Open loop: probe i is due at t0 + i/rate. Per probe: (due offset, lateness, response time,
    reported duration, ok)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", BB_PORT))
    n = int(rate * total)
    results: list[BbResult] = []
    t0 = time.perf_counter() + 0.05

    async def one(i: int, due: float) -> None:
        late = time.perf_counter() - due
        try:
            elapsed, duration, ok = await asyncio.wait_for(bb_probe(pool, i), 10)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, IndexError):
            elapsed, duration, ok = 0.0, 0.0, False
        results.append((due - t0, late, elapsed, duration, ok, i))

    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and t0 + i / rate <= now:
            task = asyncio.create_task(one(i, t0 + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return results


async def run_bb(env: Env, rate: int, secs: float) -> dict[str, Any]:
    cfg = env.work / "blackbox.yml"
    cfg.write_text(BB_CONFIG)
    warm = env.prof["warm"]
    with env.capture(f"bb-{rate}") as cap:
        proc = Proc(
            ["prometheus-blackbox-exporter", f"--config.file={cfg}",
             f"--web.listen-address=127.0.0.1:{BB_PORT}", "--log.level=warn"],
            env.prober_cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_http(BB_PORT, "/-/healthy", proc)
            c0 = cpu_seconds(proc.pid)
            w0 = time.monotonic()
            # 64 connections: where the exporter's closed-loop throughput peaked (perf.md 2a).
            res = await drive(rate, warm + secs, 64)
            cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - w0)
            rss = status_kib(proc.pid, "VmRSS")
        finally:
            proc.stop()
    window = [r for r in res if warm <= r[0] < warm + secs]
    conns = {c.probe_id: c for c in cap.get("conns", []) if c.complete}
    pairs = [(r, conns[r[5]]) for r in window if r[4] and r[5] in conns]
    ok = sum(1 for r in window if r[4])
    return summarize(
        "blackbox",
        rate,
        expected=rate * secs,
        ok=ok,
        failed=len(window) - ok,
        skipped=0,
        errors=[r[3] - c.truth for r, c in pairs],
        gaps=[c.client_gap for _, c in pairs],
        truths=[c.truth for _, c in pairs],
        delays=[max(0.0, r[1]) for r in window],
        cpu=cpu,
        rss_kib=rss,
        dropped=cap.get("dropped"),
        extra={"probe_response_time": ms_stats([r[2] for r in window if r[4]])},
    )


def summarize(
    tool: str,
    rate: int,
    *,
    expected: float,
    ok: int,
    failed: int,
    skipped: float,
    errors: list[float],
    gaps: list[float],
    truths: list[float],
    delays: list[float],
    cpu: float,
    rss_kib: int,
    dropped: int | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    err, delay = ms_stats(errors), ms_stats(delays)
    completed = ok / expected if expected else 0.0
    passed = (
        completed >= MIN_COMPLETED
        and failed == 0
        and skipped == 0
        and delay["p99_ms"] is not None
        and delay["p99_ms"] <= MAX_START_DELAY_P99 * 1000
        and err["p99_ms"] is not None
        and err["p99_ms"] <= MAX_ERROR_P99 * 1000
    )
    out = {
        "tool": tool,
        "rate": rate,
        "expected": round(expected),
        "ok": ok,
        "failed": failed,
        "skipped": skipped,
        "completed": round(completed, 4),
        "joined_to_pcap": len(errors),
        "pcap_dropped": dropped,
        "error": err,
        "truth": ms_stats(truths),
        "client_gap": ms_stats(gaps),
        "start_delay": delay,
        "cpu": round(cpu, 3),
        "rss_mib": round(rss_kib / 1024, 1),
        "passed": passed,
        # Other work on the machine shows here; the prober's core is not reserved.
        "loadavg_1m": float(loadavg()[0]),
        **extra,
    }
    log(
        f"{tool:8} {rate:5}/s ok {ok}/{round(expected)} failed {failed} skipped {skipped:g} "
        f"err p50/p99/max {err['p50_ms']}/{err['p99_ms']}/{err['max_ms']} ms "
        f"start delay p99 {delay['p99_ms']} ms cpu {cpu:.0%} rss {out['rss_mib']} MiB "
        f"joined {len(errors)} {'PASS' if passed else 'fail'}"
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


def cpu_per_probe(res: dict[str, Any], tool: str) -> float | None:
    """Least CPU (ms) per completed probe over a tool's runs that completed every probe."""
    runs = [r for r in res.get("accuracy", []) if r["tool"] == tool]
    for name, t in res.get("throughput", {}).items():
        if name == tool:
            runs.extend(t.get("runs", []))
    costs = [
        1000 * r["cpu"] / (r["rate"] * r["completed"])
        for r in runs
        if r.get("cpu") and r.get("completed", 0) >= MIN_COMPLETED
    ]
    return round(min(costs), 3) if costs else None


def table(res: dict[str, Any]) -> str:
    loops = res.get("loops") or [None]
    rows = ["| measure | failover_exporter | blackbox_exporter | ours / blackbox |",
            "|---|---|---|---|"]  # fmt: skip
    acc = {(r["tool"], r.get("loop") if r["tool"] == "ours" else None, r["rate"]): r
           for r in res.get("accuracy", [])}  # fmt: skip
    for rate in sorted({r for _, _, r in acc}):
        b = acc.get(("blackbox", None, rate))
        for loop in loops:
            o = acc.get(("ours", loop, rate))
            at = f"{rate}/s" + (f", ours on {loop}" if loop and len(loops) > 1 else "")
            for key in ("p50_ms", "p99_ms", "max_ms"):
                ov = o["error"][key] if o else None
                bv = b["error"][key] if b else None
                rows.append(f"| error vs wire {key[:-3]} @ {at} (ms) | {fmt(ov)} | {fmt(bv)} | "
                            f"{ratio(ov, bv)} |")  # fmt: skip
            ov = o["start_delay"]["p99_ms"] if o else None
            bv = b["start_delay"]["p99_ms"] if b else None
            rows.append(f"| start delay p99 @ {at} (ms) | {fmt(ov)} | {fmt(bv)} (driver) | "
                        f"{ratio(ov, bv)} |")  # fmt: skip
            ov, bv = (o["cpu"] if o else None), (b["cpu"] if b else None)
            rows.append(f"| CPU of one core @ {at} | {fmt(ov)} | {fmt(bv)} | {ratio(ov, bv)} |")
            ov, bv = (o["rss_mib"] if o else None), (b["rss_mib"] if b else None)
            rows.append(f"| RSS @ {at} (MiB) | {fmt(ov)} | {fmt(bv)} | {ratio(ov, bv)} |")
    thr = res.get("throughput", {})
    bm = thr.get("blackbox", {}).get("max_rate")
    for tool, t in thr.items():
        if tool == "blackbox":
            continue
        om = t.get("max_rate")
        on = f" (ours on {t['loop']})" if t.get("loop") and len(loops) > 1 else ""
        rows.append(f"| max probes/s on one core{on} (all ok, start delay p99 ≤ 10 ms, error "
                    f"p99 ≤ 2 ms) | {fmt(om)} | {fmt(bm)} | {ratio(om, bm)} |")  # fmt: skip
    # Neither prober may pass a rung on a slow machine (blackbox's error p99 alone can exceed
    # 2 ms): the CPU each completed probe took shows the capacity of one core all the same.
    cost = {tool: cpu_per_probe(res, tool) for tool in ("ours", "blackbox")}
    ov, bv = cost["ours"], cost["blackbox"]
    rows.append(f"| CPU per completed probe, least over the runs (ms) | {fmt(ov)} | {fmt(bv)} | "
                f"{ratio(ov, bv)} |")  # fmt: skip
    oc = round(1000 / ov) if ov else None
    bc = round(1000 / bv) if bv else None
    rows.append(f"| → probes/s one core could run at 100 % CPU | {fmt(oc)} | {fmt(bc)} | "
                f"{ratio(oc, bc)} |")  # fmt: skip
    for s in res.get("scrape", []):
        n = s["targets"]
        if "run_error" in s:
            rows.append(f"| /metrics @ {n} targets | run failed: {s['run_error'][:80]} | n/a | – |")
            continue
        g, p = s["gzip"], s["identity"]
        rows.append(f"| /metrics @ {n} targets, gzip: time max (ms) / body (bytes) | "
                    f"{g['scrape_seconds']['max_ms']} / {g['bytes']} | n/a | – |")  # fmt: skip
        rows.append(f"| /metrics @ {n} targets, plain: time max (ms) | "
                    f"{p['scrape_seconds']['max_ms']} | n/a | – |")  # fmt: skip
        gd, pd = g["start_delay_during_scrape"], p["start_delay_during_scrape"]
        worst = max(gd["max_ms"] or 0, pd["max_ms"] or 0)
        rows.append(f"| start delay during scrape @ {n} targets: p99 / max (ms) | "
                    f"{gd['p99_ms']} / {worst} | n/a | – |")  # fmt: skip
        rows.append(f"| RSS @ {n} targets (MiB) | {s['rss_mib']} | n/a | – |")
    c = res.get("churn")
    if c:
        rows.append(f"| churn {c['seconds']} s, {c['reloads']} reloads: RSS MiB settled → last "
                    f"(max) | {c['rss_mib_settled_first']} → {c['rss_mib_last']} "
                    f"({c['rss_mib_max']}) | n/a | – |")  # fmt: skip
        rows.append(f"| churn: open fds settled → last (max) | {c['fds_settled_first']} → "
                    f"{c['fds_last']} ({c['fds_max']}) | n/a | – |")  # fmt: skip
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


async def attempt(fn: Any, env: Env, rate: int, secs: float) -> dict[str, Any]:
    """One prober run; a run that breaks (a collapsed prober that never answers, say) is
    recorded as failed instead of ending the whole bench."""
    try:
        return dict(await asyncio.wait_for(fn(env, rate, secs), PHASE_TIMEOUT))
    except (RuntimeError, TimeoutError, OSError) as exc:
        tool = "ours" if fn is run_ours else "blackbox"
        why = f"{type(exc).__name__}: {exc}"[:500]
        log(f"{tool:8} {rate:5}/s run FAILED: {why}")
        empty = {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
        return {"tool": tool, "rate": rate, "passed": False, "run_error": why,
                "loop": env.loop if tool == "ours" else None,
                "error": empty, "start_delay": empty, "cpu": None, "rss_mib": None}  # fmt: skip


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
            ladders = [
                ("ours" if i == 0 else f"ours-{loop}", loop, run_ours, prof["ladder_ours"])
                for i, loop in enumerate(prof["loops"])
            ]
            for tool, loop, fn, ladder in [*ladders, ("blackbox", "", run_bb, prof["ladder_bb"])]:
                env.loop = loop or prof["loops"][0]
                runs, best = [], None
                for rate in ladder:
                    r = await attempt(fn, env, rate, prof["ladder_secs"])
                    runs.append(r)
                    if not r["passed"]:
                        break  # past the cliff; higher rates only take longer to fail
                    best = rate
                res["throughput"][tool] = {"max_rate": best, "runs": runs, "loop": loop}
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
    p.add_argument("--timeout", type=float, default=1500, help="whole run, seconds (1500)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--srv-ns", help=argparse.SUPPRESS)
    p.add_argument("--veth", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inner:
        return asyncio.run(inner(a))
    return outer(a)


if __name__ == "__main__":
    sys.exit(main())
