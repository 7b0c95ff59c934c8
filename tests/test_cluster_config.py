"""cluster.yaml against Ray's own cluster-config schema (no cloud needed), and the KubeRay manifest's shape."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from conftest import REPO_ROOT

CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
KUBERAY_YAML = REPO_ROOT / "deploy" / "kuberay-rayjob.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_rays_schema(cluster):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_cluster_yaml_survives_rays_own_preparation(cluster):
    # What `ray up` does before talking to AWS: merge the provider's defaults, then validate again.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(json.loads(json.dumps(cluster))))


def _keys_with_lines(node, found: list) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found.append((key.value, key.start_mark.line))
            _keys_with_lines(value, found)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _keys_with_lines(item, found)


def test_every_key_of_cluster_yaml_is_commented():
    text = CLUSTER_YAML.read_text()
    lines = text.splitlines()
    keys: list = []
    _keys_with_lines(yaml.compose(text), keys)
    uncommented = [f"line {line + 1}: {key}" for key, line in keys
                   if "#" not in lines[line] and not lines[line - 1].lstrip().startswith("#")]
    assert keys and not uncommented, f"keys without a comment: {uncommented}"


def test_cluster_has_cpu_head_and_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # trials never land on the head
    gpu = next(t for name, t in types.items() if name != cluster["head_node_type"])
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= cluster["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # an NVIDIA GPU instance family


def test_cluster_installs_leukotune_and_runs_mlflow_on_the_head(cluster):
    assert any("pip install" in c and "~/leukotune" in c for c in cluster["setup_commands"])
    assert "~/leukotune" in cluster["file_mounts"]
    assert any("leukotune mlflow-server" in c for c in cluster["head_start_ray_commands"])


def test_cluster_runs_ray_with_token_auth_and_the_pinned_version(cluster):
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert sum("RAY_AUTH_MODE=token ray start" in c for c in starts) == 2
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    docker = cluster["docker"]
    for image in (docker["image"], docker["head_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-"), image


def test_kuberay_rayjob_runs_leukotune_tune():
    docs = [d for d in yaml.safe_load_all(KUBERAY_YAML.read_text()) if d]
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert "leukotune tune --config" in job["spec"]["entrypoint"]
    cluster_spec = job["spec"]["rayClusterSpec"]
    assert cluster_spec["rayVersion"] == ray.__version__
    assert cluster_spec["authOptions"]["mode"] == "token"
    workers = cluster_spec["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and "mlflow" in services


# ---------------------------------------------------------------- `leukotune mlflow-server` (the command it runs)

def test_mlflow_server_defaults_to_loopback_sqlite_and_served_artifacts(tmp_path):
    from leukotune.tuner.cluster.mlflow_server import plan_server

    plan = plan_server(root=tmp_path / "server")
    cmd = plan.command
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5000"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--artifacts-destination") + 1].endswith("mlartifacts")
    assert "--app-name" not in cmd and plan.warnings == []
    assert plan.url == "http://127.0.0.1:5000"


def test_mlflow_server_expose_binds_all_interfaces_and_warns(tmp_path):
    from leukotune.tuner.cluster.mlflow_server import plan_server

    plan = plan_server(expose=True, root=tmp_path)
    assert plan.command[plan.command.index("--host") + 1] == "0.0.0.0"
    assert len(plan.warnings) == 1 and "--auth" in plan.warnings[0] and "basic-auth" in plan.warnings[0]


def test_mlflow_server_auth_uses_basic_auth_and_needs_the_admin_password(tmp_path, monkeypatch):
    import importlib.util

    from leukotune.tuner.cluster.mlflow_server import ServerError, plan_server

    for name in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flask_wtf" else
                        real_find_spec(name, *a))
    with pytest.raises(ServerError, match=r"mlflow\[auth\]"):
        plan_server(expose=True, auth=True, root=tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flask_wtf" else
                        real_find_spec(name, *a))  # as if `pip install 'mlflow[auth]'` had run
    with pytest.raises(ServerError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        plan_server(expose=True, auth=True, root=tmp_path)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "s3cret-admin")
    plan = plan_server(expose=True, auth=True, root=tmp_path)
    assert plan.command[-2:] == ["--app-name", "basic-auth"]
    config = Path(plan.env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    assert str(tmp_path / "basic_auth.db") in config and "s3cret-admin" not in config
    secret = tmp_path / "flask_secret_key"
    assert plan.env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == secret.read_text() and secret.stat().st_mode & 0o077 == 0
    assert plan_server(auth=True, root=tmp_path).env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == secret.read_text()
    assert "clear text" in plan.warnings[0]


def test_mlflow_server_redacts_database_passwords(tmp_path):
    from leukotune.tuner.cluster.mlflow_server import describe, plan_server

    plan = plan_server(backend_store_uri="postgresql://mlflow:hunter2@db:5432/mlflow",
                       artifacts_destination=str(tmp_path / "art"), root=tmp_path / "unused")
    text = "\n".join(describe(plan))
    assert "hunter2" not in text and "postgresql://mlflow:***@db:5432/mlflow" in text
    assert not (tmp_path / "unused").exists()  # nothing created when no default lives there


def test_kuberay_mlflow_runs_replicas_on_postgres_with_the_password_from_a_secret():
    from leukotune.tuner.tracking.postgres import is_postgres, split_password

    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(KUBERAY_YAML.read_text()) if d}
    mlflow = docs[("Deployment", "mlflow")]["spec"]
    assert mlflow["replicas"] > 1  # a database store takes several writers
    container = mlflow["template"]["spec"]["containers"][0]
    command = container["command"]
    uri = command[command.index("--backend-store-uri") + 1]
    assert is_postgres(uri) and split_password(uri)[1] is None  # no password in the manifest or on `ps`
    assert command[command.index("--artifacts-destination") + 1].startswith("/mnt/shared/")
    secret = {"name": "mlflow-db", "key": "password"}
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == secret
    # The database the URI names: a Service on its host and port, PostgreSQL created with the same Secret.
    db_service = docs[("Service", uri.split("@")[1].split(":")[0])]
    assert int(uri.split(":")[-1].split("/")[0]) in [p["port"] for p in db_service["spec"]["ports"]]
    db = docs[("StatefulSet", "mlflow-db")]["spec"]["template"]["spec"]["containers"][0]
    db_env = {e["name"]: e for e in db["env"]}
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == secret
    assert db_env["POSTGRES_USER"]["value"] == uri.split("//")[1].split("@")[0]
    assert db_env["POSTGRES_DB"]["value"] == uri.rsplit("/", 1)[1]
