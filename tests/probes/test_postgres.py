"""The postgres probe against a real PostgreSQL primary and streaming replica (tests/pg.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trustme

from exporter import config
from exporter.engine import Engine
from exporter.metrics import POSTGRES_IN_RECOVERY, POSTGRES_LAG, POSTGRES_REPLAY_LAG
from exporter.model import Target
from exporter.probes import REGISTRY
from exporter.source import ConfigError
from exporter.state import Result
from exporter.web import ENGINE
from tests.conftest import MakeClient, MakeConfig
from tests.pg import SUPERUSER_PASSWORD, Cluster, pg_cluster
from tests.probes.conftest import RunProbe, check_result

__all__ = ["pg_cluster"]

LAG, REPLAY_LAG, IN_RECOVERY = (
    POSTGRES_LAG.name,
    POSTGRES_REPLAY_LAG.name,
    POSTGRES_IN_RECOVERY.name,
)
WRONG_PASSWORD = "Wr0ng-pa55word-xyz"


def pg(env: str, **options: Any) -> dict[str, Any]:
    return {"kind": "postgres", "dsn_env": env, **options}


@pytest.fixture
def dsns(pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    monkeypatch.setenv("PG_PRIMARY", pg_cluster.primary_dsn)
    monkeypatch.setenv("PG_REPLICA", pg_cluster.replica_dsn)
    return pg_cluster


def two_regions(
    targets: dict[str, tuple[str, dict[str, Any]]], vantage: str, defaults: str = ""
) -> str:
    """Config text: service db, primary region east, standby west; name -> (region, probe)."""
    lines = "\n".join(
        f"      - {{name: {name}, region: {region}, image: pg15, probe: {json.dumps(probe)}}}"
        for name, (region, probe) in targets.items()
    )
    return (
        f"vantage: {vantage}\n{defaults}"
        "services:\n"
        "  - name: db\n"
        "    regions: [{name: east, role: primary, priority: 1},"
        " {name: west, role: standby, priority: 2}]\n"
        "    images: [{name: pg15, ref: postgres:15}]\n"
        f"    targets:\n{lines}\n"
    )


def by_name(cfg: config.Config, name: str) -> Target:
    return next(t for t in cfg.targets if t.name == name)


@contextlib.asynccontextmanager
async def running(engine: Engine, cfg: config.Config) -> AsyncIterator[Engine]:
    engine.start(cfg)
    try:
        yield engine
    finally:
        await engine.scheduler.stop()


# -- primary and replica ---------------------------------------------------------------------


async def test_primary_phases_and_heartbeat(dsns: Cluster, run_probe: RunProbe) -> None:
    r = await run_probe(pg("PG_PRIMARY"))
    assert r.success, r.message
    assert set(r.phases) == {"connect", "read", "write"}
    assert all(v > 0 for v in r.phases.values())
    assert r.gauges[IN_RECOVERY] == 0
    assert r.gauges[LAG] == 0
    # pg_last_xact_replay_timestamp() is NULL on a primary.
    assert math.isnan(r.gauges[REPLAY_LAG])
    rows = await dsns.primary(
        "select extract(epoch from now() - ts)::float8 from failover_heartbeat where vantage = $1",
        "test",
    )
    assert len(rows) == 1
    assert 0 <= rows[0][0] < 5


async def test_replica_in_recovery_with_small_lag(dsns: Cluster, run_probe: RunProbe) -> None:
    assert (await run_probe(pg("PG_PRIMARY"))).success
    await dsns.wait_replayed()
    r = await run_probe(pg("PG_REPLICA"))
    assert r.success, r.message
    # No write on a replica.
    assert set(r.phases) == {"connect", "read"}
    assert r.gauges[IN_RECOVERY] == 1
    assert 0 <= r.gauges[LAG] < 1.0
    assert 0 <= r.gauges[REPLAY_LAG] < 1.0


async def test_lag_follows_paused_replay(
    dsns: Cluster, make_config: MakeConfig, engine: Engine
) -> None:
    """Pause WAL replay: the lag grows at wall-clock speed; resume: it drops back."""
    cfg = make_config(
        two_regions(
            {"primary": ("east", pg("PG_PRIMARY")), "replica": ("west", pg("PG_REPLICA"))},
            vantage="trace",
        )
    )
    primary, replica = by_name(cfg, "primary"), by_name(cfg, "replica")

    async def step() -> Result:
        assert (await engine.scheduler.probe(primary)).success
        r = await engine.scheduler.probe(replica)
        assert r.success, r.message
        return r

    await step()
    await dsns.wait_replayed()
    before = await step()
    assert before.gauges[LAG] < 1.0
    trace = [f"{0.0:5.1f}s  running  lag {before.gauges[LAG]:.3f}s"]
    await dsns.replica("select pg_wal_replay_pause()")
    paused_at = time.monotonic()
    lags: list[tuple[float, float]] = []
    try:
        for _ in range(6):
            await asyncio.sleep(0.5)
            r = await step()
            elapsed = time.monotonic() - paused_at
            lags.append((elapsed, r.gauges[LAG]))
            trace.append(f"{elapsed:5.1f}s  paused   lag {r.gauges[LAG]:.3f}s")
    finally:
        await dsns.replica("select pg_wal_replay_resume()")
    resumed_at = time.monotonic()
    await dsns.wait_replayed()
    after = await step()
    trace.append(f"{time.monotonic() - paused_at:5.1f}s  resumed  lag {after.gauges[LAG]:.3f}s")
    print("\n".join(["", "heartbeat lag trace (probe every 0.5 s):", *trace]))

    values = [lag for _, lag in lags]
    assert values == sorted(values), values
    # Growth matches the wall clock between the first and last paused reading.
    (t0, lag0), (t1, lag1) = lags[0], lags[-1]
    assert abs((lag1 - lag0) - (t1 - t0)) < 0.5, lags
    # The frozen heartbeat is the one written just before the pause.
    assert lag1 >= t1 - 0.2
    assert after.gauges[LAG] < 1.0, after.gauges
    assert time.monotonic() - resumed_at < 10


async def test_idle_primary_heartbeat_keeps_lag_honest(
    dsns: Cluster, make_config: MakeConfig, engine: Engine
) -> None:
    interval = 0.5
    cfg = make_config(
        two_regions(
            {"primary": ("east", pg("PG_PRIMARY")), "replica": ("west", pg("PG_REPLICA"))},
            vantage="idle",
            defaults=f"defaults: {{interval: {interval}s, timeout: 0.4s}}\n",
        )
    )
    # Without writes, pg_last_xact_replay_timestamp() ages although the replica is caught up:
    # the false alarm of `now() - pg_last_xact_replay_timestamp()`.
    assert (await engine.scheduler.probe(by_name(cfg, "primary"))).success
    await dsns.wait_replayed()
    await asyncio.sleep(2.0)
    lsn = (await dsns.primary("select pg_current_wal_insert_lsn()"))[0][0]
    caught_up = await dsns.replica("select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
    assert caught_up[0][0], "replica should have nothing left to replay"
    idle = await engine.scheduler.probe(by_name(cfg, "replica"))
    assert idle.gauges[REPLAY_LAG] >= 1.9
    engine.scheduler.recent.clear()

    # With the exporter writing the heartbeat every interval, the lag reading stays within
    # about one interval on the otherwise idle primary.
    async with running(engine, cfg):
        deadline = time.monotonic() + 2.6
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    results = [r for r in engine.scheduler.recent if r.target.name == "replica"]
    # The first reading may see heartbeats older than this run; skip it.
    lags = [r.gauges[LAG] for r in results[1:]]
    assert len(lags) >= 3, lags
    assert all(r.success for r in results), [r.message for r in results]
    assert max(lags) < interval + 0.3, lags
    assert min(lags) >= 0, lags


async def test_replica_without_heartbeat_table_fails_clearly(
    dsns: Cluster, run_probe: RunProbe
) -> None:
    r = await run_probe(pg("PG_REPLICA", heartbeat_table="never_written_hb"))
    assert r.reason == "query"
    assert "does not exist on this replica" in r.message
    assert r.gauges[IN_RECOVERY] == 1
    assert math.isnan(r.gauges[LAG])


async def test_custom_table_created_on_primary(dsns: Cluster, run_probe: RunProbe) -> None:
    await dsns.primary("drop table if exists custom_hb")
    r = await run_probe(pg("PG_PRIMARY", heartbeat_table="public.custom_hb", read_query="select 1"))
    assert r.success, r.message
    assert (await dsns.primary("select count(*) from custom_hb"))[0][0] == 1


# -- failures ------------------------------------------------------------------------------


async def test_wrong_password_is_auth(
    pg_cluster: Cluster, run_probe: RunProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BAD", pg_cluster.dsn(pg_cluster.primary_port, password=WRONG_PASSWORD))
    r = await run_probe(pg("PG_BAD"))
    assert r.reason == "auth", r.message
    assert "password authentication failed" in r.message
    assert WRONG_PASSWORD not in r.message + "\n".join(r.debug)
    assert set(r.phases) == {"connect"}


async def test_stopped_server_is_connect(
    pg_cluster: Cluster,
    run_probe: RunProbe,
    monkeypatch: pytest.MonkeyPatch,
    unused_tcp_port: int,
) -> None:
    monkeypatch.setenv("PG_DOWN", pg_cluster.dsn(unused_tcp_port))
    r = await run_probe(pg("PG_DOWN"))
    assert r.reason == "connect", r.message
    assert SUPERUSER_PASSWORD not in r.message


async def test_bad_dsn_parameter_is_error_without_dsn(
    run_probe: RunProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_ODD", "postgresql://u:odd-secret-1@127.0.0.1:1/db?sslmode=bogus")
    r = await run_probe(pg("PG_ODD"))
    assert r.reason == "error"
    assert r.message == "invalid connection parameter in the DSN"


async def test_sslmode_require_against_plain_server_is_tls(
    pg_cluster: Cluster, run_probe: RunProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_TLS", pg_cluster.dsn(pg_cluster.primary_port, query="sslmode=require"))
    r = await run_probe(pg("PG_TLS"))
    assert r.reason == "tls", r.message


# Fails with division by zero unless this session is encrypted.
ONLY_OVER_TLS = (
    "select 1 / (case when ssl then 1 else 0 end) from pg_stat_ssl where pid = pg_backend_pid()"
)


async def test_tls_verified_against_ca(dsns: Cluster, run_probe: RunProbe, tmp_path: Path) -> None:
    dsns.ca.cert_pem.write_to_path(str(tmp_path / "db-ca.pem"))
    # The replica's heartbeat table comes from the primary: create it first, whatever ran before.
    assert (await run_probe(pg("PG_PRIMARY"))).success
    await dsns.wait_replayed()
    r = await run_probe(pg("PG_REPLICA", read_query=ONLY_OVER_TLS, tls={"ca_file": "db-ca.pem"}))
    assert r.success, r.message
    assert r.gauges[IN_RECOVERY] == 1


async def test_tls_unknown_ca_is_tls(dsns: Cluster, run_probe: RunProbe, tmp_path: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    r = await run_probe(pg("PG_REPLICA", tls={"ca_file": "other-ca.pem"}))
    assert r.reason == "tls", r.message
    assert "CERTIFICATE_VERIFY_FAILED" in r.message
    assert SUPERUSER_PASSWORD not in r.message


async def _role(c: Cluster, name: str, password: str, *grants: str) -> str:
    with contextlib.suppress(asyncpg.DuplicateObjectError):
        await c.primary(f"create role {name} login password '{password}'")
    for grant in grants:
        await c.primary(grant)
    await c.wait_replayed()
    return c.dsn(c.primary_port, user=name, password=password)


async def test_read_only_role_is_read_only(
    dsns: Cluster, run_probe: RunProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await run_probe(pg("PG_PRIMARY"))).success
    dsn = await _role(
        dsns,
        "probe_ro",
        "Ro-pass-1234",
        "grant select, insert, update on failover_heartbeat to probe_ro",
        "alter role probe_ro set default_transaction_read_only = on",
    )
    monkeypatch.setenv("PG_RO", dsn)
    r = await run_probe(pg("PG_RO"))
    assert r.reason == "read_only", r.message
    # It got as far as reading, so the role is known.
    assert r.gauges[IN_RECOVERY] == 0
    assert "Ro-pass-1234" not in r.message


async def test_select_only_role_is_permission(
    dsns: Cluster, run_probe: RunProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await run_probe(pg("PG_PRIMARY"))).success
    dsn = await _role(
        dsns, "probe_sel", "Sel-pass-1234", "grant select on failover_heartbeat to probe_sel"
    )
    monkeypatch.setenv("PG_SEL", dsn)
    r = await run_probe(pg("PG_SEL"))
    assert r.reason == "permission", r.message
    assert r.message.startswith("write: permission denied")
    # Without CREATE on the schema it cannot create a missing table either.
    r = await run_probe(pg("PG_SEL", heartbeat_table="hb_not_there"))
    assert r.reason == "permission", r.message
    # The same role is enough to read lag on the replica.
    replica_dsn = dsns.dsn(dsns.replica_port, user="probe_sel", password="Sel-pass-1234")
    monkeypatch.setenv("PG_SEL", replica_dsn)
    r = await run_probe(pg("PG_SEL"))
    assert r.success, r.message


async def test_least_privilege_grants_from_docs(
    dsns: Cluster, run_probe: RunProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQL block in docs/postgres.md is exactly enough, on the primary and the replica."""
    text = (Path(__file__).parents[2] / "docs" / "postgres.md").read_text()
    sql = text.split("```sql\n", 1)[1].split("```", 1)[0]
    # A fresh role per run: the session's cluster is shared by the tests of one worker.
    role = f"fx_{int(time.time() * 1000)}"
    sql = sql.replace("change-me", "Least-priv-1234").replace("failover_exporter", role)
    sql = sql.replace("appdb", "postgres")
    await dsns.primary("drop table if exists failover_heartbeat")
    conn = await asyncpg.connect(dsns.primary_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    await dsns.wait_replayed()
    for port in (dsns.primary_port, dsns.replica_port):
        dsn = dsns.dsn(port, user=role, password="Least-priv-1234")
        monkeypatch.setenv("PG_LEAST", dsn)
        r = await run_probe(pg("PG_LEAST"))
        assert r.success, (port, r.message)
        await dsns.wait_replayed()


async def test_statement_timeout_cancels_query(dsns: Cluster, run_probe: RunProbe) -> None:
    start = time.monotonic()
    r = await run_probe(
        pg("PG_REPLICA", read_query="select pg_sleep(10)", statement_timeout="300ms"), timeout=3
    )
    assert r.reason == "timeout", r.message
    assert "statement_timeout (300ms) cancelled the query" in r.message
    assert time.monotonic() - start < 3


async def test_probe_timeout_bounds_a_stuck_query(dsns: Cluster, run_probe: RunProbe) -> None:
    start = time.monotonic()
    r = await run_probe(pg("PG_PRIMARY", read_query="select pg_sleep(10)"), timeout=1)
    assert r.reason == "timeout", r.message
    assert time.monotonic() - start < 2.5
    # statement_timeout defaults to the probe timeout: the server does not keep sleeping.
    for _ in range(30):
        rows = await dsns.primary(
            "select count(*) from pg_stat_activity"
            " where application_name = 'failover_exporter' and query like '%pg_sleep%'"
        )
        if rows[0][0] == 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the server kept running the abandoned query")


async def test_lock_wait_times_out_without_delaying_others(
    dsns: Cluster, make_config: MakeConfig, engine: Engine
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = make_config(
        two_regions(
            {
                "primary": ("east", pg("PG_PRIMARY", heartbeat_table="locked_hb")),
                "tcp": ("west", {"kind": "tcp", "address": f"127.0.0.1:{port}"}),
            },
            vantage="lock",
            defaults="defaults: {interval: 0.5s, timeout: 0.4s}\n",
        )
    )
    await dsns.primary(
        "create table if not exists locked_hb (vantage text primary key, ts timestamptz)"
    )
    holder = await asyncpg.connect(dsns.primary_dsn)
    tx = holder.transaction()
    await tx.start()
    try:
        await holder.execute("lock table locked_hb in access exclusive mode")
        async with running(engine, cfg):
            for _ in range(26):
                await asyncio.sleep(0.1)
    finally:
        await tx.rollback()
        await holder.close()
        server.close()
        await server.wait_closed()
    states = {s.target.name: s for s in engine.scheduler.snapshot()}
    pg_state, tcp_state = states["primary"], states["tcp"]
    assert pg_state.probes >= 3
    assert pg_state.failures["timeout"] == pg_state.probes
    assert tcp_state.probes >= 4
    assert sum(tcp_state.failures.values()) == 0
    reg = engine.registry
    name = "failover_exporter_probe_start_delay_seconds"
    count = reg.get_sample_value(f"{name}_count")
    assert count is not None
    assert count >= 6
    # Generous: a stuck query must not delay anyone's start by a scheduling-visible amount.
    assert reg.get_sample_value(f"{name}_bucket", {"le": "0.1"}) == count


# -- secrets -------------------------------------------------------------------------------


async def test_password_never_exposed(
    pg_cluster: Cluster,
    make_config: MakeConfig,
    exporter_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    c = pg_cluster
    monkeypatch.setenv("PG_PRIMARY", c.primary_dsn)
    monkeypatch.setenv("PG_BAD", c.dsn(c.primary_port, password=WRONG_PASSWORD))
    monkeypatch.setenv(
        "PG_BAD_QUERY", c.dsn(c.primary_port, password=None, query=f"password={WRONG_PASSWORD}x")
    )
    (tmp_path / "replica.dsn").write_text(c.replica_dsn + "\n")
    cfg = make_config(
        two_regions(
            {
                "primary": ("east", pg("PG_PRIMARY")),
                "replica": ("west", {"kind": "postgres", "dsn_file": "replica.dsn"}),
                "bad": ("east", pg("PG_BAD")),
                "bad-query": ("east", pg("PG_BAD_QUERY")),
                "slow": ("west", pg("PG_PRIMARY", read_query="select pg_sleep(5)")),
            },
            vantage="leak",
            defaults="defaults: {interval: 1s, timeout: 0.5s}\n",
        )
    )
    secrets = (SUPERUSER_PASSWORD, WRONG_PASSWORD)
    caplog.set_level(logging.DEBUG)
    client = await exporter_client(cfg)
    engine = client.app[ENGINE]
    for _ in range(50):
        if all(s.last is not None for s in engine.scheduler.snapshot()):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("not every target was probed within 5 s")
    seen: list[str] = []
    seen.append(await (await client.get("/metrics")).text())
    page = await (await client.get("/")).text()
    seen.append(page)
    for name in ("primary", "replica", "bad", "bad-query", "slow"):
        resp = await client.get("/probe", params={"target": name, "debug": "true"})
        seen.append(await resp.text())
    seen.append(caplog.text)
    seen.extend(str(r.__dict__) for r in caplog.records)
    for surface in seen:
        for secret in secrets:
            assert secret not in surface
    # What is shown instead: host:port/db, reasons and the lag series.
    assert f"127.0.0.1:{c.primary_port}/postgres" in page
    assert f"127.0.0.1:{c.replica_port}/postgres" in page
    metrics = seen[0]
    assert 'reason="auth"' in metrics
    assert "failover_postgres_replication_lag_seconds{" in metrics
    assert "failover_postgres_in_recovery{" in metrics
    assert "password authentication failed" in page
    assert "target failing" in caplog.text


async def test_dsn_file_reread_after_rotation(
    pg_cluster: Cluster, make_config: MakeConfig, engine: Engine, tmp_path: Path
) -> None:
    c = pg_cluster
    dsn_file = tmp_path / "pg.dsn"
    dsn_file.write_text(c.dsn(c.primary_port, password=WRONG_PASSWORD))
    cfg = make_config(
        two_regions({"p": ("east", {"kind": "postgres", "dsn_file": "pg.dsn"})}, vantage="rotate")
    )
    target = by_name(cfg, "p")
    r = await engine.scheduler.probe(target)
    assert r.reason == "auth"
    dsn_file.write_text(c.primary_dsn + "\n")
    r = await engine.scheduler.probe(target)
    assert r.success, r.message
    check_result(r)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probe", "error"),
    [
        (
            {"kind": "postgres"},
            "services[0].targets[0].probe: set exactly one of dsn_env or dsn_file",
        ),
        (
            {"kind": "postgres", "dsn_env": "A", "dsn_file": "b"},
            "services[0].targets[0].probe: set exactly one of dsn_env or dsn_file",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG_UNSET_FOR_TEST"},
            "probe.dsn_env: environment variable PG_UNSET_FOR_TEST is not set",
        ),
        (
            {"kind": "postgres", "dsn_file": "nope.dsn"},
            "services[0].targets[0].probe.dsn_file: cannot read secret file",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG_KV", "heartbeat_table": "Robert'); drop"},
            "heartbeat_table must be a lower-case SQL identifier",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG_KV"},
            "services[0].targets[0].probe.dsn_env: DSN must be a postgres:// or postgresql:// URI",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG_AT"},
            "probe.dsn_env: DSN: percent-encode '@' in the user name or password (%40)",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG_PORT"},
            "probe.dsn_env: DSN: each host:port must have a port number from 1 to 65535",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG_KV", "dsn": "postgres://u:p@h/db"},
            "services[0].targets[0].probe.dsn: unknown key",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG_KV", "tls": {"server_name": "db.internal"}},
            "services[0].targets[0].probe: tls.server_name is not supported by the postgres probe",
        ),
    ],
)
def test_config_errors(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, probe: dict[str, Any], error: str
) -> None:
    monkeypatch.setenv("PG_KV", "host=db password=kv-secret-123")
    monkeypatch.setenv("PG_AT", "postgresql://u:kv-secret@123:x@127.0.0.1:5432/db")
    monkeypatch.setenv("PG_PORT", "postgresql://u:kv-secret-123@h1:5432,h2:99999/db")
    monkeypatch.delenv("PG_UNSET_FOR_TEST", raising=False)
    with pytest.raises(ConfigError) as exc:
        make_config(two_regions({"t": ("east", probe)}, vantage="cfg"))
    assert error in str(exc.value)
    for piece in ("kv-secret", "123"):
        assert piece not in str(exc.value)


def test_describe_shows_host_port_db_only(make_config: MakeConfig, tmp_path: Path) -> None:
    (tmp_path / "pg.dsn").write_text(
        "postgresql://user:S3cret%21@db.example:6432/app?sslmode=require"
    )
    cfg = make_config(
        two_regions({"t": ("east", {"kind": "postgres", "dsn_file": "pg.dsn"})}, vantage="d")
    )
    t = cfg.targets[0]
    text = REGISTRY["postgres"].describe(t.settings)
    assert text == "postgres db.example:6432/app (heartbeat failover_heartbeat)"
