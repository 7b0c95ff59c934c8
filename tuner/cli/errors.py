"""Turn the errors users can fix into one clear line and an exit code, instead of a traceback."""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable

# The command's exit codes, in one place: 0 done, 1 the work ran but failed (or was refused on its merits, like a
# model below the bar), 2 unusable input caught before anything started, 130 interrupted.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# The errors a user can fix, each named for what went wrong, as "module:class"; each is one line and EXIT_USAGE.
USER_ERRORS = (
    "leukotune.tuner.config:ConfigError",  # a study value, key or override the schema refuses
    "leukotune.tuner.config:StudyFileNotFoundError",
    "leukotune.data.errors:DatasetError",  # the data folder cannot be used
    "leukotune.models.registry:UnknownModelError",
    "leukotune.models.weights:WeightsNotFoundError",  # pretrained weights are not on this machine
    "leukotune.tuner.tracking.client:TrackingUnavailable",
    "leukotune.tuner.cluster.ray_cluster:ClusterError",  # the Ray cluster cannot be reached or cannot do it
    "leukotune.tuner.cluster.trial_resources:TrialDoesNotFitError",
    "leukotune.tuner.cluster.storage:StorageError",  # storage_path cannot hold the study
    "leukotune.tuner.cluster.mlflow_server:ServerError",
    "leukotune.tuner.tune.plan:ResumeError",
    "leukotune.tuner.tracking.study_records:StudyNotFoundError",  # `leukotune diff` or tune.warm_start names none
    "leukotune.tuner.registry.promote:ExperimentNotFoundError",
    "leukotune.tuner.evaluation.logged_models:ModelURIError",
    "leukotune.tuner.evaluation.logged_models:ModelDownloadError",
    "leukotune.tuner.evaluation.logged_models:UnusableModelError",
    "leukotune.tuner.serving.serve_control:ServeError",
    "leukotune.tuner.evaluation.batch_output:BatchOutputError",  # --out cannot hold this run's results
)


def user_error_classes(loaded_only: bool = True) -> tuple[type[BaseException], ...]:
    """The classes of USER_ERRORS. Only those whose module is loaded, by default: an error can only have been raised
    by a loaded module, and `leukotune --help` or a data command should not load Ray and MLflow to report one."""
    classes = []
    for entry in USER_ERRORS:
        module_name, name = entry.split(":")
        if module_name in sys.modules or not loaded_only:
            classes.append(getattr(sys.modules.get(module_name) or import_module(module_name), name))
    return tuple(classes)


def friendly_errors(run: Callable[[], int]) -> int:
    try:
        return run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except user_error_classes() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
