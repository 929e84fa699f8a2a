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


@pytest.mark.parametrize(("text", "words"), [
    ('threads = 100000\n', ("threads", "1 to 256", "100000")),
    ('[protocol]\ncalls = 1000000000\n', ("[protocol]", "calls", "1,000,000")),
    ('[protocol]\nwarmup = 1000000000\n', ("[protocol]", "warmup")),
])
def test_a_target_that_asks_too_much_is_refused_before_it_runs(tmp_path: Path, text: str,
                                                               words: tuple[str, ...]) -> None:
    """threads = 100000 took 6.2 GB of thread stacks; calls = 1e9 ran for hours."""
    from tests.conftest import cli_main

    path = tmp_path / "greedy.toml"
    path.write_text('name = "greedy"\nreach = "local"\n' + text)
    with pytest.raises(TargetError) as info:
        get_target(str(path))
    assert all(w in str(info.value) for w in words), info.value
    proc = cli_main("evaluate", "--policy", "nosuch.zip", "--target", str(path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
