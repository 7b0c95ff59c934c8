"""A study submitted as a Ray Job runs the code it was submitted with, on the driver and on every node.

The cluster's nodes have leukotune installed (here: this checkout, in editable mode, as `ray up` does with
`cluster.yaml`). The test submits a copy of the checkout that carries a marker the installed copy lacks, one change
seen by the job's driver and one by a trial on another node, and checks that both processes imported the shipped
copy that Ray unpacked on their node, never the installed one. `make e2e` runs it.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from e2e.servers import ray_env, start_ray_head, write_token

from conftest import REPO_ROOT, TINY, sets, study_runs

pytestmark = pytest.mark.e2e

LEUKOTUNE = str(Path(sys.executable).parent / "leukotune")
ARTIFACTS = REPO_ROOT / "e2e-artifacts"


def copy_checkout(destination: Path) -> Path:
    """The checkout's files as git sees them (tracked and new, nothing ignored), without its .git."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of it
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def mark(copy: Path, markers: Path, token: str) -> None:
    """Two edits a developer might make, each leaving a trace: the study's first line names the code the driver
    runs; every training run writes which loop module it ran into `markers/` (a trial prints nowhere we can read)."""
    # main() looks the handler up in COMMANDS when it runs, so the marked handler replaces the entry there.
    with (copy / "tuner" / "cli" / "main.py").open("a") as cli:
        cli.write(f'''

_tune_unmarked = COMMANDS["tune"]


def _tune_marked(args: argparse.Namespace) -> int:
    import leukotune.tuner

    print("marker {token}: driver runs", leukotune.tuner.__file__, flush=True)
    return _tune_unmarked(args)


COMMANDS["tune"] = _tune_marked
''')
    with (copy / "tuner" / "train" / "loop.py").open("a") as loop:
        loop.write(f'''

_run_training_unmarked = run_training


def run_training(study: StudyConfig, session: Session, log=print) -> dict[str, Any]:
    import json, os

    record = json.dumps({{"token": {token!r}, "loop": __file__}})
    Path({str(markers)!r}, f"trial-{{os.getpid()}}.json").write_text(record)
    return _run_training_unmarked(study, session, log)
''')


def test_the_job_runs_the_submitted_tree_not_the_installed_copy(tmp_path):
    token = uuid.uuid4().hex[:12]
    copy, markers = copy_checkout(tmp_path / "checkout"), tmp_path / "markers"
    markers.mkdir()
    mark(copy, markers, token)
    installed = subprocess.run([sys.executable, "-c", "import leukotune.tuner; print(leukotune.tuner.__file__)"],
                               capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert Path(installed).is_relative_to(REPO_ROOT)  # what the nodes would run without the shipped code

    env = ray_env(write_token(tmp_path))
    env.update(LEUKOTUNE_CACHE_DIR=str(tmp_path / "cache"), LEUKOTUNE_MIN_FREE_GB="0.1")
    env.pop("MLFLOW_TRACKING_URI", None)
    # A head with no CPUs: the driver runs there, the trial can only run on the second node.
    cluster = start_ray_head(tmp_path, env, num_cpus=0)
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes(2)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        user_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        submitted = subprocess.run(
            [LEUKOTUNE, "submit", "--address", cluster.dashboard_url, "--working-dir", str(copy),
             "--config", str(copy / "studies" / "smoke.yaml"), "--tracking-uri", uri, "--follow",
             *sets(TINY + ["tune.num_samples=1", "train.epochs=1", f"storage_path={tmp_path / 'shared' / 'runs'}"])],
            cwd=tmp_path, env=user_env, capture_output=True, text=True, timeout=480)
        output = submitted.stdout + submitted.stderr
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "shipped-code-submit.log").write_text(output)
        assert submitted.returncode == 0, output[-4000:] + worker.tail()
    finally:
        cluster.stop()

    # `submit` said which code it shipped: the copy, which has no .git.
    shipped = re.search(r"^code: leukotune (.+) from (\S+), ", submitted.stderr, re.M)
    assert shipped and Path(shipped.group(2)) == copy.resolve(), submitted.stderr
    assert "not a git checkout (files sha256:" in shipped.group(1)

    # The driver ran the shipped copy, unpacked on the head.
    driver = re.search(rf"^marker {token}: driver runs (\S+)$", submitted.stdout, re.M)
    assert driver, submitted.stdout[-3000:]
    assert Path(driver.group(1)).is_relative_to(cluster.temp_dir) and "py_modules_files" in driver.group(1)

    # The trial ran the shipped loop, unpacked on the second node.
    trials = [json.loads(p.read_text()) for p in markers.glob("trial-*.json")]
    assert trials and all(t["token"] == token for t in trials), trials
    for trial in trials:
        assert Path(trial["loop"]).is_relative_to(cluster.extra_temp_dirs[0]), trial
        assert "py_modules_files" in trial["loop"] and not Path(trial["loop"]).is_relative_to(REPO_ROOT), trial

    # The study's parent run records the version `submit` shipped, not the installed copy's.
    _, parents, trial_runs = study_runs(uri, "leukotune-smoke")
    assert len(parents) == 1 and len(trial_runs) == 1
    assert parents[0].data.tags["leukotune.code_version"] == shipped.group(1)
