"""--web.config.file: validation errors, real TLS (trustme certificates), mTLS and basic auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web

from exporter import cli, webconfig
from exporter.app import make_app
from exporter.engine import Engine
from exporter.source import ConfigError
from exporter.webconfig import BasicAuth, WebConfig
from tests.conftest import MakeConfig, one_service
from tests.tools import listening_port, need

EXAMPLES = Path(__file__).parent.parent / "examples" / "web-config"
PASSWORD = "s3cret-Pässword"
# Cost 4 is the minimum: these tests are about behaviour, not about bcrypt's slowness.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
CONFIG = one_service(
    {"t": '{kind: tcp, address: "127.0.0.1:1"}'}, defaults="defaults: {interval: 1h, timeout: 1s}\n"
)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> Path:
    """server.crt/server.key for 127.0.0.1 and client-ca.crt, as the TLS example names them."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "server.crt")
    leaf.private_key_pem.write_to_path(tmp_path / "server.key")
    ca.cert_pem.write_to_path(tmp_path / "client-ca.crt")
    return tmp_path


def write(tmp_path: Path, text: str, name: str = "web.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        webconfig.load(path)
    return [str(i).replace(str(path.parent) + "/", "") for i in info.value.issues]


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


Serve = Callable[[WebConfig], Awaitable[str]]


@pytest.fixture
async def serve(make_config: MakeConfig) -> AsyncIterator[Serve]:
    """Run the real exporter app on a real socket with the given web config; return its URL."""
    runners: list[web.AppRunner] = []

    async def start(web_config: WebConfig) -> str:
        cfg = make_config(CONFIG)
        app = make_app(Engine(path=Path(cfg.source)), cfg, web_config=web_config)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=web_config.ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if web_config.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def get(url: str, **kwargs: object) -> tuple[int, dict[str, str], str]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, **kwargs) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, dict(resp.headers), await resp.text()


# -- validation ------------------------------------------------------------------------------


class TestValidation:
    def test_empty_file_means_plain_http_without_auth(self, tmp_path: Path) -> None:
        cfg = webconfig.load(write(tmp_path, ""))
        assert cfg.ssl_context is None
        assert not cfg.users

    def test_empty_tls_section_means_plain_http(self, tmp_path: Path) -> None:
        # As in exporter-toolkit, where an all-empty tls_server_config disables TLS.
        cfg = webconfig.load(write(tmp_path, "tls_server_config: {}\n"))
        assert cfg.ssl_context is None

    def test_tls_and_users(self, certs: Path) -> None:
        path = write(
            certs,
            f"""\
            tls_server_config:
              cert_file: server.crt
              key_file: server.key
              client_ca_file: client-ca.crt
              client_auth_type: VerifyClientCertIfGiven
              min_version: TLS13
            basic_auth_users:
              alice: {HASH}
            """,
        )
        cfg = webconfig.load(path)
        assert cfg.ssl_context is not None
        assert cfg.ssl_context.verify_mode == ssl.CERT_OPTIONAL
        assert cfg.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert cfg.users == {"alice": HASH.encode()}

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "web.yml:4: tls_server_config.cipher_suites: an exporter-toolkit option that "
                "failover-exporter does not support",
            ),
            ("basic_auth_user:\n  alice: x\n", "web.yml:1: basic_auth_user: unknown key"),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  client_auth_type: RequireClientCertificate\n",
                "web.yml:4: tls_server_config.client_auth_type: Input should be 'NoClientCert', "
                "'RequestClientCert', 'RequireAnyClientCert', 'VerifyClientCertIfGiven', "
                "'RequireAndVerifyClientCert' or ''",
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  client_auth_type: RequireAndVerifyClientCert\n",
                "web.yml:1: tls_server_config.client_ca_file: required with client_auth_type "
                "RequireAndVerifyClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  client_auth_type: RequireAnyClientCert\n",
                "web.yml:4: tls_server_config.client_auth_type: RequireAnyClientCert is not "
                "supported (Python's TLS stack cannot accept an unverified client "
                "certificate); use RequireAndVerifyClientCert with client_ca_file",
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  client_ca_file: client-ca.crt\n",
                "web.yml:4: tls_server_config.client_ca_file: has no effect with "
                "client_auth_type NoClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  min_version: TLS13\n  max_version: TLS12\n",
                "web.yml:4: tls_server_config.min_version: must not be above max_version (TLS12)",
            ),
            (
                "tls_server_config:\n  key_file: server.key\n",
                "web.yml:1: tls_server_config.cert_file: required when TLS is configured",
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: missing.key\n",
                "web.yml:2: tls_server_config.cert_file: cannot load certificate server.crt "
                "with key missing.key: No such file or directory",
            ),
            (
                "basic_auth_users:\n  alice: plaintext-password\n",
                "web.yml:2: basic_auth_users.alice: not a bcrypt hash (make one with "
                "`htpasswd -nBC 10 USER`)",
            ),
            (
                "basic_auth_users:\n  alice: [1]\n",
                "web.yml:2: basic_auth_users.alice: Input should be a valid string",
            ),
            (
                "basic_auth_users: [alice]\n",
                "web.yml:1: basic_auth_users: Input should be a valid dictionary",
            ),
            ("- tls_server_config\n", "web.yml:1: the web config must be a mapping"),
            (
                "basic_auth_users: {a: 1\n",
                "web.yml:2: YAML syntax error: did not find expected ',' or '}'",
            ),
            ("a: 1\na: 2\n", "web.yml:2: a: duplicate key"),
        ],
    )
    def test_errors_name_line_and_key(self, certs: Path, text: str, expected: str) -> None:
        found = errors(write(certs, text))
        assert expected in [e.replace(str(certs) + "/", "") for e in found], found

    def test_secret_free_errors(self, tmp_path: Path) -> None:
        # A plain password written where a hash belongs is not echoed back.
        found = errors(write(tmp_path, f"basic_auth_users:\n  alice: {PASSWORD}\n"))
        assert PASSWORD not in "\n".join(found)

    def test_unreadable_file(self, tmp_path: Path) -> None:
        assert errors(tmp_path / "nope.yml") == [
            "nope.yml: cannot read web config: No such file or directory"
        ]

    def test_bad_web_config_exits_1_with_location(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], make_config: MakeConfig
    ) -> None:
        cfg = make_config(CONFIG)
        bad = write(tmp_path, "tls_server_config:\n  cert_file: a.crt\n  key_fle: a.key\n")
        for command in ("run", "demo"):
            args = [command, "--web.config.file", str(bad), "--web.listen-address", "127.0.0.1:0"]
            if command == "run":
                args += ["--config", cfg.source]
            assert cli.main(args) == 1
            err = capsys.readouterr().err
            assert f"{bad}:3: tls_server_config.key_fle: unknown key" in err
            assert "Traceback" not in err


