"""Secrets a hostile target reflects never reach an output surface.

Each kind that sends a secret (http: bearer token, basic auth, secret_headers, proxy_auth;
postgres: the DSN's password) is pointed at a real server that echoes what it received — in the
reason phrase, a redirect Location, an error message — raw, percent-encoded and base64-encoded.
Every surface is then scanned: /probe with debug lines, the status page, /metrics, the log lines
(logfmt and JSON) and the failure messages.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from exporter import config
from exporter.engine import Engine
from exporter.fields import Scrubber
from exporter.log import JsonFormatter, LogfmtFormatter
from exporter.web import ENGINE
from tests.conftest import MakeClient

TOKEN = "tok/en+Secret=1x"
API_KEY = "k3y-Of-The-Api/9"
USER, PASSWORD = "alice", "pa/ss w0rd!x"
PG_PASSWORD = "pg/Pass word#7"


def encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        quote(secret, safe=""),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


FORBIDDEN = [
    s
    for secret in (TOKEN, API_KEY, PASSWORD, f"{USER}:{PASSWORD}", PG_PASSWORD)
    for s in encodings(secret)
]


def reflections(received: list[str]) -> str:
    """What the hostile target sends back: each received value raw, percent-encoded, base64."""
    out = []
    for value in received:
        out += encodings(value)
        if value.startswith("Basic "):
            out.append(base64.b64decode(value[6:]).decode())  # user:pass in the clear
    return " ".join(out)


async def _http_reflector() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
            path = head.split(" ", 2)[1]
            received = [
                line.partition(":")[2].strip()
                for line in head.split("\r\n")[1:]
                if line.lower().startswith(("authorization:", "x-api-key:", "proxy-authorization:"))
            ]
            echo = reflections(received)
            if head.startswith("CONNECT "):
                # A hostile proxy: its CONNECT refusal echoes the Proxy-Authorization it got.
                response = f"HTTP/1.1 407 {echo}\r\nX-Echo: {echo}\r\n"
            elif path.startswith("/redirect"):
                where = "/landed/" + quote(echo, safe="")
                response = f"HTTP/1.1 302 Found\r\nLocation: {where}\r\n"
            else:
                # The reason phrase, a header and the body all echo the credentials.
                response = f"HTTP/1.1 503 {echo or path}\r\nX-Echo: {echo}\r\n"
            body = f"you sent {echo}".encode()
            writer.write(
                f"{response}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode(
                    "latin-1"
                )
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _pg_message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


async def _postgres_reflector() -> tuple[asyncio.Server, int]:
    """Speaks enough of the PostgreSQL protocol to ask for a cleartext password and echo it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                packet = await reader.readexactly(length - 4)
                if struct.unpack("!I", packet[:4])[0] in (80877103, 80877104):
                    writer.write(b"N")  # no SSL, no GSS
                    continue
                break
            writer.write(_pg_message(b"R", struct.pack("!I", 3)))  # cleartext password
            await writer.drain()
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            password = (await reader.readexactly(length - 4)).rstrip(b"\0").decode()
            assert kind == b"p"
            text = f"password authentication failed: you sent {reflections([password])}"
            fields = b"SFATAL\0VFATAL\0C28P01\0M" + text.encode() + b"\0\0"
            writer.write(_pg_message(b"E", fields))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, AssertionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def reflectors() -> AsyncIterator[tuple[int, int]]:
    http_server, http_port = await _http_reflector()
    pg_server, pg_port = await _postgres_reflector()
    try:
        yield http_port, pg_port
    finally:
        for server in (http_server, pg_server):
            server.close()
            await server.wait_closed()


