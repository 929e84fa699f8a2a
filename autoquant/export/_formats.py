"""The built-in export formats: onnx, torch, actorq."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from autoquant._io import atomic_write, write_json
from autoquant._version import __version__
from autoquant.errors import UsageError
from autoquant.search import Run

__all__ = ["export_actorq", "export_onnx", "export_tflite", "export_torch", "torch_model"]


def torch_model(compressed: Any) -> Any:
    """A plain nn.Sequential: the pruned layers, weights replaced by their quantized
    values where the plan quantizes them. Activation quantization is not represented:
    outputs match the ONNX model up to activation rounding."""
    import torch
    from torch import nn

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in compressed.net.named_children():
        kind = type(module).__name__
        if kind in ("QuantIdentity",) or name.endswith(("_in_quant", "_out_quant")):
            continue
        if kind == "QuantReLU":
            layers[name] = nn.ReLU()
        elif kind in ("QuantConv2d", "QuantLinear"):
            plain: nn.Module
            if kind == "QuantConv2d":
                plain = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                                  padding=module.padding, bias=module.bias is not None)
            else:
                plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(module.quant_weight().value)
                if module.bias is not None:
                    plain.bias.copy_(module.bias)
            layers[name] = plain
        else:
            layers[name] = module
    net = nn.Sequential(layers).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _describe(run: Run, number: int, plan: Any, compressed: Any, model_format: str) -> dict[str, Any]:
    bundle = run.bundle
    return {
        "format": "autoquant.export", "version": 1, "autoquant_version": __version__,
        "run": str(run.folder), "trial": number, "summary": plan.describe(), "model_format": model_format,
        "policy": str(run.info.policy.path), "env_id": bundle.env_id, "action": bundle.action.to_json(),
        "obs_scale": bundle.obs_scale, "input_shape": list(bundle.input_shape), "target": run.info.target.to_json(),
        "kernels": compressed.kernels.to_json() if compressed.kernels else None,
        "size_bytes": compressed.size_bytes, "fine_tuned": run.fine_tuned(plan) is not None,
    }


def _model_files(run: Run, number: int, plan: Any, out: Path, model_format: str) -> dict[str, Any]:
    tuned = run.fine_tuned(plan)
    if tuned is not None and model_format not in ("onnx", "tflite"):
        raise UsageError(f"trial {number} was fine-tuned and its weights are kept as the ONNX graph it was judged "
                         "with: export it with --format onnx or --format tflite")
    compressed = run.compress(plan)
    extra: dict[str, Any] = {}
    if model_format == "onnx":
        path = atomic_write(out / "policy.onnx", tuned or compressed.onnx, inside=out)
    elif model_format == "tflite":
        path, extra = _tflite_file(run, tuned or compressed.onnx, out)
    else:
        import torch

        import io

        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(torch_model(compressed)), buffer)
        path = atomic_write(out / "policy.pt", buffer.getvalue(), inside=out)
    plan_path = write_json(out / "plan.json", plan.to_json(), inside=out)
    meta_path = write_json(out / "export.json", {**_describe(run, number, plan, compressed, model_format), **extra},
                           inside=out)
    return {"files": [str(path), str(plan_path), str(meta_path)]}


def _tflite_file(run: Run, onnx: bytes, out: Path) -> tuple[Path, dict[str, Any]]:
    """The LiteRT model of the graph, written only after it was run on the run's held-out
    states and compared with the ONNX graph (the figures go into export.json)."""
    from autoquant.evaluate import fidelity
    from autoquant.runtimes import Runner, get_runtime

    try:
        litert = get_runtime("litert")
    except Exception as exc:  # noqa: BLE001 - the runtime's own one-line reason
        raise UsageError(f"--format tflite: {exc}") from None
    model = litert.compile(onnx)
    held = run.held_out
    ours, theirs = Runner(onnx)(held), litert.session(model).run(held)
    check = {**fidelity(ours, theirs, run.bundle.action),
             "against": "the same plan's ONNX graph under onnxruntime, on the run's held-out states"}
    path = atomic_write(out / "policy.tflite", model, inside=out)
    return path, {"runtime": {"name": litert.name, "version": litert.version(), **litert.session_options(1)},
                  "tflite_vs_onnx": check}


def export_onnx(run: Run, number: int, plan: Any, out: Path) -> dict[str, Any]:
    """The ONNX graph that the search timed and played."""
    return _model_files(run, number, plan, out, "onnx")


def export_tflite(run: Run, number: int, plan: Any, out: Path) -> dict[str, Any]:
    """The plan's graph as a LiteRT model (NHWC input), for LiteRT with XNNPACK."""
    return _model_files(run, number, plan, out, "tflite")


def export_torch(run: Run, number: int, plan: Any, out: Path) -> dict[str, Any]:
    """TorchScript of the pruned network with its weights quantized (fake-quantized)."""
    return _model_files(run, number, plan, out, "torch")


def _measured(run: Run, number: int) -> dict[str, Any]:
    """What the search measured for trial ``number`` (and its confirmation, if it is the best)."""
    out: dict[str, Any] = {"trial": number, "rounding": "gptq",
                           "note": "measured by the search on GPTQ-rounded weights; the bundle rounds to nearest "
                                   "(see template_fidelity)"}
    record = run.record(number)
    if record is not None:
        out["state"] = record.state
        if record.result is not None:
            result = record.result.to_json()
            for key in ("latency_ratio", "latency", "retention", "reward", "played", "skip_reason", "fidelity",
                        "size_bytes", "size_ratio", "macs_ratio"):
                out[key] = result.get(key)
    reference = run.info.references
    out["fp32_reward"] = reference.fp32.to_json()
    out["random_reward"] = reference.random.to_json()
    best = run.best()
    if best is not None and best.trial == number:
        out["confirm"] = best.confirm.to_json()
    return out


def export_actorq(run: Run, number: int, plan: Any, out: Path) -> dict[str, Any]:
    """An ActorQ bundle: the recipe quantized actors apply to each broadcast of learner weights."""
    from autoquant.actorq import target_entry, write_bundle
    from autoquant.evaluate import fidelity
    from autoquant.runtimes import OrtRunner

    if run.fine_tuned(plan) is not None:
        raise UsageError(f"trial {number} was fine-tuned: ActorQ actors rebuild each broadcast from the learner's "
                         "weights, which fine-tuning does not see; pick a trial that was not fine-tuned for a bundle")
    # the actors apply the recipe to learner weights as they come: no data, so no bias correction
    compressed = run.compress(plan, rounding="nearest", bias_correction=False)
    fid = fidelity(run.problem.reference_outputs, OrtRunner(compressed.onnx)(run.held_out), run.bundle.action)
    target = target_entry(run.config.target, facts=run.info.target.facts)
    target["fingerprint"] = run.info.target.fingerprint
    origin = {"run": str(run.folder), "trial": number, "policy_sha256": run.info.policy.sha256}
    written = write_bundle(compressed, out, target=target, measured=_measured(run, number), origin=origin,
                           template_fidelity={**fid, "against": "fp32 on the run's held-out states"})
    return {"files": [str(f) for f in written.files()], "payload_bytes": written.payload_bytes,
            "template_fidelity": fid}
