"""ActorQ: what one broadcast costs an actor, next to one step of its environment.

For the Nature-CNN Q-network of DQN on Pong (``dqn-PongNoFrameskip-v4/dqn_pong.pt``)
and the DQN MLP on CartPole (``dqn-CartPole-v1/CartPole-v1.zip``), two plans each
(uniform int8, and int8 with 50 % of every hidden layer's channels pruned; for Pong also
the host plan of ``benchmarks/results/headline.md``, whose first two convolutions stay
float) are made
into ActorQ bundles (``autoquant.actorq.write_bundle`` of a round-to-nearest
compression), and measured in one window per network (rounds of one build of each
plan, order alternating, then a block of environment steps):

  - rebuild time per broadcast: ``ActorQuantizer.build(state_dict)`` from the
    learner's fp32 state dict (torch tensors, original key names), median over
    ``--builds`` builds with freshly perturbed learner weights each time (nothing can
    be cached), split into the numpy quantization (``quantize``, the learner's share
    when it quantizes centrally) and the onnxruntime session (``build_quantized``,
    the actor's share then), on the rebuild path the quantizer chose (``rebuild``
    "auto": a graph optimized once, where that is checked and faster) and, for the
    same payloads in the same rounds, on a fresh session that optimizes the graph
    every build (``rebuild="session"``, the path before);
  - broadcast payload: the fp32 weights of the policy's layers against the centrally
    quantized payload (int8 weights, per-channel scales, int32 biases and their
    scales; float layers stay fp32);
  - one environment step of the env the policy plays (``autoquant.policy.make_env``,
    so Pong has the project's Atari wrappers and frame stack), random actions, in
    blocks between the builds; and one ``predict`` of the rebuilt actor at batch 1;
  - that a build from the learner's own weights reproduces the bundle's template
    (argmax agreement and max output difference on recorded states).

Run from the repository root:

    python benchmarks/actorq_rebuild.py            # writes benchmarks/results/actorq_rebuild.{json,md}
    python benchmarks/actorq_rebuild.py --quick    # 5 builds, prints only
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import DEFAULT_POLICIES, DEFAULT_RESULTS, rel  # benchmarks/common.py

DEFAULT_OUT = DEFAULT_RESULTS


@dataclass(frozen=True)
class Network:
    key: str
    title: str
    path: str  # relative to the policies directory
    env_id: str | None  # None: implied by the file
    states: int
    env_steps: int  # env steps timed per round (one round: one build of each plan)


NETWORKS = (
    Network("pong", "Nature-CNN Q-network (DQN, PongNoFrameskip-v4)", "dqn-PongNoFrameskip-v4/dqn_pong.pt",
            "PongNoFrameskip-v4", 128, 25),
    Network("cartpole", "MLP Q-network (DQN, CartPole-v1)", "dqn-CartPole-v1/CartPole-v1.zip", None, 256, 250),
)




def learner_state_dict(path: Path) -> dict[str, Any]:
    """The learner's state dict as the file holds it (SB3: policy.pth, with the target network)."""
    import torch

    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            return torch.load(io.BytesIO(z.read("policy.pth")), weights_only=True, map_location="cpu")
    return torch.load(path, weights_only=True, map_location="cpu")


class EnvClock:
    """Times ``env.step`` with random actions, a block at a time (resets excluded)."""

    def __init__(self, env_id: str, seed: int = 0) -> None:
        from autoquant.policy import make_env

        self.env = make_env(env_id)
        self.env.action_space.seed(seed)
        self.env.reset(seed=seed)
        self.times: list[float] = []
        self.block(20)
        self.times.clear()  # warm-up steps are not counted

    def block(self, steps: int) -> None:
        for _ in range(steps):
            action = self.env.action_space.sample()
            start = time.perf_counter()
            _, _, term, trunc, _ = self.env.step(action)
            self.times.append(time.perf_counter() - start)
            if term or trunc:
                self.env.reset()

    def summary(self) -> dict[str, float]:
        ms = np.array(self.times) * 1e3
        return {"median": float(np.median(ms)), "mean": float(ms.mean()), "p10": float(np.percentile(ms, 10)),
                "steps": len(ms)}


def _ms(values: list[float]) -> dict[str, float]:
    ms = np.array(values) * 1e3
    return {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)), "min": float(ms.min()),
            "max": float(ms.max())}


def _perturbed(learner: dict[str, Any], generator: Any) -> dict[str, Any]:
    """New learner weights: every float tensor moved by 1 % of its spread."""
    import torch

    return {k: v + 0.01 * float(v.std()) * torch.randn(v.shape, generator=generator) if v.is_floating_point()
            else v for k, v in learner.items()}


