"""Faults injected for real: bad config and data, unreachable or restarting MLflow, killed workers, Ctrl-C.

Each test runs the `leukotune` command as a user would and checks what is left in MLflow afterwards.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import SMOKE, TINY, free_port, local_uri, reported_trial_pids, sets
from conftest import run_leukotune as leukotune
from conftest import study_runs as trial_runs
from studyproc import StudyProcess

# Model export is not what these tests are about; skipping it keeps each trial short.
TINY = [*TINY, "tracking.log_models=0"]


# ------------------------------------------------------------------ refused before anything starts

@pytest.mark.parametrize("overrides, fragment", [
    (["train.lrr=0.1"], "train.lrr"),
    (["tune.space={lr: {loguniform: [0, 1]}}"], "tune.space.lr"),
    (["train.image_size=8"], "train.image_size"),
    (["train.model=resnet50", "train.weights=imagenet"], "LEUKOTUNE_WEIGHTS"),
])
def test_bad_config_is_refused_before_ray_starts(tmp_path, env, overrides, fragment):
    result = leukotune(["tune", "--config", str(SMOKE), *sets(TINY + overrides)], tmp_path,
                       {**env, "TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 2, result.stderr[-2000:]
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert "Ray:" not in result.stdout


def test_unreachable_mlflow_stops_at_start_naming_the_uri_without_its_password(tmp_path, env):
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    result = leukotune(["tune", "--config", str(SMOKE), *sets(TINY)], tmp_path, {**env, "MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2
    assert "unreachable" in result.stderr and "alice:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "Ray:" not in result.stdout  # no cluster was started, no trial ran


def test_unwritable_storage_is_refused_at_start(tmp_path, env):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    result = leukotune(["tune", "--config", str(SMOKE), *sets(TINY + [f"storage_path={blocker / 'runs'}"])],
                       tmp_path, env)
    assert result.returncode == 2 and "storage_path" in result.stderr and str(blocker) in result.stderr
    low = leukotune(["tune", "--config", str(SMOKE), *sets(TINY)], tmp_path, {**env, "LEUKOTUNE_MIN_FREE_GB": "1e9"})
    assert low.returncode == 2 and "GB free" in low.stderr


def test_folder_with_nothing_usable_stops_before_ray(tmp_path, env):
    junk = tmp_path / "junk" / "training_data" / "fold_0" / "all"
    junk.mkdir(parents=True)
    (junk / "UID_1_1_1_all.bmp").write_bytes(b"")
    (junk / "notes.txt").write_text("not an image")
    result = leukotune(["tune", "--config", str(SMOKE), "--data", str(tmp_path / "junk")], tmp_path, env)
    assert result.returncode == 2 and "data:" in result.stderr and "Ray:" not in result.stdout


# ------------------------------------------------------------------ bad files inside a usable folder

@pytest.mark.slow
def test_study_trains_on_good_files_and_records_the_skipped_ones(tmp_path, env, cnmc_sample):
    data = tmp_path / "cnmc"
    shutil.copytree(cnmc_sample, data)
    folder = data / "training_data" / "fold_0" / "all"
    (folder / "UID_99_1_1_all.bmp").write_bytes(b"")                                     # zero bytes
    good = next(folder.glob("*.bmp")).read_bytes()
    (folder / "UID_98_1_1_all.bmp").write_bytes(good[: len(good) // 3])                 # truncated
    (folder / "no_subject_here.bmp").write_bytes(good)                                   # name carries no subject
    result = leukotune(["tune", "--config", str(SMOKE), "--data", str(data), *sets(TINY + [
        "tune.num_samples=1", "train.epochs=1", "data.val_fraction=0.3", "tracking.experiment=bad-files"])],
        tmp_path, env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "3 files skipped" in result.stdout
    client, parents, children = trial_runs(local_uri(tmp_path), "bad-files")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert parents[0].data.metrics["data_skipped_files"] == 3
    summary = client.download_artifacts(parents[0].info.run_id, "data/summary.json", str(tmp_path))
    text = Path(summary).read_text()
    for name in ("UID_99_1_1_all.bmp", "UID_98_1_1_all.bmp", "no_subject_here.bmp"):
        assert name in text


# ------------------------------------------------------------------ processes dying mid-study

def wait_until(predicate, limit_s: float) -> bool:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - the database may not exist yet
            pass
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_ctrl_c_ends_the_study_cleanly_and_says_how_to_resume(tmp_path, env):
    args = ["tune", "--config", str(SMOKE), *sets(TINY + [
        "tune.num_samples=4", "train.epochs=6", "tune.scheduler=fifo", "tracking.experiment=sigint"])]
    driver = StudyProcess(args, tmp_path, env)
    uri = local_uri(tmp_path)
    assert driver.wait_for(r"trial \w+ epoch 1/6"), driver.finish()[-3000:]
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    output = driver.finish(timeout=300)
    assert driver.process.returncode != 0
    assert "--resume" in output
    _, parents, children = trial_runs(uri, "sigint")
    assert parents[0].info.status == "KILLED"
    assert children and all(c.info.status in ("KILLED", "FINISHED") for c in children)


@pytest.mark.slow
@pytest.mark.e2e
def test_killed_trial_worker_continues_from_its_checkpoint_in_the_same_run(tmp_path, env):
    args = ["tune", "--config", str(SMOKE), *sets(TINY + [
        "tune.num_samples=1", "train.epochs=5", "tracking.experiment=worker-dies", "resources.max_failures=2"])]
    driver = StudyProcess(args, tmp_path, env)
    uri = local_uri(tmp_path)
    assert driver.wait_for(r"trial \w+ epoch 2/5"), driver.finish()[-3000:]
    # Only this study's own trial process: the PID its trial reported to Tune, and a descendant of our driver.
    # Tune's result.json is written by a callback after the one that prints the epoch line: wait for it.
    assert wait_until(lambda: reported_trial_pids(tmp_path), 120)
    pids = reported_trial_pids(tmp_path)
    own = {child.pid for child in psutil.Process(driver.pid).children(recursive=True)}
    assert pids and pids <= own, (pids, own)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    output = driver.finish(timeout=300)
    assert driver.process.returncode == 0, output[-3000:]
    client, _, children = trial_runs(uri, "worker-dies")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "val_loss")]
    assert steps == [1, 2, 3, 4, 5]  # resumed from a checkpoint: no gap, no epoch logged twice


@pytest.mark.slow
@pytest.mark.e2e
def test_mlflow_server_restart_mid_study_loses_no_metric(tmp_path, env):
    port = free_port()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    server_cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
                  "--host", "127.0.0.1", "--port", str(port), "--serve-artifacts",
                  "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"]

    def start_server() -> subprocess.Popen:
        server = subprocess.Popen(server_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        assert wait_until(lambda: _healthy(port), 300), "mlflow server did not start"
        return server

    server = start_server()
    uri = f"http://127.0.0.1:{port}"
    args = ["tune", "--config", str(SMOKE), *sets(TINY + [
        "tune.num_samples=2", "train.epochs=6", "tune.scheduler=fifo", "tracking.experiment=restart"])]
    driver = StudyProcess(args, tmp_path, {**env, "MLFLOW_TRACKING_URI": uri})
    try:
        assert driver.wait_for(r"trial \w+ epoch 1/6"), driver.finish()[-3000:]
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        # The outage holds results the driver has not logged: a trial finished an epoch (its checkpoint is on disk,
        # written by the trial) that the driver has not printed yet, as it waits for the server.
        assert wait_until(lambda: epochs_on_disk(tmp_path) > epochs_printed(driver), 300), driver.lines[-20:]
        server = start_server()
        output = driver.finish(timeout=400)
        assert driver.process.returncode == 0, output[-3000:]
        client, parents, children = trial_runs(uri, "restart")
        assert parents[0].info.status == "FINISHED" and len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED"
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
            assert steps == [1, 2, 3, 4, 5, 6]
    finally:
        if driver.process.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        os.killpg(server.pid, signal.SIGTERM)


def epochs_on_disk(workdir: Path) -> int:
    """Epochs the study's trials have finished, read from the checkpoints each trial writes itself."""
    finished = 0
    for trial in workdir.glob(".leukotune/runs/*/tune_trial_*"):
        indices = [int(c.name.rsplit("_", 1)[1]) for c in trial.glob("checkpoint_*")]
        finished += max(indices) + 1 if indices else 0
    return finished


def epochs_printed(driver: StudyProcess) -> int:
    return sum(bool(re.search(r"trial \w+ epoch \d+/", line)) for line in list(driver.lines))


def _healthy(port: int) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
        return response.status == 200
