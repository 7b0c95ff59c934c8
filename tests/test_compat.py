"""Every private name of another library that leukotune uses, one test each, against the installed versions.

Each name is reached through `leukotune.tuner.compat` and nowhere else (the last test checks that). When an upgrade
removes or changes one, its test fails with one line naming the library, its installed version and the name, so
the fix starts in compat.py instead of in a traceback from inside a study.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import logging
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import grpc
import mlflow
import optuna
import pytest
import torch
from ray.train import Checkpoint, CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune.experiment.trial import Trial
from ray.tune.search.optuna import OptunaSearch
from torch.nn.modules.batchnorm import _BatchNorm

from leukotune.models.transfer import BATCH_NORMS
from leukotune.tuner import compat

from conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPAT = REPO_ROOT / "tuner" / "compat.py"


@contextlib.contextmanager
def private_name(library: str, name: str):
    """Turn a missing or changed private name into one line: which library, which installed version, which name."""
    try:
        yield
    except (ImportError, AttributeError, TypeError) as exc:
        pytest.fail(f"{library} {version(library)} no longer has {name} as leukotune.tuner.compat uses it "
                    f"({type(exc).__name__}: {exc}); adapt tuner/compat.py", pytrace=False)


def imported_names() -> list[tuple[str, str]]:
    """(module, name) of every `from ... import ...` inside compat.py's functions: the private imports."""
    found = []
    for node in ast.walk(ast.parse(COMPAT.read_text())):
        if isinstance(node, ast.FunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    found += [(inner.module, alias.name) for alias in inner.names]
    return sorted(set(found))


@pytest.mark.parametrize("module, name", imported_names(), ids=lambda value: value)
def test_each_private_import_still_exists(module, name):
    library = module.split(".")[0]
    with private_name(library, f"{module}.{name}"):
        getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- Ray

def test_ray_address_file_is_where_ray_start_records_its_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with private_name("ray", "ray._common.utils.get_ray_address_file"):
        assert compat.ray_address_file() == tmp_path / "ray" / "ray_current_cluster"


def test_canonical_gcs_address_keeps_the_port_and_refuses_a_non_address():
    with private_name("ray", "ray._private.services.canonicalize_bootstrap_address"):
        assert compat.canonical_gcs_address("127.0.0.1:6379").endswith(":6379")
        with pytest.raises(ValueError):
            compat.canonical_gcs_address("nonsense")


def test_asking_a_gcs_where_none_listens_is_an_rpc_error():
    # create_gcs_channel, GetClusterIdRequest and NodeInfoGcsServiceStub together, as the probe uses them.
    with private_name("ray", "ray._private.gcs_utils / ray.core.generated.gcs_service_pb2(_grpc)"):
        with pytest.raises(grpc.RpcError) as refused:
            compat.ask_gcs_cluster_id(f"127.0.0.1:{free_port()}", timeout_s=30.0)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_ray_auth_token_reads_the_token_file_whatever_the_auth_mode(monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef" * 4)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    with private_name("ray", "ray._raylet.AuthenticationTokenLoader (instance, reset_cache, get_raw_token)"):
        assert compat.ray_auth_token().strip() == token.read_text()


def test_reported_cluster_config_takes_no_arguments():
    # Called for real by the fake autoscaling cluster tests (test_cluster_refusals.py), which need a running Ray.
    from ray._private.state import state

    with private_name("ray", "ray._private.state.state.get_cluster_config()"):
        inspect.signature(state.get_cluster_config).bind()


def test_a_ray_cluster_resource_becomes_an_autoscaling_config():
    ray_cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                   "metadata": {"name": "c", "namespace": "n"},
                   "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                                {"name": "head", "resources": {"limits": {"cpu": "2", "memory": "4Gi"}}}]}}},
                            "workerGroupSpecs": [{"groupName": "gpu", "minReplicas": 0, "maxReplicas": 3,
                                                  "rayStartParams": {}, "template": {"spec": {"containers": [
                                {"name": "w", "resources": {"limits": {"cpu": "4", "memory": "8Gi",
                                                                       "nvidia.com/gpu": "1"}}}]}}}]}}
    with private_name("ray", "ray.autoscaler._private.kuberay.autoscaling_config._derive_autoscaling_config_"
                             "from_ray_cr"):
        config = compat.autoscaling_config_from_ray_cr(ray_cluster)
    worker = config["available_node_types"]["gpu"]
    assert (worker["max_workers"], worker["resources"]["CPU"], worker["resources"]["GPU"]) == (3, 4, 1)