@dataclass
class PlanClock:
    """One plan's quantizer and the times of its builds."""

    quantizer: Any
    fresh: Any  # the same bundle rebuilt with a fresh, optimizing session every build
    first_build: float
    check: dict[str, Any]
    build: list[float]
    quantize: list[float]
    session: list[float]
    fresh_session: list[float]
    payload_bytes: int = 0

    def round(self, learner: dict[str, Any], generator: Any) -> None:
        moved = _perturbed(learner, generator)  # fresh learner weights, outside the timed region
        start = time.perf_counter()
        self.quantizer.build(moved)
        self.build.append(time.perf_counter() - start)
        moved = _perturbed(learner, generator)
        start = time.perf_counter()
        payload = self.quantizer.quantize(moved)
        middle = time.perf_counter()
        self.quantizer.build_quantized(payload)
        self.session.append(time.perf_counter() - middle)
        self.quantize.append(middle - start)
        start = time.perf_counter()
        self.fresh.build_quantized(payload)
        self.fresh_session.append(time.perf_counter() - start)
        self.payload_bytes = sum(int(v.nbytes) for v in payload.values())


def open_plan(bundle_dir: Path, learner: dict[str, Any], states: np.ndarray) -> PlanClock:
    """A quantizer for the bundle, its first build, and that build checked against the template."""
    from autoquant.actorq import ActorQuantizer, load_bundle
    from autoquant.runtimes import OrtRunner

    quantizer = ActorQuantizer(load_bundle(bundle_dir))
    start = time.perf_counter()
    policy = quantizer.build(learner)
    first = time.perf_counter() - start
    fresh = ActorQuantizer(load_bundle(bundle_dir), rebuild="session")
    fresh.build(learner)
    template = OrtRunner(quantizer.bundle.template)(states)
    got = policy.forward(states)
    check = {"states": len(states),
             "action_agreement": float(np.mean(got.argmax(axis=1) == template.argmax(axis=1))),
             "max_abs_output_difference": float(np.abs(got - template).max())}
    return PlanClock(quantizer, fresh, first, check, [], [], [], [])


