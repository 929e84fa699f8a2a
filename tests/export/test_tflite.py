"""``autoquant export --format tflite``: the plan's graph as a LiteRT model, checked
against the ONNX graph before it is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli_main


@pytest.mark.slow  # a finished search (the session's shared one)
def test_a_trial_exports_as_a_litert_model_that_acts_as_its_onnx_graph(run_copy: Path, tmp_path: Path) -> None:
    from autoquant.policy import load_policy
    from autoquant.runtimes import Runner, get_runtime

    out = tmp_path / "tflite"
    proc = cli_main("export", str(run_copy), "--trial", "0", "--format", "tflite", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    model = (out / "policy.tflite").read_bytes()
    assert model[4:8] == b"TFL3"
    meta = json.loads((out / "export.json").read_text())
    assert meta["model_format"] == "tflite" and meta["runtime"]["name"] == "litert"
    check = meta["tflite_vs_onnx"]
    assert check["states"] > 0 and check["action_agreement"] >= 0.99, check

    onnx_proc = cli_main("export", str(run_copy), "--trial", "0", "--format", "onnx", "--out", str(tmp_path / "onnx"))
    assert onnx_proc.returncode == 0, onnx_proc.stderr
    onnx = (tmp_path / "onnx" / "policy.onnx").read_bytes()
    assert get_runtime("litert").compile(onnx) == model  # the file is the compiled graph that was timed
    bundle = load_policy(json.loads((run_copy / "run.json").read_text())["config"]["policy"])
    obs = np.random.default_rng(0).normal(size=(256, *bundle.input_shape)).astype(np.float32) * 0.1
    ours = get_runtime("litert").session(model).run(obs)
    assert np.mean(ours.argmax(1) == Runner(onnx)(obs).argmax(1)) >= 0.98
