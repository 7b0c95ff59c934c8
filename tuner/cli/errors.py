"""Turn the errors users can fix into one clear line and an exit code, instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable

# The command's exit codes, in one place: 0 done, 1 the work ran but failed (or was refused on its merits, like a
# model below the bar), 2 unusable input caught before anything started, 130 interrupted.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported when a command runs, not when the parser is built: `leukotune --help` should not load Ray and MLflow.
    from leukotune.data import DatasetError
    from leukotune.models import UnknownModelError, WeightsNotFoundError
    from leukotune.tuner.cluster.jobs import ClusterError
    from leukotune.tuner.cluster.mlflow_server import ServerError
    from leukotune.tuner.config import ConfigError
    from leukotune.tuner.tracking.client import TrackingUnavailable

    return (ConfigError, DatasetError, TrackingUnavailable, WeightsNotFoundError, UnknownModelError, ClusterError,
            ServerError)


def friendly_errors(run: Callable[[], int]) -> int:
    try:
        return run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
