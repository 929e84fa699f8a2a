"""`autoquant search` and `export` as a user runs them, on the zoo's CartPole DQN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from tests.conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cartpole_dqn_path: Path) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("runs") / "cartpole"
    proc = run_cli("search", "--policy", str(cartpole_dqn_path), "--method", "prune", "--agent", "tpe",
                   "--trials", "30", "--out", str(out), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_thirty_trials_find_a_faster_plan_that_keeps_the_reward(finished_run) -> None:  # type: ignore[no-untyped-def]
    out, result = finished_run
    assert result["trials"] == 30 and result["failed"] == 0
    best = result["best"]
    assert best is not None, result
    assert best["retention"] >= 0.98  # confirmed on fresh seeds
    assert best["latency_ratio"] < 1.0  # faster than onnxruntime fp32, measured in one window
    assert best["latency"]["reference"]["p10"] > best["latency"]["candidate"]["p10"]
    for name in ("run.json", "study.db", "states.npz", "report.md", "pareto.png", "best/plan.json",
                 "best/policy.onnx", "best/confirm.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["target"]["facts"]["onnxruntime"] and info["config"]["agent"] == "tpe"
    assert "search" in info["config"]["argv"][1:] or any("search" in a for a in info["config"]["argv"])
    assert "onnxruntime int8" in (out / "report.md").read_text()


def test_export_reproduces_the_reward(finished_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from autoquant.evaluate import onnx_actor, play_episodes
    from autoquant.policy import load_policy

    out, result = finished_run
    confirm = json.loads((out / "best" / "confirm.json").read_text())
    proc = run_cli("export", str(out), "--trial", "best", "--format", "onnx", "--out", str(tmp_path / "onnx"))
    assert proc.returncode == 0, proc.stderr
    model = (tmp_path / "onnx" / "policy.onnx").read_bytes()
    assert model == (out / "best" / "policy.onnx").read_bytes()  # deterministic: what was played is exported
    bundle = load_policy(json.loads((out / "run.json").read_text())["config"]["policy"])
    seeds = confirm["confirm"]["seeds"]
    replay = play_episodes(onnx_actor(bundle, model), "CartPole-v1", seeds)
    assert list(replay.rewards) == confirm["confirm"]["reward"]["rewards"]

    proc = run_cli("export", str(out), "--trial", str(result["best"]["trial"]), "--format", "torch",
                   "--out", str(tmp_path / "torch"))
    assert proc.returncode == 0, proc.stderr
    scripted = load_policy(tmp_path / "torch" / "policy.pt", env_id="CartPole-v1")
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32) * 0.1
    assert np.mean(scripted.predict(obs) == bundle.predict(obs)) > 0.9


def test_existing_run_folder_needs_resume(finished_run, cartpole_dqn_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = finished_run
    proc = run_cli("search", "--policy", str(cartpole_dqn_path), "--out", str(out), "--trials", "2")
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("search", "--out", str(tmp_path), "--resume")
    assert proc.returncode == 2 and "not an autoquant run folder" in proc.stderr


def _completed(db: Path, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return {t.number: t.user_attrs["result"] for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE}


def test_resume_after_kill_keeps_every_completed_trial(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "autoquant", "search", "--policy", str(cartpole_dqn_path), "--method", "quant",
           "--agent", "random", "--trials", "16", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    before: dict[int, str] = {}
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "study.db").exists():
                try:
                    before = _completed(out / "study.db", "killed")
                except Exception:  # noqa: BLE001 - the worker may still be creating the schema
                    before = {}
                if len(before) >= 4:
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed mid-way"
    assert len(before) >= 4
    resumed = run_cli("search", "--out", str(out), "--resume", "--json", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    after = _completed(out / "study.db", "killed")
    assert all(after[n] == before[n] for n in before)  # nothing completed was lost or redone
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if "interrupted" not in t.user_attrs]
    assert len(counted) == 16
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    keys = [json.loads(t.user_attrs["result"])["key"] for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs["cached"]]
    assert len(keys) == len(set(keys))  # no plan measured twice, across the restart


def test_two_workers_share_one_study_on_postgres(postgres_url: str, cartpole_dqn_path: Path,
                                                 tmp_path: Path) -> None:
    def worker(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "autoquant", "search", "--policy", str(cartpole_dqn_path), "--method", "prune",
             "--agent", "tpe", "--trials", "16", "--seed", name[-1], "--storage", postgres_url, "--study", "shared",
             "--out", str(tmp_path / name), "--quiet"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    workers = [worker("w1"), worker("w2")]
    errors = [w.communicate(timeout=480)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if "over_budget" not in t.user_attrs and "interrupted" not in t.user_attrs]
    assert len(counted) == 16
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in counted} == {str(w.pid) for w in workers}
    keys = [json.loads(t.user_attrs["result"])["key"] for t in counted
            if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs["cached"]]
    assert len(keys) == len(set(keys))


def test_ctrl_c_records_the_trial_and_prints_the_resume_command(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoquant", "search", "--policy", str(cartpole_dqn_path), "--method", "quant",
         "--agent", "random", "--trials", "40", "--out", str(out), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    seen: dict[int, str] = {}
    while time.time() < deadline and proc.poll() is None and len(seen) < 2:
        try:
            seen = _completed(out / "study.db", "interrupted") if (out / "study.db").exists() else {}
        except Exception:  # noqa: BLE001 - the schema may not exist yet
            seen = {}
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert f"autoquant search --out {out} --resume" in err.decode()
    assert "Traceback" not in err.decode()
    study = optuna.load_study(study_name="interrupted", storage=f"sqlite:///{out / 'study.db'}")
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False))
