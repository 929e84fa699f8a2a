"""Comparing several searches."""

from __future__ import annotations

import json

import pytest

from autoquant.report import compare_table, write_compare
from tests.report.helpers import FLOOR, assert_png, trial


@pytest.fixture
def results() -> dict:  # type: ignore[type-arg]
    return {
        "joint/tpe": {"records": [trial(0, 0.9, 0.99), trial(1, 0.6, 0.97), trial(2, 0.5, 0.96),
                                  trial(3, 0.4, 0.90)], "wall_s": 120.0},
        "joint/random": {"records": [trial(0, 0.8, 0.98), trial(1, None, None, state="FAIL", error="boom"),
                                     trial(2, 0.52, 0.97), trial(3, 0.7, 0.99)], "wall_s": 100.0},
        "quant/tpe": {"records": [trial(0, 0.7, 0.5), trial(1, 0.9, None)]},
    }


def test_rows_per_combo(results) -> None:  # type: ignore[no-untyped-def]
    rows = {row["combo"]: row for row in compare_table(results, floor=FLOOR)}
    tpe, rnd, quant = rows["joint/tpe"], rows["joint/random"], rows["quant/tpe"]
    assert (tpe["method"], tpe["agent"], tpe["trials"], tpe["wall_s"]) == ("joint", "tpe", 4, 120.0)
    assert (tpe["best_latency_ratio"], tpe["best_retention"], tpe["best_trial"]) == (0.5, 0.96, 2)
    assert (rnd["best_latency_ratio"], rnd["best_retention"]) == (0.52, 0.97)
    assert quant["best_latency_ratio"] is None and quant["wall_s"] is None
    # target = 0.5 / 0.95 = 0.526: tpe reaches it at its 3rd trial, random at its 3rd (failure counted)
    assert (tpe["trials_to_95"], rnd["trials_to_95"], quant["trials_to_95"]) == (3, 3, None)
    # hypervolume from (latency 1.5, retention 0.85), by hand as a 2-D staircase:
    # tpe: (0.4, 0.90) (0.5, 0.96) (0.6, 0.97) (0.9, 0.99)
    want = 1.1 * 0.05 + 1.0 * 0.06 + 0.9 * 0.01 + 0.6 * 0.02
    assert tpe["hypervolume"] == pytest.approx(want)
    assert quant["hypervolume"] == 0.0                   # retention 0.5 is below the reference


def test_best_after_the_first_trials(results) -> None:  # type: ignore[no-untyped-def]
    from autoquant.report._compare import EARLY_TRIALS

    many = {"joint/tpe": {"records": [trial(i, 0.9 - 0.01 * i, 0.99) for i in range(EARLY_TRIALS + 5)],
                          "search_s": 42.0}}
    rows = {row["combo"]: row for row in compare_table({**results, **many}, floor=FLOOR)}
    # the 10th trial (number 9) is the best of the first ten; the later, faster ones do not count
    assert rows["joint/tpe"]["best_at_10"] == pytest.approx(0.9 - 0.01 * (EARLY_TRIALS - 1))
    assert rows["joint/tpe"]["best_latency_ratio"] == pytest.approx(0.9 - 0.01 * (EARLY_TRIALS + 4))
    assert rows["joint/tpe"]["search_s"] == 42.0 and rows["joint/random"]["search_s"] is None
    assert rows["joint/random"]["best_at_10"] == 0.52  # a run shorter than ten: its best so far
    assert rows["quant/tpe"]["best_at_10"] is None


def test_speedup_against_references(results) -> None:  # type: ignore[no-untyped-def]
    refs = {"fp32": {"latency_ratio": 1.0, "retention": 1.0}, "onnxruntime int8": {"latency_ratio": 0.6},
            "broken": {"latency_ratio": None}}
    row = compare_table(results, floor=FLOOR, references=refs)[0]
    assert row["speedup_vs"] == pytest.approx({"fp32": 2.0, "onnxruntime int8": 1.2})


def test_write_compare_writes_json_markdown_and_png(tmp_path, results) -> None:  # type: ignore[no-untyped-def]
    refs = {"fp32": {"latency_ratio": 1.0, "retention": 1.0}, "onnxruntime int8": {"latency_ratio": 0.6,
                                                                                     "retention": 0.97}}
    rows = write_compare(tmp_path / "cmp", results, floor=FLOOR, references=refs)
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert doc["rows"] == rows and doc["floor"] == FLOOR
    assert doc["hypervolume_reference"] == pytest.approx({"latency_ratio": 1.5, "retention": 0.85})
    assert doc["target_ratio"] == pytest.approx(0.5 / 0.95)
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| joint/tpe | 4 | 0.500 | 0.960 |" in text
    assert "| quant/tpe | 2 | n/a | n/a | 0.0000 | - |" in text
    assert "latency ratio 1.500, retention 0.850" in text and "## Columns" in text
    assert "speed-up vs onnxruntime int8" in text
    assert_png(tmp_path / "cmp" / "compare.png", min_width=1000)


def test_records_must_come_in_a_dict() -> None:
    with pytest.raises(TypeError, match="'records'"):
        compare_table({"joint/tpe": [trial(0, 0.5, 0.99)]}, floor=FLOOR)  # type: ignore[dict-item]
