"""`autoquant compare` on a small budget writes its table and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli_main


@pytest.mark.slow
def test_compare_writes_table_and_plot(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--policy", str(cartpole_dqn_path), "--methods", "prune,joint", "--agents", "tpe,random",
            "--trials", "3", "--episodes", "3", "--confirm-episodes", "3", "--states", "256", "--out", str(out),
            "--quiet", "--json"]
    proc = cli_main(*args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert sorted(row["combo"] for row in result["rows"]) == ["joint/random", "joint/tpe", "prune/random",
                                                               "prune/tpe"]
    for row in result["rows"]:
        assert row["trials"] == 3 and row["wall_s"] is not None and row["hypervolume"] >= 0.0
    data = json.loads((out / "compare.json").read_text())
    assert data["floor"] == 0.98 and len(data["rows"]) == 4
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hypervolume" in (out / "compare.md").read_text()
    # the protocol and the games behind the references, and what confirmation found per combination
    assert result["sticky_actions"] == 0.0 and result["fp32_distinct_games"] == 3
    assert data["episodes"]["protocol"]["name"] == "seeded starts"
    assert "3 distinct games" in (out / "compare.md").read_text()
    assert all("distinct_pairs" in row["confirmed"] for row in result["rows"])
    # every combination saw the same states and references
    states = {(out / f"{c}" / "states.npz").read_bytes() for c in ("prune-tpe", "prune-random", "joint-tpe")}
    assert len(states) == 1
    # running it again resumes: the studies are complete, nothing is measured again
    again = cli_main(*args)
    assert again.returncode == 0, again.stderr
    assert [r["trials"] for r in json.loads(again.stdout)["rows"]] == [3, 3, 3, 3]
