"""Fuzzing (hypothesis): config files, and HTTP requests to a real exporter process.

Config: random YAML documents, mutations of a valid config and raw text damage never raise
anything but ConfigError, and every issue names its file and a line or key path.
Requests: malformed, huge, unknown or hostile requests to a running `failover-exporter run` get a
4xx (never a 5xx, never a hang), and /probe never sends a request anywhere but to configured
targets: a sentinel server that no target points at must see no connection at all.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import config, webconfig
from exporter.source import ConfigError
from tests.support.fuzz import FILE, FUZZ, any_text, check_parse, dump, mutate, paths, values
from tests.tools import listening_port

SEED: dict[str, Any] = {
    "vantage": "eu-west",
    "defaults": {"interval": "5s", "timeout": "2s", "max_concurrency": 64},
    "control": [{"name": "ctl", "probe": {"kind": "tcp", "address": "127.0.0.1:1"}}],
    "services": [
        {
            "name": "shop",
            "regions": [
                {"name": "eu", "role": "primary", "priority": 1},
                {"name": "us", "role": "standby", "priority": 2},
            ],
            "images": [{"name": "slim", "ref": "example/shop:slim"}],
            "targets": [
                {
                    "name": "eu-slim",
                    "region": "eu",
                    "image": "slim",
                    "interval": "10s",
                    "probe": {
                        "kind": "http",
                        "url": "http://127.0.0.1:1/healthz",
                        "method": "GET",
                        "headers": {"X-Probe": "1"},
                        "valid_status_codes": [200, 204],
                        "body_must_match": ["ok"],
                        "tls": {"verify": True, "min_version": "TLS12"},
                    },
                },
                {
                    "name": "us-slim",
                    "region": "us",
                    "image": "slim",
                    "probe": {
                        "kind": "tcp",
                        "address": "127.0.0.1:2",
                        "send": "PING\\r\\n",
                        "expect": "PONG",
                    },
                },
            ],
        }
    ],
}
utf8_text = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=30)
file_names = st.one_of(
    st.sampled_from(["server.crt", "a\x00b", "/etc", "/dev/null", "/proc/self/mem", "", "."]),
    any_text,
)


def test_seed_is_valid() -> None:
    # Mutations start from a config that loads, so that they reach the deeper checks.
    cfg = check_parse(dump(SEED))
    assert cfg is not None
    assert len(cfg.targets) == 3


@FUZZ
@given(doc=values, unicode=st.booleans())
def test_random_documents(doc: Any, unicode: bool) -> None:
    check_parse(dump(doc, unicode))
    check_parse(dump({**SEED, "services": doc}, unicode))


@FUZZ
@given(data=st.data())
def test_mutated_valid_config(data: st.DataObject) -> None:
    doc = copy.deepcopy(SEED)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        all_paths = list(paths(doc))
        path = data.draw(st.sampled_from(all_paths), label="path")
        how = data.draw(st.sampled_from(["delete", "replace", "wrap", "duplicate", "add"]))
        doc = mutate(doc, path, how, data.draw(values, label="value"))
    check_parse(dump(doc, data.draw(st.booleans(), label="unicode")))


def test_lone_surrogate_is_a_config_error() -> None:
    """Found by test_damaged_text: libyaml's UTF-8 encoding raised past the error reporting."""
    with pytest.raises(ConfigError) as info:
        config.parse("vantage: eu\nservices: \ud800\n", FILE, Path("/nonexistent"))
    assert [str(i) for i in info.value.issues] == [f"{FILE}:2: invalid character U+D800"]


@pytest.mark.parametrize("section", ["regions", "images"])
def test_two_unnamed_entries_are_schema_errors_not_a_crash(section: str) -> None:
    """Found by test_mutated_valid_config: the duplicate-name check looked up a missing name."""
    doc = copy.deepcopy(SEED)
    doc["services"][0][section] = [{}, {}]
    # A ConfigError whose issues all name their place (check_parse asserts that), not a crash.
    assert check_parse(dump(doc)) is None
    with pytest.raises(ConfigError) as info:
        config.parse(dump(doc), FILE, Path("/nonexistent"))
    assert not any("already used" in i.message for i in info.value.issues)


