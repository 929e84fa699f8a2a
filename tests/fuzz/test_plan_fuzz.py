"""Fuzz the plan parser: ``CompressionPlan.from_json`` on JSON values (near-valid plans
and anything else), ``CompressionPlan.load`` on file bytes. Either a plan or a
PlanError, never another exception.

Examples per run: 300 + 200 + 150 (650), about 3 s on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoquant.compress import CompressionPlan
from autoquant.errors import PlanError
from tests.fuzz.common import fuzz, json_values, nested

_SPEC_KEYS = st.sampled_from(["weight_bits", "act_bits", "prune_ratio"]) | st.text(max_size=6)
_SPEC_VALUES = st.sampled_from(["float", 2, 4, 8, 9, 0, -1, 0.0, 0.5, 0.999, 1.0, True, None]) | json_values()
_SPECS = st.dictionaries(_SPEC_KEYS, _SPEC_VALUES, max_size=4)
_PLANS = st.fixed_dictionaries(
    {"format": st.just("autoquant.plan") | json_values(), "version": st.just(1) | json_values(),
     "layers": st.dictionaries(st.text(max_size=6), _SPECS | json_values(), max_size=4) | json_values()},
    optional={"channel_multiple": st.integers(-2, 64) | json_values(), "comment": json_values()},
)


@pytest.mark.slow
@fuzz(300)
@given(_PLANS | json_values())
def test_from_json_gives_a_plan_or_a_plan_error(data: object) -> None:
    try:
        plan = CompressionPlan.from_json(data)
    except PlanError as exc:
        assert "\n" not in str(exc)
        return
    assert CompressionPlan.from_json(plan.to_json()) == plan  # what parses, round-trips


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plans") / "plan.json"


_FILES = (st.binary(max_size=512) | nested().map(str.encode)
          | _PLANS.map(lambda p: json.dumps(p, allow_nan=True).encode())
          | st.tuples(_PLANS, st.integers(0, 200), st.binary(min_size=1, max_size=4)).map(
              lambda t: (lambda raw: raw[:t[1]] + t[2] + raw[t[1]:])(json.dumps(t[0]).encode())))


@fuzz(200)
@given(_FILES)
def test_load_gives_a_plan_or_a_plan_error(plan_file: Path, raw: bytes) -> None:
    plan_file.write_bytes(raw)
    try:
        CompressionPlan.load(plan_file)
    except PlanError as exc:
        assert "\n" not in str(exc)


@fuzz(150)
@given(st.integers(1, 200_000), st.sampled_from(["[", "{\"a\": ", "[{\"b\": ["]))
def test_any_nesting_depth_is_a_plan_error_not_a_crash(plan_file: Path, depth: int, opener: str) -> None:
    closer = "".join({"[": "]", "{": "}"}[c] for c in opener if c in "[{")[::-1]
    plan_file.write_text(opener * depth + "0" + closer * depth)
    with pytest.raises(PlanError):
        CompressionPlan.load(plan_file)