def predict_ms(policy: Any, x: np.ndarray, calls: int = 500) -> dict[str, float]:
    for _ in range(50):
        policy.predict(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        policy.predict(x)
        times.append(time.perf_counter() - start)
    return _ms(times)


def run_network(network: Network, policies: Path, builds: int, seed: int) -> dict[str, Any]:
    """Both plans' builds and blocks of env steps, interleaved in one window."""
    import torch

    from autoquant.actorq import write_bundle
    from autoquant.compress import CompressionPlan, LayerSpec, compress
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy

    path = policies / network.path
    bundle = load_policy(path, env_id=network.env_id)
    table = analyse(bundle)
    print(f"\n{network.title}: {network.path}", flush=True)
    states = record_states(bundle, n=network.states, seed=0, n_envs=2).states
    learner = learner_state_dict(path)
    plans = {
        "int8": CompressionPlan.uniform(table, weight_bits=8, act_bits=8),
        "int8_pruned_0.5": CompressionPlan.uniform(table, weight_bits=8, act_bits=8, prune_ratio=0.5),
    }
    if network.key == "pong":  # the host plan of benchmarks/results/headline.md: float convolutions first
        plans["headline_host"] = CompressionPlan({
            "conv1": LayerSpec(None, None, 0.75), "conv2": LayerSpec(None, None, 0.25), "conv3": LayerSpec(8, 8),
            "fc1": LayerSpec(8, 8, 0.5), "fc2": LayerSpec(8, 8)})
    clocks: dict[str, PlanClock] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, plan in plans.items():
            compressed = compress(bundle, plan, states, rounding="nearest")
            write_bundle(compressed, Path(tmp) / key)
            clocks[key] = open_plan(Path(tmp) / key, learner, states)
    env = EnvClock(bundle.env_id)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    print(f"  {builds} rounds: {', '.join(clocks)} builds and {network.env_steps} env steps each", flush=True)
    for i in range(builds):
        for key in (list(clocks) if i % 2 == 0 else list(clocks)[::-1]):
            clocks[key].round(learner, generator)
        env.block(network.env_steps)
    step = env.summary()
    env.env.close()
    rows = {}
    fp32 = sum(4 * int(np.prod(r.weight_shape)) + 4 * int(np.prod(r.bias_shape or ()))
               for r in next(iter(clocks.values())).quantizer.bundle.layers)
    for key, clock in clocks.items():
        build = _ms(clock.build)
        rows[key] = {
            "summary": clock.quantizer.bundle.manifest["summary"],
            "build_ms": {**build, "first_build": 1e3 * clock.first_build, "builds": len(clock.build)},
            "quantize_ms": _ms(clock.quantize),
            "session_ms": _ms(clock.session),
            "fresh_session_ms": _ms(clock.fresh_session),
            "rebuild_path": clock.quantizer.rebuild_choice,
            "session_in_env_steps": _ms(clock.session)["median"] / step["median"],
            "fresh_session_in_env_steps": _ms(clock.fresh_session)["median"] / step["median"],
            "predict_ms": predict_ms(clock.quantizer.build(learner), states[:1]),
            "build_in_env_steps": build["median"] / step["median"],
            "payload_bytes": {"fp32_state_dict": fp32, "central": clock.payload_bytes,
                              "ratio": clock.payload_bytes / fp32},
            "whole_state_dict_bytes": sum(int(v.numel()) * v.element_size() for v in learner.values()),
            "template_check": clock.check,
        }
    return {"title": network.title, "policy": network.path, "env_id": bundle.env_id,
            "input_shape": list(bundle.input_shape), "env_step_ms": step, "plans": rows}


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB"


def markdown(network: dict[str, Any]) -> str:
    step = network["env_step_ms"]
    lines = [
        f"### {network['title']}",
        "",
        (f"`{network['policy']}`, input {tuple(network['input_shape'])}; one `{network['env_id']}` step: "
         f"median {step['median']:.4f} ms (mean {step['mean']:.4f} ms, {step['steps']} random-action steps)"),
        "",
        ("| plan | rebuild path | build ms median | build ms p10 | = env steps | quantize ms | session ms "
         "| = env steps | fresh session ms | = env steps | first build ms "
         "| predict ms | fp32 payload | central payload | ratio | template agreement |"),
        "|---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in network["plans"].values():
        pay = row["payload_bytes"]
        lines.append(
            f"| {row['summary']} | {row['rebuild_path']['path']} | {row['build_ms']['median']:.2f} | "
            f"{row['build_ms']['p10']:.2f} | {row['build_in_env_steps']:.1f} | "
            f"{row['quantize_ms']['median']:.2f} | {row['session_ms']['median']:.2f} | "
            f"{row['session_in_env_steps']:.1f} | {row['fresh_session_ms']['median']:.2f} | "
            f"{row['fresh_session_in_env_steps']:.1f} | "
            f"{row['build_ms']['first_build']:.1f} | {row['predict_ms']['median']:.4f} | "
            f"{_fmt_bytes(pay['fp32_state_dict'])} | {_fmt_bytes(pay['central'])} | {pay['ratio']:.3f} | "
            f"{row['template_check']['action_agreement']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--builds", type=int, default=20, help="timed builds per plan (default 20)")
    parser.add_argument("--quick", action="store_true", help="5 builds, print only")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import onnxruntime
    import torch

    import autoquant
    from autoquant.targets import host_facts

    torch.set_num_threads(1)
    builds = 5 if args.quick else args.builds
    command = "python benchmarks/actorq_rebuild.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    facts = {**host_facts(1), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
             "torch": torch.__version__}
    results: dict[str, Any] = {"format": "autoquant.benchmark.actorq_rebuild", "version": 1,
                               "autoquant_version": autoquant.__version__, "command": command.strip(),
                               "facts": facts, "builds": builds, "networks": {}}
    sections = []
    for network in NETWORKS:
        data = run_network(network, args.policies, builds, args.seed)
        results["networks"][network.key] = data
        sections.append(markdown(data))
        print("\n" + sections[-1], flush=True)
    facts_md = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    document = (
        "# ActorQ: rebuilding a quantized actor per broadcast\n\n"
        f"autoquant {autoquant.__version__}. Reproduce from the repository root:\n\n    {command.strip()}\n\n"
        "Protocol: a bundle per plan (round-to-nearest weights, calibrated on recorded states); "
        f"{builds} rounds per network, each one build of every plan (order alternating) from the learner's fp32 "
        "state dict (torch tensors) with freshly perturbed weights, then a block of env steps, so builds and "
        "steps share one window. Build = numpy quantization (quantize column) + onnxruntime session on the fixed "
        "graph (session column, what an actor pays when the learner quantizes centrally), one thread, on the "
        "rebuild path the quantizer chose on its first build (`preoptimized`: a session on the graph it "
        "optimized once, checked bit-exact against a fresh session; `session`: a fresh session that optimizes "
        "the graph); 'fresh session' is the same payload on a fresh, optimizing session in the same round (the "
        "path before the pre-optimized graph); '= env steps' is the median time over the median env step. The fp32 payload counts the policy's "
        "layers only (an SB3 DQN state dict also holds the target network, which is not broadcast); the central "
        "payload is `ActorQuantizer.quantize`'s int8 weights, per-channel scales and int32 biases with their "
        "scales. Env steps: random actions, the project's wrappers (`autoquant.policy.make_env`). Template "
        "agreement: a build from the learner's own weights against the bundle's template ONNX (argmax actions "
        "on the recorded states). Absolute times drift with the machine's load; compare within a table, "
        "where builds and env steps shared one window.\n\n"
        "Which side quantizes: when the broadcast's size matters, the learner quantizes centrally "
        "(`ActorQuantizer.quantize`) and broadcasts the int8 payload, and actors pay only the session "
        "column; otherwise actors receive fp32 and pay the whole build (`ActorQuantizer.build`).\n\n"
        f"## Device\n\n{facts_md}\n\n## Results\n\n" + "\n".join(sections)
    )
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "actorq_rebuild.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "actorq_rebuild.md").write_text(document)
        print(f"wrote {rel(out / 'actorq_rebuild.json')} and {rel(out / 'actorq_rebuild.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
