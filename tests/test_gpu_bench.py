"""bench/gpu.sh --dry-run: the GPU check's code on CPU with tiny sizes, run as the lent GPU machine would run it:
Ray, MLflow, Optuna, pydantic and PyYAML cannot be imported, and leukotune is not installed (the check makes the
import name from the working tree)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# Loaded at start-up through PYTHONPATH, in this Python and in every process it starts (the packed trials).
BLOCKER = '''
import sys

ABSENT = {"ray", "mlflow", "optuna", "pydantic", "yaml"}


class _Absent:
    """As on the bare GPU machine: these packages and an installed leukotune are not there."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT or name == "leukotune":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the GPU machine has none)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
'''


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    for module in ("ray", "mlflow", "optuna", "pydantic", "yaml", "leukotune"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True,
                               check=False)
        assert probe.returncode != 0 and "blocked" in probe.stderr, (module, probe.stderr)
    return env


@pytest.mark.slow
def test_gpu_check_dry_run_runs_with_torch_alone(tmp_path, bare_env):
    out = tmp_path / "gpu.json"
    done = subprocess.run([str(REPO_ROOT / "bench" / "gpu.sh"), "--dry-run", "--json", str(out)], cwd=REPO_ROOT,
                          env=bare_env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"leukotune from the working tree {REPO_ROOT}" in done.stdout
    report = json.loads(out.read_text())
    assert report["complete"] and report["present_of_ray_mlflow_optuna_pydantic_yaml"] == []
    rows = report["rows"]
    printed = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("row ")]
    assert [r["case"] for r in printed] == [r["case"] for r in rows]  # each row printed as it finished
    measured = {r["case"]: r for r in rows if r["images"] > 0}
    for batch in (16, 32, 64, 256):
        loop = measured[f"cnn 64px b{batch} loop bf16+channels_last"]
        assert f"cnn 64px b{batch} bare step bf16+channels_last" in measured
        assert loop["targets"][0]["name"] == "loop / bare step" and loop["images_per_second"] > 0
    for case in ("cnn 64px b64 loop fp32 NCHW", "resnet50 64px frozen b4 loop bf16+channels_last",
                 "resnet50 64px fine-tuned b4 loop bf16+channels_last", "cnn 64px b64 loop, DataLoader pipeline",
                 "cnn 64px b16 x1 packed without MPS (aggregate)", "cnn 64px b16 x2 packed without MPS (aggregate)"):
        assert measured[case]["images_per_second"] > 0, case
    checkpoints = {r["case"].split(" (")[0]: r["extra"] for r in rows if r["section"] == "checkpoint"}
    assert checkpoints["resnet50 frozen checkpoint"]["state_mib"] < 0.05 * checkpoints["resnet50 frozen checkpoint"][
        "best_mib"]
    skipped = {r["case"]: r["note"] for r in rows if r["images"] == 0 and r["section"] != "checkpoint"}
    assert set(skipped) == {"packed trials with MPS", "CUDA graphs (train.compile=reduce-overhead)"}, skipped


@pytest.mark.slow
def test_a_check_cut_off_keeps_the_rows_it_finished(tmp_path, bare_env):
    out = tmp_path / "gpu.json"
    check = subprocess.Popen([sys.executable, str(REPO_ROOT / "bench" / "gpu_bench.py"), "--dry-run", "--json",
                              str(out)], cwd=REPO_ROOT, env=bare_env, stdout=subprocess.PIPE, text=True)
    try:
        first = next(line for line in check.stdout if line.startswith("row "))
        check.send_signal(signal.SIGTERM)  # what bench/gpu.sh's `timeout` sends
        check.communicate(timeout=300)
    finally:
        if check.poll() is None:
            check.kill()
    report = json.loads(out.read_text())
    assert not report["complete"] and report["rows"][0]["case"] == json.loads(first[4:])["case"]
