"""Several searches (method/agent combos) on one policy, compared in one table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant._io import atomic_write
from autoquant._version import __version__
from autoquant.report._best import best_feasible, best_so_far, trials_to_reach
from autoquant.report._hypervolume import hypervolume
from autoquant.report._markdown import fmt, table
from autoquant.report._plots import plot_compare
from autoquant.report._records import is_played, value

__all__ = ["COMPARE_VERSION", "compare_table", "hypervolume_reference", "write_compare"]

COMPARE_VERSION = 1
HV_LATENCY_RATIO = 1.5      # hypervolume reference: 1.5x the fp32 latency ...
HV_RETENTION_MARGIN = 0.1   # ... and 0.1 below the retention floor
TARGET_FRACTION = 0.95      # trials_to_95: reach 95 % of the best speed-up any combo found
EARLY_TRIALS = 10           # best_at_10: the best feasible latency ratio after this many trials


def hypervolume_reference(floor: float) -> dict[str, float]:
    """The point the compare hypervolume is measured from: latency ratio 1.5, retention floor - 0.1."""
    return {"latency_ratio": HV_LATENCY_RATIO, "retention": float(floor) - HV_RETENTION_MARGIN}


def _records(label: str, result: Any) -> list[Mapping[str, Any]]:
    if not isinstance(result, Mapping) or not isinstance(result.get("records"), Sequence):
        raise TypeError(f"results[{label!r}] must be a dict with 'records' (a list of trial records) and an "
                         f"optional 'wall_s', got {type(result).__name__}")
    return list(result["records"])


def _target_ratio(rows: Sequence[Mapping[str, Any]]) -> float | None:
    bests = [row["best_latency_ratio"] for row in rows if row["best_latency_ratio"] is not None]
    return min(bests) / TARGET_FRACTION if bests else None


def compare_table(
    results: Mapping[str, Mapping[str, Any]],
    *,
    floor: float,
    references: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per combo of ``results`` (label "method/agent" -> ``{"records": [...], "wall_s": s}``):
    combo, method, agent, trials, best_trial, best_latency_ratio, best_retention, hypervolume,
    trials_to_95, wall_s; with ``references``, also speedup_vs (reference latency ratio / best
    latency ratio, per reference that has a latency ratio)."""
    hv_ref = hypervolume_reference(floor)
    rows: list[dict[str, Any]] = []
    records_by_combo: dict[str, list[Mapping[str, Any]]] = {}
    for label, result in results.items():
        records = records_by_combo[label] = _records(label, result)
        method, _, agent = str(label).partition("/")
        best = best_feasible(records)
        points = [(value(r, "latency_ratio"), value(r, "retention")) for r in records
                  if is_played(r) and value(r, "latency_ratio") is not None]
        row: dict[str, Any] = {
            "combo": label,
            "method": method,
            "agent": agent or None,
            "trials": len(records),
            "best_trial": best.get("number") if best else None,
            "best_latency_ratio": value(best, "latency_ratio") if best else None,
            "best_retention": value(best, "retention") if best else None,
            "hypervolume": hypervolume(points, (hv_ref["latency_ratio"], hv_ref["retention"]),  # type: ignore[arg-type]
                                       ("min", "max")),
            "trials_to_95": None,
            "best_at_10": _best_at(records, EARLY_TRIALS),
            "wall_s": value(result, "wall_s"),
            "search_s": value(result, "search_s"),
        }
        if references is not None:
            ratio = row["best_latency_ratio"]
            row["speedup_vs"] = {name: (ref_ratio / ratio if ratio else None)
                                 for name, point in references.items()
                                 if (ref_ratio := value(point or {}, "latency_ratio")) is not None}
        rows.append(row)
    target = _target_ratio(rows)
    if target is not None:
        for row in rows:
            row["trials_to_95"] = trials_to_reach(records_by_combo[row["combo"]], target)
    return rows


def _best_at(records: Sequence[Mapping[str, Any]], n: int) -> float | None:
    """The best feasible latency ratio after the first ``n`` counted trials (fewer if the run
    had fewer); None when none of them was feasible and faster than fp32."""
    bests = best_so_far(records)[:n]
    return bests[-1] if bests else None


