"""exporter/wire/pool.py: a kept-alive connection is lent again only while idle and open."""

from __future__ import annotations

import asyncio
import select
import socket

import pytest

from exporter.metrics import Reason
from exporter.wire import pool as wire_pool
from exporter.wire.connection import Conn, Marks, connect, literal_addresses


async def pair(listener: socket.socket) -> tuple[Conn, socket.socket]:
    infos = literal_addresses("127.0.0.1", listener.getsockname()[1], socket.AF_INET)
    conn = await connect(asyncio.get_running_loop(), infos, "here", Marks(), Reason.CONNECT)
    peer, _ = listener.accept()
    return conn, peer


async def test_an_idle_connection_is_lent_again() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn, peer = await pair(listener)
        with peer:
            async with wire_pool.idle_pool() as idle:
                idle.put("key", conn)
                assert idle.take("other") is None
                assert idle.take("key") is conn
                assert idle.take("key") is None  # lent to one probe at a time
                conn.close()


async def test_a_connection_the_server_closed_is_not_lent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn, peer = await pair(listener)
        async with wire_pool.idle_pool() as idle:
            idle.put("key", conn)
            peer.close()
            for _ in range(1000):  # bounded: until the FIN is in
                if not conn.idle_and_open():
                    break
                await asyncio.sleep(0.001)
            assert idle.take("key") is None
            assert conn.sock.fileno() == -1


async def test_stray_bytes_make_a_connection_unusable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn, peer = await pair(listener)
        with peer:
            async with wire_pool.idle_pool() as idle:
                idle.put("key", conn)
                peer.sendall(b"HTTP/1.1 200 OK\r\n")  # a late second response, say
                assert select.select([conn.sock], [], [], 10)[0]  # the bytes are in
                assert idle.take("key") is None
                assert conn.sock.fileno() == -1


async def test_expired_and_surplus_connections_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conns = [await pair(listener) for _ in range(wire_pool._IDLE_PER_KEY + 1)]
        async with wire_pool.idle_pool() as idle:
            for conn, _ in conns:
                idle.put("key", conn)
            # Over the per-origin cap: the oldest went.
            assert conns[0][0].sock.fileno() == -1
            monkeypatch.setattr(wire_pool, "_IDLE_SECONDS", -1.0)  # everything is too old now
            assert idle.take("key") is None
        for conn, peer in conns:
            assert conn.sock.fileno() == -1
            peer.close()
