"""compare: the same policy, target, seeds and budget for several methods and agents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoquant._io import check_output_folder
from autoquant.errors import UsageError
from autoquant.search._artifacts import DEFAULT_STORAGE, RunConfig
from autoquant.search._run import Run, load_run, start_run
from autoquant.search._study import SEARCH_SECONDS

__all__ = ["compare"]


def _wall_s(records: list[dict[str, Any]]) -> float | None:
    times = [r["wall_s"] for r in records if r.get("wall_s") is not None]
    return max(times) if times else None


def compare(out: Path, base: RunConfig, *, methods: Sequence[str], agents: Sequence[str],
            trust_pickle: bool = False, log: Callable[[str], None] = lambda s: None,
            progress: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Run every method x agent on ``base``'s budget and seed (resuming finished or
    interrupted combinations), then write compare.{md,json,png} to ``out``."""
    from autoquant.report import write_compare

    if not methods or not agents:
        raise UsageError("compare needs at least one method and one agent")
    out = Path(out)
    check_output_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Run] = {}
    first: Run | None = None
    for method in methods:
        for agent in agents:
            label = f"{method}/{agent}"
            folder = out / f"{method}-{agent}"
            config = base.replace(method=method, agent=agent, study_name=None)
            if (folder / "run.json").is_file():
                run = load_run(folder, trust_pickle=trust_pickle, n_trials=base.n_trials,
                               time_budget_s=base.time_budget_s, sticky_actions=base.sticky_actions,
                               storage=None if base.storage == DEFAULT_STORAGE else base.storage,
                               target=base.target, device=base.device, secret_file=base.secret_file)
            else:
                run = start_run(folder, config, trust_pickle=trust_pickle, log=log, share_from=first)
            first = first or run
            log(f"{label}: {base.n_trials} trials"
                + (f" or {base.time_budget_s:g} s, whichever comes first" if base.time_budget_s else ""))
            run.search(progress=progress(label, base.n_trials) if progress else None)
            run.confirm()
            run.write_report()
            runs[label] = run
    results: dict[str, dict[str, Any]] = {label: {"records": run.report_records()} for label, run in runs.items()}
    for label, entry in results.items():
        entry["wall_s"] = _wall_s(entry["records"])
        entry["search_s"] = runs[label].study().user_attrs.get(SEARCH_SECONDS)
    some = next(iter(runs.values()))
    references = some.references()
    fp32 = some.problem.fp32_episodes
    episodes = {"protocol": some.protocol.to_json(), "sticky_actions": some.protocol.sticky_actions,
                "fp32_episodes": len(fp32.seeds), "fp32_distinct_games": fp32.distinct_games}
    rows = write_compare(out, results, floor=base.settings.min_retention, references=references,
                         episodes=episodes)
    for row in rows:  # what confirmation found, with the games behind it
        found = runs[row["combo"]].confirmation()
        best = found.best if found is not None else None
        row["confirmed"] = {"trial": best.trial if best else None,
                            "retention": best.confirm.retention if best else None,
                            "exact": best.confirm.exact if best else None,
                            "distinct_pairs": best.confirm.distinct_pairs if best else None,
                            "failed": [a.trial for a in (found.attempts if found else ()) if not a.passed]}
    return {"out": str(out), "rows": rows, **episodes,
            "runs": {label: str(run.folder) for label, run in runs.items()}}
