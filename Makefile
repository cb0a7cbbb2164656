# `make run` and `make test` set everything up on a fresh machine with only Python 3.11.
# With DATABASE_URL unset they start an embedded PostgreSQL under .data/ (iacplatform/devdb.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROUNDS ?= 20

.PHONY: run test lint format bench chaos migrate db clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The database URL: the one given, or the embedded server's (started if needed).
DB_URL = $(if $(DATABASE_URL),$(DATABASE_URL),$$($(PY) -m iacplatform.devdb))

db: $(STAMP)
	@echo $(DB_URL)

migrate: $(STAMP)
	DATABASE_URL=$(DB_URL) DEBUG=1 $(PY) manage.py migrate --noinput

run: $(STAMP)
	@url=$(DB_URL); \
	export DATABASE_URL=$$url DEBUG=$${DEBUG:-1} PATH=$(CURDIR)/$(VENV)/bin:$$PATH; \
	$(PY) manage.py migrate --noinput && \
	$(PY) manage.py bootstrapdemo && \
	echo "web replicas: http://127.0.0.1:$${WEB1_PORT:-8001}/  http://127.0.0.1:$${WEB2_PORT:-8002}/" && \
	echo "admin: /admin/   API schema: /api/v1/schema/   API docs: /api/v1/docs/   probes: /healthz /readyz" && \
	exec $(VENV)/bin/honcho start -f Procfile

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks run on their own database (never the one `make run` uses).
BENCH_DB_URL = $(if $(DATABASE_URL),$(DATABASE_URL),$$($(PY) -m iacplatform.devdb --database iacplatform_bench))

bench: $(STAMP)
	@url=$(BENCH_DB_URL); export DATABASE_URL=$$url SECRET_KEY=$${SECRET_KEY:-bench-only-secret} PATH=$(CURDIR)/$(VENV)/bin:$$PATH; \
	$(PY) manage.py migrate --noinput -v0 && $(PY) -m bench.run $(BENCH)

# Chaos runs its own embedded PostgreSQL under .data/chaos (it restarts it as one of its faults).
chaos: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m chaos --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL=postgresql://lint@localhost/lint SECRET_KEY=lint $(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
