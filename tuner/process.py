"""Process-wide state, set in one place by the entry points: environment variables, logger levels and filters,
warning filters, signal handlers and hooks.

`configure_process(role)` is called by the `leukotune` command's `main()` ("cli", or "tune" for a study's driver)
and in the first lines of each Ray worker process's entry ("worker": a Tune trial, a Ray Train worker, the test
side's scoring task). Library modules set none of it: importing one changes nothing (tests/test_process.py checks
every module). This module imports nothing heavy, because the command calls it before Ray is imported, and Ray
reads some variables at import. Every call may repeat: a trial actor that Tune reuses runs its entry again.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

from leukotune.tuner.compat import RAY_AUTH_TOKEN_LOGGER, RAY_UPLOAD_LOGGERS

# What a driver sets for the libraries it loads; a value the user exported wins.
DRIVER_ENV = {
    # Read by Ray when it is imported: the autoscaler's events ("Adding 2 node(s) of type gpu_worker") would reach
    # every driver's console; a study's own waiting line says how many workers are up.
    "RAY_SCHEDULER_EVENTS": "0",
    # Ray 2.60's new output engine (`ray.tune.experimental.output`) prints the "Configuration for experiment" box,
    # "View detailed results here" and the TensorBoard hint at every verbosity, even `RunConfig(verbose=0)`; the old
    # engine (read by `get_air_verbosity` in `tune.run`) prints nothing at verbosity 0.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune's own result logs: JSON only (result.json per trial, for reading a trial without MLflow). Its CSV and
    # TensorBoard copies cost the event loop a write per result, and leukotune's record is MLflow.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Tune warns on every fast checkpoint cadence; a few-second epoch is normal here, not a bottleneck.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # MLflow draws a progress bar per artifact upload and download: it would interleave with a study's lines, and
    # for the few small files of a model it is only noise.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Read by Ray Data when it is imported (`leukotune predict --out`): its INFO lines per dataset ("Starting
    # execution", the plan, "execution finished") and the warning that its progress bars are off, which the command
    # turns off to draw its own line. Errors still show.
    "RAY_DATA_LOG_LEVEL": "ERROR",
}

DRIVER_LOG_LEVELS = {
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables"
    # Ray logs each default-excluded folder and ignore file it meets uploading a job's working_dir; the summary
    # `leukotune submit` prints is enough.
    **dict.fromkeys(RAY_UPLOAD_LOGGERS, logging.ERROR),
    "ray.dashboard.modules.job.sdk": logging.WARNING,  # every websocket close of a followed job's logs, at INFO
    "ray.serve": logging.WARNING,  # `leukotune serve`: Serve's start-up steps at INFO; the command says its own
}

# Tune times its own steps and warns past 0.5 s (a threshold read from TUNE_WARN_THRESHOLD_S when ray.tune is
# imported). On a busy 2-core node that is every few trials, and nothing a user can act on.
SLOW_STEP_LOGGER = "ray.tune.utils.util"

# Ray logs every checkpoint it persists at INFO; the driver already prints one line per trial epoch.
WORKER_LOG_LEVELS = {"ray.train": logging.WARNING, "ray.tune": logging.WARNING}

ROLES = ("cli", "tune", "worker")


def configure_process(role: str) -> None:
    """Set this process's state for its role: "cli" (every `leukotune` command), "tune" (a study's driver: the cli
    role, and SIGTERM handed to Tune), "worker" (a Ray process that trains or scores)."""
    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}; roles: {', '.join(ROLES)}")
    if role == "worker":
        _quiet_worker()
        return
    _quiet_driver()
    if role == "tune":
        _forward_sigterm_to_tune()


def _quiet_driver() -> None:
    """Nothing of Ray's, Tune's, MLflow's or Optuna's own chatter reaches the command's console."""
    for name, value in DRIVER_ENV.items():
        os.environ.setdefault(name, value)
    for name, level in DRIVER_LOG_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    # The notice that token authentication is on (the safe default, which leukotune keeps) is dropped; the warning
    # that it is off is not.
    logging.getLogger(RAY_AUTH_TOKEN_LOGGER).addFilter(_drop_token_enabled_notice)
    logging.getLogger(SLOW_STEP_LOGGER).addFilter(_drop_slow_step_warning)
    # Matplotlib, for a plot whose values are all the same (Optuna's parallel coordinates when every trial scored
    # alike, a learning curve that never moved, drawn on the recorder's thread); the plot is still logged.
    warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")


def _drop_token_enabled_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Token authentication is enabled")


def _drop_slow_step_warning(record: logging.LogRecord) -> bool:
    return "may be a performance bottleneck" not in str(record.msg)


def _forward_sigterm_to_tune() -> None:
    # `ray job stop` and schedulers send SIGTERM; Tune stops gracefully (state saved) on SIGUSR1/SIGINT only.
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGTERM, _send_sigusr1)


def _send_sigusr1(*_) -> None:
    os.kill(os.getpid(), signal.SIGUSR1)


def _quiet_worker() -> None:
    """Quiet what a trial or Train worker process would send to the driver's console with nothing to act on."""
    for name, level in WORKER_LOG_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    sys.unraisablehook = _drop_exit_raised_in_a_finalizer


def _drop_exit_raised_in_a_finalizer(unraisable) -> None:
    # Ray stops an idle worker with SIGTERM, and its handler raises SystemExit in whatever frame runs at that
    # moment. When that is a garbage-collection callback, Python prints "Exception ignored in ... SystemExit" with a
    # traceback, and Ray forwards it to the user's console after the study's last line, though the worker only did
    # as it was told. Every other unraisable exception is still printed.
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)
