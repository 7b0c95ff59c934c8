#!/usr/bin/env bash
# The GPU check of issue 20 (bench/gpu_bench.py) on one CUDA GPU, in at most five minutes, with the machine's own
# Python and torch: nothing is installed or downloaded, and leukotune is imported from this working tree (no Ray,
# MLflow, Optuna, pydantic or PyYAML needed). Each row is printed as it finishes; --json FILE is rewritten after
# each row, so a run cut off by its time limit keeps what it measured.
#   bench/gpu.sh --json "$OUT/gpu.json"   # on the GPU machine (BENCHMARKS.md: how to run it with the device tool)
#   bench/gpu.sh --dry-run                # the same code on CPU with tiny sizes (tests/test_gpu_bench.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON if set; else the first Python here that has torch: this checkout's .venv (a development machine), then
# the machine's python3 or python.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then PY=$candidate; break; fi
  done
fi
[ -n "$PY" ] || { echo "bench/gpu.sh: no Python with torch found (set PYTHON=...)" >&2; exit 2; }
if [[ " $* " != *" --dry-run "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv,noheader || true
fi
# The check skips any section that would start after 285 s; timeout ends whatever still runs at 300 s (SIGTERM,
# which stops the packed workers and the MPS daemon; SIGKILL 10 s later).
exec timeout -k 10 300 "$PY" -u bench/gpu_bench.py "$@"
