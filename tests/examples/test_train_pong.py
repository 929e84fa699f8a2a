"""examples/train_pong_dqn.py, for a few hundred steps on the CPU: the training loop, the
evaluations, the outputs autoquant loads, and resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

TINY = ["--envs", "1", "--buffer", "1024", "--batch", "16", "--learning-starts", "224", "--eval-every", "256",
        "--eval-episodes", "1", "--final-episodes", "2", "--final-starts", "1", "--device", "cpu"]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("train_pong_dqn", ROOT / "examples" / "train_pong_dqn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_few_hundred_steps_write_what_autoquant_loads_and_resume(tmp_path: Path) -> None:
    script = _script()
    threads = torch.get_num_threads()  # the script sets its own on a CPU device
    try:
        _train_and_resume(script, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _train_and_resume(script, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from autoquant.policy import load_policy

    out = tmp_path / "pong"
    init = {k: v.clone() for k, v in script.q_network().state_dict().items()}
    torch.save(init, tmp_path / "init.pt")
    assert script.main(["--out", str(out), "--steps", "256", "--init", str(tmp_path / "init.pt"), *TINY]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["trained_env_steps"] == 256 and [e["step"] for e in meta["evaluations"]] == [256]
    sticky, exact = meta["sticky_actions_0.25"], meta["deterministic"]
    assert sticky["protocol"]["sticky_actions"] == 0.25 and sticky["distinct_games"] == sticky["episodes"] == 2
    assert exact["protocol"]["starts"] == 30 and exact["episodes"] == 1 and not exact["exact"]
    assert meta["hyperparams"]["batch"] == 16 and meta["seed"] == 0
    best = torch.load(out / "dqn_pong.pt", weights_only=True)
    assert set(best) == set(init)
    last = torch.load(out / "checkpoint.pt", weights_only=True)
    assert any(not torch.equal(last["net"][k], init[k]) for k in init)  # the updates changed the network
    assert all(torch.equal(best[k], last["best_state"][k]) for k in best)  # the best evaluation's network
    # the state dict and the SB3 zip load in autoquant as the same network
    pt = load_policy(str(out / "dqn_pong.pt"), env_id="PongNoFrameskip-v4")
    zipped = load_policy(str(out / "dqn_pong.zip"), env_id="PongNoFrameskip-v4")
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 84, 84), dtype=np.uint8)
    with torch.no_grad():
        ours, theirs = (b.net(torch.as_tensor(b.prepare(frames))).numpy() for b in (pt, zipped))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # resume: on from the checkpoint's step, its history kept
    assert script.main(["--out", str(out), "--steps", "512", "--resume", *TINY]) == 0
    again = json.loads((out / "meta.json").read_text())
    assert again["trained_env_steps"] == 512 and [e["step"] for e in again["evaluations"]] == [256, 512]


def test_bad_options_are_one_line_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    script = _script()
    for argv, needle in ((["--resume", "--out", str(tmp_path)], "checkpoint.pt does not exist"),
                         (["--init", str(tmp_path / "none.pt")], "is not a file"),
                         (["--final-starts", "31"], "30 no-op starts"),
                         (["--envs", "0"], "--envs must be at least 1")):
        with pytest.raises(SystemExit) as exc:
            script.parse_args(argv)
        assert exc.value.code == 2 and needle in capsys.readouterr().err
