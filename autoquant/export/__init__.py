"""Export a run's plan as something that runs: the ONNX model that was timed and played,
a TorchScript network, or an ActorQ bundle for quantized actors. One registry of
formats; ``export_plan`` is what ``autoquant export`` calls."""

from __future__ import annotations

from autoquant.export._formats import torch_model
from autoquant.export._registry import (EXPORTERS, Exporter, export_formats, export_ladder, export_plan, exporter_help,
                                       register_exporter)

__all__ = ["EXPORTERS", "Exporter", "export_formats", "export_ladder", "export_plan", "exporter_help", "register_exporter", "torch_model"]
