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
    in format ``fmt`` into the folder ``out``; ``trial="front"`` with the actorq format: every
    plan of the run's Pareto front as a ladder of bundles, cheapest first (``export_ladder``)."""
    formats = export_formats()
    if fmt not in formats:
        raise UsageError(f"unknown export format {fmt!r}: use one of {formats}")
    if trial == "front":
        if fmt != "actorq":
            raise UsageError("--trial front exports the Pareto front as a ladder of ActorQ bundles (the actors' "
                             "precision levels): add --format actorq, or export one trial")
        return export_ladder(run, Path(out))
    number, plan = run.plan_of(trial if trial == "best" else int(trial))
    out = Path(out)
    check_output_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    written = EXPORTERS[fmt](run, number, plan, out)
    return {"trial": number, "summary": plan.describe(), "format": fmt, **written}


def export_ladder(run: Run, out: Path) -> dict[str, Any]:
    """The run's Pareto front (latency against reward retention) as ActorQ bundles in
    ``out/level-K``, cheapest first, and ``out/ladder.json``: the precision levels that
    ``actorq run --monitor`` moves its actors along. Fine-tuned plans are left out (actors
    rebuild from the learner's weights, which fine-tuning does not see), and so are plans no
    faster than fp32 (fp32 is the top level) and repeats of a plan. The order is the
    search's: latency and retention as measured, with its rounding; the bundles round to
    nearest, which ``template_fidelity`` in each level's manifest measures."""
    from autoquant.actorq import write_ladder

    check_output_folder(out, "--out")
    (out / "ladder.json").unlink(missing_ok=True)  # an old ladder never names levels half written over
    front = run.pareto_front()
    levels, skipped, files, seen = [], [], [], set()
    for record in front:
        number, plan = run.plan_of(int(record["number"]))
        if run.fine_tuned(plan) is not None:
            skipped.append(number)
            continue
        ratio = record.get("latency_ratio")
        if plan.describe() in seen or (ratio is not None and ratio >= 1.0):
            continue  # a plan twice, or one no faster than fp32 (the level above them all)
        seen.add(plan.describe())
        name = f"level-{len(levels)}"
        (out / name).mkdir(parents=True, exist_ok=True)
        written = export_actorq(run, number, plan, out / name)
        files += written["files"]
        levels.append({"path": name, "trial": number, "summary": plan.describe(),
                       "latency_ratio": record.get("latency_ratio"), "retention": record.get("retention")})
    if not levels:
        raise UsageError(f"the run's Pareto front has no plan a bundle can be made of ({len(front)} on the front, "
                         f"fine-tuned: {skipped}): search further, or without fine-tuning")
    files.append(str(write_ladder(out, levels)))
    return {"trial": "front", "summary": f"{len(levels)} levels, cheapest first", "format": "actorq",
            "levels": levels, "skipped_fine_tuned": skipped, "files": files}
