"""CompressionPlan: versioned JSON, validation against the layer table."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant.compress import CompressionPlan, LayerSpec
from autoquant.errors import PlanError
from autoquant.policy import analyse


def test_json_round_trip(tmp_path: Path, cartpole_dqn) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan({"fc1": LayerSpec(4, 8, 0.25), "fc2": LayerSpec(8, None), "fc3": LayerSpec()})
    path = tmp_path / "plan.json"
    plan.save(path)
    again = CompressionPlan.load(path)
    assert again == plan
    assert again.validate(analyse(cartpole_dqn)) is again
    assert '"weight_bits": "float"' in path.read_text()


def test_uniform_never_prunes_the_head(cartpole_dqn) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan.uniform(analyse(cartpole_dqn), prune_ratio=0.5)
    assert plan.spec("fc3").prune_ratio == 0.0 and plan.spec("fc1").prune_ratio == 0.5


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"format": "other"}, "not an autoquant plan"),
        ({"format": "autoquant.plan", "version": 99, "layers": {}}, "version"),
        ({"format": "autoquant.plan", "version": 1, "layers": {"fc1": {"weight_bits": 1}}}, "weight_bits"),
        ({"format": "autoquant.plan", "version": 1, "layers": {"fc1": {"act_bits": 4, "weight_bits": 8}}}, "act_bits"),
        ({"format": "autoquant.plan", "version": 1, "layers": {"fc1": {"act_bits": 8}}}, "needs weight_bits"),
        ({"format": "autoquant.plan", "version": 1, "layers": {"fc1": {"prune_ratio": -0.1}}}, "[0, 1)"),
        ({"format": "autoquant.plan", "version": 1, "layers": {"fc1": {"bits": 8}}}, "unknown keys"),
    ],
)
def test_invalid_json(data: dict, needle: str) -> None:
    with pytest.raises(PlanError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        CompressionPlan.from_json(data)


def test_validation_names_valid_layers(cartpole_dqn) -> None:  # type: ignore[no-untyped-def]
    table = analyse(cartpole_dqn)
    with pytest.raises(PlanError, match=r"\['fc1', 'fc2', 'fc3'\]"):
        CompressionPlan({"conv1": LayerSpec(8, 8)}).validate(table)
    with pytest.raises(PlanError, match="action head"):
        CompressionPlan({"fc3": LayerSpec(prune_ratio=0.5)}).validate(table)


def test_a_plan_names_its_runtime_only_when_it_has_one() -> None:
    plan = CompressionPlan({"fc1": LayerSpec(8, 8, 0.5)})
    assert "runtime" not in plan.to_json() and plan.runtime is None  # keys of existing runs stay as they were
    on = plan.on("litert")
    assert CompressionPlan.from_json(on.to_json()) == on and on.describe() == "fc1 w8a8 p0.50 on litert"
    assert on.without_pruning().runtime == "litert" and on.on(None) == plan
    for bad in (3, "", "lite rt", "x" * 41):
        with pytest.raises(PlanError, match="runtime"):
            CompressionPlan.from_json({**plan.to_json(), "runtime": bad})
