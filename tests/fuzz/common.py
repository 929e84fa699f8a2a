"""Shared settings and strategies of the fuzz suite."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

SCALE = float(os.environ.get("AUTOQUANT_FUZZ_SCALE", "1"))
# What Hypothesis writes on a failure (explicit-example patches) goes to the temp
# folder, not into the checkout; the failure itself prints how to reproduce it.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "autoquant-hypothesis")


def fuzz(examples: int, *, deadline_s: float = 2.0) -> settings:
    """``examples`` per run (times AUTOQUANT_FUZZ_SCALE), each under ``deadline_s``: a
    hostile input must stay cheap. No example database is written into the checkout."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=timedelta(seconds=deadline_s),
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))


def json_values(keys: st.SearchStrategy[str] | None = None, *, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value, objects keyed by ``keys`` (or short text)."""
    keys = keys if keys is not None else st.text(max_size=8)
    return st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=4), max_leaves=max_leaves)


def nested(depth: st.SearchStrategy[int] = st.integers(1, 3000)) -> st.SearchStrategy[str]:
    """Deeply nested JSON/YAML-ish text: lists, objects, or unbalanced."""
    return st.tuples(depth, st.sampled_from(["[", '{"a":', "[{\"k\": "])).map(
        lambda d_open: d_open[1] * d_open[0] + "1" + ("]" if d_open[1] == "[" else "}") * d_open[0])
