"""The one door to other libraries' private parts: every private name of Ray, Ray Tune, MLflow and Optuna's Tune
searcher that leukotune uses is reached here, through a small function named for what it does.

An upgrade that removes or changes one of them breaks this file, and `tests/test_compat.py` says which name and
which installed version, instead of five modules failing quietly. Imports are made inside the functions: a Tune
trial process that never calls them loads none of MLflow or Optuna, and Ray's internals load only where used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# Loggers named after Ray's private modules (each logs with `logging.getLogger(__name__)`).
RAY_AUTH_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"  # "token authentication is on"
RAY_UPLOAD_LOGGERS = ("ray._private.runtime_env.working_dir", "ray._private.runtime_env.packaging")  # job uploads


# ---------------------------------------------------------------- Ray: finding and asking a cluster

def ray_address_file() -> Path:
    """The file where the newest `ray start` on this machine records its GCS address (Ray's own lookup)."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def canonical_gcs_address(address: str) -> str | None:
    """`host:port` as Ray will dial it (`localhost` becomes the node's IP); ValueError when it is no address."""
    from ray._private import services

    return services.canonicalize_bootstrap_address(address)


def ask_gcs_cluster_id(endpoint: str, timeout_s: float) -> None:
    """Ask the GCS at `host:port` for its cluster id; `grpc.RpcError` when nothing answers as a GCS in time."""
    from ray._private.gcs_utils import create_gcs_channel
    from ray.core.generated.gcs_service_pb2 import GetClusterIdRequest  # type: ignore[attr-defined]  # protobuf
    from ray.core.generated.gcs_service_pb2_grpc import NodeInfoGcsServiceStub

    channel = create_gcs_channel(endpoint)
    try:
        NodeInfoGcsServiceStub(channel).GetClusterId(GetClusterIdRequest(), timeout=timeout_s)
    finally:
        channel.close()


def ray_auth_token() -> str | None:
    """The Ray authentication token the environment names now (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token), whatever RAY_AUTH_MODE says; None or "" when there is none."""
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # compiled, no stub for it

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the loader caches per process; read what the environment says now
    return loader.get_raw_token(ignore_auth_mode=True)


# ---------------------------------------------------------------- Ray: the node types a cluster can start

def reported_cluster_config() -> Any:
    """The cluster config the autoscaler reported to the joined cluster's GCS (an `autoscaler_pb2.ClusterConfig`
    with `node_group_configs`), or None."""
    from ray._private.state import state

    return state.get_cluster_config()


def autoscaling_config_from_ray_cr(ray_cluster: dict[str, Any]) -> dict[str, Any]:
    """A RayCluster resource as KubeRay's autoscaler reads it: an autoscaling config (`available_node_types`)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr(ray_cluster)


def kuberay_autoscaling_config(cluster_name: str, namespace: str) -> dict[str, Any]:
    """The autoscaling config of the RayCluster `namespace/cluster_name`, fetched with the pod's service account."""
    from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

    return AutoscalingConfigProducer(cluster_name, namespace)()


# ---------------------------------------------------------------- Ray Tune: a trial's checkpoint list

def trial_checkpoint_manager(trial: Any) -> Any:
    """The `_CheckpointManager` holding a Tune trial's checkpoint list (in Tune's private `_TrainingRunMetadata`)."""
    return trial.run_metadata.checkpoint_manager


def mark_trial_state_changed(trial: Any) -> None:
    """Make Tune write the trial's saved state again at its next experiment save."""
    trial.run_metadata.invalidate_cache()


def checkpoint_results(manager: Any) -> list[Any]:
    """The checkpoints a `_CheckpointManager` lists, oldest first (its private `_checkpoint_results`)."""
    return list(manager._checkpoint_results)


def latest_checkpoint_result(manager: Any) -> Any:
    """The checkpoint a `_CheckpointManager` restores from (its private `_latest_checkpoint_result`), or None."""
    return manager._latest_checkpoint_result


def replace_checkpoint_results(manager: Any, results: list[Any]) -> None:
    """Make `results` the checkpoints a `_CheckpointManager` lists."""
    manager._checkpoint_results = list(results)


# ---------------------------------------------------------------- Ray Tune: the saved search budget

# Tune saves its search generator's state (trials created, trials to create, and each wrapper's state, such as the
# ConcurrencyLimiter's) as a cloudpickled dict in the experiment folder, and a restore reads the newest such file.
_SEARCH_GEN_STATE = "search_gen_state-*.json"
_CONCURRENCY_LIMITER_STATE = "name:ConcurrencyLimiter"


def saved_search_budget(experiment_dir: Path) -> dict[str, int | None]:
    """The budget in Tune's newest saved search state: `created` (trials asked of the searcher so far),
    `num_samples` (trials it may create) and `max_concurrent` (the ConcurrencyLimiter's, None without one)."""
    state = _load_search_state(_newest_search_state(experiment_dir))
    limiter = state.get(_CONCURRENCY_LIMITER_STATE)
    return {"created": state["counter"], "num_samples": state["total_samples"],
            "max_concurrent": limiter["max_concurrent"] if limiter else None}


def write_search_budget(experiment_dir: Path, num_samples: int, max_concurrent: int | None) -> None:
    """Make the next restore of the experiment create up to `num_samples` trials in all, `max_concurrent` at a time
    (Tune keeps the budget it started with in this state and ignores a new TuneConfig on restore). Written to a
    temporary file and renamed, so a kill leaves the old state or the new one."""
    import ray.cloudpickle as cloudpickle

    path = _newest_search_state(experiment_dir)
    state = _load_search_state(path)
    state["total_samples"] = int(num_samples)
    limiter = state.get(_CONCURRENCY_LIMITER_STATE)
    if limiter is not None and max_concurrent:
        limiter["max_concurrent"] = int(max_concurrent)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(cloudpickle.dumps(state))
    partial.replace(path)


def _newest_search_state(experiment_dir: Path) -> Path:
    found = sorted(Path(experiment_dir).glob(_SEARCH_GEN_STATE))
    if not found:
        raise FileNotFoundError(f"no {_SEARCH_GEN_STATE} in {experiment_dir}: Tune never saved its search state")
    return found[-1]  # named by the session's start time, so the newest sorts last (as Tune picks it)


def _load_search_state(path: Path) -> dict[str, Any]:
    import ray.cloudpickle as cloudpickle

    return cloudpickle.loads(path.read_bytes())


# ---------------------------------------------------------------- Ray Tune's Optuna searcher

def optuna_study_of(searcher: Any) -> Any:
    """The `optuna.Study` inside a Tune `OptunaSearch` (which keeps it private as `_ot_study`)."""
    return searcher._ot_study


# ---------------------------------------------------------------- MLflow: its process-wide URIs

def mlflow_process_uris() -> tuple[str | None, str | None]:
    """MLflow's process-wide tracking and registry URIs as set in this process (None: never set)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, registry_utils._registry_uri


def restore_mlflow_process_uris(saved: tuple[str | None, str | None]) -> None:
    """Put back what `mlflow_process_uris` returned, unset included (the public setters cannot unset)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._tracking_uri, registry_utils._registry_uri = saved  # type: ignore[assignment]  # declared None
