"""What every benchmark script shares: where the repository, the reference policies and
the results are, quiet libraries, and paths written as from the repository root."""

from __future__ import annotations

import json
import math
import logging
import shlex
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_POLICIES", "DEFAULT_RESULTS", "REPO", "Record", "code_state", "command_line", "exact_words", "finite", "header",
           "pairs_words", "protocol_words", "quiet", "rel", "result_arguments", "retention_words", "run_or_render", "spread_words",
           "time_window", "write_results"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICIES = REPO / ".." / "shared" / "policies"
DEFAULT_RESULTS = REPO / "benchmarks" / "results"


def quiet() -> None:
    """Silence the exporters', quantizers' and Optuna's warnings and onnxruntime's log."""
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("onnxruntime", "brevitas", "torch", "root", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from autoquant.runtimes import quiet_logs

    quiet_logs()


def rel(path: Path) -> str:
    """A path as the command line from the repository root would write it."""
    return os.path.relpath(Path(path).resolve(), REPO)


def code_state() -> dict[str, object]:
    """The git commit of the library a benchmark runs, and whether ``autoquant/`` differs
    from it (uncommitted changes): read at the start, so later commits do not claim it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "autoquant"))}


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How to run ``script`` again with these arguments (the process's own when None)."""
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def write_results(data: dict[str, Any], out: Path, write_markdown: Callable[[dict[str, Any], Path], None]) -> None:
    """``out`` (JSON) and the prose made from it next to it (``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    write_markdown(data, out.with_suffix(".md"))
    print(f"wrote {rel(out)} and {rel(out.with_suffix('.md'))}")


class Record:
    """A results file in the making: made before any work, so the library's commit and
    state it records are those of the code that ran; ``save`` adds the wall time and
    writes the JSON and its prose."""

    def __init__(self, script: str, argv: Sequence[str] | None) -> None:
        import autoquant

        self.start = time.perf_counter()
        self.head: dict[str, Any] = {"autoquant_version": autoquant.__version__, **code_state(),
                                     "command": command_line(script, argv)}

    def save(self, out: Path, write_markdown: Callable[[dict[str, Any], Path], None],
             **payload: Any) -> dict[str, Any]:
        data = {**self.head, "wall_s": time.perf_counter() - self.start, **payload}
        write_results(data, out, write_markdown)
        return data


def result_arguments(parser: Any, name: str) -> None:
    """The options of a benchmark that searches in a work folder and writes results/NAME.{json,md}:
    --policies, --work, --out and --render."""
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "scratch" / name)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / f"{name}.json")
    parser.add_argument("--render", action="store_true", help="only write the .md again from the .json")


def run_or_render(script: str, argv: Sequence[str] | None, args: Any, run_all: Callable[[Any], dict[str, Any]],
                  write_markdown: Callable[[dict[str, Any], Path], None]) -> int:
    """A benchmark's ``main`` where ``args`` has ``out`` and ``render``: the .md made again from
    the .json (``--render``), or ``run_all(args)`` measured and saved with its prose."""
    if args.render:
        write_markdown(json.loads(args.out.read_text()), args.out.with_suffix(".md"))
        return 0
    quiet()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    Record(script, argv).save(args.out, write_markdown, **run_all(args))
    return 0


def header(data: dict[str, Any], title: str) -> list[str]:
    """The lines every results page opens with: what ran, at which commit, and how to run it again."""
    took = f" ({data['wall_s'] / 60:.1f} min here)" if data.get("wall_s") is not None else ""
    return [f"# {title}", "",
            f"autoquant {data['autoquant_version']}, git commit {data['commit']}"
            + (" with uncommitted library changes" if data.get("dirty") else "")
            + f". Reproduce from the repository root{took}:", "", f"    {data['command']}", ""]


def time_window(models: Sequence[tuple[str, bytes] | tuple[str, bytes, str]], x: Any, *, calls: int,
                threads: int = 1) -> list[dict[str, Any]]:
    """Every model timed interleaved in ONE window on the host (50 warm-up calls, ``calls``
    timed in blocks of 20, batch ``x``): p10 and median, and their ratios to the first model,
    with the protocol and the session options they ran with. A model is (label, ONNX) for
    onnxruntime, or (label, ONNX, runtime name)."""
    import numpy as np

    from autoquant.runtimes import get_runtime
    from autoquant.targets import MeasureProtocol, time_interleaved

    protocol = MeasureProtocol(warmup=50, calls=calls, block=20, statistic="p10")
    runtimes = [get_runtime(m[2] if len(m) > 2 else "onnxruntime") for m in models]  # type: ignore[misc]
    sessions = [rt.session(rt.compile(m[1]), threads=threads) for rt, m in zip(runtimes, models)]
    times = time_interleaved([s.bind(x) for s in sessions], protocol)
    ref_p10, ref_median = float(np.percentile(times[0], 10)), float(np.median(times[0]))
    out = []
    for model, rt, t in zip(models, runtimes, times):
        p10, median = float(np.percentile(t, 10)), float(np.median(t))
        out.append({"label": model[0], "runtime": rt.name, "p10_ms": p10 * 1e3, "median_ms": median * 1e3,
                    "ratio_p10": p10 / ref_p10, "ratio_median": median / ref_median,
                    "protocol": {**protocol.to_json(), "threads": threads}, "session": rt.session_options(threads)})
    return out


# --- how reward figures are worded on every page (protocol, distinct games, exact or interval) ---


def finite(value: Any) -> float | None:
    """A float, or None where it is missing or not finite (an interval that is not defined)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def protocol_words(data: Any) -> str:
    """An episode protocol (``protocol``, ``starts``, ``sticky_actions`` keys) as ``Protocol.name``
    words it, no sticky actions said outright; "n/a" where a page's JSON predates it."""
    name = data.get("protocol")
    if name is None:
        return "n/a"
    return name + (", no sticky actions" if data.get("starts") is not None and not data.get("sticky_actions") else "")


def exact_words(starts: Any) -> str:
    return "exact over " + (f"the {starts}" if starts is not None else "the protocol's") + " starts"


def pairs_words(pairs: Any) -> str:
    return f"{pairs} distinct pairs" if pairs is not None else "distinct pairs n/a"


def retention_words(value: Any, low: Any, high: Any, exact: Any, starts: Any, *, recorded: bool,
                    missing: str = "n/a") -> str:
    """A retention with its 95 % interval, or "exact over the N starts" where every start was
    played; ``recorded``: whether the page's JSON records intervals at all."""
    if value is None:
        return missing
    if exact:
        return f"{value:.3f} {exact_words(starts)}"
    low, high = finite(low), finite(high)
    if low is not None and high is not None:
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.3f} " + ("(no interval)" if recorded else "(interval n/a)")


