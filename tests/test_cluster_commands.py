"""Every setup and start command of cluster.yaml, run the way `ray up` runs it on a node.

Ray wraps each command in a login shell (`bash --login -c -i '... && (<cmd>)'`), inside `docker exec ... /bin/bash -c`
for container commands, with its environment exports in front; the wrapping is built here with Ray's own helpers so
the test follows Ray if that changes. pip, apt-get, sudo, ray, docker and leukotune are stand-ins on PATH that log
their arguments; pkill is the real one, run against real stand-in servers, because a pkill pattern that matches the
wrapping shell's own command line is exactly the bug this guards against. Everything runs in a fresh PID namespace
(`unshare`), so that pkill can never see a process outside this test.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.command_runner import _with_environment_variables, _with_interactive
from ray.autoscaler._private.docker import with_docker_exec
from ray.autoscaler._private.util import with_head_node_ip

from conftest import REPO_ROOT

CLUSTER = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())

# Stand-ins: each logs "name args" and succeeds. docker runs what `docker exec` would run in the container.
LOGGING_SHIM = '#!/bin/bash\nprintf "%s %s\\n" "$(basename "$0")" "$*" >> "$SHIM_LOG"\n'
DOCKER_SHIM = LOGGING_SHIM + """[ "$1" = exec ] || exit 0
shift
while [[ "$1" == -* ]]; do [ "$1" = -e ] && shift; shift; done
shift  # the container name
exec "$@"
"""
STAND_INS = ("pip", "apt-get", "sudo", "ray", "leukotune", "nvidia-smi")
# Old servers a rerun of `ray up` must stop: MLflow's parent process and the uvicorn it spawns.
OLD_SERVERS = ("python -m mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:////x/mlflow.db",
               "python -m uvicorn --host 127.0.0.1 --port 5000 --workers 4 mlflow.server.fastapi_app:app")

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None
    or subprocess.run(["unshare", "--pid", "--fork", "--map-root-user", "--mount-proc", "true"],
                      capture_output=True, check=False).returncode != 0,
    reason="needs `unshare --pid` (a private PID namespace keeps the real pkill away from this machine's processes)")


@pytest.fixture()
def node(tmp_path: Path) -> Path:
    """A fake node: HOME with a .bashrc that puts the stand-ins first (Ray's wrapper sources it), and a log."""
    home, shims = tmp_path / "home", tmp_path / "shims"
    home.mkdir()
    shims.mkdir()
    (home / "leukotune-mlflow").mkdir()  # on the head, the bind mount of docker.head_run_options
    for name in STAND_INS:
        (shims / name).write_text(LOGGING_SHIM)
    (shims / "docker").write_text(DOCKER_SHIM)
    for shim in shims.iterdir():
        shim.chmod(0o755)
    (home / ".bashrc").write_text(f"export PATH={shlex.quote(str(shims))}:$PATH\n")
    return tmp_path


def as_ray_runs_it(cmd: str, *, in_docker: bool, home: Path, env: dict | None = None) -> str:
    """The shell line the node's sshd is given for `cmd` (Ray's DockerCommandRunner.run, then SSHCommandRunner.run)."""
    if env:
        cmd = _with_environment_variables(cmd, env)
    if in_docker:
        cmd = cmd.replace("~/", f"{home}/")  # Ray expands ~/ to the container's HOME itself
        cmd = with_docker_exec([" ".join(_with_interactive(cmd))], container_name="ray_container",
                               with_interactive=True, docker_cmd="docker")[0]
    return " ".join(_with_interactive(cmd))


def run_on_node(node: Path, line: str) -> tuple[subprocess.CompletedProcess, list[str], list[bool]]:
    """Run one wrapped command in a private PID namespace next to stand-in old servers; return what happened."""
    home, log = node / "home", node / "shim.log"
    log.write_text("")
    starts = " ".join(f"(exec -a {shlex.quote(s)} sleep 600) &" for s in OLD_SERVERS)
    # No fixed pauses: wait (up to a minute each, at a loaded machine's pace) until both servers run, and, when the
    # command is to stop them, until they are gone.
    running = " ".join(f"for i in $(seq 1200); do pgrep -f {shlex.quote(s)} >/dev/null && break; sleep 0.05; done;"
                       for s in OLD_SERVERS)
    any_alive = " || ".join(f"pgrep -f {shlex.quote(s)} >/dev/null" for s in OLD_SERVERS)
    stopped = f"for i in $(seq 1200); do {any_alive} || break; sleep 0.05; done;" if "pkill" in line else ""
    checks = " ".join(f"pgrep -f {shlex.quote(s)} >/dev/null && echo alive || echo gone;" for s in OLD_SERVERS)
    # A file, not `bash -c`: the driver's own command line must not hold the servers' names pkill looks for.
    driver = node / "driver.sh"
    driver.write_text(f"{starts} {running} bash -c {shlex.quote(line)} </dev/null; echo \"rc=$?\"; {stopped} {checks}")
    done = subprocess.run(["unshare", "--pid", "--fork", "--map-root-user", "--mount-proc", "bash", str(driver)],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin", "SHIM_LOG": str(log)})
    tail = done.stdout.strip().splitlines()[-len(OLD_SERVERS):]
    return done, log.read_text().splitlines(), [state == "alive" for state in tail]


def exit_code(done: subprocess.CompletedProcess) -> int:
    return int(next(line for line in done.stdout.splitlines() if line.startswith("rc="))[3:])


def node_commands() -> list[tuple[str, str, bool, dict]]:
    """(section, command, runs in docker, env Ray exports) for every command `ray up` runs on a node."""
    head_env = {"RAY_USAGE_STATS_ENABLED": 0, "RAY_OVERRIDE_RESOURCES": {"CPU": 0}}
    worker_env = {"RAY_OVERRIDE_RESOURCES": CLUSTER["available_node_types"]["gpu_worker"]["resources"]}
    found = [("initialization_commands", c, False, {}) for c in CLUSTER["initialization_commands"]]
    for section in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        found += [(section, c, True, {}) for c in CLUSTER[section]]
    found += [("head_start_ray_commands", c, True, head_env) for c in CLUSTER["head_start_ray_commands"]]
    workers = with_head_node_ip(CLUSTER["worker_start_ray_commands"], head_ip="10.0.0.1")
    return found + [("worker_start_ray_commands", c, True, worker_env) for c in workers]


@pytest.mark.parametrize("section,cmd,in_docker,env", node_commands(),
                         ids=[f"{s}[{i}]" for i, (s, *_rest) in enumerate(node_commands())])
def test_command_succeeds_wrapped_as_ray_runs_it(node, section, cmd, in_docker, env):
    line = as_ray_runs_it(cmd, in_docker=in_docker, home=node / "home", env=env)
    done, calls, alive = run_on_node(node, line)
    assert exit_code(done) == 0, f"{section}: {cmd}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    if "pkill" in cmd:
        after = cmd.split("pkill", 1)[1]
        # What follows the pkill ran (its stand-in logged), and the servers pkill is meant to stop are stopped.
        follower = next(name for name in STAND_INS if f" {name} " in after)
        assert any(call.startswith(f"{follower} ") for call in calls), f"{follower} never ran: {calls}\n{done.stderr}"
        assert not any(alive), f"old servers still running: {dict(zip(OLD_SERVERS, alive))}"


def test_apt_get_update_comes_before_every_install():
    for section in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        earlier = ""
        for cmd in CLUSTER[section]:
            if "apt-get install" in cmd:
                before = earlier + cmd.split("apt-get install", 1)[0]
                assert "apt-get update" in before, f"{section}: apt-get install without apt-get update: {cmd}"
            earlier += cmd


def test_the_mlflow_restart_reaches_the_server_start(node):
    """The head's MLflow line, run twice as `ray up` twice would: the second run still starts a server."""
    cmd = next(c for c in CLUSTER["head_start_ray_commands"] if "mlflow-server" in c)
    line = as_ray_runs_it(cmd, in_docker=True, home=node / "home", env={"RAY_USAGE_STATS_ENABLED": 0})
    for _ in range(2):
        done, calls, _alive = run_on_node(node, line)
        assert exit_code(done) == 0, done.stderr
        starts = [c for c in calls if c.startswith("leukotune mlflow-server")]
        assert len(starts) == 1 and "--port 5000" in starts[0], calls


def test_gpu_workers_state_their_gpu():
    for name, node_type in CLUSTER["available_node_types"].items():
        if name == CLUSTER["head_node_type"]:
            continue
        resources = node_type["resources"]
        assert resources.get("GPU", 0) >= 1 and resources.get("CPU", 0) >= 1, f"{name}: {json.dumps(resources)}"
