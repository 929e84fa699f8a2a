"""The exporter registry: format name -> function writing a run's plan into a folder, and a
line of help. ``autoquant export --format`` offers exactly what is registered here: a new
format is its own function plus one ``register_exporter`` line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoquant._io import check_output_folder
from autoquant.errors import UsageError
from autoquant.export._formats import export_actorq, export_onnx, export_tflite, export_torch
from autoquant.search import Run

__all__ = ["EXPORTERS", "Exporter", "export_formats", "export_plan", "exporter_help", "register_exporter"]

# (run, trial number, plan, out folder) -> {"files": [...], ...anything the format reports}
Exporter = Callable[[Run, int, Any, Path], dict[str, Any]]

EXPORTERS: dict[str, Exporter] = {}
_HELP: dict[str, str] = {}


def register_exporter(name: str, *, help: str = "") -> Callable[[Exporter], Exporter]:  # noqa: A002
    """Decorator: make ``fn`` the exporter of format ``name`` (``help``: one line for
    ``autoquant export --help``)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"export format name {name!r}: use letters, digits, '-' and '_'")

    def deco(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        _HELP[name] = help or name
        return fn
    return deco


register_exporter("onnx", help="the ONNX model that was timed and played (the default)")(export_onnx)
register_exporter("tflite", help="the same graph as a LiteRT model (NHWC input) for LiteRT + XNNPACK, checked "
                             "against the ONNX graph on the run's held-out states")(export_tflite)
register_exporter("torch", help="a TorchScript network with the plan's pruning and fake quantization")(export_torch)
register_exporter("actorq", help="a mixed-precision bundle for ActorQ's quantized actors")(export_actorq)


def export_formats() -> list[str]:
    return list(EXPORTERS)


def exporter_help() -> str:
    """One line per format, for ``--help``."""
    return "; ".join(f"{name}: {text}" for name, text in _HELP.items())


def export_plan(run: Run, trial: int | str, *, fmt: str, out: Path) -> dict[str, Any]:
    """Export trial ``trial`` (a number, or "best" for the confirmed best plan) of ``run``
    in format ``fmt`` into the folder ``out``."""
    formats = export_formats()
    if fmt not in formats:
        raise UsageError(f"unknown export format {fmt!r}: use one of {formats}")
    number, plan = run.plan_of(trial if trial == "best" else int(trial))
    out = Path(out)
    check_output_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    written = EXPORTERS[fmt](run, number, plan, out)
    return {"trial": number, "summary": plan.describe(), "format": fmt, **written}
