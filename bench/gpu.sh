#!/usr/bin/env bash
# The GPU table of issue 10 on one CUDA GPU (an H200 is the target), in under 8 minutes; prints one table.
#   bench/gpu.sh              # on the GPU machine, from a checkout: makes .venv with leukotune if missing
#   bench/gpu.sh --dry-run    # the same code on CPU with tiny sizes (under 3 minutes): shows it works, measures nothing
# Extra arguments go to bench/gpu_bench.py (e.g. --json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if ! "$PY" -c "import leukotune.tuner.train.pipeline, torch" 2>/dev/null; then
  # Install only what is missing: the pinned torch, ray, mlflow come from pyproject.toml.
  [ -x "$PY" ] || python3 -m venv .venv
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -e .
fi
if [[ " $* " != *" --dry-run "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# 450 s for the benchmark itself leaves the rest of 8 minutes for the install above.
exec timeout 450 "$PY" bench/gpu_bench.py "$@"
