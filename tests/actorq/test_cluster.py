"""``autoquant actorq run --ray-address`` on a real Ray cluster: a head node and a worker
node started with ``ray start`` on 127.0.0.1 (token authentication on, as a cluster should
run). The head offers no CPUs, as a head node often does, so Ray must place every actor
on the worker node; the run's report says where each actor ran, and the test checks it
against the cluster's own node list."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("ray")


def _ray_cli() -> list[str]:
    found = Path(sys.executable).with_name("ray")
    if found.exists():
        return [str(found)]
    which = shutil.which("ray")
    if which is None:
        pytest.fail("the ray command is not installed next to this python: pip install 'autoquant[actorq]'")
    return [which]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    code = ("import ray, logging; ray.init(address=%r, logging_level=logging.ERROR, log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % address)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0


def _stop(nodes: list[subprocess.Popen[bytes]]) -> None:
    """Stop these nodes and only their processes: ``ray start --block`` in a session of its
    own takes its GCS, raylet and workers down with it (``ray stop`` would stop every Ray
    process of this user, a developer's own cluster included). Each node spends Ray's grace
    period on its processes, so all are told at once and waited for together."""
    running = [node for node in nodes if node.poll() is None]
    for node in running:
        os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    for node in running:
        try:
            node.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A head node (0 CPUs) and a worker node (2 CPUs) on 127.0.0.1; stopped afterwards."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # No drain on SIGTERM (Ray waits up to 30 s per node for Serve replicas to quiesce; there are none).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    address = f"127.0.0.1:{_free_port()}"
    ray = _ray_cli()
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    logs = tmp_path_factory.mktemp("ray_nodes")
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in (("head", ["--head", "--port", address.rsplit(":", 1)[1], "--num-cpus", "0",
                                     "--include-dashboard=false"]),
                           ("worker", ["--address", address, "--num-cpus", "2"])):
            with open(logs / f"{name}.log", "wb") as log:
                nodes.append(subprocess.Popen([*ray, "start", *args, *common], env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            if name == "head":
                _wait_for_port(address, nodes[0], logs / "head.log")
        deadline = time.monotonic() + 180
        while _alive_nodes(address, env) < 2:
            if time.monotonic() > deadline or any(node.poll() is not None for node in nodes):
                pytest.fail("the Ray cluster did not come up: " + (logs / "worker.log").read_text()[-2000:])
            time.sleep(1)
        yield {"address": address, **env}
    finally:
        _stop(nodes)


def _wait_for_port(address: str, node: subprocess.Popen[bytes], log: Path) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if node.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not listen at {address}: {log.read_text()[-2000:]}")
            time.sleep(0.5)


@pytest.mark.slow
def test_actors_run_on_the_worker_node_of_a_real_cluster(cluster: dict[str, str], ppo_bundle: Path) -> None:
    """IMPALA's asynchronous loop with the monitor: the actors on the worker node, and the builders
    the monitor makes (re-calibrated ones) travelling to them through the object store. (The
    synchronous loop places its actors the same way; it runs locally in ``test_learning.py``.)"""
    env = dict(cluster)
    address = env.pop("address")
    proc = subprocess.run(
        [sys.executable, "-m", "autoquant", "actorq", "run", "--bundle", str(ppo_bundle), "--env", "CartPole-v1",
         "--learner", "impala", "--actors", "2", "--envs-per-actor", "2", "--steps", "1024", "--n-steps", "16",
         "--monitor", "--recalibrate-tolerance", "1.01", "--broadcast-every", "128",
         "--eval-episodes", "2", "--ray-address", address, "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    ray = report["ray"]
    assert ray["address"] == address and ray["nodes"] == 2
    workers = [n["node_id"] for n in ray["node_list"] if n["cpus"] > 0]
    heads = [n["node_id"] for n in ray["node_list"] if n["cpus"] == 0]
    assert len(workers) == 1 and len(heads) == 1, ray["node_list"]
    placed = report["placement"]["actors"]
    assert len(placed) == 2 and all(a["node_id"] == workers[0] for a in placed), (placed, workers)
    assert all(a["pid"] != os.getpid() for a in placed) and placed[0]["pid"] != placed[1]["pid"]
    assert report["env_steps"] == 1024 and report["learner"]["algo"] == "IMPALA"
    assert sum(a["steps"] for a in report["per_actor"]) == 1024
    monitor = report["monitor"]
    # A tolerance of 1 % re-calibrates at the first check whose states moved a range at all.
    assert monitor["checks"] >= 2 and any(d["action"] == "recalibrate" for d in monitor["decisions"]), monitor
    assert report["learner"]["vtrace"]["updates"] == report["learner"]["updates"] > 0


@pytest.mark.slow
def test_central_inference_serves_actors_on_the_worker_node(cluster: dict[str, str], ppo_bundle: Path) -> None:
    """SEED RL's layout on the cluster: env-only actors and the inference server on the worker node,
    every action of every env step answered by the server, batched across actors; and the
    same collection with local actors."""
    env = dict(cluster)
    address = env.pop("address")
    code = f"""
import json, logging, ray
import numpy as np
from autoquant.actorq import ActorQuantizer, collect_central, collect_local, load_bundle
bundle = load_bundle({str(ppo_bundle)!r})
rng = np.random.default_rng(0)  # any weights of the bundle's network: the collection does not learn
weights = {{key: rng.normal(scale=0.3, size=layer[shape]).astype(np.float32)
            for layer in bundle.manifest["fingerprint"]["layers"]
            for key, shape in ((layer["weight_key"], "weight_shape"), (layer["bias_key"], "bias_shape"))}}
ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False)
builder = ActorQuantizer(bundle)
# Three actors (server and two env actors) on the worker's two CPU slots: two thirds of a slot each.
central = collect_central(ray, builder, weights, "CartPole-v1", actors=2, envs=4, rounds=32, cpus_per_actor=0.66,
                          timeout_s=300)
local = collect_local(ray, builder, weights, "CartPole-v1", actors=2, envs=4, rounds=32, timeout_s=300)
print(json.dumps({{"central": central, "local": local}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    central, local = result["central"], result["local"]
    assert central["env_steps"] == local["env_steps"] == 2 * 4 * 32
    server = central["server"]
    assert server["rows"] == central["env_steps"] and server["calls"] <= 2 * 32  # batched: never more calls than requests
    assert central["steps_per_cpu_s"] > 0 and local["steps_per_cpu_s"] > 0 and central["cpu_s"] > central["actor_cpu_s"]


@pytest.mark.slow
def test_a_cluster_that_refuses_the_driver_is_one_line(cluster: dict[str, str], ppo_bundle: Path) -> None:
    """A live cluster without this machine's token: one line that says what to check, exit 2."""
    env = {k: v for k, v in cluster.items() if k not in ("address", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # the wrong token
    # ray.init tries the GCS RAY_NUM_REDIS_GET_RETRIES times (default 20), a second apart, and a
    # wrong token is refused the same way each time: one try gives the same error, 19 s sooner
    # (Ray's own tests lower it for the same reason).
    env["RAY_NUM_REDIS_GET_RETRIES"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "autoquant", "actorq", "run", "--bundle", str(ppo_bundle), "--env", "CartPole-v1",
         "--steps", "256", "--ray-address", cluster["address"]],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("autoquant: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "could not join the Ray cluster" in lines[0] and "RAY_AUTH_TOKEN" in lines[0], lines[0]

