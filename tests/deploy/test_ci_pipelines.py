"""deploy/ci/: the example bench pipelines. The GitHub Actions workflow passes actionlint (with
shellcheck on its `run:` scripts); the GitLab job is checked structurally. Both pipelines'
scripts are run with stand-ins for `failover-exporter`, `gh` and `curl` that record what they
are given, and the recorded `bench` command line must parse with the real argument parser and
gate against the baseline the script fetched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import cli
from tests.tools import need

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "deploy" / "ci" / "github-actions.yml"
GITLAB = ROOT / "deploy" / "ci" / "gitlab-ci.yml"


def _actionlint() -> str:
    # Installed by the [test] extra into the venv, which need not be on PATH.
    beside = Path(sys.executable).parent / "actionlint"
    if beside.exists():
        return str(beside)
    return need("actionlint")


def test_github_workflow_passes_actionlint_and_shellcheck() -> None:
    shellcheck = need("shellcheck")
    proc = subprocess.run(
        [_actionlint(), "-shellcheck", shellcheck, "-no-color", str(GITHUB)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_is_a_real_check(tmp_path: Path) -> None:
    """The linter in use does reject a broken workflow (so the test above means something)."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.no_such_property }}\n"
    )
    proc = subprocess.run(
        [_actionlint(), "-no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert "no_such_property" in proc.stdout


STUBS = {
    # Records its arguments, one per line, and leaves the files the pipeline publishes.
    "failover-exporter": """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD"
printf '## failover-exporter bench\\n' > bench.md
: > bench.json; : > bench.xml
""",
    # `gh run list` answers a run id; `gh run download` writes the baseline into --dir.
    "gh": """#!/bin/sh
if [ "$2" = list ]; then echo 42; exit 0; fi
while [ $# -gt 0 ]; do
  if [ "$1" = --dir ]; then mkdir -p "$2"; echo '{}' > "$2/bench.json"; fi
  shift
done
""",
    # Writes something to --output, as the artifacts API would.
    "curl": """#!/bin/sh
while [ $# -gt 0 ]; do
  if [ "$1" = --output ]; then echo '{}' > "$2"; fi
  shift
done
""",
}


def _stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(tmp_path / "args"),
        "HOME": str(tmp_path),
    }


def _recorded_bench(tmp_path: Path) -> Any:
    args = (tmp_path / "args").read_text().splitlines()
    assert args[0] == "bench", args
    return cli.parser().parse_args(args)


def _github_steps() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(GITHUB.read_text())
    (job,) = doc["jobs"].values()
    return {s.get("name", s.get("uses", "")): s for s in job["steps"]}


def _expand_github(script: str, event: str) -> str:
    values = {
        "github.workflow": "bench",
        "github.event.repository.default_branch": "main",
        "github.event_name": event,
    }

    def one(match: re.Match[str]) -> str:
        return values[match.group(1).strip()]

    out = re.sub(r"\$\{\{\s*([^}]+?)\s*\}\}", one, script)
    assert "${{" not in out
    return out


@pytest.mark.parametrize("event", ["pull_request", "push"])
def test_github_workflow_scripts_run_and_gate(tmp_path: Path, event: str) -> None:
    bash = need("bash")
    steps = _github_steps()
    doc = yaml.safe_load(GITHUB.read_text())
    env = {
        **os.environ,
        **doc["env"],
        **_stubs(tmp_path),
        "GITHUB_ENV": str(tmp_path / "github_env"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_REPOSITORY": "o/r",
        "PUSHGATEWAY_URL": "http://pushgateway:9091",
    }
    work = tmp_path / "work"
    work.mkdir()
    if event == "pull_request":
        step = steps["Baseline from the default branch"]
        assert step["if"] == "github.event_name == 'pull_request'"
        subprocess.run(
            [bash, "-e", "-c", _expand_github(step["run"], event)],
            cwd=work,
            env=env,
            check=True,
            timeout=30,
        )
        for line in Path(env["GITHUB_ENV"]).read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        assert env["BASELINE"] == "baseline/bench.json"
    step = steps["Bench (build, run, rank, gate)"]
    subprocess.run(
        [bash, "-e", "-c", _expand_github(step["run"], event)],
        cwd=work,
        env=env,
        check=True,
        timeout=30,
    )
    args = _recorded_bench(tmp_path)
    assert args.config == "deploy/examples/bench-ci.yml"
    assert args.service == "hello"
    assert args.build
    assert (args.json, args.junit, args.markdown) == ("bench.json", "bench.xml", "bench.md")
    if event == "pull_request":
        assert args.baseline == "baseline/bench.json"
        assert args.max_regression == doc["env"]["MAX_REGRESSION"]
        assert args.pushgateway is None
    else:
        assert args.baseline is None
        assert args.pushgateway == "http://pushgateway:9091"
    assert "failover-exporter bench" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    # What the job keeps is what bench wrote.
    uploads = [s for s in steps.values() if str(s.get("uses", "")).startswith("actions/upload")]
    kept = {p.strip() for s in uploads for p in s["with"]["path"].split()}
    assert {"bench.json", "bench.xml", "bench.md"} <= kept


def test_github_config_rewrite_gives_a_loadable_config(tmp_path: Path) -> None:
    """The sed that points deploy/examples/bench.yml at Docker's socket, on a config with the
    same Podman `host:` line (deploy/bench.yml)."""
    _rewrite_and_load(
        tmp_path, _github_steps()["Bench config for this runner's Docker"]["run"], "podman"
    )


def _rewrite_and_load(tmp_path: Path, script: str, region: str) -> Any:
    from exporter import config

    examples = tmp_path / "deploy" / "examples"
    examples.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "bench.yml", examples / "bench.yml")
    subprocess.run(["sh", "-e", "-c", script], cwd=tmp_path, check=True, timeout=30, env=os.environ)
    cfg = config.load(str(examples / "bench-ci.yml"))
    (settings,) = [r.docker for r in cfg.regions if r.name == region]
    assert settings is not None
    return settings


def test_gitlab_job_is_well_formed() -> None:
    doc = yaml.safe_load(GITLAB.read_text())
    assert doc["stages"] == ["bench"]
    job = doc["bench"]
    known = {
        "stage", "image", "services", "variables", "rules", "timeout", "before_script",
        "script", "artifacts", "needs", "tags",
    }  # fmt: skip
    assert set(job) <= known, set(job) - known
    assert job["stage"] in doc["stages"]
    assert all(isinstance(line, str) for line in job["before_script"] + job["script"])
    (service,) = job["services"]
    assert service["alias"] == "docker"
    assert job["variables"]["DOCKER_HOST"] == "tcp://docker:2375"
    # The JUnit report GitLab shows is the file bench writes, and it is kept on failure.
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "bench.xml"
    assert {"bench.json", "bench.xml", "bench.md"} <= set(job["artifacts"]["paths"])
    rules = [r["if"] for r in job["rules"]]
    assert '$CI_PIPELINE_SOURCE == "merge_request_event"' in rules


def test_gitlab_scripts_pass_shellcheck(tmp_path: Path) -> None:
    """GitLab runs before_script and script in one POSIX shell: checked as one sh script."""
    job = yaml.safe_load(GITLAB.read_text())["bench"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n" + "\n".join(job["before_script"] + job["script"]) + "\n")
    proc = subprocess.run(
        [need("shellcheck"), "-s", "sh", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gitlab_config_rewrite_gives_a_loadable_config(tmp_path: Path) -> None:
    job = yaml.safe_load(GITLAB.read_text())["bench"]
    (rewrite,) = [line for line in job["before_script"] if line.startswith("sed ")]
    settings = _rewrite_and_load(tmp_path, rewrite, "podman")
    assert settings.host == "tcp://docker:2375"
    assert settings.ready_host == "docker"


@pytest.mark.parametrize("source", ["merge_request_event", "push"])
def test_gitlab_script_runs_and_gates(tmp_path: Path, source: str) -> None:
    doc = yaml.safe_load(GITLAB.read_text())
    job = doc["bench"]
    env = {
        **os.environ,
        **{k: str(v) for k, v in job["variables"].items()},
        **_stubs(tmp_path),
        "CI_PIPELINE_SOURCE": source,
        "CI_API_V4_URL": "https://gitlab.example/api/v4",
        "CI_PROJECT_ID": "7",
        "CI_DEFAULT_BRANCH": "main",
        "CI_JOB_NAME": "bench",
        "CI_JOB_TOKEN": "t",
        "PUSHGATEWAY_URL": "http://pushgateway:9091",
    }
    work = tmp_path / "work"
    work.mkdir()
    for script in job["script"]:
        subprocess.run(["sh", "-e", "-c", script], cwd=work, env=env, check=True, timeout=30)
    args = _recorded_bench(tmp_path)
    assert args.config == "deploy/examples/bench-ci.yml"
    assert args.service == "hello"
    assert args.junit == job["artifacts"]["reports"]["junit"]
    if source == "merge_request_event":
        assert args.baseline == "baseline.json"
        assert (work / "baseline.json").exists()
        assert args.max_regression == job["variables"]["MAX_REGRESSION"]
    else:
        assert args.baseline is None
        assert args.pushgateway == "http://pushgateway:9091"