@FUZZ
@given(data=st.data())
def test_damaged_text(data: st.DataObject) -> None:
    text = dump(SEED)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        pos = data.draw(st.integers(0, len(text)), label="pos")
        end = data.draw(st.integers(pos, min(len(text), pos + 20)), label="end")
        insert = data.draw(
            st.one_of(
                any_text,
                st.sampled_from(["\t", "\x00", "\ufeff", ": ", "- ", "{", "]", "&a ", "*a", "!!"]),
                st.sampled_from(["!!python/object:os.system", "<<: ", "? ", "|\n", "%YAML 1.1"]),
            ),
            label="insert",
        )
        text = text[:pos] + insert + text[end:]
    check_parse(text)


# -- generated classes the hardening issue found by hand ------------------------------------

ipv6 = st.ip_addresses(v=6).map(str).filter(lambda a: a.count(":") >= 2)
ports = st.integers(1, 65535)


@FUZZ
@given(address=ipv6, port=ports, kind=st.sampled_from(["tcp", "postgres", "docker"]))
def test_unbracketed_ipv6_never_splits(address: str, port: int, kind: str) -> None:
    """An IPv6 address without brackets is refused with the hint, never split at a colon."""
    doc = copy.deepcopy(SEED)
    svc = doc["services"][0]
    if kind == "tcp":
        svc["targets"][1]["probe"] = {"kind": "tcp", "address": f"{address}:{port}"}
    elif kind == "postgres":
        svc["targets"][1]["probe"] = {"kind": "postgres", "dsn_env": "FUZZ_IPV6_DSN"}
    else:
        svc["regions"][1]["docker"] = {"host": f"tcp://{address}:{port}"}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FUZZ_IPV6_DSN", f"postgresql://u@{address}:{port}/db")
        with pytest.raises(ConfigError) as info:
            config.parse(dump(doc), FILE, Path("/nonexistent"))
    [issue] = info.value.issues
    assert "[2001:db8::1]:port" in issue.message, issue
    assert issue.line is not None, issue
    # Bracketed, the same address is accepted by the tcp kind (postgres and docker need a server).
    svc["targets"][1]["probe"] = {"kind": "tcp", "address": f"[{address}]:{port}"}
    svc["regions"][1].pop("docker", None)
    assert check_parse(dump(doc)) is not None


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
tokens = st.text(alphabet=_ALNUM, min_size=20, max_size=60).filter(
    lambda t: (
        any(c.islower() for c in t) and any(c.isupper() for c in t) and any(c.isdigit() for c in t)
    )
)
userinfo = st.text(alphabet=_ALNUM + "-._~%!$'()*+,;=", min_size=1, max_size=20)
dsns = st.builds(
    lambda scheme, user, pw, host: f"{scheme}://{user}:{pw}@{host}/db",
    st.sampled_from(["postgres", "postgresql", "https", "redis", "amqp"]),
    userinfo,
    userinfo,
    st.sampled_from(["db.internal", "10.0.0.5:5432", "[2001:db8::1]:5432"]),
)
secret_values = st.one_of(tokens, dsns, tokens.map(lambda t: "ghp_" + t))
secret_fields = st.sampled_from(
    [
        ("postgres", "dsn_env"),
        ("postgres", "dsn_file"),
        ("http", "bearer_token.env"),
        ("http", "bearer_token.file"),
        ("http", "tls.ca_file"),
        ("tcp", "tls_config.cert_file"),
    ]
)


@FUZZ
@given(value=secret_values, where=secret_fields)
def test_secret_in_a_name_field_is_never_echoed(value: str, where: tuple[str, str]) -> None:
    kind, field = where
    probe: dict[str, Any] = {"kind": kind}
    if kind == "http":
        probe["url"] = "http://127.0.0.1:1/"
    if kind == "tcp":
        probe.update(address="127.0.0.1:1", tls=True)
    node = probe
    *parents, leaf = field.split(".")
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value
    doc = copy.deepcopy(SEED)
    doc["services"][0]["targets"][1]["probe"] = probe
    with pytest.raises(ConfigError) as info:
        config.parse(dump(doc), FILE, Path("/nonexistent"))
    text = str(info.value)
    assert "looks like a secret" in text, text
    assert value not in text
    secret_part = value.partition("://")[2] or value
    assert secret_part[:12] not in text, text


