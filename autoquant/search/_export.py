"""Export a run's plan as a runnable model: ONNX (what was timed and played),
TorchScript of the pruned network with its weights quantized (fake-quantized), or an
ActorQ bundle that quantized actors apply to each broadcast of learner weights."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoquant._version import __version__

__all__ = ["export_plan", "torch_model"]


def torch_model(compressed: Any) -> nn.Sequential:
    """A plain nn.Sequential: the pruned layers, weights replaced by their quantized
    values where the plan quantizes them. Activation quantization is not represented:
    outputs match the ONNX model up to activation rounding."""
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


def export_plan(run: Any, trial: int | str, *, fmt: str, out: Path) -> dict[str, Any]:
    if fmt == "actorq":
        from autoquant.actorq._bundle import export_run

        return export_run(run, trial, out=Path(out))
    number, plan = run.plan_of(trial if trial == "best" else int(trial))
    compressed = run.compress(plan)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if fmt == "onnx":
        path = out / "policy.onnx"
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(compressed.onnx)
        os.replace(tmp, path)
    else:
        path = out / "policy.pt"
        scripted = torch.jit.script(torch_model(compressed))
        tmp = str(path) + ".partial"
        scripted.save(tmp)
        os.replace(tmp, path)
    files.append(str(path))
    (out / "plan.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    files.append(str(out / "plan.json"))
    meta = {
        "format": "autoquant.export", "version": 1, "autoquant_version": __version__,
        "run": str(run.folder), "trial": number, "summary": plan.describe(), "model_format": fmt,
        "policy": run.info["policy"]["path"], "env_id": run.problem.bundle.env_id,
        "action": run.problem.bundle.action.to_json(), "obs_scale": run.problem.bundle.obs_scale,
        "input_shape": list(run.problem.bundle.input_shape), "target": run.info["target"],
        "kernels": compressed.kernels.to_json() if compressed.kernels else None,
        "size_bytes": compressed.size_bytes,
    }
    (out / "export.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    files.append(str(out / "export.json"))
    return {"trial": number, "summary": plan.describe(), "format": fmt, "files": files}
