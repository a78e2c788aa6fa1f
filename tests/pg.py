"""A real PostgreSQL primary and streaming replica for the postgres probe tests.

Each pytest(-xdist) worker that needs it builds its own pair on free ports under a temp dir, as the
`postgres` user (the server refuses to run as root), and removes it at the end of the session.
Per-worker clusters keep tests that pause replay on one worker from disturbing another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import trustme

from tests.tools import missing

SUPERUSER_PASSWORD = "Sup3r-s3cret-pw"
# Server settings: small, fast and quiet. Autovacuum off so nothing but the tests commits on
# the primary (the idle-primary test depends on it); status every second so replay is tracked.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "'16MB'",
    "max_connections": "40",
    "fsync": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "wal_receiver_status_interval": "'1s'",
    "log_min_messages": "warning",
}


def _bindir() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
    )
    if not candidates:
        missing("PostgreSQL server binaries (Debian package postgresql: initdb, pg_ctl)")
    return candidates[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Cluster:
    root: Path
    bindir: Path
    primary_port: int
    replica_port: int
    # The replica serves TLS with a certificate for 127.0.0.1 from this CA; the primary is plain.
    ca: trustme.CA = dataclasses.field(default_factory=trustme.CA)

    def dsn(
        self,
        port: int,
        user: str = "postgres",
        password: str | None = SUPERUSER_PASSWORD,
        db: str = "postgres",
        query: str = "",
    ) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{port}/{db}{'?' + query if query else ''}"

    @property
    def primary_dsn(self) -> str:
        return self.dsn(self.primary_port)

    @property
    def replica_dsn(self) -> str:
        return self.dsn(self.replica_port)

    async def sql(self, port: int, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn(port), timeout=10)
        try:
            result: list[asyncpg.Record] = await conn.fetch(query, *args)
            return result
        finally:
            await conn.close()

    async def primary(self, query: str, *args: object) -> list[asyncpg.Record]:
        return await self.sql(self.primary_port, query, *args)

    async def replica(self, query: str, *args: object) -> list[asyncpg.Record]:
        return await self.sql(self.replica_port, query, *args)

    async def wait_replayed(self, timeout: float = 10.0) -> None:
        """Wait until the replica has replayed everything the primary has written so far."""
        lsn = (await self.primary("select pg_current_wal_insert_lsn()"))[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self.replica("select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
            if rows[0][0]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"replica did not replay up to {lsn} within {timeout}s")


def _as_postgres(argv: list[str]) -> list[str]:
    # The server refuses to run as root; CI runs as root, a developer may not.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> None:
    proc = subprocess.run(
        _as_postgres(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")


def _start(c: Cluster, data: Path, port: int) -> None:
    _run(
        [
            str(c.bindir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(data),
            "-l",
            str(c.root / f"{data.name}.log"),
            "-o",
            f"-p {port} -k {c.root}",
        ],
        c.root,
    )


def _stop(c: Cluster, data: Path) -> None:
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _run([str(c.bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(data)], c.root, 60)


def _build(c: Cluster) -> None:
    pwfile = c.root / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    primary, replica = c.root / "primary", c.root / "replica"
    _run(
        [
            str(c.bindir / "initdb"),
            "-D",
            str(primary),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            # Unix socket (only the fixture's own dir) trusted, TCP needs the password: the
            # probe always sends one, so the tests exercise password handling everywhere.
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        c.root,
    )
    with (primary / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{k} = {v}\n" for k, v in SETTINGS.items())
    _start(c, primary, c.primary_port)
    _run(
        [
            str(c.bindir / "pg_basebackup"),
            "-D",
            str(replica),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            str(c.root),
            "-p",
            str(c.primary_port),
            "-U",
            "postgres",
            "--no-sync",
        ],
        c.root,
    )
    cert = c.ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(replica / "server.crt"))
    cert.private_key_pem.write_to_path(str(replica / "server.key"))
    (replica / "server.key").chmod(0o600)
    if os.geteuid() == 0:
        for name in ("server.crt", "server.key"):
            shutil.chown(replica / name, "postgres", "postgres")
    with (replica / "postgresql.conf").open("a") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    _start(c, replica, c.replica_port)


async def _wait_streaming(c: Cluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await c.primary("select count(*) from pg_stat_replication where state = 'streaming'")
        if rows[0][0] >= 1:
            # One commit, so pg_last_xact_replay_timestamp() is set on the replica.
            await c.primary("create table if not exists fixture_ready (id int)")
            await c.wait_replayed()
            return
        await asyncio.sleep(0.1)
    raise AssertionError("replica did not start streaming")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A primary and a streaming replica (PostgreSQL from the Debian packages)."""
    bindir = _bindir()
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing("runuser (util-linux), to run PostgreSQL as the postgres user")
    root = Path(tempfile.mkdtemp(prefix="failover-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    primary_port = _free_port()
    replica_port = _free_port()
    while replica_port == primary_port:
        replica_port = _free_port()
    cluster = Cluster(root, bindir, primary_port, replica_port)
    try:
        _build(cluster)
        asyncio.run(_wait_streaming(cluster))
        yield cluster
    finally:
        _stop(cluster, root / "replica")
        _stop(cluster, root / "primary")
        shutil.rmtree(root, ignore_errors=True)