@FUZZ
@given(data=st.data())
def test_non_utf8_bytes_are_located(data: st.DataObject, tmp_path_factory: Any) -> None:
    """Invalid UTF-8 anywhere in a config: the issue's line and column are the first bad byte's."""
    raw = dump(SEED).encode()
    pos = data.draw(st.integers(0, len(raw)), label="pos")
    # Split a multi-byte character nowhere: insert at a character boundary.
    while pos < len(raw) and raw[pos] & 0xC0 == 0x80:
        pos += 1
    bad = data.draw(
        st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"]),
        label="bad",
    )
    blob = raw[:pos] + bad + raw[pos:]
    path = tmp_path_factory.mktemp("utf8") / "c.yml"
    path.write_bytes(blob)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    [issue] = info.value.issues
    before = raw[:pos].decode()
    assert issue.line == before.count("\n") + 1, (issue, pos)
    assert issue.column == len(before) - (before.rfind("\n") + 1) + 1, (issue, pos)
    assert str(issue).startswith(f"{path}:{issue.line}:{issue.column}: cannot read config")


@FUZZ
@given(
    doc=values,
    tls=st.fixed_dictionaries(
        {"cert_file": file_names, "key_file": file_names},
        optional={"client_ca_file": file_names, "client_auth_type": values, "min_version": values},
    ),
)
def test_random_web_configs(doc: Any, tls: dict[str, Any]) -> None:
    for data in (doc, {"tls_server_config": tls}, {"basic_auth_users": doc}):
        try:
            webconfig.parse(dump(data), FILE, Path("/nonexistent"))
        except ConfigError as exc:
            issues = exc.issues
        else:
            continue
        for issue in issues:
            assert issue.file == FILE, issue
            assert issue.line is not None or issue.path, issue


@pytest.mark.parametrize(
    "text",
    [
        "vantage: x\ndefaults: {max_concurrency: " + "1" * 5000 + "}\n",
        "vantage: " + "[" * 1000 + "]" * 1000 + "\n",
        "vantage: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n",
        "a: &a [*a]\n",
        "a: &a {b: *a}\n",
        # "billion laughs": 10 ** 9 values once aliases are expanded.
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        'vantage: "\\ud800"\n',
        "vantage: a\x01b\n",
        "vantage: x\ndefaults: {interval: .nan, timeout: .inf}\n",
        "vantage: x\ndefaults: {interval: " + "9" * 400 + "s}\n",
        "\x00",
        "\ufeff\ufeff",
    ],
    ids=[
        "huge-int",
        "deep-lists",
        "deep-maps",
        "recursive-alias-list",
        "recursive-alias-map",
        "billion-laughs",
        "lone-surrogate",
        "control-character",
        "nan-duration",
        "infinite-duration",
        "nul",
        "double-bom",
    ],
)
def test_known_hard_inputs(text: str) -> None:
    deadline = time.monotonic() + 20
    assert check_parse(text) is None
    assert time.monotonic() < deadline


# -- requests to a running exporter --------------------------------------------------------


