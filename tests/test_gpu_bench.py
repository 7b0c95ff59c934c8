"""bench/gpu.sh --dry-run: the GPU benchmark's code, run on CPU with tiny sizes, ends with its full table."""
from __future__ import annotations

import subprocess

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_gpu_bench_dry_run_prints_every_row_of_the_table():
    done = subprocess.run([str(REPO_ROOT / "bench" / "gpu.sh"), "--dry-run"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    cases = [row.split(" | ")[0].lstrip("| ") + " " + row.split(" | ")[1] + " " + row.split(" | ")[2] for row in rows]
    assert cases == ["cnn 64px loader fp32", "cnn 64px loader bf16+channels_last", "cnn 64px device fp32",
                     "cnn 64px device bf16+channels_last",
                     "cnn 64px x1 packed (aggregate) device bf16+channels_last",
                     "cnn 64px x2 packed (aggregate) device bf16+channels_last",
                     "resnet50 64px frozen device bf16+channels_last",
                     "resnet50 64px unfrozen device bf16+channels_last"], done.stdout
    assert all(float(row.split(" | ")[5]) > 0 for row in rows)  # images/s measured for every case
