"""The device server and its client, for real, on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx.helper as oh
import optuna
import pytest

from autoquant.compress import CompressionPlan, compress, export_reference
from autoquant.errors import DeviceUnreachable, TargetError
from autoquant.policy import analyse
from autoquant.targets import MeasureProtocol, get_target
from autoquant.runtimes import OrtRunner
from autoquant.targets._remote import RemoteTarget
from autoquant.targets._wire import pack, read_secret, sign_request
from tests.conftest import ROOT, cli_main, run_cli
from tests.targets.device import hold_a_trial, start_device


@pytest.fixture(scope="module")
def device(tmp_path_factory):  # type: ignore[no-untyped-def]
    dev = start_device(tmp_path_factory.mktemp("device"))
    yield dev
    dev.stop()


def _client(device, **kw) -> RemoteTarget:  # type: ignore[no-untyped-def]
    return RemoteTarget("arm", device.address, read_secret(str(device.secret_file)),
                        protocol=MeasureProtocol(warmup=10, calls=200), **kw)


def _alive(device) -> None:  # type: ignore[no-untyped-def]
    assert _client(device).facts()["onnxruntime"]


@pytest.mark.slow
def test_facts_measure_and_infer(device, cartpole_dqn, cartpole_states) -> None:  # type: ignore[no-untyped-def]
    target = _client(device)
    facts = target.facts()
    assert {"cpu", "features", "cores", "governor", "onnxruntime", "machine"} <= set(facts)
    reference = export_reference(cartpole_dqn)
    compressed = compress(cartpole_dqn, CompressionPlan.uniform(analyse(cartpole_dqn)), cartpole_states.states)
    result = target.measure(compressed.onnx, reference, cartpole_states.states[:1], layers=["fc1", "fc2", "fc3"])
    assert result.calls == 200 and result.ratio is not None and result.ratio > 0
    assert result.facts["where"] == f"remote device {device.address}"
    assert result.facts["kernels"]["layers"] == {"fc1": "int8", "fc2": "int8", "fc3": "int8"}
    x = cartpole_states.states[:300]
    np.testing.assert_allclose(target.infer(compressed.onnx, x), OrtRunner(compressed.onnx)(x), atol=1e-6)
    proc = cli_main("targets", "--check", "arm", "--device", device.address, "--secret-file",
                    str(device.secret_file), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["facts"]["cpu"] == facts["cpu"]


@pytest.mark.slow
def test_wrong_secret_is_refused(device, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wrong = RemoteTarget("arm", device.address, b"x" * 32, retries=0)
    with pytest.raises(TargetError, match="secret"):
        wrong.facts()
    _alive(device)


def _raw(device, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    req = urllib.request.Request(f"http://{device.address}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {}
    except urllib.error.HTTPError as exc:
        from autoquant.targets._wire import unpack

        return exc.code, unpack(exc.read())[0]


@pytest.mark.slow
def test_replayed_and_stale_requests_are_refused(device) -> None:  # type: ignore[no-untyped-def]
    secret = read_secret(str(device.secret_file))
    body = pack({})
    headers = sign_request(secret, "POST", "/v1/facts", body)
    assert _raw(device, "/v1/facts", body, headers)[0] == 200
    status, answer = _raw(device, "/v1/facts", body, headers)
    assert status == 401 and "replayed" in answer["error"]
    stale = sign_request(secret, "POST", "/v1/facts", body)
    stale["X-Autoquant-Timestamp"] = f"{time.time() - 3600:.3f}"  # (signature now wrong too)
    assert _raw(device, "/v1/facts", body, stale)[0] == 401
    _alive(device)


@pytest.mark.slow
def test_garbage_and_oversized_and_custom_ops_are_refused(device, pong) -> None:  # type: ignore[no-untyped-def]
    secret = read_secret(str(device.secret_file))
    garbage = os.urandom(4096)
    status, answer = _raw(device, "/v1/measure", garbage, sign_request(secret, "POST", "/v1/measure", garbage))
    assert status == 400 and "malformed" in answer["error"]
    target = _client(device, retries=0)
    x = np.zeros((1, 4, 84, 84), np.float32)
    big = export_reference(pong)  # 6.7 MB > the 4 MB cap of this server
    with pytest.raises(TargetError, match="the cap"):
        target.measure(big, None, x)
    body = pack({"protocol": {}}, {"model": big, "x": x})  # a client that does not check first
    status, answer = _raw(device, "/v1/measure", body, sign_request(secret, "POST", "/v1/measure", body))
    assert status == 413 and "exceeds the cap" in answer["error"]
    node = oh.make_node("Mystery", ["obs"], ["out"], domain="com.example")
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("obs", 1, [1, 4])],
                          [oh.make_tensor_value_info("out", 1, [1, 2])])
    custom = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)])
    with pytest.raises(TargetError, match="not standard ONNX"):
        target.measure(custom.SerializeToString(), None, np.zeros((1, 4), np.float32))
    with pytest.raises(TargetError, match="not an ONNX model"):
        target.measure(b"\x08\x07" * 50, None, np.zeros((1, 4), np.float32))
    _alive(device)


def test_arm_without_a_device_names_the_ways(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AUTOQUANT_DEVICE", raising=False)
    with pytest.raises(TargetError, match=r"--device.*AUTOQUANT_DEVICE.*emulated"):
        get_target("arm")
    proc = cli_main("targets", "--check", "arm")
    assert proc.returncode == 2 and "--device" in proc.stderr and "Traceback" not in proc.stderr


def test_device_retries_come_from_the_environment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "s"
    secret.write_text("k" * 32)
    monkeypatch.setenv("AUTOQUANT_SECRET_FILE", str(secret))
    monkeypatch.delenv("AUTOQUANT_DEVICE_RETRIES", raising=False)
    assert get_target("arm", device="127.0.0.1:9").retries == 4  # type: ignore[attr-defined]
    monkeypatch.setenv("AUTOQUANT_DEVICE_RETRIES", "0")
    assert get_target("arm", device="127.0.0.1:9").retries == 0  # type: ignore[attr-defined]
    for bad in ("-1", "11", "two"):
        monkeypatch.setenv("AUTOQUANT_DEVICE_RETRIES", bad)
        with pytest.raises(TargetError, match="AUTOQUANT_DEVICE_RETRIES must be a whole number from 0 to 10"):
            get_target("arm", device="127.0.0.1:9")


def test_unreachable_device_is_one_clear_error(tmp_path: Path) -> None:
    from tests.targets.device import free_port

    secret = tmp_path / "s"
    secret.write_text("k" * 32)
    target = RemoteTarget("arm", f"127.0.0.1:{free_port()}", read_secret(str(secret)), retries=1)
    with pytest.raises(DeviceUnreachable, match="unreachable"):
        target.facts()


def _completed(db: Path, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return {t.number: t.user_attrs["result"] for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE}


@pytest.mark.slow
def test_search_on_the_device_survives_its_death(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    device = start_device(tmp_path, max_model_mb=8)
    out = tmp_path / "remote"
    cmd = [sys.executable, "-m", "autoquant", "search", "--policy", str(cartpole_dqn_path), "--method", "quant",
           "--agent", "random", "--trials", "4", "--target", "arm", "--device", device.address,
           "--secret-file", str(device.secret_file), "--out", str(out), "--quiet", "--episodes", "3"]
    # A budget of 4 (it was 6): 3 trials complete before the board dies, the 4th dies with it, and
    # the resumed search measures one new plan on the restarted board. What is checked (the
    # completed trials kept, the whole budget counted, every result from the device) holds for any
    # budget past the trial in flight.
    # One retry after the board dies, not four: the back-off of the default (7.5 s) tests nothing more.
    env = {**os.environ, "AUTOQUANT_DEVICE_RETRIES": "1"}
    try:
        search = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        hold_a_trial(device, search, out / "study.db", "remote", completed=3)  # mid-trial, whatever the speed
        before = _completed(out / "study.db", "remote")
        device.stop()  # the board dies mid-search
        _, err = search.communicate(timeout=180)
        assert search.returncode == 2, err.decode()
        assert "unreachable" in err.decode() and "--resume" in err.decode()
        assert f"--device {device.address}" in err.decode()  # run.json never chooses the device: the command does
        info = json.loads((out / "run.json").read_text())
        assert info["target"]["facts"]["device"] == device.address
        assert info["target"]["facts"]["onnxruntime"]
        device.restart()
        resumed = cli_main("search", "--out", str(out), "--resume", "--quiet", "--json", "--device", device.address,
                           "--secret-file", str(device.secret_file))
        assert resumed.returncode == 0, resumed.stderr
        after = _completed(out / "study.db", "remote")
        assert all(after[n] == before[n] for n in before)
        study = optuna.load_study(study_name="remote", storage=f"sqlite:///{out / 'study.db'}")
        counted = [t for t in study.get_trials() if "interrupted" not in t.user_attrs]
        assert len(counted) == 4
        assert all(json.loads(t.user_attrs["result"])["latency"]["facts"]["where"].startswith("remote device")
                   for t in counted if t.state == optuna.trial.TrialState.COMPLETE)
    finally:
        device.stop()
        if "search" in locals() and search.poll() is None:
            search.send_signal(signal.SIGKILL)


@pytest.mark.slow
def test_device_install_needs_no_torch(tmp_path: Path) -> None:
    """`pip install "autoquant[device]"` on a board: onnxruntime and numpy, and the
    server runs from there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{ROOT}[device]"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"onnxruntime", "numpy", "autoquant"} <= names
    assert not names & {"torch", "gymnasium", "stable-baselines3", "brevitas", "optuna"}
    targets = subprocess.run([str(venv / "bin" / "autoquant"), "targets"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert targets.returncode == 0 and "arm" in targets.stdout


def test_every_limit_of_the_server_is_a_flag(tmp_path: Path, cartpole_dqn, cartpole_states) -> None:  # type: ignore[no-untyped-def]
    """The limits a board's owner may want to tighten are flags of `device serve`; a bad
    value is one line and exit 2 before anything listens."""
    dev = start_device(tmp_path, extra=("--max-batch", "64", "--max-connections", "4", "--queue-wait", "5",
                                        "--read-timeout", "5", "--request-deadline", "30"))
    try:
        target = _client(dev)
        model = export_reference(cartpole_dqn)
        x = cartpole_states.states
        assert target.infer(model, x[:64]).shape == (64, 2)
        with pytest.raises(TargetError, match="a batch of 1..64"):
            target.infer(model, x[:65])
    finally:
        dev.stop()
    secret = tmp_path / "secret"
    for flag, value in (("--read-timeout", "0"), ("--max-connections", "0"), ("--queue-wait", "inf")):
        proc = cli_main("device", "serve", "--secret-file", str(secret), flag, value)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and flag in proc.stderr


@pytest.mark.parametrize("port", [99999, -1, 1 << 64])
def test_a_port_outside_0_to_65535_is_one_line(tmp_path: Path, port: int) -> None:
    """--port 99999 crashed in bind() (OverflowError, exit 1)."""
    from autoquant.targets import serve

    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    with pytest.raises(TargetError, match="--port must be an integer from 0 to 65,535"):
        serve(str(secret), host="127.0.0.1", port=port)
    proc = cli_main("device", "serve", "--secret-file", str(secret), "--port", str(port))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--port" in proc.stderr and "65,535" in proc.stderr
