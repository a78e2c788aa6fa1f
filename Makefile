# The two commands that work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# `make demo` needs only the runtime dependencies, not the test toolchain: its own stamp.
RUNTIME_STAMP := $(VENV)/.runtime-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_WORKERS ?= 2
LISTEN ?= :10077

.PHONY: demo test lint format system-deps bench bench-quick perf clean dashboards soak

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

$(RUNTIME_STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	@rm -f $(VENV)/.runtime-*
	@touch $@

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/failover-exporter demo --web.listen-address $(LISTEN) $(if $(OUTAGE),--outage-after $(OUTAGE))

system-deps:
	@scripts/system-deps

lint: $(STAMP)
	$(VENV)/bin/ruff check exporter tests deploy/kubernetes/generate.py grafana perf
	$(VENV)/bin/ruff format --check exporter tests deploy/kubernetes/generate.py grafana perf
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict grafana/generate.py grafana/failover_dashboards

format: $(STAMP)
	$(VENV)/bin/ruff check --fix exporter tests deploy/kubernetes/generate.py grafana perf
	$(VENV)/bin/ruff format exporter tests deploy/kubernetes/generate.py grafana perf

test: $(STAMP) system-deps lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider $(PYTEST_ARGS)

# Regenerate grafana/dashboards/*.json (tests/grafana fails when they are stale).
dashboards: $(STAMP)
	$(PY) grafana/generate.py

# Side-by-side performance run against blackbox_exporter (root; ~12 min), then the fleet scale
# table (memory, scrape bytes and config load time per target; SCALE_SIZES=1000,10000,50000).
# Not part of `test`. The harness lives in perf/, not bench/, so it is not mistaken for
# `failover-exporter bench` (the image ranking command); `make perf` is the same target.
perf: bench
bench: $(STAMP)
	@perf/system-deps
	$(PY) perf/run.py $(BENCH_ARGS)
	$(PY) perf/scale.py $(SCALE_SIZES)

# The quiet-machine run of docs/performance.md: every row of the table in 3–8 minutes (run.py bounded at 780 s).
bench-quick: $(STAMP)
	@perf/system-deps
	$(PY) perf/run.py --profile quick $(BENCH_ARGS)
	$(PY) perf/scale.py 1000,10000

# 30 minutes of a real exporter on a few hundred healthy and hostile targets, reloaded and scraped
# throughout; RSS, fds and tasks must stay flat. Not part of `test` (which runs 2 minutes of it).
SOAK_SECONDS ?= 1800
soak: $(STAMP)
	$(PY) tests/soak.py --duration $(SOAK_SECONDS) --json build/soak.json $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