# -- TLS -------------------------------------------------------------------------------------


def tls_config(certs: Path, auth_type: str = "", min_version: str = "TLS12") -> WebConfig:
    ca_line = "  client_ca_file: client-ca.crt\n" if "Verify" in auth_type else ""
    auth_line = f"  client_auth_type: {auth_type}\n" if auth_type else ""
    text = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"{ca_line}{auth_line}  min_version: {min_version}\n"
    )
    return webconfig.load(write(certs, text))


async def test_https_scrape(serve: Serve, certs: Path, ca: trustme.CA) -> None:
    url = await serve(tls_config(certs))
    status, headers, body = await get(f"{url}/metrics", ssl=client_context(ca))
    assert status == 200
    assert "failover_exporter_build_info" in body
    assert headers["Content-Type"].startswith("text/plain")


async def test_plain_http_to_tls_port_is_refused(serve: Serve, certs: Path) -> None:
    url = await serve(tls_config(certs))
    with pytest.raises(aiohttp.ClientError):
        await get(url.replace("https://", "http://") + "/metrics")


async def test_untrusted_server_certificate_is_rejected_by_client(
    serve: Serve, certs: Path, other_ca: trustme.CA
) -> None:
    # The client's side of the contract: the exporter really presents the configured cert.
    url = await serve(tls_config(certs))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(f"{url}/metrics", ssl=client_context(other_ca))