def test_kuberay_config_producer_takes_a_cluster_name_and_namespace():
    # Calling it needs a Kubernetes API server and a service account; its shape is what can be checked here.
    from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

    with private_name("ray", "ray.autoscaler._private.kuberay.autoscaling_config.AutoscalingConfigProducer"):
        inspect.signature(AutoscalingConfigProducer).bind("leukotune-study", "leukotune")
        assert callable(getattr(AutoscalingConfigProducer, "__call__"))


@pytest.mark.parametrize("name", [compat.RAY_AUTH_TOKEN_LOGGER, *compat.RAY_UPLOAD_LOGGERS])
def test_ray_logger_names_are_the_modules_that_log(name):
    with private_name("ray", f"the module {name} (its logger is the one leukotune quiets)"):
        module = importlib.import_module(name)
        loggers = [value.name for value in vars(module).values() if isinstance(value, logging.Logger)]
        assert name in loggers, f"{name} logs through {loggers}"


# ---------------------------------------------------------------- Ray Tune

def register(manager: _CheckpointManager, folder: Path) -> None:
    folder.mkdir(parents=True)
    manager.register_checkpoint(_TrainingResult(checkpoint=Checkpoint(str(folder)), metrics={}))


def test_checkpoint_manager_lists_its_checkpoints_and_the_latest(tmp_path):
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=3))
    for index in range(2):
        register(manager, tmp_path / f"checkpoint_00000{index}")
    with private_name("ray", "ray.train._internal.checkpoint_manager._CheckpointManager._checkpoint_results"):
        listed = compat.checkpoint_results(manager)
    assert [Path(r.checkpoint.path).name for r in listed] == ["checkpoint_000000", "checkpoint_000001"]
    with private_name("ray", "_CheckpointManager._latest_checkpoint_result"):
        assert compat.latest_checkpoint_result(manager) is listed[-1]


def test_replaced_checkpoint_list_is_what_the_manager_deletes_from(tmp_path):
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    register(manager, tmp_path / "checkpoint_000000")
    register(manager, tmp_path / "checkpoint_000001")
    shutil.rmtree(tmp_path / "checkpoint_000000")
    with private_name("ray", "ray.train._internal.checkpoint_manager._CheckpointManager._checkpoint_results"):
        compat.replace_checkpoint_results(manager, compat.checkpoint_results(manager)[1:])
        register(manager, tmp_path / "checkpoint_000002")  # would raise "Path not found" on the stale list
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000001", "checkpoint_000002"]


def test_a_trial_has_a_checkpoint_manager_and_a_state_cache():
    trial = Trial("any_trainable", stub=True)
    with private_name("ray", "ray.tune Trial.run_metadata (_TrainingRunMetadata).checkpoint_manager"):
        assert isinstance(compat.trial_checkpoint_manager(trial), _CheckpointManager)
    with private_name("ray", "ray.tune Trial.run_metadata (_TrainingRunMetadata).invalidate_cache"):
        trial.run_metadata.get_json_state()  # fills the cache
        assert trial.run_metadata._cached_json is not None
        compat.mark_trial_state_changed(trial)
        assert trial.run_metadata._cached_json is None


