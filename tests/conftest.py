"""Shared fixtures: the reference policies in ../shared/policies (read in place, never
copied), and small recorded state sets."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest_plugins = ["tests.pg"]

ROOT = Path(__file__).resolve().parents[1]
POLICIES = Path(os.environ.get("AUTOQUANT_POLICIES", ROOT.parent / "shared" / "policies"))
EXAMPLES = ROOT / "examples"

warnings.filterwarnings("ignore", module="brevitas")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):  # type: ignore[no-untyped-def]
    """What autoquant keeps across runs (measured latency models) goes to a folder of this
    test session, for the CLI's subprocesses too, never to the user's cache."""
    old = os.environ.get("AUTOQUANT_CACHE")
    os.environ["AUTOQUANT_CACHE"] = str(tmp_path_factory.mktemp("autoquant-cache"))
    yield
    if old is None:
        os.environ.pop("AUTOQUANT_CACHE", None)
    else:
        os.environ["AUTOQUANT_CACHE"] = old


def policy_path(*parts: str) -> Path:
    path = POLICIES.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"reference policy {path} is missing: the tests read ../shared/policies "
                    "(or AUTOQUANT_POLICIES)")
    return path


@pytest.fixture(scope="session")
def cartpole_dqn_path() -> Path:
    return policy_path("dqn-CartPole-v1", "CartPole-v1.zip")


@pytest.fixture(scope="session")
def pong_pt_path() -> Path:
    return policy_path("dqn-PongNoFrameskip-v4", "dqn_pong.pt")


@pytest.fixture(scope="session")
def cartpole_dqn(cartpole_dqn_path: Path):  # type: ignore[no-untyped-def]
    from autoquant.policy import load_policy

    return load_policy(cartpole_dqn_path)


@pytest.fixture(scope="session")
def cartpole_states(cartpole_dqn):  # type: ignore[no-untyped-def]
    from autoquant.evaluate import record_states

    return record_states(cartpole_dqn, n=1024, seed=0)


@pytest.fixture(scope="session")
def pong(pong_pt_path: Path):  # type: ignore[no-untyped-def]
    from autoquant.policy import load_policy

    return load_policy(pong_pt_path, env_id="PongNoFrameskip-v4")


@pytest.fixture(scope="session")
def pong_states(pong):  # type: ignore[no-untyped-def]
    from autoquant.evaluate import record_states

    return record_states(pong, n=128, seed=0, n_envs=2)


@pytest.fixture(scope="session")
def emulation() -> None:
    """Prepared once (cached): CI runs as root and installs qemu-user; elsewhere it
    must be installed already, or these tests skip saying so."""
    proc = cli_main("targets", "--setup-emulation")
    if proc.returncode != 0:
        if "not root" in proc.stderr and os.geteuid() != 0:
            pytest.skip("qemu-user is not installed and this is not root: " + proc.stderr.strip())
        pytest.fail(proc.stderr)


# A real search problem on the zoo's CartPole DQN, shared by the search and agent tests.
@pytest.fixture(scope="session")
def cartpole_problem(cartpole_dqn):  # type: ignore[no-untyped-def]
    from autoquant.compress import export_reference
    from autoquant.evaluate import episode_seeds, onnx_actor, play_episodes, random_actor, record_states
    from autoquant.policy import analyse
    from autoquant.search import ProblemSettings, SearchProblem
    from autoquant.targets import HostTarget, MeasureProtocol

    bundle = cartpole_dqn
    states = record_states(bundle, n=512).states
    held = record_states(bundle, n=256, seed=7919).states
    reference = export_reference(bundle)
    seeds = episode_seeds(0, 3)
    return SearchProblem(
        bundle, analyse(bundle), HostTarget(protocol=MeasureProtocol(warmup=10, calls=100)),
        states=states, held_out=held, reference_onnx=reference, settings=ProblemSettings(episodes=3),
        episode_seeds=seeds, fp32_episodes=play_episodes(onnx_actor(bundle, reference), bundle.env_id, seeds),
        random_episodes=play_episodes(random_actor(bundle.action_space, 0), bundle.env_id, seeds),
        target_fingerprint="host-test",
    )


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cartpole_dqn_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """One small finished search (CartPole DQN, 3 random quant-only trials, confirmed), made
    in this process once per session and shared by the option, error and trust tests. Read
    it, or tamper with a copy (``run_copy``); never change it in place."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--method", "quant", "--agent", "random",
                    "--trials", "3", "--episodes", "3", "--confirm-episodes", "3", "--states", "256", "--out", str(out),
                    "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A fresh copy of the shared finished run, for a test to tamper with."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy, symlinks=True)
    return copy


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``autoquant ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "autoquant", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def cli_main(*args: str) -> subprocess.CompletedProcess[str]:
    """``autoquant ARGS`` in this process (``autoquant.cli.main``): what a subprocess gives,
    exit code, stdout and stderr, without paying the 4 s import of a new interpreter. For
    option and error tests; stdout and exit-code behaviour keep a few true subprocess tests."""
    import contextlib
    import io

    from autoquant.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["autoquant", *args], code, out.getvalue(), err.getvalue())


def assert_same_actions(bundle, got, want) -> None:  # type: ignore[no-untyped-def]
    """Discrete actions identical; continuous ones equal to float precision."""
    import numpy as np

    if bundle.action.discrete:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=1e-5)
