"""Hand-built trial records and reference points shared by the report tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.report.helpers import trial


@pytest.fixture
def records() -> list[dict[str, Any]]:
    return [
        trial(0, 0.90, 1.00, 0.50, summary="fc1 w8a8, fc2 w8a8"),
        trial(1, 0.70, 0.98, 0.26, summary="fc1 w8a8 p0.50, fc2 w8a8"),
        trial(2, 0.75, 0.97, 0.30),            # dominated by 1
        trial(3, 0.50, 0.90, 0.20),            # on the front, below the floor
        trial(4, None, None, None, state="FAIL", error="onnxruntime: int8 kernel missing"),
        trial(5, 0.40, None, 0.15),            # not played: failed fidelity screen
        trial(6, 0.65, 0.96, 0.24, summary="fc1 w4a8 | p0.25"),
        trial(7, None, None, None, state="FAIL", error="onnxruntime: int8 kernel missing"),
        trial(8, 0.80, 0.99, 0.28),
        trial(9, None, None, None, state="RUNNING"),
        trial(10, 0.45, 0.50, 0.18),           # on the front (fastest played), far below the floor
    ]


@pytest.fixture
def references() -> dict[str, dict[str, Any]]:
    return {
        "fp32": {"latency_ratio": 1.0, "retention": 1.0, "size_ratio": 1.0},
        "onnxruntime int8": {"latency_ratio": 0.72, "retention": 0.97, "size_ratio": 0.25},
        "torch eager": {"latency_ratio": 1.8, "retention": None, "size_ratio": None},
    }