class Sentinel(socketserver.ThreadingTCPServer):
    """A TCP server no target points at; records every connection it gets."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.connections: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _SentinelHandler)


class _SentinelHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, Sentinel)
        self.request.settimeout(1)
        try:
            data = self.request.recv(4096)
        except OSError:
            data = b""
        self.server.connections.append(data)


class Allowed(http.server.BaseHTTPRequestHandler):
    """The configured target: counts the probes it gets."""

    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Exporter:
    def __init__(self, port: int, sentinel: Sentinel, log: Path) -> None:
        self.port = port
        self.sentinel = sentinel
        self.log = log

    def request(self, raw: bytes, timeout: float = 10) -> int | None:
        """Send raw bytes; return the response status, or None if the server closed without
        answering. A hang fails the test through the socket timeout."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(raw)
            chunks = []
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if b"\r\n" in b"".join(chunks):
                        break
            except ConnectionResetError:
                pass
        data = b"".join(chunks)
        if not data:
            return None
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
        assert match, data[:200]
        return int(match.group(1))

    def get(self, target: str, headers: bytes = b"") -> int | None:
        return self.request(
            b"GET "
            + target.encode()
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + headers
            + b"\r\n"
        )


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    tmp = tmp_path_factory.mktemp("fuzz")
    sentinel = Sentinel()
    allowed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Allowed)
    allowed.daemon_threads = True
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        for s in (sentinel, allowed)
    ]
    for t in threads:
        t.start()
    allowed_port = allowed.server_address[1]
    doc = copy.deepcopy(SEED)
    del doc["control"]
    svc = doc["services"][0]
    svc["targets"][0]["probe"] = {"kind": "http", "url": f"http://127.0.0.1:{allowed_port}/"}
    svc["targets"][1]["probe"] = {"kind": "tcp", "address": f"127.0.0.1:{allowed_port}"}
    doc["defaults"] = {"interval": "1h", "timeout": "2s"}
    cfg_path = tmp / "config.yml"
    cfg_path.write_text(dump(doc))
    log = tmp / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "exporter", "run", "--config", str(cfg_path)),
                *("--web.listen-address", "127.0.0.1:0", "--log.format", "json"),
                # Debug: every malformed request is logged, and must be logged harmlessly.
                *("--log.level", "debug"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = listening_port(proc, log)
        assert port is not None, log.read_text()
        yield Exporter(port, sentinel, log)
        assert proc.poll() is None, "the exporter died:\n" + log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        text = log.read_text()
        assert "Traceback" not in text, text
        assert '"level": "error"' not in text, text
        assert '"msg": "bad request"' in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for s in (sentinel, allowed):
            s.shutdown()
            s.server_close()


KNOWN = {"/", "/metrics", "/probe", "/-/healthy", "/-/ready", "/-/reload"}
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]),
    st.sampled_from(["CONNECT", "PROPFIND", "get", "G\x00T", "GET GET", "", "\xff"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
)
# Everything but CR and LF, which would end the request line early.
url_chars = st.characters(codec="utf-8", exclude_characters="\r\n")
request_paths = st.one_of(
    st.sampled_from(sorted(KNOWN)),
    st.sampled_from(["/probe/", "//metrics", "/metrics/../-/reload", "/%2e%2e/", "*", "x"]),
    st.text(url_chars, max_size=60).map(lambda s: "/" + s),
)
queries = st.one_of(
    st.just(""),
    st.text(url_chars, max_size=80),
    st.sampled_from(["%", "%zz", "%%%", "a=%ff%fe", "target", "target=", "&&&=", "=;=;"]),
    st.lists(
        # Encodable text: a lone surrogate cannot go into a URL at all (urlencode raises).
        st.tuples(st.sampled_from(["target", "vantage", "debug", "module", "url"]), utf8_text),
        max_size=4,
    ).map(lambda kv: urllib.parse.urlencode(kv)),
)
header_lines = st.lists(
    st.tuples(
        st.text(
            st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
            min_size=1,
            max_size=20,
        ),
        st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=40),
    ),
    max_size=5,
)


@FUZZ
@given(method=methods, path=request_paths, query=queries, headers=header_lines)
def test_malformed_requests(
    exporter: Exporter, method: str, path: str, query: str, headers: list[tuple[str, str]]
) -> None:
    target = path + ("?" + query if query else "")
    if path == "/-/reload" and method == "POST":
        return  # a real reload: the reload tests own that
    extra = b"".join(
        k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n"
        for k, v in headers
        if k.lower() not in ("content-length", "transfer-encoding", "host", "connection")
    )
    raw = (
        method.encode("utf-8", "surrogateescape")
        + b" "
        + target.encode("utf-8")
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + extra
        + b"\r\n"
    )
    status = exporter.request(raw)
    assert status is not None, raw[:200]
    assert status < 500, (status, raw[:200])
    if method not in ("GET", "HEAD") or path not in KNOWN:
        assert 400 <= status < 500, (status, raw[:200])


