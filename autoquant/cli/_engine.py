"""Engine commands: ``inspect`` and ``evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoquant.cli import Command, register
from autoquant.errors import UsageError

__all__ = ["EvaluateCommand", "InspectCommand"]


def _strides(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 4,2,1, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"strides must be positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


# The activations a state dict may use (autoquant.policy._arch.ACTIVATIONS), named
# here so that building the parser imports no torch (the device side has none).
ACTIVATION_NAMES = ("elu", "gelu", "leaky_relu", "relu", "sigmoid", "silu", "tanh")


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, type=Path,
                        help="SB3 .zip, torch state dict / TorchScript .pt")
    parser.add_argument("--env", help="gymnasium id (default: what the file implies)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a .pt holding a pickled nn.Module (runs code from the file)")
    parser.add_argument("--activation", choices=ACTIVATION_NAMES,
                        help="activation of a state-dict network (default relu, or the SB3 algorithm's)")
    parser.add_argument("--conv-strides", type=_strides, metavar="S1,S2,...",
                        help="conv strides of a state-dict CNN that is not the Nature CNN")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="host", help="hardware target: a name from 'autoquant targets' "
                        "or a .toml path (default host)")
    parser.add_argument("--device", metavar="HOST:PORT", help="the board of a remote target "
                        "(else AUTOQUANT_DEVICE, else the target's TOML)")
    parser.add_argument("--secret-file", help="the device's shared secret (else AUTOQUANT_SECRET_FILE, "
                        "else ~/.autoquant-secret)")


def load_from_args(args: argparse.Namespace) -> Any:
    from autoquant.policy import load_policy

    return load_policy(args.policy, env_id=args.env, trust_pickle=args.trust_pickle,
                       activation=args.activation, conv_strides=args.conv_strides)


def policy_json(bundle: Any) -> dict[str, Any]:
    return {"source": str(bundle.source), "algo": bundle.algo, "env_id": bundle.env_id,
            "input_shape": list(bundle.input_shape), "action": bundle.action.to_json(),
            "obs_scale": bundle.obs_scale}


def _fmt_int(n: int) -> str:
    return f"{n:,}"


@register
class InspectCommand(Command):
    name = "inspect"
    help = "print a policy's layer table (shapes, params, MACs, what may be compressed)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_policy_arguments(parser)

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.policy import analyse

        bundle = load_from_args(args)
        table = analyse(bundle)
        return {"policy": policy_json(bundle), **table.to_json()}

    def render(self, result: dict[str, Any]) -> str:
        p = result["policy"]
        lines = [
            f"policy  {p['source']}",
            f"algo    {p['algo']}    env {p['env_id'] or '(unknown: pass --env)'}    "
            f"input {tuple(p['input_shape'])}    action {p['action']['kind']}",
            "",
            f"{'layer':<8} {'type':<7} {'in':<14} {'out':<14} {'params':>11} {'MACs':>12}  "
            f"{'prunable':<9}{'quantizable':<12}{'head'}",
        ]
        for layer in result["layers"]:
            lines.append(
                f"{layer['name']:<8} {layer['type']:<7} {str(tuple(layer['in_shape'])):<14} "
                f"{str(tuple(layer['out_shape'])):<14} {_fmt_int(layer['params']):>11} "
                f"{_fmt_int(layer['macs']):>12}  {('yes' if layer['prunable'] else 'no'):<9}"
                f"{('yes' if layer['quantizable'] else 'no'):<12}{'yes' if layer['action_head'] else ''}"
            )
        lines.append(f"{'total':<8} {'':<7} {'':<14} {'':<14} {_fmt_int(result['total_params']):>11} "
                     f"{_fmt_int(result['total_macs']):>12}")
        return "\n".join(lines)


@register
class EvaluateCommand(Command):
    name = "evaluate"
    help = "play and time the fp32 policy and, with --plan, its compressed version side by side"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_policy_arguments(parser)
        parser.add_argument("--plan", type=Path, help="compression plan JSON")
        parser.add_argument("--episodes", type=_non_negative, default=20,
                            help="episodes per policy, on shared seeds (default 20)")
        add_target_arguments(parser)
        parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
        parser.add_argument("--seed", type=_non_negative, default=0)
        parser.add_argument("--states", type=_positive, default=1024,
                            help="recorded states for calibration and fidelity (default 1024)")
        parser.add_argument("--finetune", type=_non_negative, default=0, metavar="EPOCHS",
                            help="fine-tune the compressed network by distillation (default 0)")
        parser.add_argument("--envs", type=_positive, default=8, help="environments stepped in lockstep")
        parser.add_argument("--save-onnx", type=Path, help="write the evaluated compressed model here")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.compress import CompressionPlan
        from autoquant.evaluate import evaluate
        from autoquant.policy import analyse
        from autoquant.targets import get_target

        plan = CompressionPlan.load(args.plan) if args.plan else None
        target = None if args.no_latency else get_target(args.target, device=args.device,
                                                          secret_file=args.secret_file)
        bundle = load_from_args(args)
        if bundle.env_id is None:
            raise UsageError(f"{args.policy}: the environment is unknown; pass --env (a gymnasium id)")
        if plan is not None:
            plan.validate(analyse(bundle))
        if args.save_onnx is not None and plan is None:
            raise UsageError("--save-onnx needs --plan")
        result = evaluate(bundle, target=target, plan=plan, episodes=args.episodes, seed=args.seed,
                          n_states=args.states, finetune_epochs=args.finetune, n_envs=args.envs)
        if args.save_onnx is not None:
            args.save_onnx.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.save_onnx.with_suffix(args.save_onnx.suffix + ".partial")
            tmp.write_bytes(result.compressed.onnx)
            tmp.replace(args.save_onnx)
        out = result.to_json()
        out["policy"] = policy_json(bundle)
        out["target"] = None if target is None else target.name
        return out

    def render(self, result: dict[str, Any]) -> str:
        p = result["policy"]
        lines = [f"policy {p['source']} ({p['algo']}, {p['env_id']})"]
        fp32, plan, lat = result["fp32"], result["plan"], result["latency"]

        def reward(r: dict[str, Any] | None) -> str:
            return "-" if not r else f"{r['mean']:.2f} ± {r['ci95']:.2f} ({r['episodes']} ep)"

        rows = [("", "fp32", "plan" if plan else "")]
        rows.append(("reward (95% CI)", reward(fp32["reward"]), reward(plan.get("reward")) if plan else ""))
        if plan and "retention" in plan:
            rows.append(("retention vs fp32", "1.000", f"{plan['retention']:.3f}"))
        if plan:
            fid = plan["fidelity"]
            key = "action_agreement" if "action_agreement" in fid else "action_error"
            rows.append((key.replace("_", " "), "", f"{fid[key]:.4f}"))
            rows.append(("output error (rel.)", "", f"{fid['output_error']:.4f}"))
        if lat:
            ref = lat["reference"] or lat["candidate"]
            rows.append(("latency p10 ms", f"{ref['p10']:.4f}", f"{lat['candidate']['p10']:.4f}" if plan else ""))
            rows.append(("latency median ms", f"{ref['median']:.4f}",
                         f"{lat['candidate']['median']:.4f}" if plan else ""))
            if lat["ratio"] is not None:
                rows.append((f"latency ratio ({lat['statistic']})", "1.000", f"{lat['ratio']:.3f}"))
        rows.append(("size bytes (weights)", f"{fp32['size_bytes']:,}", f"{plan['size_bytes']:,}" if plan else ""))
        rows.append(("MACs", f"{fp32['macs']:,}", f"{plan['macs']:,}" if plan else ""))
        kernels = lambda k: " ".join(f"{n}:{v}" for n, v in k["layers"].items())  # noqa: E731
        rows.append(("kernels", kernels(fp32["kernels"]), kernels(plan["kernels"]) if plan else ""))
        width = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        for name, a, b in rows:
            lines.append(f"{name:<{width}}  {a:<{w1}}  {b}")
        if plan:
            lines.insert(1, f"plan   {plan['summary']}")
        if result.get("random"):
            lines.append(f"random policy on the same seeds: {result['random']['mean']:.2f}")
        if lat:
            facts = lat["facts"]
            lines.append(f"measured on {result['target']}: {facts.get('cpu')}, {facts.get('threads')} thread(s), "
                         f"onnxruntime {facts.get('onnxruntime')}, {lat['calls']} calls interleaved with fp32")
        return "\n".join(lines)