async def test_min_version_is_enforced(serve: Serve, certs: Path, ca: trustme.CA) -> None:
    url = await serve(tls_config(certs, min_version="TLS13"))
    old = client_context(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/-/healthy", ssl=old)
    status, _, _ = await get(f"{url}/-/healthy", ssl=client_context(ca))
    assert status == 200


async def test_client_cert_required(
    serve: Serve, certs: Path, ca: trustme.CA, other_ca: trustme.CA
) -> None:
    url = await serve(tls_config(certs, "RequireAndVerifyClientCert"))
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/metrics", ssl=client_context(ca))
    stranger = other_ca.issue_cert("client@example.test")
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/metrics", ssl=client_context(ca, stranger))
    status, _, body = await get(
        f"{url}/metrics", ssl=client_context(ca, ca.issue_cert("prometheus@example.test"))
    )
    assert status == 200
    assert "failover_exporter_build_info" in body


async def test_client_cert_verified_if_given(
    serve: Serve, certs: Path, ca: trustme.CA, other_ca: trustme.CA
) -> None:
    url = await serve(tls_config(certs, "VerifyClientCertIfGiven"))
    status, _, _ = await get(f"{url}/-/healthy", ssl=client_context(ca))
    assert status == 200
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/-/healthy", ssl=client_context(ca, other_ca.issue_cert("x@example")))


# -- basic auth ------------------------------------------------------------------------------


def auth_config(tmp_path: Path, users: dict[str, str] | None = None) -> WebConfig:
    users = users or {"alice": HASH}
    lines = "".join(f"  {u}: {h}\n" for u, h in users.items())
    return webconfig.load(write(tmp_path, f"basic_auth_users:\n{lines}"))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/probe?target=t"),
        ("GET", "/-/healthy"),
        ("GET", "/-/ready"),
        ("POST", "/-/reload"),
        ("GET", "/no-such-page"),
    ],
)
async def test_basic_auth_on_every_endpoint(
    serve: Serve, tmp_path: Path, method: str, path: str
) -> None:
    url = await serve(auth_config(tmp_path))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for headers in (
            {},
            basic("alice", "wrong"),
            basic("bob", PASSWORD),
            {"Authorization": "Basic %%%"},
        ):
            async with session.request(method, url + path, headers=headers) as resp:
                assert resp.status == 401, headers
                assert resp.headers["WWW-Authenticate"] == "Basic"
        async with session.request(method, url + path, headers=basic("alice", PASSWORD)) as resp:
            expected = 404 if path == "/no-such-page" else 200
            assert resp.status == expected


async def test_unknown_user_and_wrong_password_look_alike(serve: Serve, tmp_path: Path) -> None:
    url = await serve(auth_config(tmp_path))
    unknown = await get(f"{url}/metrics", headers=basic("mallory", "guess"))
    wrong = await get(f"{url}/metrics", headers=basic("alice", "guess"))
    assert unknown[0] == wrong[0] == 401
    assert unknown[2] == wrong[2]
    drop = {"Date"}
    assert {k: v for k, v in unknown[1].items() if k not in drop} == {
        k: v for k, v in wrong[1].items() if k not in drop
    }


async def test_unknown_user_costs_a_bcrypt_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """No timing oracle for user names: an unknown user pays a bcrypt check of the same cost.

    Checked by what is computed, not by a stopwatch: an unknown user's password is checked
    against a dummy hash with the known users' cost factor.
    """
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(5))
    checked: list[bytes] = []
    real = webconfig._checkpw

    def recording(password: bytes, against: bytes) -> bool:
        checked.append(against)
        return real(password, against)

    monkeypatch.setattr(webconfig, "_checkpw", recording)
    auth = BasicAuth({"alice": hashed})
    try:
        assert await auth.check("alice", b"guess") is False
        assert await auth.check("mallory", b"guess") is False
    finally:
        auth.close()
    assert len(checked) == 2
    assert checked[0] == hashed
    dummy = checked[1]
    assert dummy != hashed
    assert dummy[:7] == hashed[:7]


