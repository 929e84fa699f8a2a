"""The markdown report of one search, with its Pareto plot next to it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant._io import atomic_write
from autoquant.report._best import best_feasible
from autoquant.report._pareto import pareto_front
from autoquant.report._plots import plot_pareto
from autoquant.report._records import is_complete, is_played, value

__all__ = ["write_report"]

_RUN_FACTS = ("policy", "env", "target", "method", "agent", "trials", "seed")


def fmt(number: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "n/a" when it is missing."""
    if isinstance(number, bool) or number is None:
        return "n/a"
    try:
        return f"{float(number):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> list[str]:
    """Markdown table lines; ``align`` has one of "l", "r", "c" per column."""
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def _fact(raw: Any) -> str:
    if isinstance(raw, Mapping):
        return ", ".join(f"{k}={_fact(v)}" for k, v in raw.items())
    if isinstance(raw, (list, tuple)):
        return ", ".join(_fact(v) for v in raw)
    return str(raw)


def _header(run_info: Mapping[str, Any], floor: float | None) -> list[str]:
    name = run_info.get("policy", "search")
    lines = [f"# autoquant report: {name}", ""]
    keys = [k for k in _RUN_FACTS if k in run_info]
    keys += [k for k in run_info if k not in _RUN_FACTS]  # device facts and anything else, in given order
    lines += [f"- **{key}**: {_fact(run_info[key])}" for key in keys if run_info[key] is not None]
    if floor is not None:
        lines.append(f"- **retention floor**: {fmt(floor)}")
    return lines


def _summary(records: Sequence[Mapping[str, Any]], floor: float | None,
             confirmation: Mapping[str, Any] | None) -> list[str]:
    """The best plan as confirmation decided it: a plan that failed confirmation is listed as
    such and never called the best; before confirmation the search's best is marked unconfirmed."""
    bound = f" (retention >= {fmt(floor)})" if floor is not None else ""
    lines = []
    attempts = list((confirmation or {}).get("attempts") or [])
    for attempt in attempts:
        if attempt.get("passed") is False or (attempt.get("passed") is None and floor is not None
                                             and (attempt.get("retention") or 0.0) < floor):
            lines.append(f"**Failed confirmation:** trial {attempt.get('trial')}, "
                         f"`{cell(attempt.get('summary') or '(no summary)')}`: retention "
                         f"{fmt(attempt.get('retention'))} on the confirmation episodes{_games(attempt.get('paired'))}, "
                         f"below the floor{bound}.")
    if confirmation is not None and "trial" in confirmation:
        number = confirmation["trial"]
        best = next((r for r in records if r.get("number") == number), None) or {}
        ratio = value(best, "latency_ratio") if best else (confirmation.get("search") or {}).get("latency_ratio")
        speed = f" ({1.0 / ratio:.2f}x the fp32 speed)" if ratio else ""
        confirm = confirmation.get("confirm") or {}
        if confirm.get("exact"):
            where = f"exact over all {confirm.get('episodes')} starts of the protocol"
        elif confirm.get("retention_low") is not None:
            where = (f"[{fmt(confirm.get('retention_low'))}, {fmt(confirm.get('retention_high'))}] on "
                     f"{confirm.get('episodes')} fresh seeds")
        else:
            where = f"on {confirm.get('episodes')} fresh seeds"
        pairs = confirm.get("distinct_pairs")
        lines.append(f"**Best plan (confirmed):** trial {number}, `{cell(confirmation.get('summary') or '(no summary)')}`: "
                     f"latency ratio {fmt(ratio)}{speed}, retention {fmt(confirm.get('retention'))} {where}"
                     + (f" ({pairs} distinct pairs of games)" if pairs is not None else "")
                     + f", size ratio {fmt((confirmation.get('search') or {}).get('size_ratio'))}.")
        return lines
    if confirmation is not None:
        return lines + [f"**Best plan:** none: no plan both kept the floor{bound} on confirmation and ran faster than "
                        "fp32, so the uncompressed policy stays the best (fp32 is always a candidate)."]
    best = best_feasible(records)
    if best is None:
        return lines + [f"**Best feasible plan:** none: no plan both met the floor{bound} and ran faster than fp32, "
                        "so the uncompressed policy stays the best (fp32 is always a candidate)."]
    ratio = value(best, "latency_ratio")
    speed = f" ({1.0 / ratio:.2f}x the fp32 speed)" if ratio else ""
    return lines + [f"**Best feasible plan (not confirmed yet):** trial {best.get('number')}, "
                    f"`{cell(best.get('summary') or '(no summary)')}`: latency ratio {fmt(ratio)}{speed}, retention "
                    f"{fmt(best.get('retention'))}, size ratio {fmt(best.get('size_ratio'))}."]


