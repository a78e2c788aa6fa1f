"""`--web.config.file`: TLS and basic auth for the exporter's own endpoints.

The file uses the Prometheus exporter-toolkit format (the one blackbox_exporter and node_exporter
read), so one file and `promtool check web-config` serve both. No Python implementation of that
format exists; this is the subset that Python's ssl module can honour exactly. Options it cannot
honour are rejected by name rather than ignored: ignoring a security option silently would open
access the user meant to restrict.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import dataclasses
import hashlib
import hmac
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import bcrypt
from aiohttp import web
from pydantic import ValidationError

from exporter.fields import Model

# The main config's loader, so that both files report errors the same way: file, line, key.
from exporter.source import ConfigError, ConfigIssue, Loc, Source, read_text, read_yaml

ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
    "",  # as in exporter-toolkit: NoClientCert
]
TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit options that are valid there but not implemented here.
_UNSUPPORTED = {
    ("tls_server_config", "cert"),
    ("tls_server_config", "key"),
    ("tls_server_config", "client_ca"),
    ("tls_server_config", "client_allowed_sans"),
    ("tls_server_config", "cipher_suites"),
    ("tls_server_config", "curve_preferences"),
    ("tls_server_config", "prefer_server_cipher_suites"),
    ("http_server_config",),
    ("rate_limit",),
}
# $2a$, $2b$ and $2y$ (htpasswd) hashes: cost, then 22 characters of salt and 31 of hash.
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


class TlsServerConfig(Model):
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: ClientAuth = ""
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion = "TLS13"


class WebConfigFile(Model):
    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class WebConfig:
    source: str
    ssl_context: ssl.SSLContext | None
    # user -> bcrypt hash
    users: Mapping[str, bytes]


def load(path: str | Path) -> WebConfig:
    """Read and validate a web config file; raise ConfigError naming file, line and key."""
    p = Path(path)
    return parse(read_text(p, "web config"), str(p), p.parent)


def parse(text: str, file: str, base_dir: Path) -> WebConfig:
    src = read_yaml(text, file)
    issues = list(src.issues)
    data = {} if src.data is None else src.data
    if not isinstance(data, dict):
        raise ConfigError([*issues, ConfigIssue(file, 1, "", "the web config must be a mapping")])
    model: WebConfigFile | None = None
    try:
        model = WebConfigFile.model_validate(data)
    except ValidationError as exc:
        issues.extend(_validation_issues(src, exc))
    if model is None or issues:
        raise ConfigError(_sorted(issues))
    users: dict[str, bytes] = {}
    for user, hashed in (model.basic_auth_users or {}).items():
        if not _BCRYPT.fullmatch(hashed) or not 4 <= int(hashed[4:6]) <= 31:
            # The hash is not the password, but it is still not for error text.
            issues.append(
                src.issue(
                    ("basic_auth_users", user),
                    "not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)",
                )
            )
        users[user] = hashed.encode()
    context = None
    if model.tls_server_config is not None:
        context = _server_context(model.tls_server_config, src, base_dir, issues)
    if issues:
        raise ConfigError(_sorted(issues))
    return WebConfig(source=file, ssl_context=context, users=users)


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda i: (i.line or 0, i.path))


def _validation_issues(src: Source, error: ValidationError) -> list[ConfigIssue]:
    out = []
    for err in error.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
            if loc in _UNSUPPORTED:
                message = "an exporter-toolkit option that failover-exporter does not support"
        out.append(src.issue(loc, message))
    return out


def _server_context(
    cfg: TlsServerConfig, src: Source, base_dir: Path, issues: list[ConfigIssue]
) -> ssl.SSLContext | None:
    def bad(key: str, message: str) -> None:
        issues.append(src.issue(("tls_server_config", key), message))

    if not any((cfg.cert_file, cfg.key_file, cfg.client_ca_file, cfg.client_auth_type)):
        # As in exporter-toolkit: an empty section means plain HTTP.
        return None
    if not cfg.cert_file:
        bad("cert_file", "required when TLS is configured")
    if not cfg.key_file:
        bad("key_file", "required when TLS is configured")
    auth = cfg.client_auth_type or "NoClientCert"
    if auth == "RequireAnyClientCert":
        # Go accepts any certificate here, unverified; OpenSSL through Python's ssl module can
        # only require a certificate that verifies, which would silently be a different policy.
        bad(
            "client_auth_type",
            "RequireAnyClientCert is not supported (Python's TLS stack cannot accept an "
            "unverified client certificate); use RequireAndVerifyClientCert with client_ca_file",
        )
    verify = auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
    if verify and not cfg.client_ca_file:
        bad("client_ca_file", f"required with client_auth_type {auth}")
    if cfg.client_ca_file and auth in ("NoClientCert", "RequestClientCert"):
        bad("client_ca_file", f"has no effect with client_auth_type {auth}")
    if _VERSIONS[cfg.min_version] > _VERSIONS[cfg.max_version]:
        bad("min_version", f"must not be above max_version ({cfg.max_version})")
    if issues or not cfg.cert_file or not cfg.key_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = base_dir / cfg.cert_file, base_dir / cfg.key_file
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ValueError) as exc:
        # ssl.SSLError is an OSError; its text names the OpenSSL failure, never the key itself.
        # ValueError: a NUL in a path.
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        bad("cert_file", f"cannot load certificate {cert} with key {key}: {why}")
        return None
    if verify:
        assert cfg.client_ca_file is not None
        ca = base_dir / cfg.client_ca_file
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ValueError) as exc:
            why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            bad("client_ca_file", f"cannot load CA file {ca}: {why}")
            return None
    # RequestClientCert asks for a certificate but neither requires nor checks it; since
    # nothing here uses the client's identity, not asking grants exactly the same access.
    ctx.verify_mode = {
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }.get(auth, ssl.CERT_NONE)
    ctx.minimum_version = _VERSIONS[cfg.min_version]
    ctx.maximum_version = _VERSIONS[cfg.max_version]
    return ctx


# -- basic auth ------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Verified (user, password) outcomes kept; beyond this the oldest go. Bounded so that a stream
# of wrong passwords cannot grow memory.
CACHE_SIZE = 1024
# bcrypt checks waiting or running at once; more get 429 so that a flood of wrong passwords
# cannot queue unbounded work. Cached (already verified) credentials never wait here.
MAX_PENDING_CHECKS = 32


class BasicAuth:
    """HTTP basic auth against bcrypt hashes, as exporter-toolkit does it.

    A bcrypt check costs tens of milliseconds of CPU by design, so it runs in its own threads
    (bcrypt releases the GIL), never on the event loop, and its outcome is cached keyed by the
    user and a keyed hash of the offered password: a scraper sending the same credentials every
    few seconds pays once. An unknown user gets a check against a dummy hash of the same cost,
    so the answer takes as long as for a known user with a wrong password.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        cost = max((int(h[4:6]) for h in self._users.values()), default=10)
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        # Keys the password hash in the cache, so that the cache never holds a plain, fast hash
        # of a password.
        self._key = secrets.token_bytes(32)
        self._cache: collections.OrderedDict[tuple[str, bytes], bool] = collections.OrderedDict()
        self._pending = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="bcrypt"
        )

    async def check(self, user: str, password: bytes) -> bool | None:
        """True/False for right/wrong credentials; None when too many checks are pending."""
        key = (user, hmac.digest(self._key, password, hashlib.sha256))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if self._pending >= MAX_PENDING_CHECKS:
            return None
        hashed = self._users.get(user)
        self._pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._executor, _checkpw, password, hashed or self._dummy
            )
        finally:
            self._pending -= 1
        ok = ok and hashed is not None
        self._cache[key] = ok
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return ok

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        credentials = _parse_basic(request.headers.get("Authorization", ""))
        if credentials is not None:
            ok = await self.check(*credentials)
            if ok:
                return await handler(request)
            if ok is None:
                return web.Response(status=429, text="Too many authentication attempts\n")
        return web.Response(
            status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "Basic"}
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def on_cleanup(self, _app: web.Application) -> None:
        self.close()


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _parse_basic(header: str) -> tuple[str, bytes] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (binascii.Error, UnicodeDecodeError):
        return None


def install(app: web.Application, cfg: WebConfig | None) -> None:
    """Put basic auth in front of every route of `app` when the web config has users."""
    if cfg is None or not cfg.users:
        return
    auth = BasicAuth(cfg.users)
    app.middlewares.append(auth.middleware)
    app.on_cleanup.append(auth.on_cleanup)


def describe(cfg: WebConfig | None) -> dict[str, Any]:
    """Log fields saying how the endpoints are protected (never the users' hashes)."""
    if cfg is None:
        return {"tls": False, "basic_auth": False}
    return {"tls": cfg.ssl_context is not None, "basic_auth": bool(cfg.users)}
