"""PostgreSQL probe: connect/read/write latency, recovery state and heartbeat replication lag.

Each probe opens its own connection and closes it: the connect phase then measures what a client
reconnecting after a failover sees (TCP, TLS, authentication, backend start), and a password
rotation, a pg_hba change or a restarted server shows up on the next probe instead of hiding
behind a pooled connection. One backend start per target per interval is cheap for the server.

Heartbeat lag: on a primary the probe upserts this vantage's row with the server's now(); on a
replica it reads the newest row, and the lag is the replica's now() minus that time. It is true
staleness: it does not grow on an idle primary (the heartbeat is the write) and it does grow when
replay stops. Both timestamps come from server clocks, so the reading includes any clock offset
between the primary's and the replica's hosts (see docs/postgres.md).
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import PrivateAttr, SecretStr, model_validator

from exporter.fields import (
    IPV6_HINT,
    Duration,
    EnvName,
    FileName,
    SecretSource,
    SettingError,
    format_duration,
    register_secret,
)
from exporter.metrics import POSTGRES_IN_RECOVERY, POSTGRES_LAG, POSTGRES_REPLAY_LAG, Reason
from exporter.probes.base import ProbeContext, ProbeFailure, ProbeKind, ProbeSettings, register
from exporter.tlsconf import TlsSettings, client_context

if TYPE_CHECKING:
    import asyncpg

_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?")
_APPLICATION_NAME = "failover_exporter"
# Used when the probe runs without a scheduler timeout (it always has one in the exporter).
_FALLBACK_TIMEOUT = 10.0


class PostgresSettings(ProbeSettings):
    kind: Literal["postgres"]
    # The DSN (postgres://user:password@host:port/db?sslmode=…) holds the password, so it is
    # only ever read from the environment or a file.
    dsn_env: EnvName | None = None
    dsn_file: FileName | None = None
    heartbeat_table: str = "failover_heartbeat"
    write_heartbeat: bool = True
    read_query: str | None = None
    # Default: the target's timeout, so the server stops working on a query when the probe
    # gives up on it instead of running on for an aborted client.
    statement_timeout: Duration | None = None
    # Set to verify the server with an explicit CA / client certificate; otherwise the DSN's
    # sslmode applies (asyncpg's default is prefer).
    tls: TlsSettings | None = None

    _summary: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _check(self) -> PostgresSettings:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError("set exactly one of dsn_env or dsn_file")
        if not _TABLE.fullmatch(self.heartbeat_table):
            raise ValueError(
                "heartbeat_table must be a lower-case SQL identifier, optionally schema.table"
            )
        if self.tls is not None and self.tls.server_name is not None:
            # asyncpg verifies against the DSN's host; accepting the key would silently ignore it.
            raise ValueError("tls.server_name is not supported by the postgres probe")
        return self


class _Dsn:
    """The DSN, re-read when its file changes so that a rotated password needs no restart."""

    def __init__(self, source: SecretSource, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.path = base_dir / source.file if source.file is not None else None
        self._stamp: tuple[int, int] | None = None
        self.value = self._read()

    def _read(self) -> SecretStr:
        value = self.source.resolve(self.base_dir)
        parse_dsn(value.get_secret_value())
        if self.path is not None:
            st = self.path.stat()
            self._stamp = (st.st_mtime_ns, st.st_size)
        return value

    def current(self) -> SecretStr:
        if self.path is None:
            return self.value
        try:
            st = self.path.stat()
            if (st.st_mtime_ns, st.st_size) != self._stamp:
                self.value = self._read()
        except ValueError as exc:
            raise ProbeFailure(Reason.ERROR, f"DSN file: {exc}") from None
        except OSError as exc:
            raise ProbeFailure(Reason.ERROR, f"cannot read DSN file: {exc.strerror}") from None
        return self.value


@dataclasses.dataclass(frozen=True)
class Postgres:
    dsn: _Dsn
    table: str
    write: bool
    read_query: str | None
    statement_timeout: float | None
    ssl: ssl.SSLContext | None


def parse_dsn(dsn: str) -> tuple[str, list[str]]:
    """(host:port/db for display, secret strings to scrub). Raises ValueError without the DSN."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("DSN must be a postgres:// or postgresql:// URI")
    query = parse_qs(parts.query)
    secrets = [dsn]
    if parts.netloc.count("@") > 1:
        # asyncpg splits at the first "@" and would quote the rest of the password in errors.
        raise ValueError("DSN: percent-encode '@' in the user name or password (%40)")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    for host in hosts.split(","):
        if host.count(":") > 1 and not host.startswith("["):
            raise ValueError(f"DSN: an unbracketed IPv6 host is ambiguous; {IPV6_HINT}")
        tail = host.rpartition("]")[2] if host.startswith("[") else host
        port = tail.rpartition(":")[2] if ":" in tail else "5432"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("DSN: each host:port must have a port number from 1 to 65535")
    password = userinfo.partition(":")[2] if ":" in userinfo else ""
    secrets += [password, unquote(password), *query.get("password", [])]
    hosts = hosts or ",".join(query.get("host", [])) or "localhost"
    if "port" in query and ":" not in hosts:
        hosts = f"{hosts}:{query['port'][0]}"
    db = unquote(parts.path.lstrip("/")) or next(iter(query.get("dbname", [])), "")
    return f"{hosts}/{db}", [s for s in secrets if s]


