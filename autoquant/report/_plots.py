"""PNG figures: one search's Pareto front, several searches side by side, and the
reward curves of actor-learner runs.

matplotlib is imported inside the functions and drawn with its Agg canvas on a bare
``Figure``: no pyplot, so no global backend switch and no figures left open.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoquant.report._best import best_so_far, trials_to_reach
from autoquant.report._pareto import pareto_front
from autoquant.report._records import is_complete, is_played, value

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_compare", "plot_learning_curves", "plot_pareto"]

LATENCY_LABEL = "latency ratio to fp32 (lower is faster)"
RETENTION_LABEL = "reward retention (1 = fp32)"
NOT_PLAYED_LABEL = "not played: failed the screen"
SLOWER_LABEL = "not played: could not beat the best latency"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    """The PNG written atomically, never through a symlink planted at ``path``."""
    import io

    from autoquant._io import atomic_write

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=120, format="png")
    return atomic_write(out, buffer.getvalue(), inside=out.parent)


def _xy(records: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    pairs = [(value(r, "latency_ratio"), value(r, "retention")) for r in records]
    return [x for x, _ in pairs], [y for _, y in pairs]  # type: ignore[misc]


def _draw_front(ax: Axes, records: Sequence[Mapping[str, Any]], *, color: str, label: str) -> None:
    xs, ys = _xy(pareto_front(records))
    if xs:
        ax.step(xs, ys, where="post", color=color, marker="o", markersize=5, linewidth=1.6, label=label)


def _draw_references(ax: Axes, references: Mapping[str, Mapping[str, Any]] | None) -> None:
    """fp32 as a star, every other reference as a diamond, each labelled; a reference with
    a latency but no retention as a dotted vertical line."""
    palette = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for i, (name, point) in enumerate((references or {}).items()):
        point = point or {}
        x, y = value(point, "latency_ratio"), value(point, "retention")
        color = "black" if name == "fp32" else palette[i % len(palette)]
        if x is None:
            continue
        if y is None:
            ax.axvline(x, color=color, linestyle=":", linewidth=1.2, label=f"{name} (latency only)")
            continue
        star = name == "fp32"
        ax.scatter([x], [y], marker="*" if star else "D", s=260 if star else 70, color=color,
                   edgecolors="white", linewidths=0.8, zorder=5, label=name)
        ax.annotate(name, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8, color=color)


def _legend(ax: Axes, *, outside: bool) -> None:
    """A legend beside the axes (a front runs through any corner inside), or at the best spot inside."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)


def _draw_floor(ax: Axes, floor: float | None) -> None:
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1.0, label=f"retention floor {floor:.2f}")


def plot_pareto(
    records: Sequence[Mapping[str, Any]],
    references: Mapping[str, Mapping[str, Any]] | None,
    path: str | Path,
    *,
    floor: float | None,
    title: str = "autoquant search",
) -> Path:
    """Latency ratio against retention for one search, written as a PNG to ``path``:
    played trials (infeasible ones hollow), the Pareto front as a step line, reference
    points, the retention floor, and unplayed trials as x marks along the bottom axis."""
    figure = _figure(10.0, 5.6)
    ax = figure.add_subplot()
    played = [r for r in records if is_played(r) and value(r, "latency_ratio") is not None]
    feasible = [r for r in played if r.get("feasible") is True]
    infeasible = [r for r in played if r.get("feasible") is not True]
    unplayed = [r for r in records if is_complete(r) and not is_played(r) and value(r, "latency_ratio") is not None]
    failed = sum(1 for r in records if str(r.get("state", "")).upper() == "FAIL")

    xs, ys = _xy(feasible)
    if xs:
        ax.scatter(xs, ys, s=22, color="#1f77b4", alpha=0.35, linewidths=0, label=f"feasible trial ({len(xs)})")
    xs, ys = _xy(infeasible)
    if xs:
        ax.scatter(xs, ys, s=22, facecolors="none", edgecolors="#1f77b4", alpha=0.55, linewidths=0.9,
                   label=f"below the floor ({len(xs)})")
    _draw_front(ax, played, color="#ff7f0e", label="Pareto front")
    _draw_references(ax, references)
    _draw_floor(ax, floor)
    slower = [r for r in unplayed if str(r.get("skip_reason") or "").startswith("latency")]
    screened = [r for r in unplayed if not str(r.get("skip_reason") or "").startswith("latency")]
    for group, marker, label in ((screened, "x", NOT_PLAYED_LABEL), (slower, "|", SLOWER_LABEL)):
        if group:  # the same two counts as report.md's "Trials" section
            xs = [value(r, "latency_ratio") for r in group]
            ax.plot(xs, [0.02] * len(xs), transform=ax.get_xaxis_transform(), linestyle="none", marker=marker,
                    markersize=6, color="#7f7f7f", clip_on=False, label=f"{label} ({len(xs)})")

    ax.set_xlabel(LATENCY_LABEL)
    ax.set_ylabel(RETENTION_LABEL)
    counts = f"{len(played)} played, {len(unplayed)} not played, {failed} failed"
    ax.set_title(f"{title}\n{counts}", fontsize=11)
    ax.grid(True, alpha=0.25)
    _legend(ax, outside=True)
    return _save(figure, path)


