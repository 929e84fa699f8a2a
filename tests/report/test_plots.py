"""PNG figures are written and readable."""

from __future__ import annotations

from autoquant.report import plot_pareto
from tests.report.helpers import FLOOR, assert_png


def test_plot_pareto_writes_a_png(tmp_path, records, references) -> None:  # type: ignore[no-untyped-def]
    path = plot_pareto(records, references, tmp_path / "plots" / "pareto.png", floor=FLOOR, title="dqn CartPole")
    assert path == tmp_path / "plots" / "pareto.png"
    assert_png(path)


def test_plot_pareto_with_nothing_played(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = plot_pareto([], None, tmp_path / "empty.png", floor=None)
    assert_png(path)
