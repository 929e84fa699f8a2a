"""How well does the measured latency model predict whole plans?

For each target, the model of the Pong CNN is measured from scratch (every layer
option alone and every adjacent pair, in context, the rest fp32: ``LatencyModel``),
then random plans of the joint space (seeded, the same plans on every target) are
predicted and measured end to end as a trial measures them. Printed and written: the
relative error of the raw prediction, and of the prediction corrected by the trials
measured before it (as a search corrects it), with the probes' cost.

On the host a ratio is the p10 latency over fp32's in one interleaved window (noisy
by a few per cent); on an emulated Arm target it is guest instructions over fp32's
(deterministic to about 0.3 %), so the emulated error is the model's own.

    python benchmarks/latency_model.py                                    # host and emulated A76
    python benchmarks/latency_model.py --targets arm-a72-emulated --plans 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_POLICIES, DEFAULT_RESULTS, Record, header, quiet, rel  # noqa: E402

POLICY = ("dqn-PongNoFrameskip-v4", "dqn_pong.pt")
ENV = "PongNoFrameskip-v4"
GOAL = 0.10  # median relative error the issue asks for


def _stats(errors: list[float]) -> dict[str, float]:
    a = np.asarray(errors, dtype=float)
    return {"median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)), "max": float(a.max()),
            "mean": float(a.mean())}


def measure(target_name: str, policies: Path, n_plans: int, seed: int) -> dict[str, Any]:
    from autoquant.compress import ActivationCache, compress, export_reference
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy
    from autoquant.search import load_space
    from autoquant.agents import LatencyModel
    from autoquant.targets import find_target_spec, get_target

    bundle = load_policy(policies.joinpath(*POLICY), env_id=ENV)
    table = analyse(bundle)
    space = load_space("joint", table, accelerated_precisions=find_target_spec(target_name).accelerated_precisions)
    states = np.asarray(record_states(bundle, n=512, seed=seed).states, dtype=np.float32)
    reference = export_reference(bundle)
    target = get_target(target_name)
    cache = ActivationCache(bundle.net, states)
    x = states[:1]

    def ratio_of(plan: Any) -> float:
        compressed = compress(bundle, plan, states, seed=seed, cache=cache, rounding="nearest", verify_kernels=False)
        result = target.measure(compressed.onnx, reference, x)
        return float(result.ratio)

    model = LatencyModel.measure(table, space, ratio_of, log=lambda s: print(f"  {s}", flush=True))
    print(f"  {model.probes} probes in {model.measured_s:.0f} s", flush=True)
    rng = np.random.default_rng(seed)
    distributions = space.distributions()
    seen: set[str] = set()
    rows = []
    while len(rows) < n_plans:
        chosen = {key: dist.choices[int(rng.integers(len(dist.choices)))] for key, dist in distributions.items()}
        plan = space.plan(chosen)
        if plan.describe() in seen or plan.is_identity:
            continue
        seen.add(plan.describe())
        raw = model.predict(table, plan) / model.correction
        corrected = model.predict(table, plan)
        measured = ratio_of(plan)
        model.observe(table, plan, measured)
        rows.append({"plan": plan.describe(), "measured": measured, "raw": raw, "corrected": corrected,
                     "raw_error": abs(raw - measured) / measured,
                     "corrected_error": abs(corrected - measured) / measured})
    out = {"target": target_name, "unit": "instructions" if "emulated" in target_name else "ms (p10)",
           "probes": model.probes, "probe_s": model.measured_s, "plans": rows,
           "raw": _stats([r["raw_error"] for r in rows]),
           "corrected": _stats([r["corrected_error"] for r in rows[5:]] or [r["corrected_error"] for r in rows])}
    print(f"  raw median {out['raw']['median']:.3f}, corrected median {out['corrected']['median']:.3f}", flush=True)
    return out


def write_markdown(data: dict[str, Any], path: Path) -> None:
    lines = [
        *header(data, "Latency model: predicted against measured, Pong CNN"),
        "The model of each target is measured from scratch (every layer option alone and every adjacent pair, "
        "the rest fp32), then the same random joint plans are predicted and measured end to end. *Raw*: the "
        "model's prediction; *corrected*: scaled by the median measured/predicted of the plans measured before "
        "it, as a search corrects it (its statistics skip the first 5 plans). Error = |predicted - measured| / "
        f"measured. Goal: median <= {GOAL:.0%}.",
        "",
        "| target | unit | probes | probe s | plans | raw median | raw p90 | raw max | corrected median | "
        "corrected p90 | goal met |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for t in data["targets"]:
        best = min(t["raw"]["median"], t["corrected"]["median"])
        lines.append(
            f"| {t['target']} | {t['unit']} | {t['probes']} | {t['probe_s']:.0f} | {len(t['plans'])} | "
            f"{t['raw']['median']:.1%} | {t['raw']['p90']:.1%} | {t['raw']['max']:.1%} | "
            f"{t['corrected']['median']:.1%} | {t['corrected']['p90']:.1%} | {'yes' if best <= GOAL else 'no'} |")
    lines += ["", "Worst raw predictions per target:", ""]
    for t in data["targets"]:
        worst = sorted(t["plans"], key=lambda r: -r["raw_error"])[:3]
        for r in worst:
            lines.append(f"- {t['target']}: `{r['plan']}`: measured {r['measured']:.3f}, predicted {r['raw']:.3f} "
                         f"({r['raw_error']:.1%})")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["host", "arm-a76-emulated"])
    parser.add_argument("--plans", type=int, default=30, help="random plans per target (default 30)")
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "latency_model.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet()
    record = Record("benchmarks/latency_model.py", argv)
    targets = []
    for name in args.targets:
        print(f"{name}:", flush=True)
        targets.append(measure(name, args.policies, args.plans, args.seed))
    record.save(args.out, write_markdown, targets=targets)
    print(f"see {rel(args.out.with_suffix('.md'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
