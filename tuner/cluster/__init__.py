"""Clusters and servers: which Ray cluster a command joins, what it can start, a trial's resources on it, shared
storage, Ray Jobs, and the MLflow tracking server.

The exports load on first use: every trial process imports `trial_resources` and `storage` from here, and eager
imports would load the MLflow server's side (MLflow itself) into each of them.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mlflow_server import ServerError as ServerError
    from .ray_cluster import ClusterError as ClusterError
    from .ray_cluster import choose_cluster as choose_cluster
    from .ray_cluster import init_ray as init_ray

_EXPORTS = {"ServerError": "mlflow_server", "ClusterError": "ray_cluster", "choose_cluster": "ray_cluster",
            "init_ray": "ray_cluster"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
