#!/usr/bin/env bash
# GPU benchmark for a lent H200 (or any CUDA machine): under 8 minutes.
# Installs the pinned torch/torchvision if missing, then runs bench/gpu_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, torchvision" 2>/dev/null || python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 420 python3 bench/gpu_bench.py "$@"
