"""`leukotune serve` where no cluster runs: a private local Ray held in the foreground, answering raw image bytes as
`leukotune predict` does, ended by `leukotune serve --stop` from the same folder, with nothing on the console but
the command's own lines (no Serve start-up INFO, no raylet report of Serve's shut-down)."""
from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e.servers import VENV_BIN, free_port, post_invocations, ray_env, start, wait_http, write_token
from e2e.test_ray_serve import assert_same, predicted
from test_batch_predict import champion  # noqa: F401  (a fixture: a tiny calibrated champion, no study trained)

from conftest import require_cnmc_sample, run_leukotune

pytestmark = pytest.mark.e2e

CELLS = 4


@pytest.fixture()
def private_env(tmp_path):
    """No RAY_ADDRESS and a RAY_TMPDIR of its own (short: Ray's socket paths must fit 107 bytes), so no `ray start`
    cluster of another test is found: the command starts its own Ray."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="lt", dir="/tmp"))
    env = {**ray_env(write_token(tmp_path)), "RAY_TMPDIR": str(ray_tmp),
           "LEUKOTUNE_CACHE_DIR": str(tmp_path / "cache"), "LEUKOTUNE_MIN_FREE_GB": "0.1"}
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(inherited, None)
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_private_serve_answers_as_predict_and_stops_from_the_same_folder(champion, private_env, tmp_path):  # noqa: F811
    cells = sorted((require_cnmc_sample() / "training_data").rglob("*.bmp"))[:CELLS]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start("serve", [str(VENV_BIN / "leukotune"), "serve", "--model", champion["model"], "--tracking-uri",
                             champion["uri"], "--port", str(port)], private_env, tmp_path, cwd=tmp_path)
    try:
        wait_http(f"{url}/ping", timeout_s=300, process=server)
        rows = []
        for cell in cells:
            status, answer = post_invocations(url, cell.read_bytes(), content_type="application/octet-stream")
            assert status == 200, answer
            rows += answer["predictions"]
        assert_same(rows, predicted(champion["model"], champion["uri"], tmp_path, private_env, cells))

        stopped = run_leukotune(["serve", "--stop"], tmp_path, private_env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert server.process.wait(timeout=300) == 0, server.tail()
    finally:
        server.stop()
    console = server.tail(100_000)
    assert console.rstrip().endswith("stopped"), console
    for noise in ("INFO", "WARNING", "(raylet)", "Traceback", "Started Serve"):
        assert noise not in console, console
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(f"{url}/ping", timeout=3)
