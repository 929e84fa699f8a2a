"""autoquant: per-layer pruning and mixed-precision search for RL policies.

``import autoquant`` is cheap: torch, onnxruntime and the RL libraries load only
when a function that needs them runs.
"""

from __future__ import annotations

from autoquant._version import __version__
from autoquant.errors import AutoquantError

__all__ = ["AutoquantError", "__version__"]
