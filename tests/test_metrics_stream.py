"""/metrics streams the rendered chunks: the same body as a whole render, plain and gzipped."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from exporter import config, exposition
from exporter import web as handlers
from exporter.engine import Engine
from exporter.probes import REGISTRY
from exporter.state import TargetState
from tests.support.golden import GOLDEN_CONFIG, fixed_result

TARGETS = 2000


async def test_large_body_streams_in_chunks_plain_and_gzip(
    aiohttp_client: object, tmp_path: Path
) -> None:
    cfg = config.parse(GOLDEN_CONFIG, str(tmp_path / "c.yml"))
    base = cfg.targets[1]
    engine = Engine()
    try:
        for i in range(TARGETS):
            target = dataclasses.replace(base, name=f"t{i:04d}")
            st = TargetState(target, REGISTRY["http"].reasons)
            st.record(fixed_result(target, i, success=i % 7 != 0))
            engine.scheduler.states[target.key] = st
        app = web.Application()
        app[handlers.ENGINE] = engine
        app.router.add_get("/metrics", handlers.metrics)
        assert callable(aiohttp_client)
        client: TestClient = await aiohttp_client(app)
        chunks = [
            c async for c in exposition.chunks(engine.scheduler.snapshot(), (), engine.registry)
        ]
        assert len(chunks) > 10
        expected = b"".join(chunks)

        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert plain.status == 200
        assert plain.headers["Content-Type"] == exposition.CONTENT_TYPE
        assert plain.headers["Transfer-Encoding"] == "chunked"
        body = await plain.read()

        zipped = await client.get(
            "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        )
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert zipped.headers["Content-Type"] == exposition.CONTENT_TYPE
        unzipped = gzip.decompress(await zipped.read())
    finally:
        await engine.aclose()
    # The registry's part (GC counts, CPU, scrape counts) moves between renders; targets may not.
    cut = min(expected.find(m) % len(expected) for m in (b"# HELP python_", b"# HELP process_"))
    assert cut > len(expected) // 2
    assert body[:cut] == expected[:cut]
    assert unzipped[:cut] == expected[:cut]
    assert body.count(b"failover_probes_total{") == TARGETS