def _games(paired: Mapping[str, Any] | None) -> str:
    if not paired or paired.get("distinct_pairs") is None:
        return ""
    return (" (exact over the protocol's starts)" if paired.get("exact")
            else f" ({paired['distinct_pairs']} distinct pairs of games)")


def _front(records: Sequence[Mapping[str, Any]]) -> list[str]:
    front = pareto_front(records)
    lines = ["## Pareto front (latency ratio lower is better, retention higher is better)", ""]
    if not front:
        return lines + ["_No trial was both completed and played._"]
    rows = [(r.get("number"), r.get("summary") or "(no summary)", fmt(r.get("latency_ratio")),
             fmt(r.get("retention")), fmt(r.get("size_ratio")), "yes" if r.get("feasible") is True else "no")
            for r in front]
    return lines + table(("trial", "plan", "latency ratio", "retention", "size ratio", "feasible"), rows, "rlrrrc")


RULE = ("A played trial plays paired episodes (the same seeds as fp32) until a sequential test decides: after "
        "each episode, from the second, a Student-t interval of its retention at the run's confidence (shared out "
        "over the looks, Bonferroni), in which each distinct pair of games (fp32's, the plan's) counts once and "
        "which needs at least 3 of them, either lies wholly above the floor (feasible), wholly below it (not), or "
        "the episode budget ends first (undecided: then its mean decides, except that on a deterministic game a "
        "mean at or above the floor is settled: every start is played and the exact retention decides). Where "
        "every start of a deterministic game was played the retention is exact. The best plan is the fastest feasible one faster than fp32, then "
        "confirmed on fresh seeds (on a deterministic game: on all its starts).")


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or without spread."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    import numpy as np
    from scipy.stats import rankdata

    a, b = rankdata(xs), rankdata(ys)
    if np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _played(records: Sequence[Mapping[str, Any]]) -> list[str]:
    played = [r for r in records if is_complete(r) and is_played(r) and not r.get("cached")]
    lines = ["## Played trials", "", RULE, ""]
    if not played:
        return lines + ["_No trial was played._"]
    pairs = [(r["proxy"], r["retention"]) for r in played if r.get("proxy") is not None
             and r.get("retention") is not None]
    rho = spearman([p for p, _ in pairs], [q for _, q in pairs])
    own = [r for r in played if not r.get("episodes_shared_from")]
    episodes = sorted(int(r.get("episodes") or 0) for r in own)
    if episodes:
        lines.append(f"Episodes per played trial: median {episodes[len(episodes) // 2]}, "
                     f"{min(episodes)} to {max(episodes)}, {sum(episodes)} in all over {len(own)} trials.")
    if len(own) < len(played):
        n = len(played) - len(own)
        lines.append(f"{n} trial{'s' if n != 1 else ''} took the episodes of the same plan on another runtime "
                     "instead of playing them again: on the held-out states both runtimes chose the same action "
                     "everywhere and their outputs were within 1 % of fp32's output range.")
    lines.append("Proxy (agreement with fp32 on states the plan visits itself) against measured retention over "
                 "these trials: "
                 + (f"Spearman rank correlation {rho:.2f} (n = {len(pairs)})." if rho is not None
                    else f"no rank correlation (n = {len(pairs)}, too few or no spread)."))
    lines.append("")

    def interval(r: Mapping[str, Any]) -> str:
        low, high = r.get("retention_low"), r.get("retention_high")
        if low is None or high is None:
            return "-"
        return f"[{fmt(low)}, {fmt(high)}]"

    rows = [(r.get("number"), r.get("summary") or "(no summary)", fmt(r.get("latency_ratio")), fmt(r.get("proxy")),
             (f"{r.get('episodes')} (from {r['episodes_shared_from']})" if r.get("episodes_shared_from")
              else r.get("episodes") or "-"), r.get("distinct_pairs") if r.get("distinct_pairs") is not None else "-",
             fmt(r.get("retention")), "exact" if r.get("exact") else interval(r),
             (f"{r.get('decision')}, settled ({fmt(r['settled_from'])} on {r.get('settled_episodes')})"
              if r.get("settled_from") is not None else r.get("decision") or "-"),
             "yes" if r.get("feasible") is True else "no") for r in played]
    header = ("trial", "plan", "latency ratio", "proxy", "episodes", "distinct games", "retention", "interval",
              "decision", "feasible")
    if any(r.get("proposed_as") for r in played):  # the agent said why it proposed each plan (the ILP does)
        rows = [(*row, r.get("proposed_as") or "-") for row, r in zip(rows, played)]
        return lines + table((*header, "proposed as"), rows, "rlrrrrrcccc")
    return lines + table(header, rows, "rlrrrrrccc")