def _config(tmp_path: Path, http_port: int, pg_port: int) -> Path:
    base = f"http://127.0.0.1:{http_port}"
    (tmp_path / "token").write_text(TOKEN + "\n")
    dsn = f"postgresql://probe:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{pg_port}/db?sslmode=disable"
    (tmp_path / "dsn").write_text(dsn + "\n")
    secret_header = {"X-Api-Key": {"env": "HARDENING_API_KEY"}}
    basic = {"username": USER, "password": {"env": "HARDENING_PASSWORD"}}
    bearer = {"file": "token"}
    probes: dict[str, dict[str, object]] = {
        "bearer-reason": {"url": f"{base}/reason", "bearer_token": bearer},
        "header-reason": {"url": f"{base}/reason", "secret_headers": secret_header},
        "bearer-redirect": {"url": f"{base}/redirect", "bearer_token": bearer},
        "basic-reason": {"url": f"{base}/reason", "basic_auth": basic},
        "basic-redirect": {"url": f"{base}/redirect", "basic_auth": basic},
        # The reflector as the proxy: a plain request (absolute form) and a CONNECT.
        "proxy-reason": {"url": f"{base}/reason", "proxy_url": base, "proxy_auth": basic},
        "proxy-connect": {
            "url": f"https://127.0.0.1:{http_port}/",
            "proxy_url": base,
            "proxy_auth": basic,
        },
    }
    probes = {name: {"kind": "http", **p} for name, p in probes.items()}
    probes["pg"] = {"kind": "postgres", "dsn_file": "dsn", "write_heartbeat": False}
    targets = "\n".join(
        f"      - name: {name}\n        region: r1\n        image: i1\n"
        f"        probe: {json.dumps(probe)}"
        for name, probe in probes.items()
    )
    path = tmp_path / "config.yml"
    path.write_text(
        "vantage: test\n"
        "defaults: {interval: 1s, timeout: 900ms}\n"
        "services:\n"
        "  - name: svc\n"
        "    regions: [{name: r1, role: primary, priority: 1}]\n"
        "    images: [{name: i1, ref: example/svc:1}]\n"
        f"    targets:\n{targets}\n"
    )
    return path


def _leaks(surface: str, text: str) -> list[str]:
    return [f"{surface}: {s!r}" for s in FORBIDDEN if s in text or s in html.unescape(text)]


async def test_reflected_secrets_reach_no_surface(
    reflectors: tuple[int, int],
    exporter_client: MakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HARDENING_API_KEY", API_KEY)
    monkeypatch.setenv("HARDENING_PASSWORD", PASSWORD)
    caplog.set_level(logging.DEBUG)
    cfg = config.load(_config(tmp_path, *reflectors))
    client = await exporter_client(cfg)
    engine: Engine = client.app[ENGINE]
    names = [t.name for t in cfg.targets]

    leaks: list[str] = []
    for name in names:
        resp = await client.get("/probe", params={"target": name, "debug": "true"})
        text = await resp.text()
        # The reflector really echoed, and the probe really failed on it: not a vacuous scan.
        assert "failover_probe_failure_info" in text, text
        assert "***" in text, f"{name}: nothing reflected reached the scrubber\n{text}"
        leaks += _leaks(f"/probe {name}", text)

    # Scheduled probes fill the status page and log "target failing" (1 s interval; bounded).
    for _ in range(100):
        failed = {r.target.name for r in engine.scheduler.recent_failures}
        if failed >= set(names):
            break
        await asyncio.sleep(0.1)
    assert failed >= set(names)
    for result in engine.scheduler.recent_failures:
        leaks += _leaks(f"message {result.target.name}", result.message)
        leaks += _leaks(f"debug {result.target.name}", "\n".join(result.debug))
    leaks += _leaks("status page", await (await client.get("/")).text())
    leaks += _leaks("/metrics", await (await client.get("/metrics")).text())
    lines = [f.format(r) for r in caplog.records for f in (LogfmtFormatter(), JsonFormatter())]
    assert any("target failing" in line and "vantage=test" in line for line in lines)
    leaks += _leaks("log", "\n".join(lines))
    assert not leaks, "\n".join(leaks)


def test_scrubber_encodings_and_registration(tmp_path: Path) -> None:
    scrub = Scrubber(["s3cr3t/pw", "alice:hunter22"])
    text = "a s3cr3t%2Fpw b S3CR3T/PW c YWxpY2U6aHVudGVyMjI= d czNjcjN0L3B3 e s3cr3t%2fpw"
    assert scrub(text) == "a *** b *** c *** d *** e ***"
    # Short values would blank out ordinary text.
    assert Scrubber(["on"])("on and on") == "on and on"
    assert not Scrubber()
    assert Scrubber(["longer"])


def test_every_kind_registers_what_it_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's scrubber knows the derived forms too (user:pass, the DSN's password)."""
    monkeypatch.setenv("HARDENING_API_KEY", API_KEY)
    monkeypatch.setenv("HARDENING_PASSWORD", PASSWORD)
    path = _config(tmp_path, 1, 2)
    cfg = config.load(path)
    for target in cfg.targets:
        assert target.scrub, target.name
    basic = next(t for t in cfg.targets if t.name == "basic-reason")
    pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert basic.scrub(f"x {pair} y {USER}:{PASSWORD}") == "x *** y ***"
    pg = next(t for t in cfg.targets if t.name == "pg")
    assert PG_PASSWORD not in pg.scrub(f"got {PG_PASSWORD} / {quote(PG_PASSWORD)}")