async def test_checks_run_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bcrypt check blocks its thread, never the loop.

    The stand-in check blocks until the loop itself releases it: were it run on the loop, the
    loop could not release it and the check would give up after its bound and fail the test.
    """
    started = threading.Event()
    release = threading.Event()
    threads: list[int] = []

    def blocking(password: bytes, hashed: bytes) -> bool:
        threads.append(threading.get_ident())
        started.set()
        return release.wait(timeout=30)

    monkeypatch.setattr(webconfig, "_checkpw", blocking)
    auth = BasicAuth({"alice": bcrypt.hashpw(b"right", bcrypt.gensalt(4))})
    try:
        check = asyncio.create_task(auth.check("alice", b"right"))
        for _ in range(3000):
            if started.is_set():
                break
            await asyncio.sleep(0.01)
        assert started.is_set()
        # The loop runs while the check is blocked: it is the one that lets the check finish.
        release.set()
        assert await check is True
    finally:
        auth.close()
    assert threads
    assert threads[0] != threading.get_ident()


async def test_outcomes_are_cached() -> None:
    auth = BasicAuth({"alice": HASH.encode()})
    assert await auth.check("alice", PASSWORD.encode()) is True
    assert await auth.check("alice", b"wrong") is False
    assert await auth.check("mallory", PASSWORD.encode()) is False
    # With the bcrypt threads gone, only outcomes already known can still be answered.
    auth.close()
    assert await auth.check("alice", PASSWORD.encode()) is True
    assert await auth.check("alice", b"wrong") is False
    assert await auth.check("mallory", PASSWORD.encode()) is False
    with pytest.raises(RuntimeError):
        await auth.check("alice", b"never tried")


async def test_flood_of_wrong_passwords_is_bounded() -> None:
    auth = BasicAuth({"alice": HASH.encode()})
    try:
        assert await auth.check("alice", PASSWORD.encode()) is True
        outcomes = await asyncio.gather(
            *(
                auth.check("alice", f"guess-{i}".encode())
                for i in range(webconfig.MAX_PENDING_CHECKS + 20)
            )
        )
        assert outcomes.count(None) == 20
        assert outcomes.count(False) == webconfig.MAX_PENDING_CHECKS
        # A scraper whose credentials are cached is not locked out by the flood.
        flood = [asyncio.ensure_future(auth.check("mallory", f"g{i}".encode())) for i in range(40)]
        assert await auth.check("alice", PASSWORD.encode()) is True
        await asyncio.gather(*flood)
    finally:
        auth.close()


# -- example files, promtool, the real command line -------------------------------------------


@pytest.fixture
def examples(certs: Path) -> Path:
    for example in EXAMPLES.glob("*.yml"):
        shutil.copy(example, certs / example.name)
    return certs


def test_examples_pass_promtool_and_our_loader(examples: Path) -> None:
    promtool = need("promtool")
    names = sorted(p.name for p in EXAMPLES.glob("*.yml"))
    assert names == ["basic-auth.yml", "tls.yml"]
    for name in names:
        out = subprocess.run(
            [promtool, "check", "web-config", str(examples / name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout + out.stderr
        webconfig.load(examples / name)


def test_promtool_agrees_on_a_bad_hash(tmp_path: Path) -> None:
    # Our validation is no looser than the reference implementation on the same file.
    promtool = need("promtool")
    path = write(tmp_path, "basic_auth_users:\n  alice: not-a-hash\n")
    out = subprocess.run(
        [promtool, "check", "web-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert errors(path)


async def test_example_mtls_file_serves(serve: Serve, examples: Path, ca: trustme.CA) -> None:
    url = await serve(webconfig.load(examples / "tls.yml"))
    client = ca.issue_cert("prometheus@example.test")
    status, _, _ = await get(f"{url}/-/healthy", ssl=client_context(ca, client))
    assert status == 200
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/-/healthy", ssl=client_context(ca))


@contextlib.contextmanager
def exporter_process(
    args: list[str], log_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run `failover-exporter ARGS` with JSON logs to log_path; yield it and its bound port."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", *args, "--log.format", "json"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        port = listening_port(proc, log_path)
        assert port is not None, log_path.read_text()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


async def test_run_with_tls_and_basic_auth_never_logs_the_password(
    tmp_path: Path, certs: Path, ca: trustme.CA, make_config: MakeConfig
) -> None:
    cfg = make_config(CONFIG)
    web_file = write(
        certs,
        f"""\
        tls_server_config:
          cert_file: server.crt
          key_file: server.key
        basic_auth_users:
          alice: {HASH}
        """,
    )
    log_path = tmp_path / "exporter.log"
    args = ["run", "--config", cfg.source, "--web.config.file", str(web_file)]
    args += ["--web.listen-address", "127.0.0.1:0", "--log.level", "debug"]
    wrong = "wrong-Pässword-42"
    with exporter_process(args, log_path) as (proc, port):
        url = f"https://127.0.0.1:{port}"
        ctx = client_context(ca)
        status, _, body = await get(f"{url}/metrics", ssl=ctx, headers=basic("alice", PASSWORD))
        assert status == 200
        assert "failover_exporter_build_info" in body
        for headers in (basic("alice", wrong), basic(PASSWORD, PASSWORD), {}):
            status, _, _ = await get(f"{url}/metrics", ssl=ctx, headers=headers)
            assert status == 401
        with pytest.raises(aiohttp.ClientError):
            await get(f"http://127.0.0.1:{port}/metrics", headers=basic("alice", PASSWORD))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    logs = log_path.read_text()
    assert '"tls": true' in logs
    assert '"basic_auth": true' in logs
    for secret in (PASSWORD, wrong, HASH, basic("alice", PASSWORD)["Authorization"].split()[1]):
        assert secret not in logs
    assert "Traceback" not in logs


async def test_demo_accepts_web_config(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.log"
    web_file = write(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n")
    args = ["demo", "--web.config.file", str(web_file), "--web.listen-address", "127.0.0.1:0"]
    with exporter_process(args, log_path) as (proc, port):
        status, headers, _ = await get(f"http://127.0.0.1:{port}/")
        assert status == 401
        assert headers["WWW-Authenticate"] == "Basic"
        status, _, body = await get(f"http://127.0.0.1:{port}/", headers=basic("alice", PASSWORD))
        assert status == 200
        assert "eu-west" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
