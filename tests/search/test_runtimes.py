"""A target with several runtimes: the runtime is one more choice of the search, every
latency is a ratio to fp32 on the first runtime, and each runtime's uniform int8 is a
reference point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli_main

TWO_RUNTIMES = """name = "host-two-runtimes"
description = "this machine's CPU, onnxruntime or LiteRT, 1 thread"
reach = "local"
runtime = ["onnxruntime", "litert"]
[protocol]
warmup = 10
calls = 100
"""


@pytest.mark.slow
def test_a_search_picks_the_runtime_too(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    from autoquant.compress import CompressionPlan
    from autoquant.search import load_run

    target = tmp_path / "two.toml"
    target.write_text(TWO_RUNTIMES)
    out = tmp_path / "run"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--target", str(target), "--method", "quant",
                    "--agent", "random", "--trials", "8", "--episodes", "3", "--confirm-episodes", "3",
                    "--states", "256", "--seed", "0", "--out", str(out), "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["space"]["runtimes"] == ["onnxruntime", "litert"]
    litert = info["reference"]["runtime_int8"]["litert"]
    assert litert["latency_ratio"] > 0 and "retention" in litert and litert["plan"].endswith(" on litert")

    run = load_run(out, target=str(target))
    records = [r for r in run.records() if r.result is not None]
    by_runtime = {r: [x for x in records if CompressionPlan.from_json(x.plan).runtime == r]
                  for r in ("onnxruntime", "litert")}
    assert all(by_runtime.values()), {r: len(v) for r, v in by_runtime.items()}  # seed 0 draws both
    for runtime, found in by_runtime.items():
        for record in found:
            facts = record.result.latency["facts"]
            assert facts["runtime"] == runtime and record.summary.endswith(f" on {runtime}")
            if runtime == "litert":  # a ratio to fp32 on onnxruntime, as every trial's on this target
                assert facts["reference_runtime"] == "onnxruntime"
    assert "litert int8" in run.references()
    report = (out / "report.md").read_text()
    assert " on litert" in report and "litert int8" in report
