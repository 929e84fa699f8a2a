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


def _two_runtime_problem(base):  # type: ignore[no-untyped-def]
    """The session's CartPole problem (its states, references and episodes) on a host target
    with two runtimes."""
    from autoquant.search import SearchProblem
    from autoquant.targets import HostTarget, MeasureProtocol

    protocol = MeasureProtocol(warmup=5, calls=30)
    targets = {r: HostTarget(protocol=protocol, runtime=r, reference_runtime="onnxruntime")
               for r in ("onnxruntime", "litert")}
    return SearchProblem(
        base.bundle, base.table, targets["onnxruntime"], states=base.states, held_out=base.held_out,
        reference_onnx=base.reference_onnx, settings=base.settings, episode_seeds=base.episode_seeds,
        fp32_episodes=base.fp32_episodes, random_episodes=base.random_episodes,
        target_fingerprint="host-two-runtimes-test", targets=targets)


@pytest.mark.slow
def test_a_plan_whose_runtimes_agree_plays_its_episodes_once(cartpole_problem) -> None:  # type: ignore[no-untyped-def]
    """The same plan on LiteRT after onnxruntime: its held-out outputs agree (same actions,
    within the conformance bound), so it takes the episodes played on onnxruntime and says
    so; its own latency and fidelity are still its own. Another plan plays its own."""
    from autoquant.compress import CompressionPlan, LayerSpec

    problem = _two_runtime_problem(cartpole_problem)
    always = lambda ratio, proxy: (True, None)  # noqa: E731 - play every plan
    plan = CompressionPlan({"fc1": LayerSpec(8, 8), "fc2": LayerSpec(8, 8), "fc3": LayerSpec(8, 8)})
    first = problem.evaluate(plan.on("onnxruntime"), always)
    again = problem.evaluate(plan.on("litert"), always)
    assert first.played and again.played and "shared_from" not in first.reward
    shared = again.reward["shared_from"]
    assert shared["runtime"] == "onnxruntime" and shared["states"] == 256
    assert shared["max_abs_difference"] <= shared["tolerance"]
    assert again.reward["rewards"] == first.reward["rewards"] and again.retention == first.retention
    assert again.latency["facts"]["runtime"] == "litert" and again.key != first.key
    assert again.seconds["play"] < first.seconds["play"]
    assert again.shared_from == "onnxruntime" and first.shared_from is None
    other = problem.evaluate(CompressionPlan({"fc2": LayerSpec(8, 8)}).on("litert"), always)
    assert other.played and "shared_from" not in other.reward


def test_numerics_that_differ_share_nothing() -> None:
    import numpy as np

    from autoquant.search._problem import numerics_agree

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(64, 4))
    reference[0] = (1.0, 0.999, 0.0, -1.0)  # a near tie between the first two actions
    span = np.ptp(reference)
    close = reference + rng.normal(scale=1e-4, size=reference.shape).clip(-3e-4, 3e-4)
    close[0] = reference[0]
    found = numerics_agree(close, reference, reference, discrete=True)
    assert found is not None and found["states"] == 64 and found["max_abs_difference"] <= 3e-4
    assert numerics_agree(reference + 0.02 * span, reference, reference, discrete=True) is None  # too far apart
    flipped = reference.copy()
    flipped[0, :2] = (0.999, 1.0)  # 0.001 apart, well inside the tolerance, but another action
    assert 0.001 < 0.01 * span and numerics_agree(flipped, reference, reference, discrete=True) is None
    assert numerics_agree(close, reference, reference, discrete=False) is None  # continuous: never shared
