# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test test-fast e2e bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

## The main job on the embedded default: local Ray, MLflow on SQLite, synthetic data.
demo: $(STAMP)
	$(BIN)/leukotune tune --config studies/smoke.yaml $(ARGS)

## The test suite: unit tests plus real Ray/Optuna/MLflow studies (CI runs exactly this, then `make e2e`).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e" $(ARGS)

## Only the fast unit tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not e2e" $(ARGS)

## Real Ray head + second node + MLflow server + headless Chromium (also run by CI): tests/e2e/, and the tests
## elsewhere marked e2e because they start and stop a real cluster or server or kill a process of one (Ray Jobs, a
## dead `ray start` head, an MLflow server restarted mid-study, Ray's fake multi-node clusters, a trial's or a Ray
## Train worker killed, a driver killed between Tune's saves), which keeps `make test` within its budget.
e2e: $(STAMP)
	$(BIN)/python -m pytest -q -m e2e $(ARGS)

## Every benchmark in bench/, one after the other (figures and what each measures: BENCHMARKS.md). Long: about
## an hour and a half here, most of it the search benchmark. The GPU script runs for real where a GPU is visible,
## else in its CPU dry run.
bench: $(STAMP)
	set -e; for script in bench/*_bench.py; do \
	  case $$script in bench/gpu_bench.py) continue;; esac; \
	  echo "== $$script"; $(BIN)/python $$script $(ARGS); \
	done
	if command -v nvidia-smi >/dev/null 2>&1; then bench/gpu.sh; else bench/gpu.sh --dry-run; fi

clean:
	rm -rf .leukotune mlruns mlflow.db synthetic_cnmc .pytest_cache
