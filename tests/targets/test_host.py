"""The host target and the target registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoquant.compress import export_reference
from autoquant.errors import TargetError
from autoquant.targets import HostTarget, LatencyResult, MeasureProtocol, available_targets, get_target


def test_host_toml_builds_a_host_target() -> None:
    assert "host" in available_targets()
    target = get_target("host")
    assert isinstance(target, HostTarget)
    assert target.protocol.calls >= 500 and target.protocol.statistic == "p10"


def test_same_model_measures_a_ratio_near_one(cartpole_dqn, cartpole_states) -> None:  # type: ignore[no-untyped-def]
    model = export_reference(cartpole_dqn)
    result = HostTarget(protocol=MeasureProtocol(warmup=20, calls=500)).measure(
        model, model, cartpole_states.states[:1])
    assert result.calls == 500
    assert 0.5 < result.ratio < 2.0  # the same graph: only noise separates them
    assert result.candidate["p10"] <= result.candidate["median"]
    assert {"cpu", "cores", "threads", "onnxruntime"} <= set(result.facts)


def test_ratio_uses_the_protocol_statistic() -> None:
    result = LatencyResult.from_times(target="t", candidate=np.full(10, 0.002), reference=np.full(10, 0.004),
                                      statistic="median", facts={})
    assert result.ratio == pytest.approx(0.5)
    assert result.value == pytest.approx(2.0)


def test_unknown_and_broken_targets(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="host"):
        get_target("nosuch")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nreach = "local"\n[protocol]\nstatistic = "mean"\n')
    with pytest.raises(TargetError, match="statistic"):
        get_target(str(bad))
    far = tmp_path / "far.toml"
    far.write_text('name = "far"\nreach = "carrier-pigeon"\n')
    with pytest.raises(TargetError, match="carrier-pigeon"):
        get_target(str(far))
