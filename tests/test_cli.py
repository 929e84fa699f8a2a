"""The commands as a user runs them: human output, and --json for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, cli_main, run_cli


def test_import_is_cheap() -> None:
    code = "import sys, autoquant; print(sorted(m for m in ('torch', 'onnxruntime', 'gymnasium', 'brevitas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_inspect_prints_the_layer_table(pong_pt_path: Path) -> None:
    proc = cli_main("inspect", "--policy", str(pong_pt_path), "--env", "PongNoFrameskip-v4")
    assert proc.returncode == 0, proc.stderr
    assert "conv1" in proc.stdout and "9,346,048" in proc.stdout and "PongNoFrameskip-v4" in proc.stdout


@pytest.mark.slow
def test_inspect_json_is_the_only_stdout(pong_pt_path: Path) -> None:
    """The ALE banner and exporter chatter go to stderr; stdout parses as JSON (a true
    subprocess: what C libraries write to file descriptor 1 is what this is about)."""
    proc = run_cli("inspect", "--policy", str(pong_pt_path), "--env", "PongNoFrameskip-v4", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert data["layers"][-1]["action_head"] is True
    assert data["total_macs"] == 9_346_048


def test_evaluate_json_reports_every_figure(tmp_path: Path) -> None:
    policy = EXAMPLES / "cartpole_dqn.zip"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "autoquant.plan", "version": 1, "layers": {
        "fc1": {"weight_bits": 8, "act_bits": 8, "prune_ratio": 0.5},
        "fc2": {"weight_bits": 8, "act_bits": 8},
        "fc3": {"weight_bits": 8, "act_bits": 8}}}))
    out = tmp_path / "cartpole_int8.onnx"
    proc = cli_main("evaluate", "--policy", str(policy), "--env", "CartPole-v1", "--plan", str(plan),
                    "--episodes", "5", "--states", "512", "--save-onnx", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["fp32"]["reward"]["episodes"] == 5
    assert data["plan"]["reward"]["seeds"] == data["fp32"]["reward"]["seeds"]
    assert 0.0 <= data["plan"]["fidelity"]["action_agreement"] <= 1.0
    assert data["plan"]["kernels"]["layers"] == {"fc1": "int8", "fc2": "int8", "fc3": "int8"}
    assert data["plan"]["macs"] < data["fp32"]["macs"]
    assert data["plan"]["size_bytes"] < data["fp32"]["size_bytes"]
    assert data["latency"]["ratio"] > 0 and data["latency"]["reference"]["p10"] > 0
    assert data["latency"]["facts"]["onnxruntime"]
    assert "retention" in data["plan"]
    assert out.is_file() and out.stat().st_size > 0


def test_evaluate_without_plan_prints_fp32(tmp_path: Path) -> None:
    proc = cli_main("evaluate", "--policy", str(EXAMPLES / "cartpole_dqn.zip"), "--env", "CartPole-v1",
                    "--episodes", "3", "--states", "256")
    assert proc.returncode == 0, proc.stderr
    assert "reward" in proc.stdout and "latency p10 ms" in proc.stdout and "kernels" in proc.stdout


def _refused_before_work(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, one line that names the problem, and no sign of work done before it."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert "recording states" not in proc.stderr and "playing" not in proc.stderr


def test_outputs_that_cannot_be_written_are_refused_before_any_work(cartpole_dqn_path: Path,
                                                                     tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    plan = EXAMPLES / "plans" / "cartpole_int8.json"
    search = ("search", "--policy", str(cartpole_dqn_path), "--trials", "2")
    _refused_before_work(cli_main(*search, "--out", str(a_file)), str(a_file), "is an existing file")
    _refused_before_work(cli_main(*search, "--out", str(a_file / "run")), "is a file, not a folder")
    assert not list(tmp_path.glob(".*partial*"))  # no staging folder left behind
    evaluate = ("evaluate", "--policy", str(cartpole_dqn_path), "--plan", str(plan), "--episodes", "1")
    _refused_before_work(cli_main(*evaluate, "--save-onnx", str(tmp_path)), "is a folder")
    _refused_before_work(cli_main(*evaluate, "--save-onnx", str(a_file / "m.onnx")), "is a file, not a folder")
    _refused_before_work(cli_main("compare", "--policy", str(cartpole_dqn_path), "--out", str(a_file)),
                         "is an existing file")



def _one_line_exit_2(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "help_of"), [
    (("search", "--bogus"), "'autoquant search --help'"),
    (("--bogus",), "'autoquant --help'"),
    (("nosuch",), "'autoquant --help'"),
    (("evaluate", "--policy", "p.zip", "--no-such-flag", "1"), "'autoquant evaluate --help'"),
])
def test_an_unknown_option_points_at_the_right_help(args: tuple[str, ...], help_of: str) -> None:
    proc = cli_main(*args)
    _one_line_exit_2(proc, help_of)
    assert "autoquant autoquant" not in proc.stderr


_POLICY = str(EXAMPLES / "cartpole_dqn.zip")


@pytest.mark.parametrize(("args", "flag"), [
    (("search", "--policy", _POLICY, "--states", "1000000000"), "--states"),
    (("search", "--policy", _POLICY, "--finetune", "100000000000000000000"), "--finetune"),
    (("search", "--policy", _POLICY, "--seed", "18446744073709551616"), "--seed"),
    (("search", "--policy", _POLICY, "--trials", "1000000000"), "--trials"),
    (("search", "--policy", _POLICY, "--episodes", "1000000"), "--episodes"),
    (("search", "--policy", _POLICY, "--confirm-episodes", "1000000"), "--confirm-episodes"),
    (("search", "--policy", _POLICY, "--proxy-states", "1000000000"), "--proxy-states"),
    (("search", "--policy", _POLICY, "--finetune-rounds", "1000000"), "--finetune-rounds"),
    (("search", "--policy", _POLICY, "--envs", "100000"), "--envs"),
    (("compare", "--policy", _POLICY, "--out", "x", "--states", "1000000000"), "--states"),
    (("evaluate", "--policy", _POLICY, "--episodes", "1000000000"), "--episodes"),
    (("evaluate", "--policy", _POLICY, "--finetune", "1000000"), "--finetune"),
    (("evaluate", "--policy", _POLICY, "--states", "1000000000"), "--states"),
    (("evaluate", "--policy", _POLICY, "--seed", "4294967296"), "--seed"),
    (("actorq", "run", "--bundle", "b", "--env", "CartPole-v1", "--actors", "100000"), "--actors"),
    (("actorq", "run", "--bundle", "b", "--env", "CartPole-v1", "--envs-per-actor", "100000"), "--envs-per-actor"),
    (("actorq", "run", "--bundle", "b", "--env", "CartPole-v1", "--steps", "100000000000"), "--steps"),
    (("actorq", "run", "--bundle", "b", "--env", "CartPole-v1", "--learner-threads", "100000"),
     "--learner-threads"),
    (("actorq", "run", "--bundle", "b", "--env", "CartPole-v1", "--buffer-size", "1000000000"), "--buffer-size"),
    (("actorq", "run", "--bundle", "b", "--env", "CartPole-v1", "--seed", "18446744073709551616"), "--seed"),
    (("device", "serve", "--secret-file", "s", "--port", "99999"), "--port"),
    (("device", "serve", "--secret-file", "s", "--max-calls", "1000000000"), "--max-calls"),
])
def test_numbers_past_their_caps_are_refused_in_one_line(args: tuple[str, ...], flag: str) -> None:
    """Every number that sizes work or memory has a cap, said in its --help and in one line."""
    proc = cli_main(*args)
    _one_line_exit_2(proc, flag, "expected an integer from")
    help_text = cli_main(*args[:2] if args[0] in ("actorq", "device") else args[:1], "--help").stdout
    assert "at most" in " ".join(help_text.split()) or "0 to 65535" in help_text


_BAD_OUTPUTS = {
    "a 300-byte name": lambda tmp: str(tmp / ("n" * 300)),
    "a 4 kB path": lambda tmp: str(tmp / "/".join(["d"] * 2100)),
    "a pseudo file system": lambda tmp: "/proc/autoquant-out",
    "a name that is not UTF-8": lambda tmp: os.fsdecode(os.fsencode(tmp) + b"/run\xff"),
}
_WORDS = {
    "a 300-byte name": ("300 bytes long", "choose a shorter name"),
    "a 4 kB path": ("bytes long", "choose a shorter path"),
    "a pseudo file system": ("nothing can be created in /proc", "choose another path"),
    "a name that is not UTF-8": ("not UTF-8", "0xff", "choose a UTF-8 name"),
}


@pytest.mark.parametrize("case", list(_BAD_OUTPUTS))
@pytest.mark.parametrize("command", ["search", "compare", "export", "evaluate", "actorq"])
def test_outputs_no_file_system_takes_are_one_line_before_any_work(command: str, case: str,
                                                                   tmp_path: Path) -> None:
    """Over-long names and paths, /proc and undecodable names crashed (OSError, UnicodeEncodeError:
    exit 1) or failed after the set-up, leaving a broken folder behind."""
    out = _BAD_OUTPUTS[case](tmp_path)
    plan = str(EXAMPLES / "plans" / "cartpole_int8.json")
    args = {"search": ("search", "--policy", _POLICY, "--trials", "2", "--out", out),
            "compare": ("compare", "--policy", _POLICY, "--out", out),
            "export": ("export", str(tmp_path / "no-run"), "--out", out),
            "evaluate": ("evaluate", "--policy", _POLICY, "--plan", plan, "--save-onnx", out),
            "actorq": ("actorq", "run", "--bundle", str(tmp_path / "no-bundle"), "--env", "CartPole-v1",
                       "--out", out)}[command]
    proc = cli_main(*args)
    _one_line_exit_2(proc, "--save-onnx" if command == "evaluate" else "--out", *_WORDS[case])
    assert "recording states" not in proc.stderr and len(proc.stderr) < 600
    assert list(tmp_path.iterdir()) == []  # no staging folder, no probe, nothing half-written
