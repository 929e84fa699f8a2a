"""Episodes with the envs stepped in worker processes against envs stepped in the caller.

The +17 Pong DQN (fp32, onnxruntime) plays the same seeds with ``play_episodes`` in one
process and with ``workers`` = 1, 2, ... worker processes, in rounds that alternate the
settings (so that the machine's load falls on all of them alike). Printed and written:
env steps per second of each, its ratio to one process measured in the same rounds, and
whether every setting played the same episodes (rewards, lengths, games).

    python benchmarks/env_workers.py                    # about 4 minutes on 2 cores
    python benchmarks/env_workers.py --workers 1 2 4 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_POLICIES, DEFAULT_RESULTS, header, run_or_render  # noqa: E402

ENV_ID = "PongNoFrameskip-v4"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from autoquant.compress import export_reference
    from autoquant.evaluate import close_env_workers, env_workers, episode_seeds, onnx_actor, play_episodes
    from autoquant.policy import load_policy, resolve_protocol

    bundle = load_policy(args.policies / "dqn-PongNoFrameskip-v4" / "dqn_pong.pt", env_id=ENV_ID)
    act = onnx_actor(bundle, export_reference(bundle))
    protocol = resolve_protocol(ENV_ID, args.sticky or None)
    seeds = episode_seeds(0, args.episodes, protocol)
    settings = [0, *args.workers]
    for w in args.workers:  # started before the clock: a search keeps its workers for all its trials
        env_workers(ENV_ID, protocol, min(args.envs, len(seeds)), w)
    rates: dict[int, list[float]] = {w: [] for w in settings}
    played: dict[int, Any] = {}
    for r in range(args.rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        for w in order:
            t0 = time.perf_counter()
            stats = play_episodes(act, ENV_ID, seeds, protocol=protocol, n_envs=args.envs, max_steps=args.max_steps,
                                  workers=w)
            wall = time.perf_counter() - t0
            rates[w].append(sum(stats.lengths) / wall)
            played[w] = (stats.rewards, stats.lengths, stats.labels)
            print(f"round {r} workers {w}: {sum(stats.lengths) / wall:.0f} env steps/s", flush=True)
    close_env_workers()
    base = statistics.median(rates[0])
    return {"env_id": ENV_ID, "protocol": protocol.to_json(), "episodes": len(seeds), "envs": args.envs,
            "max_steps": args.max_steps, "rounds": args.rounds, "cpus": os.cpu_count(),
            "same_episodes": all(played[w] == played[0] for w in settings),
            "rows": [{"workers": w, "steps_per_s": statistics.median(rates[w]), "all": rates[w],
                      "ratio": statistics.median(rates[w]) / base} for w in settings]}


def markdown(data: dict[str, Any], path: Path) -> None:
    lines = header(data, "Env steps in worker processes")
    lines += [f"The Pong DQN (fp32, onnxruntime, batch = the live envs) plays {data['episodes']} seeds "
              f"({data['protocol']['name']}), {data['envs']} envs, each episode cut at {data['max_steps']} steps, "
              f"on a machine with {data['cpus']} CPUs; {data['rounds']} rounds alternate the settings, and each "
              "figure is the median over them.", "",
              "| env processes | env steps/s | vs one process |", "|:---|---:|---:|"]
    for row in data["rows"]:
        name = "the caller (workers = 0)" if row["workers"] == 0 else f"{row['workers']} workers"
        lines.append(f"| {name} | {row['steps_per_s']:.0f} | {row['ratio']:.2f}x |")
    best = max(data["rows"], key=lambda r: r["ratio"])
    lines += ["", "Every setting played the same episodes (rewards, lengths, games): "
              + ("**yes**." if data["same_episodes"] else "**no**: a defect."), "",
              f"The fastest here is {best['workers']} workers, {best['ratio']:.2f}x one process. The network's "
              "batch is computed in the caller while the workers wait, and the workers step while it waits, so "
              "on a machine this small the envs' share of an episode bounds the gain. Searches, confirmation "
              "and `evaluate` take it with `AUTOQUANT_ENV_WORKERS=N`; the default stays 0 (the caller)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--envs", type=int, default=6)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sticky", type=float, default=0.0)
    p.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "env_workers.json")
    p.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    return run_or_render("benchmarks/env_workers.py", argv, p.parse_args(argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
