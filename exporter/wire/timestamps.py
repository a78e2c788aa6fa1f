"""The kernel's clocks on a socket: receive timestamps (SO_TIMESTAMPNS), the handshake RTT and
state (TCP_INFO), and the offset that maps the kernel's wall-clock times onto perf_counter.

A time taken when the event loop gets round to a socket holds the exporter's own scheduling
delay; these are the times the kernel saw the packets, so a busy loop is not the target's
latency.
"""

from __future__ import annotations

import socket
import struct
import time

# Linux's SO_TIMESTAMPNS (the socket module lacks the name; asm-generic value): every read then
# carries the kernel's receive time of its data as a struct timespec.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
TIMESTAMP_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def kernel_time_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The wall-clock receive time (ns) in a recvmsg's ancillary data, if the kernel gave one."""
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(value)
            return int(sec * 1_000_000_000 + nsec)
    return None


# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32 fields; tcpi_rtt is the 16th.
_TCPI_RTT = struct.Struct("=I")
_TCPI_RTT_OFFSET = 8 + 15 * 4
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def handshake_rtt(sock: socket.socket, family: int) -> float | None:
    """SYN -> SYN-ACK as the kernel measured it (its first RTT sample, in microseconds).

    The loop notices the finished handshake only when it next polls; on a busy loop that is
    milliseconds later, and the wait is the exporter's, not the target's.
    """
    if _TCP_INFO is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_RTT_OFFSET + 4)
    except OSError:
        return None
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return None
    (rtt_us,) = _TCPI_RTT.unpack_from(info, _TCPI_RTT_OFFSET)
    # 0: no sample (a retransmitted SYN, say); the loop's own marks stand then.
    return rtt_us / 1e6 if rtt_us else None


# Two clock reads a preemption apart would shift every kernel time of the connection by the
# preemption (milliseconds on a loaded machine): a reading is kept only when perf_counter's
# reads around it are this close, or else the tightest of a few.
_TIGHT = 20e-6
_TRIES = 4


def clock_offset() -> float:
    """time.time() - time.perf_counter(), read between two perf_counter reads."""
    best_gap, best = float("inf"), 0.0
    for _ in range(_TRIES):
        before = time.perf_counter()
        wall = time.time()
        after = time.perf_counter()
        if after - before < best_gap:
            best_gap, best = after - before, wall - (before + after) / 2
            if best_gap < _TIGHT:
                break
    return best