def spread_words(stats: Any) -> str:
    """Median (range) of a per-trial count, "n/a" where not recorded."""
    if not stats or stats.get("median") is None:
        return "n/a"
    return f"{stats['median']:g} ({stats['min']}-{stats['max']})"


# --- claims under both episode protocols (as the headline claims plans) ---------------------------

EXACT_RULE, STICKY_LOW_RULE = 0.98, 0.9  # deterministic retention (exact); sticky 95 % lower bound
STICKY, CLAIM_SEED = 0.25, 7  # sticky-action probability; claims on episode_seeds(7, n): 107000..


def claim_references(bundle: Any, reference_onnx: bytes, *, sticky_episodes: int,
                     log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """fp32 (onnxruntime) and a random policy on each protocol's claim seeds: every no-op
    start of the deterministic game, ``sticky_episodes`` seeds with sticky actions."""
    from autoquant.evaluate import episode_seeds, onnx_actor, play_episodes, random_actor
    from autoquant.policy import resolve_protocol

    env_id = bundle.env_id
    refs: dict[str, dict[str, Any]] = {}
    for name, protocol in (("deterministic", resolve_protocol(env_id)), ("sticky", resolve_protocol(env_id, STICKY))):
        seeds = episode_seeds(CLAIM_SEED, protocol.starts if protocol.starts is not None else sticky_episodes,
                              protocol)
        log(f"fp32 (onnxruntime) and random, {name}, {len(seeds)} seeds")
        refs[name] = {"seeds": seeds, "protocol": protocol,
                      "fp32": play_episodes(onnx_actor(bundle, reference_onnx), env_id, seeds, protocol=protocol,
                                            n_envs=8),
                      "random": play_episodes(random_actor(bundle.action_space, CLAIM_SEED), env_id, seeds,
                                              protocol=protocol, n_envs=8)}
    return refs


def claim_both(bundle: Any, onnx: bytes, runtime: str, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``onnx`` played in ``runtime``'s numerics, paired with fp32 on each protocol's seeds.
    The sticky games are played only where the deterministic rule holds (a model must hold
    under both)."""
    from autoquant.evaluate import onnx_actor, paired_comparison, play_episodes

    claims: dict[str, Any] = {}
    for name, ref in refs.items():
        if name == "sticky" and not claims["deterministic"]["holds"]:
            continue
        t0 = time.perf_counter()
        episodes = play_episodes(onnx_actor(bundle, onnx, runtime), bundle.env_id, ref["seeds"],
                                 protocol=ref["protocol"], n_envs=8)
        paired = paired_comparison(episodes, ref["fp32"], ref["random"])
        holds = paired["retention"] >= EXACT_RULE if name == "deterministic" else \
            paired["retention_low"] >= STICKY_LOW_RULE
        claims[name] = {"reward": episodes.mean, "retention": paired["retention"], "low": paired["retention_low"],
                        "high": paired["retention_high"], "exact": paired["exact"],
                        "distinct_pairs": paired["distinct_pairs"], "distinct_games": episodes.distinct_games,
                        "episodes": len(episodes.seeds), "starts": ref["protocol"].starts, "holds": bool(holds),
                        "seconds": time.perf_counter() - t0}
    return {"claims": claims, "holds": len(claims) == len(refs) and all(c["holds"] for c in claims.values())}


def reference_summary(refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a results page says of the references (JSON-ready)."""
    return {k: {"seeds": len(v["seeds"]), "fp32": v["fp32"].mean, "random": v["random"].mean,
                "fp32_distinct_games": v["fp32"].distinct_games, "sticky_actions": v["protocol"].sticky_actions,
                "starts": v["protocol"].starts} for k, v in refs.items()}
