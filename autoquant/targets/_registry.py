"""Targets are declared in TOML files (``hw_targets/*.toml``) and built by kind of reach."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoquant.errors import TargetError
from autoquant.targets._base import MeasureProtocol, Target

__all__ = ["TargetSpec", "available_targets", "get_target", "load_target_spec", "targets_dir"]


def targets_dir() -> Path:
    """``hw_targets/`` of this checkout."""
    return Path(__file__).resolve().parents[2] / "hw_targets"


@dataclass(frozen=True)
class TargetSpec:
    """A target's declaration, validated."""

    name: str
    description: str
    reach: str
    runtime: str = "onnxruntime"
    threads: int = 1
    accelerated_precisions: tuple[str, ...] = ("fp32", "int8")
    cost_unit: str = "ms"
    protocol: MeasureProtocol = field(default_factory=MeasureProtocol)


_BUILDERS: dict[str, Callable[[TargetSpec], Target]] = {}


def register_reach(reach: str) -> Callable[[Callable[[TargetSpec], Target]], Callable[[TargetSpec], Target]]:
    def deco(fn: Callable[[TargetSpec], Target]) -> Callable[[TargetSpec], Target]:
        _BUILDERS[reach] = fn
        return fn
    return deco


@register_reach("local")
def _local(spec: TargetSpec) -> Target:
    from autoquant.targets._host import HostTarget

    return HostTarget(spec.name, threads=spec.threads, protocol=spec.protocol)


_KEYS = {"name", "description", "reach", "runtime", "threads", "accelerated_precisions", "cost_unit", "protocol"}


def load_target_spec(path: Path) -> TargetSpec:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"{path}: not a readable TOML target ({exc})") from exc
    unknown = set(data) - _KEYS
    if unknown:
        raise TargetError(f"{path}: unknown keys {sorted(unknown)}; a target takes {sorted(_KEYS)}")
    protocol = data.get("protocol", {})
    if not isinstance(protocol, dict):
        raise TargetError(f"{path}: [protocol] must be a table")
    try:
        proto = MeasureProtocol(**protocol)
    except TypeError as exc:
        raise TargetError(f"{path}: [protocol] {exc}") from exc
    threads = data.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TargetError(f"{path}: threads must be a positive integer, got {threads!r}")
    return TargetSpec(
        name=str(data.get("name", path.stem)), description=str(data.get("description", "")),
        reach=str(data.get("reach", "local")), runtime=str(data.get("runtime", "onnxruntime")),
        threads=threads, accelerated_precisions=tuple(data.get("accelerated_precisions", ("fp32", "int8"))),
        cost_unit=str(data.get("cost_unit", "ms")), protocol=proto,
    )


def available_targets() -> dict[str, Path]:
    folder = targets_dir()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def get_target(name_or_path: str) -> Target:
    """A target by name (``hw_targets/NAME.toml``) or by the path of a TOML file."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        known = available_targets()
        if name_or_path not in known:
            raise TargetError(f"unknown target {name_or_path!r}: use one of {sorted(known)} or a .toml path")
        path = known[name_or_path]
    spec = load_target_spec(path)
    builder = _BUILDERS.get(spec.reach)
    if builder is None:
        raise TargetError(
            f"target {spec.name!r} is reached by {spec.reach!r}, which this version cannot measure; "
            f"supported: {sorted(_BUILDERS)}"
        )
    return builder(spec)
