"""The exporter registry: format name -> function writing a run's plan into a folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoquant._io import check_output_folder
from autoquant.errors import UsageError
from autoquant.export._formats import export_actorq, export_onnx, export_torch
from autoquant.search import Run

__all__ = ["EXPORTERS", "Exporter", "export_formats", "export_plan", "register_exporter"]

# (run, trial number, plan, out folder) -> {"files": [...], ...anything the format reports}
Exporter = Callable[[Run, int, Any, Path], dict[str, Any]]

EXPORTERS: dict[str, Exporter] = {"onnx": export_onnx, "torch": export_torch, "actorq": export_actorq}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator: make ``fn`` the exporter of format ``name``."""
    def deco(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        return fn
    return deco


def export_formats() -> list[str]:
    return sorted(EXPORTERS)


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
