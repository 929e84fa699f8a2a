"""Runtimes: what executes a plan's graph (onnxruntime; LiteRT with XNNPACK). The only
room that imports a runtime's library; targets time what a runtime's sessions run."""

from __future__ import annotations

from autoquant.runtimes._base import Runner, Runtime, Session, available_runtimes, get_runtime, register_runtime
from autoquant.runtimes._litert import LiteRTRuntime
from autoquant.runtimes._onnxruntime import (
    KernelReport,
    OnnxRuntime,
    OrtRunner,
    kernel_report,
    make_session,
    quiet_logs,
    session_options,
)
from autoquant.runtimes._ort_static import onnxruntime_uniform_int8
from autoquant.runtimes._tflite import ConversionError, onnx_to_tflite


def guest_script() -> str:
    """The script an emulated target runs in its aarch64 Python: a runtime's session on one
    model, standalone (the guest has the runtimes' wheels and numpy, not autoquant)."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent / "guest.py")


__all__ = [
    "ConversionError",
    "KernelReport",
    "LiteRTRuntime",
    "OnnxRuntime",
    "OrtRunner",
    "Runner",
    "Runtime",
    "Session",
    "available_runtimes",
    "get_runtime",
    "guest_script",
    "kernel_report",
    "make_session",
    "onnx_to_tflite",
    "onnxruntime_uniform_int8",
    "quiet_logs",
    "register_runtime",
    "session_options",
]
