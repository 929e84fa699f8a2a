"""Reports over plain records: Pareto fronts, hypervolume, best plans, plots, markdown,
comparisons of several searches, and actor-learner reward curves. No search code is needed."""

from __future__ import annotations

from autoquant.report._best import best_feasible, best_so_far, trials_to_reach
from autoquant.report._compare import compare_table, hypervolume_reference, write_compare
from autoquant.report._fleet import write_fleet_report
from autoquant.report._hypervolume import hypervolume
from autoquant.report._markdown import spearman, write_report
from autoquant.report._pareto import DEFAULT_OBJECTIVES, pareto_front
from autoquant.report._plots import plot_compare, plot_learning_curves, plot_pareto

__all__ = [
    "DEFAULT_OBJECTIVES",
    "best_feasible",
    "best_so_far",
    "compare_table",
    "hypervolume",
    "hypervolume_reference",
    "pareto_front",
    "plot_compare",
    "plot_learning_curves",
    "plot_pareto",
    "trials_to_reach",
    "write_compare",
    "write_fleet_report",
    "spearman",
    "write_report",
]
