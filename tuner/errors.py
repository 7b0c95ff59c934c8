"""Turn the errors users can fix into one clear line and an exit code, instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from data import DatasetError
    from models import UnknownModelError, WeightsNotFoundError
    from tuner.config import ConfigError
    from tuner.jobs import ClusterError
    from tuner.server import ServerError
    from tuner.tracking import TrackingUnavailable

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
