"""Latency of autoquant's exports next to torch eager and onnxruntime's own int8.

For two policy networks, the Nature-CNN Q-network of DQN on Pong
(``dqn-PongNoFrameskip-v4/dqn_pong.pt``) and the DQN MLP on CartPole
(``dqn-CartPole-v1/CartPole-v1.zip``), five variants are timed at batch 1 on one
thread, all in ONE interleaved window per network (blocks rotate, so no variant
always follows the same one):

  a. torch fp32 eager (the reference, ratio 1.0)
  b. onnxruntime fp32 (``autoquant.compress.export_reference``)
  c. onnxruntime's own static int8 of (b): ``quantize_static``, QDQ, per-channel
     int8 weights, uint8 activations, calibrated on the same recorded states
     (what a user would pick instead of autoquant)
  d. autoquant uniform int8 (``CompressionPlan.uniform``)
  e. autoquant structured pruning 0.5 (action head unpruned) + int8

For every ONNX variant it also records which kernel ran for each layer (from the
onnxruntime profile) and the action agreement with torch fp32 on held-out recorded
states (a different seed from the calibration states). Latencies are p10 and
median over ``--calls`` calls; only the ratios to torch fp32 of one window are
comparable across runs, absolute milliseconds drift with the machine's load.

Run from the repository root:

    python benchmarks/latency.py            # full run, writes benchmarks/results/
    python benchmarks/latency.py --quick    # 100-call smoke run, prints only

Policies are read from ``../shared/policies`` relative to the repository root
(``--policies DIR`` to override).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from common import DEFAULT_POLICIES, DEFAULT_RESULTS, quiet, rel  # benchmarks/common.py

DEFAULT_OUT = DEFAULT_RESULTS


@dataclass(frozen=True)
class Network:
    key: str
    title: str
    path: str  # relative to the policies directory
    env_id: str | None  # None: implied by the file


NETWORKS = (
    Network("pong", "Nature-CNN Q-network (DQN, PongNoFrameskip-v4)",
            "dqn-PongNoFrameskip-v4/dqn_pong.pt", "PongNoFrameskip-v4"),
    Network("cartpole", "MLP Q-network (DQN, CartPole-v1)", "dqn-CartPole-v1/CartPole-v1.zip", None),
)


@dataclass
class Variant:
    """One row of a table: a runnable model and what is known about it."""

    key: str
    label: str
    session: Any = None  # .run(None, feed), .get_inputs()[0].name
    onnx: bytes | None = None
    macs: int | None = None
    kernels: dict[str, Any] | None = None
    kernel_summary: str = ""
    agreement: float | None = None
    max_abs_error: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    times: np.ndarray | None = None




def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _isa_flags() -> str:
    """The CPU's vector extensions that decide which int8 kernels onnxruntime picks."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in wanted if flag in have) or "none of " + ", ".join(wanted)
    except OSError:
        pass
    return "unknown"




class TorchEager:
    """A torch module behind onnxruntime's session interface, for interleaved timing.

    The caller holds ``torch.inference_mode()`` around the timing window, as a
    policy loop would; each call converts the numpy feed and returns numpy.
    """

    def __init__(self, net: Any, input_name: str = "obs") -> None:
        self.net = net.eval()
        self._inputs = [SimpleNamespace(name=input_name)]

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._inputs

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        out = self.net(torch.from_numpy(feed[self._inputs[0].name]))
        return [out.numpy()]


