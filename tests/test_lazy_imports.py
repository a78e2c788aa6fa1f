"""Kind-specific libraries load only when a configured target needs them.

Each of them costs RSS in every exporter (the Docker SDK with requests, asyncpg, grpcio, dnspython,
cryptography's OpenSSL bindings: about 20 MiB together), and most deployments probe http and tcp
only (issue #20's memory goal). A fresh interpreter runs a real engine on an http and a tcp
target until both have probed, then reports what it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

KIND_SPECIFIC = (
    "docker",
    "requests",
    "urllib3",
    "asyncpg",
    "grpc",
    "grpc_health",
    "dns",
    "cryptography",
)

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, tempfile
    from pathlib import Path

    # The whole program, as `failover-exporter` loads it.
    from exporter import cli, config  # noqa: F401
    from exporter.engine import Engine


    async def main() -> None:
        async def answer(reader, writer):
            await reader.read(65536)
            head = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n"
            writer.write(head + b"\\r\\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = Path(tempfile.mkdtemp()) / "lazy.yml"
        cfg.write_text(
            "vantage: lazy\\n"
            "defaults: {interval: 1s, timeout: 500ms}\\n"
            "services:\\n"
            "  - name: s\\n"
            "    regions: [{name: r1, role: primary, priority: 1}]\\n"
            "    images: [{name: i1, ref: lazy/app:1}]\\n"
            "    targets:\\n"
            "      - {name: h, region: r1, image: i1,\\n"
            f"         probe: {{kind: http, url: 'http://127.0.0.1:{port}/'}}}}\\n"
            "      - {name: t, region: r1, image: i1,\\n"
            f"         probe: {{kind: tcp, address: '127.0.0.1:{port}'}}}}\\n"
        )
        engine = Engine()
        engine.start(config.load(cfg))
        try:
            # Bounded by the test's subprocess timeout, not by a timing window.
            while sum(1 for s in engine.scheduler.states.values() if s.probes) < 2:
                await asyncio.sleep(0.05)
        finally:
            await engine.aclose()
            server.close()
        probed = sorted(k for k, s in engine.scheduler.states.items() if s.probes)
        print(json.dumps({"probed": [str(k) for k in probed], "modules": sorted(sys.modules)}))


    asyncio.run(main())
    """
)


def test_http_and_tcp_config_imports_no_kind_specific_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report["probed"]) == 2, report["probed"]
    loaded = sorted(
        m for m in report["modules"] if m.split(".")[0] in KIND_SPECIFIC and m.split(".")[0] == m
    )
    assert loaded == [], f"imported although no target needs them: {loaded}"
    # The probe modules themselves are registered (the registry imports every kind's settings).
    assert "exporter.probes.postgres" in report["modules"]
