"""The markdown report of a fleet: one section per target, and the table plan x target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant._io import atomic_write
from autoquant.report._markdown import cell, fmt, table

__all__ = ["write_fleet_report"]


def _confirmed(best: Mapping[str, Any]) -> str:
    if best.get("exact"):
        where = f"exact over all {best.get('episodes')} starts"
    elif best.get("retention_low") is not None:
        where = f"[{fmt(best['retention_low'])}, {fmt(best['retention_high'])}] on {best.get('episodes')} fresh seeds"
    else:
        where = f"on {best.get('episodes')} fresh seeds"
    pairs = best.get("distinct_pairs")
    return f"{fmt(best.get('retention'))} {where}" + (f", {pairs} distinct pairs of games" if pairs is not None else "")


def _cell(entries: Sequence[Mapping[str, Any]] | None) -> str:
    """A plan's layers on one target, on each runtime it was measured on there."""
    return "; ".join(_entry(e) for e in entries) if entries else "-"


def _entry(entry: Mapping[str, Any]) -> str:
    """A plan on one target and runtime: its latency ratio, whether it kept the floor, where its
    episodes came from."""
    text = fmt(entry.get("latency_ratio"))
    if entry.get("runtime"):
        text += f" on {entry['runtime']}"
    if entry.get("best"):
        text = f"**{text}** (best)"
    if entry.get("played"):
        text += " ✓" if entry.get("feasible") else " ✗"
        if entry.get("shared_from"):
            text += f" (episodes of {entry['shared_from']})"
    return text


def write_fleet_report(path: Path, data: Mapping[str, Any]) -> None:
    """report.md of a fleet folder, from ``Fleet.report_rows``'s plain data."""
    targets: Mapping[str, Mapping[str, Any]] = data["targets"]
    names = list(targets)
    lines = [f"# autoquant fleet: {cell(data['policy'])} on {', '.join(names)}", "",
             f"- env {cell(data.get('env'))}; episodes {cell(data.get('protocol'))}, fp32 over "
             f"{data.get('fp32_episodes')} episodes ({data.get('fp32_distinct_games')} distinct games)",
             f"- {data.get('n_trials')} trials per target ("
             + ("every target's agent proposing that many plans of its own" if data.get("proposals") == "each" else
                "that many plans in all, the targets' agents proposing in turns")
             + f"); retention floor {fmt(data.get('floor'), 2)}",
             "- every plan is measured on every target; latency ratios are to fp32 on that target", "",
             "## Best plan per target", ""]
    rows = []
    for name, t in targets.items():
        best = t.get("best")
        int8 = t.get("int8") or {}
        fastest = min(int8.values()) if int8 else None
        if best is None:
            rows.append([name, "fp32: no plan kept the floor and ran faster", "-", "-", "-", t.get("report")])
            continue
        vs = fmt(best["latency_ratio"] / fastest, 2) + "x" if fastest else "n/a"
        rows.append([name, f"#{best['trial']} {best['summary']}", fmt(best["latency_ratio"]), vs,
                     _confirmed(best), t.get("report")])
    lines += table(["target", "best plan (trial)", "latency ratio", "vs best uniform int8", "retention confirmed",
                    "report"], rows, "llrrll")
    lines += ["", "## Plan x target", "",
              "Latency ratio to fp32 on each target (✓ kept the floor when played, ✗ did not; "
              "episodes taken from another target's identical graph are marked).", ""]
    plans: Mapping[str, Mapping[str, Any]] = data["plans"]
    order = sorted(plans, key=lambda p: min((c.get("latency_ratio") or 9e9) for cs in plans[p]["cells"].values()
                                            for c in cs))
    rows = [[plan, *(_cell(plans[plan]["cells"].get(n)) for n in names)] for plan in order]
    lines += table(["plan", *names], rows, "l" + "r" * len(names))
    played = {n: sum(1 for p in plans.values() for c in p["cells"].get(n, []) if c.get("played")) for n in names}
    shared = {n: sum(1 for p in plans.values() for c in p["cells"].get(n, []) if c.get("shared_from")) for n in names}
    lines += ["", "## What the targets shared", "",
              *(f"- {n}: {played[n]} plans played, {shared[n]} of them on episodes another target or runtime "
                "played" for n in names),
              "- states, seeds and the fp32 and random episodes were measured once, by "
              f"{names[0]}; sensitivities once, where a target's first runtime is the same", ""]
    atomic_write(path, "\n".join(lines).encode(), inside=Path(path).parent)
