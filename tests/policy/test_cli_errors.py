"""Bad input: one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_main


def _assert_one_line_error(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("autoquant:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout == ""


def test_missing_file(tmp_path: Path) -> None:
    _assert_one_line_error(cli_main("inspect", "--policy", str(tmp_path / "nope.zip")), "not found")


def test_truncated_zip(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    bad = tmp_path / "CartPole-v1.zip"
    bad.write_bytes(cartpole_dqn_path.read_bytes()[:20_000])
    _assert_one_line_error(cli_main("inspect", "--policy", str(bad)), "zip")


def test_corrupt_zip_member(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    data = bytearray(cartpole_dqn_path.read_bytes())
    start = data.find(b"policy.pth") + 200  # inside the stored tensor bytes
    data[start:start + 64] = bytes(64)
    bad = tmp_path / "broken.zip"
    bad.write_bytes(bytes(data))
    _assert_one_line_error(cli_main("inspect", "--policy", str(bad)), "corrupt")


def test_pickled_module_without_trust(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), path)
    _assert_one_line_error(cli_main("inspect", "--policy", str(path)), "--trust-pickle")


def test_env_with_wrong_observation_shape(cartpole_dqn_path: Path) -> None:
    proc = cli_main("inspect", "--policy", str(cartpole_dqn_path), "--env", "LunarLander-v3")
    _assert_one_line_error(proc, "(8,)", "(4,)")


def test_unknown_env(cartpole_dqn_path: Path) -> None:
    _assert_one_line_error(cli_main("inspect", "--policy", str(cartpole_dqn_path), "--env", "NoSuchEnv-v0"),
                           "unknown environment")


@pytest.mark.parametrize(
    ("layers", "needle"),
    [
        ({"conv9": {"weight_bits": 8, "act_bits": 8}}, "conv9"),
        ({"fc3": {"prune_ratio": 0.5}}, "action head"),
        ({"fc1": {"prune_ratio": 1.0}}, "[0, 1)"),
        ({"fc1": {"weight_bits": 9}}, "weight_bits"),
    ],
)
def test_bad_plans(tmp_path: Path, cartpole_dqn_path: Path, layers: dict, needle: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "autoquant.plan", "version": 1, "layers": layers}))
    out = tmp_path / "model.onnx"
    proc = cli_main("evaluate", "--policy", str(cartpole_dqn_path), "--plan", str(plan), "--episodes", "1",
                   "--no-latency", "--save-onnx", str(out))
    _assert_one_line_error(proc, needle)
    assert not out.exists()


def test_bad_option_value(cartpole_dqn_path: Path) -> None:
    proc = cli_main("evaluate", "--policy", str(cartpole_dqn_path), "--episodes", "-3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--episodes" in proc.stderr
