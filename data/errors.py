"""The two errors `data/` raises for problems a user can fix: an unusable dataset and an unreadable image."""
from __future__ import annotations


class DatasetError(Exception):
    """The dataset cannot be used as given (missing folder, nothing readable, a class missing); says why."""


class ImageError(DatasetError):
    """One image file cannot be decoded; `path` and `reason` are kept so callers can list it as skipped."""

    def __init__(self, path: object, reason: str) -> None:
        # Both go to Exception.args so the error survives pickling (Ray ships exceptions between processes).
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"