def plot_compare(
    results: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    floor: float | None,
    references: Mapping[str, Mapping[str, Any]] | None = None,
    target_ratio: float | None = None,
) -> Path:
    """Several searches side by side, written as a PNG to ``path``: best feasible latency
    ratio against trial count (left) and each search's Pareto front (right).
    ``results`` maps a combo label to ``{"records": [...], "wall_s": ...}``."""
    from matplotlib import colormaps

    figure = _figure(15.0, 5.6)
    progress, fronts = figure.subplots(1, 2)
    colors = colormaps["tab10"].colors
    for i, (label, result) in enumerate(results.items()):
        records = list(result.get("records") or [])
        color = colors[i % len(colors)]
        best = best_so_far(records)
        ys = [b if b is not None else math.nan for b in best]
        progress.step(range(1, len(ys) + 1), ys, where="post", color=color, linewidth=1.6, label=label)
        if target_ratio is not None:
            reached = trials_to_reach(records, target_ratio)
            if reached is not None:
                progress.plot([reached], [best[reached - 1]], marker="o", color=color, markersize=6)
        _draw_front(fronts, [r for r in records if is_played(r)], color=color, label=label)  # type: ignore[arg-type]

    if target_ratio is not None:
        progress.axhline(target_ratio, color="gray", linestyle=":", linewidth=1.0,
                         label=f"95 % of the best speed-up (ratio {target_ratio:.3f}); dot = reached")
    progress.set_xlabel("trials (in trial-number order, failed ones included)")
    progress.set_ylabel("best feasible latency ratio (lower is faster)")
    progress.set_title("best feasible plan so far", fontsize=11)
    progress.grid(True, alpha=0.25)
    _legend(progress, outside=False)

    _draw_references(fronts, references)
    _draw_floor(fronts, floor)
    fronts.set_xlabel(LATENCY_LABEL)
    fronts.set_ylabel(RETENTION_LABEL)
    fronts.set_title("Pareto front of each search (played trials)", fontsize=11)
    fronts.grid(True, alpha=0.25)
    _legend(fronts, outside=True)
    return _save(figure, path)


def _moving_average(values: Any, window: int) -> Any:
    import numpy as np

    if len(values) < window:
        return np.cumsum(values) / np.arange(1, len(values) + 1)
    kernel = np.ones(window) / window
    head = np.cumsum(values[:window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_learning_curves(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Reward curves (episode returns of the actors, greedy evaluations of the learner)
    of one or more runs (label -> report) on shared axes."""
    import numpy as np

    figure = _figure(7.5, 4.5)
    ax = figure.add_subplot(1, 1, 1)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    random_mean = None
    for k, (label, report) in enumerate(runs.items()):
        color = colors[k % len(colors)]
        episodes = np.asarray(report["curve"]["episodes"], dtype=float).reshape(-1, 4)
        if len(episodes):
            order = np.argsort(episodes[:, 0])
            steps, returns = episodes[order, 0], episodes[order, 1]
            ax.scatter(steps, returns, s=3, alpha=0.15, color=color)
            ax.plot(steps, _moving_average(returns, 20), color=color, alpha=0.6, linewidth=1,
                    label=f"{label}: actor episodes (moving mean of 20)")
        evals = report["curve"]["eval"]
        if evals:
            ax.errorbar([e["step"] for e in evals], [e["mean"] for e in evals],
                        yerr=[0.0 if not math.isfinite(e["ci95"]) else e["ci95"] for e in evals], color=color,
                        marker="o", linewidth=2, capsize=3, label=f"{label}: greedy learner (fp32), 95 % CI")
        final = report.get("final") or {}
        if final.get("random"):
            random_mean = final["random"]["mean"]
    if random_mean is not None:
        ax.axhline(random_mean, color="grey", linestyle="--", linewidth=1, label="random policy")
    ax.set_xlabel("env steps (all actors)")
    ax.set_ylabel("episode return")
    first = next(iter(runs.values()))
    ax.set_title(f"actorq run: {first['env_id']}, {first['actors']['count']} actors")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(figure, path)