def _quote_table(name: str) -> str:
    return ".".join(f'"{part}"' for part in name.split("."))


def prepare(s: PostgresSettings, base_dir: Path) -> Postgres:
    source = SecretSource(env=s.dsn_env, file=s.dsn_file)
    field = "dsn_env" if s.dsn_env is not None else "dsn_file"
    try:
        dsn = _Dsn(source, base_dir)
    except ValueError as exc:
        raise SettingError(field, str(exc)) from None
    except OSError as exc:
        raise SettingError(field, f"cannot read DSN file: {exc.strerror}") from None
    # The status page shows host:port/db only; computed here because describe() gets settings.
    s._summary, secrets = parse_dsn(dsn.value.get_secret_value())
    for secret in secrets:
        register_secret(secret)
    return Postgres(
        dsn=dsn,
        table=_quote_table(s.heartbeat_table),
        write=s.write_heartbeat,
        read_query=s.read_query,
        statement_timeout=s.statement_timeout,
        ssl=client_context(s.tls, base_dir, "tls") if s.tls is not None else None,
    )


class _Scrub:
    def __init__(self, secrets: list[str]) -> None:
        # Longest first, so that the whole DSN goes before the password inside it.
        self.secrets = sorted(secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _fail(exc: Exception, phase: str, scrub: _Scrub, statement_timeout: float) -> NoReturn:
    """Turn a driver or network error into a ProbeFailure whose text holds no secret."""
    import asyncpg

    if isinstance(exc, asyncpg.PostgresError):
        detail = scrub(f"{exc.sqlstate}: {exc}")
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            raise ProbeFailure(Reason.AUTH, f"authentication failed ({detail})") from None
        if isinstance(exc, asyncpg.QueryCanceledError):
            raise ProbeFailure(
                Reason.TIMEOUT,
                f"{phase}: statement_timeout ({format_duration(statement_timeout)}) "
                f"cancelled the query",
            ) from None
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            raise ProbeFailure(
                Reason.READ_ONLY, f"{phase}: server is read-only ({detail})"
            ) from None
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            raise ProbeFailure(
                Reason.PERMISSION, f"{phase}: permission denied ({detail})"
            ) from None
        if phase == "connect":
            # Too many connections, database starting up or missing, and the like.
            raise ProbeFailure(Reason.CONNECT, f"server refused the session ({detail})")
        raise ProbeFailure(Reason.QUERY, f"{phase} query failed ({detail})")
    if isinstance(exc, ssl.SSLError):
        raise ProbeFailure(Reason.TLS, scrub(f"TLS failed: {exc.reason or exc}")) from None
    if isinstance(exc, socket.gaierror):
        raise ProbeFailure(Reason.DNS, scrub(f"cannot resolve host: {exc.strerror}")) from None
    if isinstance(exc, ConnectionError) and "SSL" in str(exc):
        # asyncpg's "server rejected SSL upgrade": sslmode=require against a plain server.
        raise ProbeFailure(Reason.TLS, scrub(str(exc))) from None
    if isinstance(exc, asyncpg.ClientConfigurationError):
        # Its text may quote pieces of the DSN.
        raise ProbeFailure(Reason.ERROR, "invalid connection parameter in the DSN") from None
    if isinstance(exc, OSError | asyncpg.InterfaceError):
        reason = Reason.CONNECT if phase == "connect" else Reason.RESET
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProbeFailure(reason, scrub(f"{phase}: connection failed: {why}")) from None
    # Client-side errors (bad DSN parameters and the like) may quote pieces of the DSN: the type
    # name is all that is safe to show.
    raise ProbeFailure(Reason.ERROR, f"{phase}: {type(exc).__name__}") from None


# Marks "the heartbeat table does not exist" apart from "it has no rows" (None).
_NO_TABLE: Any = object()


def _seconds(value: Any) -> float:
    return math.nan if value is None else float(value)


async def run(p: Postgres, ctx: ProbeContext) -> None:
    # Imported here, not at module level: asyncpg costs memory (RSS) in every exporter, and
    # only configs with a postgres target need it (tests/test_lazy_imports.py).
    import asyncpg

    dsn = p.dsn.current().get_secret_value()
    scrub = _Scrub(parse_dsn(dsn)[1])
    # Unknown until read: a failed probe must not leave the last good lag on display.
    ctx.gauges[POSTGRES_LAG.name] = math.nan
    ctx.gauges[POSTGRES_REPLAY_LAG.name] = math.nan
    ctx.gauges[POSTGRES_IN_RECOVERY.name] = math.nan
    timeout = ctx.timeout or _FALLBACK_TIMEOUT
    statement_timeout = p.statement_timeout or timeout
    phase = "connect"
    conn: asyncpg.Connection | None = None
    try:
        with ctx.phase("connect"):
            conn = await asyncpg.connect(
                dsn,
                timeout=timeout,
                ssl=p.ssl,
                # One connection per probe: a statement cache would only cost a round trip.
                statement_cache_size=0,
                server_settings={
                    "application_name": _APPLICATION_NAME,
                    "statement_timeout": str(max(1, round(statement_timeout * 1000))),
                },
            )
        version = conn.get_server_version()
        ctx.log(f"connected to PostgreSQL {version.major}.{version.minor}")
        phase = "read"
        with ctx.phase("read"):
            in_recovery, lag, replay_lag = await _read_state(conn, p.table)
            ctx.gauges[POSTGRES_IN_RECOVERY.name] = 1.0 if in_recovery else 0.0
            ctx.gauges[POSTGRES_REPLAY_LAG.name] = _seconds(replay_lag)
            if p.read_query is not None:
                await conn.fetchrow(p.read_query)
        if in_recovery:
            if lag is _NO_TABLE:
                raise ProbeFailure(
                    Reason.QUERY,
                    f"heartbeat table {p.table} does not exist on this replica yet "
                    "(the first heartbeat written on the primary creates it)",
                )
            if lag is None:
                raise ProbeFailure(
                    Reason.QUERY, f"no heartbeat in {p.table} yet: is the primary probed?"
                )
            ctx.gauges[POSTGRES_LAG.name] = float(lag)
            ctx.log(f"replica: heartbeat lag {float(lag):.3f}s")
        else:
            # A primary is its own freshest copy.
            ctx.gauges[POSTGRES_LAG.name] = 0.0
            if p.write:
                phase = "write"
                with ctx.phase("write"):
                    await _write_heartbeat(conn, p.table, ctx.vantage, lag is _NO_TABLE)
                ctx.log(f"primary: heartbeat written for vantage {ctx.vantage!r}")
            elif lag is _NO_TABLE:
                raise ProbeFailure(Reason.QUERY, f"heartbeat table {p.table} does not exist")
        await conn.close(timeout=timeout)
    except (ProbeFailure, TimeoutError):
        raise
    except Exception as exc:  # noqa: BLE001 - every driver error becomes a scrubbed reason
        _fail(exc, phase, scrub, statement_timeout)
    finally:
        if conn is not None and not conn.is_closed():
            # Cancelled or failed mid-query: drop the socket without waiting on the server.
            conn.terminate()


async def _read_state(conn: asyncpg.Connection, table: str) -> tuple[bool, Any, Any]:
    """(in recovery, heartbeat lag or None/_NO_TABLE, replay-timestamp lag or None)."""
    import asyncpg

    replay = "extract(epoch from now() - pg_last_xact_replay_timestamp())::float8"
    lag = "extract(epoch from now() - max(ts))::float8"
    try:
        # One statement, so the three values come from the same snapshot and now().
        row = await conn.fetchrow(f"select pg_is_in_recovery(), {lag}, {replay} from {table}")  # noqa: S608 - table is a validated identifier
    except asyncpg.UndefinedTableError:
        row = await conn.fetchrow(f"select pg_is_in_recovery(), null, {replay}")
        return bool(row[0]), _NO_TABLE, row[2]
    return bool(row[0]), row[1], row[2]


async def _write_heartbeat(
    conn: asyncpg.Connection, table: str, vantage: str, create: bool
) -> None:
    if create:
        columns = "vantage text primary key, ts timestamptz not null"
        await conn.execute(f"create table if not exists {table} ({columns})")
    await conn.execute(
        f"insert into {table} (vantage, ts) values ($1, now()) "  # noqa: S608 - validated identifier
        "on conflict (vantage) do update set ts = excluded.ts",
        vantage,
    )


def describe(s: PostgresSettings) -> str:
    where = s._summary or (f"${s.dsn_env}" if s.dsn_env else str(s.dsn_file))
    return f"postgres {where} (heartbeat {s.heartbeat_table})"


KIND = register(
    ProbeKind(
        votes_in_quorum=True,
        ranks_images=True,
        name="postgres",
        settings=PostgresSettings,
        prepare=prepare,
        run=run,
        reasons=(
            Reason.DNS,
            Reason.CONNECT,
            Reason.TLS,
            Reason.AUTH,
            Reason.RESET,
            Reason.QUERY,
            Reason.READ_ONLY,
            Reason.PERMISSION,
        ),
        phases=("connect", "read", "write"),
        describe=describe,
    )
)
