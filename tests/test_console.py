"""What `leukotune tune` prints: leukotune's own lines (study, trial events, status), none of Ray's banners."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap

import pytest
from ray.tune.experiment.trial import Trial

from leukotune.tuner.tune.console import StudyConsole

from conftest import SHARED_TRIALS

RAY_NOISE = ("Configuration for experiment", "View detailed results here", "TensorBoard", "tensorboard",
             "Token authentication", "performance bottleneck", "Creating initial MLflow database tables", "Traceback")


def tune_trial(trial_id: str, status: str, epoch: int | None = None, best: float | None = None,
               metric: str = "val_f1_weighted") -> Trial:
    """A real (stub) Tune trial in a given state, as the controller hands them to callbacks."""
    trial = Trial("tune_trial", stub=True, config={"lr": 0.001, "optimizer": "adam"}, trial_id=trial_id)
    trial.set_status(status)
    if epoch is not None:
        trial.update_last_result({"epoch": epoch, f"best_{metric}": best})
    return trial


def test_trial_events_and_status_line_as_plain_text():
    stream = io.StringIO()
    console = StudyConsole(total=4, metric="val_f1_weighted", mode="max", epochs=4, scheduler="asha",
                           stream=stream)
    assert not console.live  # a StringIO is no terminal
    good, weak = tune_trial("good", "RUNNING", 4, 0.9), tune_trial("weak", "RUNNING", 1, 0.4)
    running = tune_trial("next", "RUNNING")
    console.trial_started(good)
    # Tune calls the hook while the trial still reads RUNNING: the console counts it as ended all the same.
    console.trial_ended(weak, [good, weak, running])
    console.trial_ended(good, [good, weak, running])
    lines = stream.getvalue().splitlines()
    assert lines[0] == "trial good started  lr=0.001 optimizer=adam"
    assert lines[1].startswith("trial weak stopped by ASHA after epoch 1/4  best val_f1_weighted 0.4  (1/4 trials "
                               "ended (1 stopped early, 0 failed), 2 running, 1 pending; best val_f1_weighted 0.9 "
                               "(trial good)")
    assert lines[2].startswith("trial good finished  best val_f1_weighted 0.9  (2/4 trials ended (1 stopped early, "
                               "0 failed), 1 running, 1 pending;")
    assert "left" in lines[2] and "\r" not in stream.getvalue()


def test_live_line_is_drawn_only_on_a_terminal_and_event_lines_stay_whole():
    stream = io.StringIO()
    console = StudyConsole(total=2, metric="val_loss", mode="min", epochs=2, scheduler="fifo", stream=stream,
                           live=True)
    trial = tune_trial("a", "RUNNING", 1, 0.3, metric="val_loss")
    console.refresh([trial], force=True)
    console.log("trial a epoch 1/2")
    console.close()
    text = stream.getvalue()
    assert "\r" in text and "0/2 trials ended" in text and "best val_loss 0.3 (trial a)" in text
    assert "trial a epoch 1/2\n" in text


@pytest.mark.slow
def test_tune_prints_leukotunes_lines_and_none_of_rays(shared_study):
    result = shared_study  # 3 trials of 2 epochs, FIFO, run once for the session
    output = result.stdout + result.stderr
    for noise in RAY_NOISE:
        assert noise not in output, f"{noise!r} in:\n{output[-4000:]}"
    assert re.search(rf"^study smoke-\S+: {SHARED_TRIALS} trials", result.stdout, re.MULTILINE)
    trials = set(re.findall(r"^trial (\w+) started ", result.stdout, re.MULTILINE))
    assert len(trials) == SHARED_TRIALS, result.stdout
    for trial in trials:
        assert re.search(rf"^trial {trial} epoch 1/2 ", result.stdout, re.MULTILINE)
        assert re.search(rf"^trial {trial} (finished|stopped by ASHA after epoch 1/2) ", result.stdout, re.MULTILINE)
    assert f"{SHARED_TRIALS}/{SHARED_TRIALS} trials ended" in result.stdout and "\r" not in result.stdout  # not a terminal: no live line


def test_a_worker_told_to_exit_during_garbage_collection_prints_no_traceback():
    """Ray stops idle trial processes with SIGTERM and its handler raises SystemExit wherever the process is; inside
    a garbage-collection callback Python would print it as "Exception ignored ... Traceback", which Ray forwards to
    the user's console. Trial processes drop exactly that, and still print any other exception raised there."""
    probe = textwrap.dedent("""
        import gc, sys, weakref
        from leukotune.tuner.process import configure_process
        if sys.argv[1] == "quiet":
            configure_process("worker")
        class Cell: pass
        def finalizer(error):
            def callback(_ref):
                raise error
            return callback
        for error in (SystemExit(1), ValueError("a real bug")):
            cell = Cell()
            ref = weakref.ref(cell, finalizer(error))
            del cell
            gc.collect()
        print("exited normally")
    """)
    quiet = subprocess.run([sys.executable, "-c", probe, "quiet"], capture_output=True, text=True, timeout=300)
    plain = subprocess.run([sys.executable, "-c", probe, "plain"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and plain.returncode == 0, quiet.stderr + plain.stderr
    assert "SystemExit" in plain.stderr  # what the hook exists for: Python does print it by default
    assert "SystemExit" not in quiet.stderr
    assert "ValueError: a real bug" in quiet.stderr
