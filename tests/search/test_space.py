"""Search spaces from TOML, narrowed per layer and per target."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant.errors import UsageError
from autoquant.policy import analyse
from autoquant.search import available_spaces, load_space


def test_shipped_spaces(pong) -> None:  # type: ignore[no-untyped-def]
    assert {"joint", "prune", "quant"} <= set(available_spaces())
    table = analyse(pong)
    joint = load_space("joint", table)
    by_name = {layer.name: layer for layer in joint.layers}
    assert by_name["conv1"].weight_bits == (None, 8)  # @first override
    assert by_name["fc2"].prune_ratios == (0.0,)  # the action head is never pruned
    assert set(load_space("prune", table).layers[1].weight_bits) == {None}
    assert set(load_space("quant", table).layers[1].prune_ratios) == {0.0}


def test_plan_params_round_trip(pong) -> None:  # type: ignore[no-untyped-def]
    space = load_space("joint", analyse(pong))
    params = {name: dist.choices[-1] for name, dist in space.distributions().items()}
    plan = space.plan(params)
    assert plan.spec("conv2").weight_bits == 4 and plan.spec("conv2").act_bits == 8
    assert plan.spec("fc1").prune_ratio == 0.75
    assert space.params(plan) == params


def test_target_without_integer_kernels_narrows_to_float(pong) -> None:  # type: ignore[no-untyped-def]
    space = load_space("joint", analyse(pong), accelerated_precisions=("fp32",))
    assert all(layer.weight_bits == (None,) for layer in space.layers)


@pytest.mark.parametrize(("text", "needle"), [
    ('weight_bits = ["float", 9]\n', "weight_bits entry 9"),
    ("prune_ratios = [0.0, 1.0]\n", "not in [0, 1)"),
    # 10k ratios made the ILP run for minutes: at most 64 choices per layer
    ("prune_ratios = [" + ", ".join(str(k / 10_000) for k in range(10_000)) + "]\n", "over the cap of 64 choices"),
    ('[[override]]\nlayers = "fc1"\nprune_ratios = [' + ", ".join(str(k / 100) for k in range(65)) + "]\n",
     "65 prune ratios"),
    ("channel_multiple = 1000000\n", "channel_multiple must be an integer from 1 to 4,096"),
    ('[[override]]\nlayers = "nosuch*"\nweight_bits = [8]\n', "matches no layer"),
    ("colour = 1\n", "unknown keys"),
    ("[budget]\nmax_size_ratio = 2.0\n", "budget"),
])
def test_invalid_spaces(tmp_path: Path, pong, text: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        load_space(str(path), analyse(pong))
    with pytest.raises(UsageError, match="unknown search space"):
        load_space("nosuch", analyse(pong))