def test_optuna_search_holds_its_optuna_study():
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    searcher = OptunaSearch(space=space, metric="val_f1", mode="max")
    with private_name("ray", "ray.tune.search.optuna.OptunaSearch._ot_study"):
        assert isinstance(compat.optuna_study_of(searcher), optuna.Study)


def test_tune_search_budget_is_read_and_raised_in_the_saved_state(tmp_path):
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    def generator(max_concurrent: int) -> SearchGenerator:
        space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
        limited = ConcurrencyLimiter(OptunaSearch(space=space, metric="val_f1", mode="max"), max_concurrent)
        return SearchGenerator(limited)

    saved = generator(2)
    saved._total_samples, saved._counter = 2, 2  # as a finished 2-trial study leaves it
    saved.save_to_dir(str(tmp_path), session_str="2026-12-05_00-00-00")
    with private_name("ray", "SearchGenerator's saved state (counter, total_samples, name:ConcurrencyLimiter)"):
        assert compat.saved_search_budget(tmp_path) == {"created": 2, "num_samples": 2, "max_concurrent": 2}
        compat.write_search_budget(tmp_path, num_samples=4, max_concurrent=3)
    restored = generator(2)
    restored.restore_from_dir(str(tmp_path))  # what Tune's restore does
    assert (restored.total_samples, restored.searcher.max_concurrent, restored.is_finished()) == (4, 3, False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial file left


# ---------------------------------------------------------------- MLflow

def test_mlflow_process_uris_are_read_and_put_back_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    name = "mlflow.tracking._tracking_service.utils._tracking_uri, mlflow.tracking._model_registry.utils._registry_uri"
    with private_name("mlflow", name):
        before = compat.mlflow_process_uris()
        try:
            compat.restore_mlflow_process_uris((None, None))
            uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            assert compat.mlflow_process_uris() == (uri, uri)
            compat.restore_mlflow_process_uris((None, None))
            # The setters export both to os.environ too. Not monkeypatch.delenv here: it would put this test's
            # store back into the environment at teardown, and every later test's client would use its registry.
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
            assert str(tmp_path) not in mlflow.get_tracking_uri()  # unset again: MLflow's default
        finally:
            compat.restore_mlflow_process_uris(before)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


# ---------------------------------------------------------------- torch

def test_every_batch_norm_of_torch_nn_is_kept_frozen_by_transfer_models():
    """models/ may not import tuner/, so it names torch's public BatchNorm classes instead of `_BatchNorm`."""
    public = {value for value in vars(torch.nn).values() if isinstance(value, type) and issubclass(value, _BatchNorm)}
    missing = sorted(cls.__name__ for cls in public if not issubclass(cls, BATCH_NORMS))
    assert not missing, f"torch {torch.__version__} has BatchNorm classes models/transfer.py BATCH_NORMS lacks: {missing}"


# ---------------------------------------------------------------- one door

ALLOWED_UNDERSCORE_ATTRIBUTES = {
    "_replace",  # namedtuple's public API (the underscore only avoids field names)
    "_SubParsersAction",  # argparse's type of add_subparsers(); the standard library has no public name for it
}
LIBRARIES = ("ray", "mlflow", "optuna")


def private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            dotted = [*node.module.split("."), *(alias.name for alias in node.names)]
            if any(part.startswith("_") for part in dotted) or ".core.generated" in node.module:
                found.append(f"{path}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{path}:{node.lineno} import {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] in LIBRARIES and "._" in alias.name]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) \
                    and node.attr not in ALLOWED_UNDERSCORE_ATTRIBUTES:
                found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "._private" in node.value:
            found.append(f"{path}:{node.lineno} {node.value!r}")
    return found


def test_no_module_but_compat_uses_another_library_s_private_names():
    modules = [p for folder in ("tuner", "models", "data") for p in (REPO_ROOT / folder).rglob("*.py") if p != COMPAT]
    found = [use for path in modules for use in private_uses(path)]
    assert not found, "go through leukotune.tuner.compat instead:\n" + "\n".join(found)
