"""Build-input errors: check-config names them with file:line and key path; `bench --build`
turns each into that variant's FAILED row, still measures the others, and `--json -` is JSON
alone on stdout (real Podman Docker API)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.docker import *  # noqa: F403
from tests.docker import IMAGES, containers_of, worker_id


def _config(tmp_path: Path, podman_host: str, base_image: str, tag: str) -> Path:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("a file, not a build context\n")
    (tmp_path / "empty").mkdir()
    cfg = tmp_path / "bench.yml"
    cfg.write_text(
        f"""vantage: bench
services:
  - name: svc
    regions:
      - {{name: r1, role: primary, priority: 1, docker: {{host: "{podman_host}"}}}}
    images:
      - name: good
        ref: {tag}:good
        dockerfile: Dockerfile
        context: {IMAGES / "minimal"}
        build_target: runtime
        build_args: {{BASE: "{base_image}"}}
        run: {{port: 8080, readiness: {{path: /index.html}}}}
      - name: typo
        ref: {tag}:typo
        dockerfile: Dockerfile
        context: {tmp_path / "no-such-dir"}
        run: {{port: 8080}}
      - name: file
        ref: {tag}:file
        dockerfile: Dockerfile
        context: {a_file}
        run: {{port: 8080}}
      - name: nodockerfile
        ref: {tag}:nodockerfile
        dockerfile: Dockerfile.missing
        context: {tmp_path / "empty"}
        run: {{port: 8080}}
"""
    )
    return cfg


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_check_config_names_each_build_input_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "unix:///nonexistent.sock", "localhost/base", "localhost/x")
    proc = _run("check-config", str(cfg))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    text = cfg.read_text().splitlines()

    def line_of(needle: str) -> int:
        return next(n for n, line in enumerate(text, 1) if needle in line)

    expected = [
        (line_of("no-such-dir"), "services[0].images[1].context", "does not exist"),
        (line_of("not-a-dir"), "services[0].images[2].context", "is not a directory"),
        (line_of("Dockerfile.missing"), "services[0].images[3].dockerfile", "not found"),
    ]
    for line, path, message in expected:
        hits = [x for x in lines if x.startswith(f"{cfg}:{line}: {path}: ")]
        assert hits, (line, path, lines)
        assert message in hits[0], (line, path, lines)
    assert lines[-1] == f"{cfg}: 3 error(s)"
    # The good image's inputs are not reported.
    assert not any("images[0]" in x for x in lines)


@pytest.mark.slow
def test_bench_keeps_measuring_after_build_input_errors_and_json_is_alone_on_stdout(
    podman_host: str, base_image: str, docker_client: Any, tmp_path: Path
) -> None:
    tag = f"localhost/failover-bench-inputs-{worker_id()}-{uuid.uuid4().hex[:6]}"
    cfg = _config(tmp_path, podman_host, base_image, tag)
    try:
        proc = _run(
            "bench",
            "--config",
            str(cfg),
            "--service",
            "svc",
            "--build",
            "--runs",
            "1",
            "--requests",
            "10",
            "--concurrency",
            "2",
            "--json",
            "-",
            timeout=240,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        # Some variants failed: non-zero, yet the JSON was written and parses on its own.
        assert proc.returncode == 1, proc.stderr
        report = json.loads(proc.stdout)
        by_name = {v["image"]: v for v in report["variants"]}
        assert by_name["good"]["rank"] == 1
        assert by_name["good"]["error"] is None
        assert by_name["good"]["latency_p50"] is not None
        reasons = {
            "typo": "does not exist",
            "file": "is not a directory",
            "nodockerfile": "not found in the build context",
        }
        for name, reason in reasons.items():
            assert by_name[name]["rank"] is None
            assert reason in by_name[name]["error"], by_name[name]
            assert f"{name}: FAILED: " in proc.stderr
        # The table went to stderr, ranked row first.
        assert "rank  image" in proc.stderr
        assert containers_of(docker_client, "") == []
    finally:
        subprocess.run(
            ["podman", "rmi", "-f", f"{tag}:good"], capture_output=True, check=False, timeout=60
        )