@settings(max_examples=20, deadline=None, database=None)
@given(
    url_size=st.integers(8_200, 70_000),
    header_size=st.integers(8_200, 100_000),
    header_count=st.integers(0, 300),
)
def test_huge_urls_and_headers(
    exporter: Exporter, url_size: int, header_size: int, header_count: int
) -> None:
    for target, headers in (
        ("/metrics?x=" + "a" * url_size, b""),
        ("/" + "b" * url_size, b""),
        ("/metrics", b"X-Big: " + b"c" * header_size + b"\r\n"),
        ("/probe?target=" + "d" * url_size, b""),
    ):
        status = exporter.get(target, headers)
        # An oversized request is refused with a 4xx, or the connection is cut; never served.
        assert status is None or 400 <= status < 500, (status, target[:50])
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(header_count))
    status = exporter.get("/-/healthy", many)
    assert status is not None
    assert status == 200 or 400 <= status < 500


def hostile_targets(sentinel_port: int) -> st.SearchStrategy[str]:
    s = f"127.0.0.1:{sentinel_port}"
    return st.one_of(
        st.sampled_from(
            [
                s,
                f"http://{s}/",
                f"https://{s}/",
                f"//{s}",
                f"tcp://{s}",
                f"http://localhost:{sentinel_port}/metrics",
                f"http://[::ffff:127.0.0.1]:{sentinel_port}/",
                f"eu-slim@{s}",
                f"http://eu-slim@{s}/",
                f"eu-slim/../{s}",
                f"eu-slim?url=http://{s}",
                "eu-slim\x00",
                "EU-SLIM",
                " eu-slim",
                "eu-slim ",
                "eu-sli",
                "file:///etc/passwd",
                "../../etc/passwd",
                "${HOME}",
                "{{target}}",
                "*",
                ".*",
            ]
        ),
        # Encodable: these become query parameters, and a lone surrogate cannot (urlencode raises).
        utf8_text,
    )


@pytest.fixture(scope="module")
def sentinel_port(exporter: Exporter) -> int:
    return int(exporter.sentinel.server_address[1])


def test_sentinel_notices_connections() -> None:
    sentinel = Sentinel()
    thread = threading.Thread(target=sentinel.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with socket.create_connection(sentinel.server_address[:2], timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        for _ in range(100):
            if sentinel.connections:
                break
            time.sleep(0.02)
        assert sentinel.connections == [b"GET / HTTP/1.1\r\n\r\n"]
    finally:
        sentinel.shutdown()
        sentinel.server_close()
        thread.join(timeout=5)


def test_configured_target_is_really_probed(exporter: Exporter) -> None:
    # The other side of "no request leaves": /probe does send one to a configured target.
    before = Allowed.hits
    assert exporter.get("/probe?target=eu-slim") == 200
    assert Allowed.hits > before


@FUZZ
@given(data=st.data())
def test_probe_never_reaches_unconfigured_targets(
    exporter: Exporter, sentinel_port: int, data: st.DataObject
) -> None:
    target = data.draw(hostile_targets(sentinel_port), label="target")
    params = [("target", target)]
    for key in data.draw(
        st.lists(st.sampled_from(["url", "module", "vantage", "debug"]), max_size=3)
    ):
        value = data.draw(
            st.sampled_from([f"http://127.0.0.1:{sentinel_port}/", "true", "eu-west", "x"]),
            label=key,
        )
        params.append((key, value))
    query = urllib.parse.urlencode(params)
    status = exporter.get("/probe?" + query)
    assert status is not None
    configured = target in ("eu-slim", "us-slim")
    if configured:
        assert status in (200, 404), status  # 404: a vantage= that is not this exporter's
    else:
        assert 400 <= status < 500, (status, query)
    assert exporter.sentinel.connections == []