def _fine_tuned(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which trials were fine-tuned before they were judged, and what it bought."""
    tuned = [r for r in records if is_complete(r) and r.get("finetune") and not r.get("cached")]
    if not tuned:
        return []
    lines = ["## Fine-tuned trials", "",
             "Distilled from fp32 (quantization-aware) on the recorded states, then on states each plan visited "
             "itself (DAgger rounds). Where that raised held-out fidelity the trial was judged on the fine-tuned "
             "graph (latency, fidelity, proxy, episodes), kept in `models/`; elsewhere on the graph as built.", ""]
    rows = [(r.get("number"), r.get("summary") or "(no summary)", r["finetune"].get("epochs"),
             r["finetune"].get("rounds"), fmt(r["finetune"].get("fidelity_before")),
             fmt(r["finetune"].get("fidelity_after")), "yes" if r["finetune"].get("kept") else "no",
             fmt(r["finetune"].get("seconds"), 1), fmt(r.get("retention")) if is_played(r) else "not played")
            for r in tuned]
    return lines + table(("trial", "plan", "epochs", "DAgger rounds", "fidelity before", "after", "judged tuned",
                          "seconds", "retention"), rows, "rlrrrrcrr") + [""]


def _references(references: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    lines = ["## Reference points", ""]
    if not references:
        return lines + ["_None given._"]
    rows = [(name, fmt((p or {}).get("latency_ratio")), fmt((p or {}).get("retention")),
             fmt((p or {}).get("size_ratio"))) for name, p in references.items()]
    return lines + table(("reference", "latency ratio", "retention", "size ratio"), rows, "lrrr")


def _counts(records: Sequence[Mapping[str, Any]]) -> list[str]:
    complete = [r for r in records if is_complete(r)]
    measured = [r for r in complete if not r.get("cached")]
    repeats = len(complete) - len(measured)
    played = sum(1 for r in measured if is_played(r))
    skipped = [str(r.get("skip_reason") or "") for r in measured if not is_played(r)]
    latency = sum(1 for reason in skipped if reason.startswith("latency"))
    states = Counter(str(r.get("state", "")).upper() for r in records)
    failed = [r for r in records if str(r.get("state", "")).upper() == "FAIL"]
    lines = ["## Trials", "",
             f"- total: {len(records)}",
             (f"- complete: {len(complete)}, of which measured {len(measured)} (played {played}, not played "
              f"{len(measured) - played}: {latency} could not beat the best feasible latency, "
              f"{len(measured) - played - latency} failed the screen)"
              + (f" and {repeats} repeats (a plan measured before, proposed again: its earlier result, no budget)"
                 if repeats else "")),
             f"- failed: {len(failed)}"]
    errors = Counter(" ".join(str(r.get("error") or "(no error message)").split()) for r in failed)
    lines += [f"  - {n} x `{message.replace('`', chr(39))}`" for message, n in errors.most_common()]
    lines += [f"- {state.lower()}: {n}" for state, n in sorted(states.items()) if state not in ("COMPLETE", "FAIL")]
    return lines


def write_report(
    path_md: str | Path,
    records: Sequence[Mapping[str, Any]],
    references: Mapping[str, Mapping[str, Any]] | None,
    *,
    floor: float | None,
    run_info: Mapping[str, Any],
    plot_name: str = "pareto.png",
    confirmation: Mapping[str, Any] | None = None,
) -> None:
    """Write the markdown report of one search to ``path_md`` and its Pareto plot
    (``plot_pareto``) to ``plot_name`` in the same folder: run facts, the best feasible
    plan, the Pareto front, the reference points, trial counts and failures, the plot.

    ``confirmation``: best/confirm.json or confirm_failed.json where the run confirmed its best
    plan; the report then names the confirmed plan, and every plan that failed confirmation."""
    out = Path(path_md)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    title = " / ".join(str(run_info[k]) for k in ("policy", "method", "agent", "target") if run_info.get(k))
    plot_pareto(records, references, out.parent / plot_name, floor=floor, title=title or "autoquant search")
    lines = _header(run_info, floor)
    lines += [""] + _summary(records, floor, confirmation) + [""]
    lines += _front(records) + [""] + _played(records) + [""] + _fine_tuned(records) + _references(references) + [""]
    lines += _counts(records)
    lines += ["", "## Plot", "", f"![pareto]({plot_name})", ""]
    atomic_write(out, "\n".join(lines).encode("utf-8"), inside=out.parent)
