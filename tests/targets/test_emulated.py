"""Emulated Cortex-A72 / A76: instruction counts and Arm numerics, through qemu."""

from __future__ import annotations

import numpy as np
import pytest

from autoquant.compress import CompressionPlan, compress, export_reference
from autoquant.evaluate import fidelity
from autoquant.policy import analyse
from autoquant.targets import get_target
from autoquant.runtimes import OrtRunner
from tests.conftest import cli_main


@pytest.fixture(scope="module")
def pong_models(pong, pong_states):  # type: ignore[no-untyped-def]
    int8 = compress(pong, CompressionPlan.uniform(analyse(pong)), pong_states.states)
    return export_reference(pong), int8.onnx


@pytest.mark.slow
def test_instruction_counts_reproduce_the_arm_ordering(emulation, pong_models, pong_states) -> None:  # type: ignore[no-untyped-def]
    fp32, int8 = pong_models
    x = pong_states.states[:1]
    a72, a76 = get_target("arm-a72-emulated"), get_target("arm-a76-emulated")
    r72, r76 = a72.measure(int8, fp32, x), a76.measure(int8, fp32, x)
    assert r72.unit == r76.unit == "instructions" and r72.facts["emulated"] is True
    fp32_72, int8_72 = r72.reference["instructions"], r72.candidate["instructions"]
    fp32_76, int8_76 = r76.reference["instructions"], r76.candidate["instructions"]
    # Measured for the Nature CNN (DESIGN.md): A72 fp32 ~4.9 M, int8 ~3.4 M; A76 int8 ~1.9 M.
    assert 4.0e6 < fp32_72 < 6.0e6 and abs(fp32_76 / fp32_72 - 1) < 0.02
    assert int8_72 < 0.8 * fp32_72  # int8 helps on A72, moderately
    assert int8_76 < 0.6 * int8_72  # and much more with A76's dot-product instructions
    assert r76.ratio < r72.ratio < 1.0
    assert "asimddp" in r76.facts["features"] and "asimddp" not in r72.facts["features"]
    again = get_target("arm-a72-emulated").measure(int8, None, x)  # a fresh process counts the same
    assert abs(again.candidate["instructions"] / int8_72 - 1) < 0.003


@pytest.mark.slow
def test_arm_numerics_fidelity_of_an_int8_plan(emulation, pong, pong_models, pong_states) -> None:  # type: ignore[no-untyped-def]
    fp32, int8 = pong_models
    target = get_target("arm-a72-emulated")
    x = pong_states.states[:32]
    ref_arm, int8_arm = target.infer(fp32, x), target.infer(int8, x)
    np.testing.assert_allclose(ref_arm, OrtRunner(fp32)(x), atol=1e-4)  # fp32 agrees across ISAs
    assert np.abs(int8_arm - OrtRunner(int8)(x)).max() < 0.5  # int8 may differ slightly from x86
    fid = fidelity(ref_arm, int8_arm, pong.action)
    assert fid["states"] == 32 and 0.0 <= fid["action_agreement"] <= 1.0
    assert fid["output_error"] < 0.2