_COLUMNS = [
    ("combo", "the search: method/agent"),
    ("trials", "trial records in the run, failed and unplayed ones included"),
    ("best latency ratio", ("lowest latency ratio (candidate / fp32) among COMPLETE, played, feasible trials "
                            "(ties: higher retention, then smaller size)")),
    ("best retention", "reward retention of that trial (1 = fp32)"),
    ("hypervolume", ("area dominated by the played COMPLETE trials in (latency ratio lower, retention higher), "
                     "measured from the reference point above; larger is better")),
    ("trials to 95 %", ("trials (1-based, trial-number order, failed ones included) until the best feasible "
                        "latency ratio is <= the target above, i.e. within 95 % of the best speed-up any "
                        "combo found; '-' = never")),
    ("best at 10", (f"the best latency ratio among feasible plans after the first {EARLY_TRIALS} counted trials "
                    "(trial-number order): how good a search is early; '-' = none yet")),
    ("wall s", "wall-clock seconds from the first trial's start to the last one's end"),
    ("search s", "seconds the search's wall-clock budget counts: the agent's set-up (a model-based agent's "
                 "sensitivities and latency model) and every trial, all sessions"),
]


def _markdown(rows: Sequence[Mapping[str, Any]], floor: float, target: float | None,
              references: Mapping[str, Mapping[str, Any]] | None) -> str:
    hv_ref = hypervolume_reference(floor)
    ref_names = list(rows[0].get("speedup_vs", {})) if rows else []
    headers = ["combo", "trials", "best latency ratio", "best retention", "hypervolume", "trials to 95 %",
               "best at 10", "wall s", "search s"]
    headers += [f"speed-up vs {name}" for name in ref_names]
    body = [[row["combo"], row["trials"], fmt(row["best_latency_ratio"]), fmt(row["best_retention"]),
             fmt(row["hypervolume"], 4), row["trials_to_95"] if row["trials_to_95"] is not None else "-",
             fmt(row["best_at_10"]), fmt(row["wall_s"], 1), fmt(row["search_s"], 1)]
            + [fmt(row["speedup_vs"].get(name), 2) for name in ref_names] for row in rows]
    target_line = (f"Target for trials to 95 %: latency ratio <= {fmt(target)} (best feasible latency ratio "
                   f"of all combos / {TARGET_FRACTION})." if target is not None
                   else "Target for trials to 95 %: none, no combo found a feasible plan.")
    hv_line = (f"Retention floor: {fmt(floor)}. Hypervolume reference point: latency ratio "
               f"{fmt(hv_ref['latency_ratio'])}, retention {fmt(hv_ref['retention'])} "
               f"(floor - {HV_RETENTION_MARGIN}); a trial adds area only if it is faster and retains more than that.")
    lines = ["# autoquant comparison", "", hv_line, target_line, ""]
    lines += table(headers, body, "lrrrrrrrr" + "r" * len(ref_names))
    lines += ["", "## Columns", ""] + [f"- **{name}**: {text}" for name, text in _COLUMNS]
    if ref_names:
        lines.append("- **speed-up vs NAME**: the reference's latency ratio / the best latency ratio "
                     "(above 1: the best plan is faster than that reference)")
    lines += ["", "![compare](compare.png)", ""]
    return "\n".join(lines)


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_compare(
    out_dir: str | Path,
    results: Mapping[str, Mapping[str, Any]],
    *,
    floor: float,
    references: Mapping[str, Mapping[str, Any]] | None = None,
    episodes: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write ``compare.json``, ``compare.md`` and ``compare.png`` to ``out_dir``; return the rows.

    ``episodes``: the protocol every combination played under and the distinct games behind
    its references (``protocol``, ``sticky_actions``, ``fp32_distinct_games``, ...), recorded
    in compare.json and stated in compare.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = compare_table(results, floor=floor, references=references)
    target = _target_ratio(rows)
    doc = {
        "format": "autoquant.compare",
        "version": COMPARE_VERSION,
        "autoquant_version": __version__,
        "floor": floor,
        "hypervolume_reference": hypervolume_reference(floor),
        "target_fraction": TARGET_FRACTION,
        "target_ratio": target,
        "references": references or {},
        "episodes": dict(episodes or {}),
        "rows": rows,
    }
    atomic_write(out / "compare.json", (json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n").encode())
    text = _markdown(rows, floor, target, references)
    if episodes:
        text += (f"\nEpisodes: {episodes.get('protocol', {}).get('name')}; the references were played on "
                 f"{episodes.get('fp32_episodes')} seeds, {episodes.get('fp32_distinct_games')} distinct games.\n")
    atomic_write(out / "compare.md", text.encode())
    plot_compare(results, out / "compare.png", floor=floor, references=references, target_ratio=target)
    return rows