def output_step(model: bytes) -> float | None:
    """The quantization step of the graph's output, if the graph re-quantizes it."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(model)
    outputs = {o.name for o in proto.graph.output}
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and outputs.intersection(node.output):
            scale = inits.get(node.input[1])
            if scale is not None:
                return float(np.max(numpy_helper.to_array(scale)))
    return None


def summarize_kernels(report: Any) -> str:
    kinds = Counter(report.layers.values())
    if set(kinds) == {"unknown"}:
        ops = Counter(next(iter(report.ops.values()), []))
        return "unmatched: " + ", ".join(f"{op} x{n}" for op, n in sorted(ops.items()))
    parts = [f"{kind} x{kinds[kind]}" for kind in ("float", "int8", "unknown") if kinds.get(kind)]
    return ", ".join(parts)


def fmt_macs(macs: int | None) -> str:
    if macs is None:
        return "-"
    if macs >= 1e6:
        return f"{macs / 1e6:.2f} M"
    if macs >= 1e3:
        return f"{macs / 1e3:.1f} k"
    return str(macs)


def build_variants(network: Network, policies: Path, n_states: int) -> tuple[list[Variant], Any, np.ndarray]:
    """Load the policy, record states and build every variant (errors kept per variant)."""
    import torch

    from autoquant.compress import CompressionPlan, compress, export_reference
    from autoquant.errors import KernelMismatchError
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy
    from autoquant.runtimes import OrtRunner, kernel_report, make_session

    bundle = load_policy(policies / network.path, env_id=network.env_id)
    table = analyse(bundle)
    print(f"  recording {n_states} calibration states (seed 0) and {n_states} held-out states (seed 1)",
          flush=True)
    calib = record_states(bundle, n=n_states, seed=0).states
    held_out = record_states(bundle, n=n_states, seed=1).states
    with torch.inference_mode():
        want_out = bundle.net(torch.from_numpy(held_out)).numpy()
    want = bundle.action.actions(want_out)

    def attach(variant: Variant, model: bytes, names: tuple[str, ...]) -> None:
        variant.onnx = model
        variant.session = make_session(model, threads=1)
        report = kernel_report(model, held_out[:1], names)
        variant.kernels = report.to_json()
        variant.kernel_summary = summarize_kernels(report)
        out = OrtRunner(model, threads=1)(held_out)
        variant.agreement = float(np.mean(bundle.action.actions(out) == want))
        variant.max_abs_error = float(np.max(np.abs(out - want_out)))
        step = output_step(model)
        if step is not None and bundle.action.discrete:
            scores = np.sort(bundle.action.scores(want_out), axis=1)
            gap = float(np.median(scores[:, -1] - scores[:, -2]))
            variant.notes.append(f"graph output re-quantized to 8 bits, step {step:.3g}; median gap "
                                 f"between the two best actions' scores (fp32) {gap:.3g}")

    torch_ref = Variant("torch_fp32", "a. torch fp32 eager", session=TorchEager(bundle.net),
                        macs=table.total_macs, kernel_summary="torch eager", agreement=1.0,
                        max_abs_error=0.0)
    variants = [torch_ref]

    print("  exporting onnxruntime fp32", flush=True)
    ort_fp32 = Variant("ort_fp32", "b. onnxruntime fp32", macs=table.total_macs)
    try:
        reference = export_reference(bundle)
        attach(ort_fp32, reference, table.names)
    except Exception as exc:  # noqa: BLE001
        ort_fp32.error = _first_line(exc)
        reference = None
    variants.append(ort_fp32)

    print("  quantizing with onnxruntime quantize_static (QDQ, per-channel s8 weights, u8 activations)",
          flush=True)
    ort_int8 = Variant("ort_int8_qdq", "c. onnxruntime int8 (quantize_static QDQ)", macs=table.total_macs)
    if reference is None:
        ort_int8.error = "no fp32 export to quantize"
    else:
        try:
            from autoquant.runtimes import onnxruntime_uniform_int8

            model = onnxruntime_uniform_int8(reference, calib)
            ort_int8.notes.append("quant_pre_process applied (autoquant.compress.onnxruntime_uniform_int8)")
            attach(ort_int8, model, table.names)
        except Exception as exc:  # noqa: BLE001 - a failure is a result here
            ort_int8.error = _first_line(exc)
    variants.append(ort_int8)

    plans = [
        ("autoquant_int8", "d. autoquant int8", CompressionPlan.uniform(table)),
        ("autoquant_p50_int8", "e. autoquant pruned 0.5 + int8", CompressionPlan.uniform(table, prune_ratio=0.5)),
    ]
    for key, label, plan in plans:
        print(f"  compressing: {label} ({plan.describe()})", flush=True)
        variant = Variant(key, label)
        try:
            try:
                compressed = compress(bundle, plan, calib)
            except KernelMismatchError as exc:
                variant.notes.append(f"autoquant's kernel check failed: {_first_line(exc)}")
                compressed = compress(bundle, plan, calib, verify_kernels=False)
            variant.macs = compressed.table.total_macs
            variant.notes.append(f"plan: {plan.describe()}; rounding 'auto' (GPTQ for MLPs, nearest for the CNN), no fine-tuning")
            attach(variant, compressed.onnx, compressed.table.names)
        except Exception as exc:  # noqa: BLE001
            variant.error = _first_line(exc)
        variants.append(variant)
    return variants, bundle, held_out


def time_variants(variants: list[Variant], x: np.ndarray, protocol: Any) -> None:
    import torch

    from autoquant.targets import time_interleaved

    runnable = [v for v in variants if v.error is None and v.session is not None]
    with torch.inference_mode():
        calls = []
        for v in runnable:
            feed = {v.session.get_inputs()[0].name: np.ascontiguousarray(x[:1], dtype=np.float32)}
            calls.append(lambda run=v.session.run, feed=feed: run(None, feed))
        times = time_interleaved(calls, protocol)
    for variant, t in zip(runnable, times):
        variant.times = t


def row_json(variant: Variant, reference: Variant) -> dict[str, Any]:
    data: dict[str, Any] = {
        "variant": variant.key, "label": variant.label, "macs": variant.macs,
        "kernels": variant.kernel_summary, "kernel_report": variant.kernels,
        "agreement": variant.agreement, "max_abs_output_error": variant.max_abs_error,
        "onnx_bytes": len(variant.onnx) if variant.onnx is not None else None,
        "notes": variant.notes, "error": variant.error,
    }
    if variant.times is not None:
        ms = variant.times * 1e3
        ref_ms = reference.times * 1e3 if reference.times is not None else None
        data["ms"] = {"p10": float(np.percentile(ms, 10)), "median": float(np.median(ms)),
                      "min": float(ms.min())}
        if ref_ms is not None:
            data["ratio_to_torch_fp32"] = {
                "p10": data["ms"]["p10"] / float(np.percentile(ref_ms, 10)),
                "median": data["ms"]["median"] / float(np.median(ref_ms)),
            }
    return data


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | p10 ms | median ms | p10 ratio | median ratio | kernels | agreement | MACs |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        if "ms" in r:
            ms, ratio = r["ms"], r.get("ratio_to_torch_fp32", {})
            timing = (f"{ms['p10']:.4f} | {ms['median']:.4f} | {ratio.get('p10', float('nan')):.2f} | "
                      f"{ratio.get('median', float('nan')):.2f}")
        else:
            timing = "- | - | - | -"
        kernels = r["kernels"] or "-"
        if r["error"]:
            kernels = f"FAILED: {r['error']}".replace("|", "/")
        agreement = f"{100 * r['agreement']:.1f} %" if r["agreement"] is not None else "-"
        lines.append(f"| {r['label']} | {timing} | {kernels} | {agreement} | {fmt_macs(r['macs'])} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=Path, default=None,
                        help="directory holding the policies (default: ../shared/policies from the repo root)")
    parser.add_argument("--calls", type=int, default=600, help="timed calls per variant (default 600)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100 calls, 128 states, results printed but not written")
    parser.add_argument("--states", type=int, default=None,
                        help="recorded states for calibration, and again for agreement (default 512)")
    parser.add_argument("--networks", nargs="+", choices=[n.key for n in NETWORKS],
                        default=[n.key for n in NETWORKS], help="which networks to time")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for latency.json / latency.md (default benchmarks/results; "
                             "with --quick nothing is written unless given)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 100
    if args.states is None:
        args.states = 128 if args.quick else 512
    if args.calls < 1 or args.states < 1:
        parser.error("--calls and --states must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    import torch

    import autoquant
    from autoquant.targets import MeasureProtocol, host_facts

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    policies = (args.policies if args.policies is not None else DEFAULT_POLICIES).resolve()
    networks = [n for n in NETWORKS if n.key in args.networks]
    missing = [n.path for n in networks if not (policies / n.path).is_file()]
    if missing:
        print(f"error: policy files not found under {rel(policies)}: {', '.join(missing)} "
              "(pass --policies DIR)", file=sys.stderr)
        return 2

    protocol = MeasureProtocol(warmup=50, calls=args.calls, block=20, statistic="p10")
    facts = host_facts(1)
    facts["isa"] = _isa_flags()
    facts["torch"] = torch.__version__
    facts["torch_threads"] = torch.get_num_threads()
    command = shlex.join(["python", "benchmarks/latency.py",
                          *_command_args(sys.argv[1:] if argv is None else argv)])

    results: dict[str, Any] = {
        "autoquant_version": autoquant.__version__, "command": command, "facts": facts,
        "protocol": {**protocol.to_json(), "batch": 1, "threads": 1, "interleaved": True},
        "states": {"calibration": {"n": args.states, "seed": 0}, "agreement": {"n": args.states, "seed": 1}},
        "networks": {},
    }
    sections: list[str] = []
    for network in networks:
        print(f"\n{network.title}: {network.path}", flush=True)
        variants, bundle, held_out = build_variants(network, policies, args.states)
        print(f"  timing {sum(v.error is None for v in variants)} variants interleaved, "
              f"{protocol.calls} calls each", flush=True)
        time_variants(variants, held_out[:1], protocol)
        rows = [row_json(v, variants[0]) for v in variants]
        results["networks"][network.key] = {
            "title": network.title, "policy": network.path, "env_id": bundle.env_id,
            "input_shape": list(bundle.input_shape), "variants": rows,
        }
        table = markdown_table(rows)
        notes = [f"- {r['label']}: {note}" for r in rows for note in r["notes"]]
        section = f"### {network.title}\n\n`{network.path}`, input {tuple(bundle.input_shape)}\n\n{table}\n"
        if notes:
            section += "\n" + "\n".join(notes) + "\n"
        sections.append(section)
        print("\n" + section, flush=True)

    facts_md = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    protocol_md = (f"batch 1, 1 thread, all variants of a network in one interleaved window "
                   f"(blocks of {protocol.block}, order reversed each block), {protocol.warmup} warm-up "
                   f"calls, {protocol.calls} timed calls each; ratios are to torch fp32 eager of the same "
                   f"window. Agreement: argmax actions vs torch fp32 on {args.states} held-out recorded "
                   f"states (seed 1); calibration on {args.states} others (seed 0).")
    print("Device facts:\n" + facts_md)
    document = (
        "# Latency: autoquant vs torch eager and onnxruntime's own int8\n\n"
        f"autoquant {autoquant.__version__}. Reproduce from the repository root:\n\n"
        f"    {command}\n\n"
        f"Protocol: {protocol_md}\n\n## Device\n\n{facts_md}\n\n## Results\n\n" + "\n".join(sections)
    )
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "latency.md").write_text(document)
        print(f"\nwrote {rel(out / 'latency.json')} and {rel(out / 'latency.md')}")
    return 0


def _command_args(argv: list[str]) -> list[str]:
    """The arguments with any --policies/--out path written relative to the repo root."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--policies", "--out"):
            out.extend([arg, rel(Path(next(it, ".")))])
        elif arg.startswith(("--policies=", "--out=")):
            key, value = arg.split("=", 1)
            out.append(f"{key}={rel(Path(value))}")
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
