"""Hostile and broken plan files (issue 13): one PlanError each, one line from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoquant.compress import CompressionPlan
from autoquant.errors import PlanError
from tests.conftest import cli_main
from tests.policy.test_cli_errors import _assert_one_line_error


def _plan(**extra: object) -> dict:
    return {"format": "autoquant.plan", "version": 1, "layers": {"fc1": {"weight_bits": 8}}, **extra}


def test_deeply_nested_plan_json(tmp_path: Path, cartpole_dqn_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"format": "autoquant.plan", "version": 1, "layers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PlanError, match="nests deeper than 64 levels"):
        CompressionPlan.load(path)
    proc = cli_main("evaluate", "--policy", str(cartpole_dqn_path), "--plan", str(path), "--episodes", "1",
                   "--no-latency")
    _assert_one_line_error(proc, "nests deeper")


def test_layer_named_once_in_a_bad_value() -> None:
    with pytest.raises(PlanError) as info:
        CompressionPlan.from_json(_plan(layers={"fc1": {"weight_bits": "abc"}}))
    message = str(info.value)
    assert message.count("layer 'fc1'") == 1 and "weight_bits must be an integer" in message


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_plan(comment="hi"), r"unknown plan keys \['comment'\]"),
        (_plan(Layers={}), r"unknown plan keys \['Layers'\]"),
        (_plan(layers={"fc1": {"prune_ratio": 10**400}}), "prune_ratio must be in"),
        (_plan(layers={"fc1": {"prune_ratio": "0.5"}}), "prune_ratio must be a number"),
        (_plan(layers={"fc1": {"prune_ratio": True}}), "prune_ratio must be a number"),
        (_plan(layers={"fc1": {"weight_bits": [8]}}), "weight_bits must be an integer"),
        (_plan(layers={"fc1": {"weight_bits": 10**300}}), "weight_bits must be one of"),
        (_plan(version=True), "plan version True"),
        (_plan(channel_multiple=0), "channel_multiple must be >= 1"),
    ],
)
def test_bad_values_are_one_plan_error(data: dict, needle: str) -> None:
    with pytest.raises(PlanError, match=needle) as info:
        CompressionPlan.from_json(data)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\xff\xfe\x00garbage", "not (valid )?JSON"),
        (b'{"format": "autoquant.plan", "version": 1, "layers": {}, "x": 1' + b"9" * 5000 + b"}",
         "not JSON autoquant can read"),
        (b"[" * 70 + b"]" * 70, "nests deeper"),
    ],
    ids=["not-utf8", "huge-int", "deep-list"],
)
def test_unreadable_plan_files(tmp_path: Path, raw: bytes, needle: str) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    with pytest.raises(PlanError, match=needle):
        CompressionPlan.load(path)


def test_a_saved_plan_still_loads(tmp_path: Path) -> None:
    plan = CompressionPlan.from_json(_plan(channel_multiple=4, layers={"fc1": {"weight_bits": 4, "act_bits": 8,
                                                                               "prune_ratio": 0.25}}))
    path = tmp_path / "plan.json"
    plan.save(path)
    assert CompressionPlan.load(path) == plan
    assert json.loads(path.read_text())["layers"]["fc1"]["prune_ratio"] == 0.25


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_plan_that_is_not_a_regular_file_says_so(tmp_path: Path, cartpole_dqn_path: Path, kind: str) -> None:
    """A FIFO given as --plan was reported as 'plan file not found'."""
    import os


    path = tmp_path / "plan.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    with pytest.raises(PlanError, match="is not a regular file"):
        CompressionPlan.load(path)
    proc = cli_main("evaluate", "--policy", str(cartpole_dqn_path), "--plan", str(path), "--no-latency")
    _assert_one_line_error(proc, "is not a regular file", str(path))
    assert "not found" not in proc.stderr
