"""Ground truth from a packet capture: one record per TCP connection to the target.

Only the classic pcap format that `tcpdump -w --time-stamp-precision nano` writes on an Ethernet
(veth) link, IPv4 and TCP: that is all the bench captures, so nothing else is parsed.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

_ID = re.compile(rb"[?&]id=(\d+)")
_SYN, _ACK, _FIN, _RST = 0x02, 0x10, 0x01, 0x04


@dataclasses.dataclass
class Conn:
    """Kernel timestamps (seconds, CLOCK_REALTIME) of one connection's packets, seen on the
    client-side veth."""

    syn: float
    synack: float | None = None
    request: float | None = None
    response: float | None = None
    response_last: float | None = None
    probe_id: int | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.synack, self.request, self.response_last, self.probe_id)

    @property
    def truth(self) -> float:
        """Handshake round trip + server time (request packet to last response byte).

        The prober's own gap between the SYN-ACK and sending its request is left out on
        purpose: it is the prober's scheduling delay, so it counts as the prober's error.
        """
        assert self.synack is not None
        assert self.request is not None
        assert self.response_last is not None
        return (self.synack - self.syn) + (self.response_last - self.request)

    @property
    def wire(self) -> float:
        """SYN to last response byte, the prober's gap included."""
        assert self.response_last is not None
        return self.response_last - self.syn

    @property
    def client_gap(self) -> float:
        assert self.synack is not None
        assert self.request is not None
        return self.request - self.synack


def read(path: Path, server_port: int) -> list[Conn]:
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data)[0]
    if magic == 0xA1B23C4D:
        scale = 1e-9
    elif magic == 0xA1B2C3D4:
        scale = 1e-6
    else:
        raise ValueError(f"{path}: not a little-endian pcap file (magic {magic:#x})")
    linktype = struct.unpack_from("<I", data, 20)[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    open_conns: dict[int, Conn] = {}
    done: list[Conn] = []
    off = 24
    end = len(data)
    while off + 16 <= end:
        sec, frac, caplen, _ = struct.unpack_from("<IIII", data, off)
        off += 16
        pkt = data[off : off + caplen]
        off += caplen
        ts = sec + frac * scale
        if len(pkt) < 34 or pkt[12:14] != b"\x08\x00":
            continue
        ihl = (pkt[14] & 0x0F) * 4
        if pkt[23] != 6:
            continue
        tcp = 14 + ihl
        if len(pkt) < tcp + 20:
            continue
        total_len = struct.unpack_from(">H", pkt, 16)[0]
        sport, dport = struct.unpack_from(">HH", pkt, tcp)
        doff = (pkt[tcp + 12] >> 4) * 4
        flags = pkt[tcp + 13]
        payload_len = total_len - ihl - doff
        if dport == server_port:
            client = sport
            if flags & _SYN:
                old = open_conns.pop(client, None)
                if old is not None:
                    done.append(old)
                open_conns[client] = Conn(syn=ts)
                continue
            conn = open_conns.get(client)
            if conn is None:
                continue
            if payload_len > 0 and conn.request is None:
                conn.request = ts
                m = _ID.search(pkt[tcp + doff :])
                if m:
                    conn.probe_id = int(m.group(1))
        elif sport == server_port:
            conn = open_conns.get(dport)
            if conn is None:
                continue
            if flags & _SYN and flags & _ACK:
                conn.synack = ts
            elif payload_len > 0 and conn.request is not None:
                if conn.response is None:
                    conn.response = ts
                conn.response_last = ts
    done.extend(open_conns.values())
    return done
