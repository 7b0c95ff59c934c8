"""The software that judged a model: the versions a report must name (TRIPOD+AI and CLAIM ask for them).

Read from the installed distributions' metadata, so nothing is imported to ask: the test side's Ray task records
them where the test numbers were made, and `leukotune promote` asks only for a run that has none.
"""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("leukotune", "torch", "torchvision", "ray", "optuna", "mlflow", "captum", "numpy")
TAG_SOFTWARE = "leukotune.software."  # a trial run's tag per package: leukotune.software.torch = 2.5.1


def software_versions() -> dict[str, str]:
    """`{"python": "3.11.9", "torch": "2.5.1", ...}`; a package that is not installed reads `not installed`."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
