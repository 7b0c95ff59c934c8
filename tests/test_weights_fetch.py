"""`leukotune weights fetch`, offline: a real HTTP server on 127.0.0.1 serves small files whose names carry the right
or the wrong SHA-256 prefix, cuts a download short, or stalls one until it is interrupted.

No test waits a fixed time: each waits for what it needs (a partial file on disk, the process's end) with a deadline
generous enough for a loaded 2-core machine, and a stalled download is held for longer than any of them."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from leukotune.models import weights as weights_module
from leukotune.models import (
    WeightsDownloadError,
    WeightsNotFoundError,
    default_weights_dir,
    fetch_imagenet_weights,
    imagenet_archs,
    imagenet_weights,
    resolve_weights_path,
)
from leukotune.models.weights import WEIGHTS_DIR_ENV
from leukotune.tuner.cli.models import ARCHS

from conftest import REPO_ROOT

PAYLOAD = b"not really resnet weights, just bytes to hash " * 2000
GOOD_NAME = f"tiny-{hashlib.sha256(PAYLOAD).hexdigest()[:8]}.pth"
STALL_HOLD_S = 600  # the server's stall outlasts every wait below: only Ctrl-C or the client's timeout ends it
DEADLINE_S = 300  # for a subprocess that imports torch to get somewhere on a loaded machine; a hang guard, not a bound


def wait_until(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `condition` until it holds; fail naming `what` after the (generous) deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {deadline_s} s")
        time.sleep(0.05)


class Files(BaseHTTPRequestHandler):
    """`/ok/NAME` the whole payload, `/cut/NAME` half of it then a closed connection, `/stall/NAME` half then a
    wait until the test ends (longer than the client's own stall timeout)."""

    release = threading.Event()

    def do_GET(self) -> None:
        mode = self.path.strip("/").split("/")[0]
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if mode == "ok":
            self.wfile.write(PAYLOAD)
            return
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.wfile.flush()
        if mode == "stall":
            self.release.wait(timeout=STALL_HOLD_S)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Files.release.set()
    httpd.shutdown()
    httpd.server_close()
    Files.release.clear()


def test_a_file_whose_hash_matches_its_name_is_saved_and_kept(tmp_path, server):
    path, downloaded = fetch_imagenet_weights("resnet50", tmp_path / "w", url=f"{server}/ok/{GOOD_NAME}",
                                              progress=False)
    assert downloaded and path == tmp_path / "w" / GOOD_NAME and path.read_bytes() == PAYLOAD
    again, downloaded_again = fetch_imagenet_weights("resnet50", tmp_path / "w", url=f"{server}/ok/{GOOD_NAME}",
                                                     progress=False)
    assert again == path and not downloaded_again
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [GOOD_NAME]


@pytest.mark.parametrize("url_path, message", [
    ("ok/tiny-deadbeef.pth", "does not start with deadbeef"),    # wrong hash in the name
    (f"cut/{GOOD_NAME}", "does not start with"),                  # connection closed half way
    ("ok/tiny.pth", "carries no hash"),                           # nothing to check against
])
def test_a_file_that_does_not_check_out_leaves_nothing(tmp_path, server, url_path, message):
    folder = tmp_path / "w"
    with pytest.raises(WeightsDownloadError, match=message):
        fetch_imagenet_weights("resnet50", folder, url=f"{server}/{url_path}", progress=False)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_server_that_stalls_is_given_up_on_and_leaves_nothing(tmp_path, server, monkeypatch):
    monkeypatch.setattr(weights_module, "STALL_TIMEOUT_S", 2.0)
    folder = tmp_path / "w"
    # "timed out": on a loaded machine the server's own thread may be slower than 2 s to send the headers.
    with pytest.raises(WeightsDownloadError, match=r"(sent nothing for 2 s|timed out); nothing was saved"):
        fetch_imagenet_weights("resnet50", folder, url=f"{server}/stall/{GOOD_NAME}", progress=False)
    assert list(folder.iterdir()) == []


def test_ctrl_c_ends_a_stalled_download_whichever_thread_the_signal_reaches(tmp_path, server):
    # The kernel may hand a process's SIGINT to any of its threads (torch starts some); a download blocked in the
    # main thread would then hear of it only when the server sent more.
    folder = tmp_path / "w"

    def press_ctrl_c_on_another_thread() -> None:
        wait_until(lambda: folder.is_dir() and list(folder.glob("*.partial")), "the download's start")
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_on_another_thread, daemon=True)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        fetch_imagenet_weights("resnet50", folder, url=f"{server}/stall/{GOOD_NAME}", progress=False)
    presser.join()
    assert list(folder.iterdir()) == []


def test_an_unreachable_server_is_one_clear_error(tmp_path):
    with pytest.raises(WeightsDownloadError, match="cannot download http://127.0.0.1:9/"):
        fetch_imagenet_weights("resnet50", tmp_path, url=f"http://127.0.0.1:9/{GOOD_NAME}", progress=False)


def cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leukotune.tuner.cli", "weights", "fetch", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    values = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "PYTHONPATH": str(REPO_ROOT)}
    values.pop(WEIGHTS_DIR_ENV, None)
    return values


def test_cli_refuses_a_mirror_file_with_the_wrong_hash(tmp_path, server, env):
    # The mirror serves bytes under resnet50's real file name; their SHA-256 is not the one that name carries.
    process = cli(["resnet50", "--dir", str(tmp_path / "w"), "--mirror", f"{server}/ok", "--no-progress"], env)
    out, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 1, out + err
    assert "refused" in err and "resnet50-" in err and "Traceback" not in err
    assert list((tmp_path / "w").iterdir()) == []


def test_cli_interrupted_download_leaves_no_partial_file(tmp_path, server, env):
    folder = tmp_path / "w"
    process = cli(["resnet50", "--dir", str(folder), "--mirror", f"{server}/stall", "--no-progress"], env)
    try:
        wait_until(lambda: list(folder.glob("*.partial")) or process.poll() is not None, "the download's start")
        process.send_signal(signal.SIGINT)  # Ctrl-C half way through the file
        out, err = process.communicate(timeout=DEADLINE_S)
    finally:
        process.kill()
    # 130, not the stall timeout's 1: the key ended it, while the server still held the download.
    assert process.returncode == 130 and "interrupted" in err, out + err
    assert list(folder.iterdir()) == []


def test_cli_help_explains_itself_and_lists_the_archs():
    result = subprocess.run([sys.executable, "-m", "leukotune.tuner.cli", "weights", "fetch", "--help"], check=False,
                            capture_output=True, text=True, timeout=DEADLINE_S,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0
    for text in ("resnet50", "mobilenet_v2", "--dir", "SHA-256", "never download"):
        assert text in result.stdout.replace("\n", " ")
    assert list(ARCHS) == imagenet_archs()


def test_default_folder_is_where_studies_look_and_the_miss_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv("LEUKOTUNE_WEIGHTS_RESNET50", raising=False)
    with pytest.raises(WeightsNotFoundError, match="leukotune weights fetch resnet50"):
        resolve_weights_path("resnet50", "imagenet")
    # A file saved under its torchvision name in the default folder is the one a study then finds.
    target = default_weights_dir() / Path(imagenet_weights("resnet50").url).name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert resolve_weights_path("resnet50", "imagenet") == target
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "mine"))
    assert default_weights_dir() == tmp_path / "mine"
