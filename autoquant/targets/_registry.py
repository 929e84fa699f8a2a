"""Targets are declared in TOML files (``hw_targets/*.toml``) and built by kind of reach."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoquant._limits import MAX_CALLS, MAX_THREADS, check_integer
from autoquant._resources import find_toml, resource_dir, shipped_tomls
from autoquant.errors import TargetError
from autoquant.targets._base import MeasureProtocol, Target

__all__ = ["TargetSpec", "available_targets", "find_target_spec", "get_target", "load_target_spec", "targets_dir"]


def targets_dir() -> Path:
    """``hw_targets/`` of this checkout."""
    return resource_dir("hw_targets")


@dataclass(frozen=True)
class TargetSpec:
    """A target's declaration, validated."""

    name: str
    description: str
    reach: str
    runtime: str = "onnxruntime"  # the runtime this target measures with (the first of ``runtimes``)
    threads: int = 1
    accelerated_precisions: tuple[str, ...] = ("fp32", "int8")
    cost_unit: str = "ms"
    protocol: MeasureProtocol = field(default_factory=MeasureProtocol)
    device: str | None = None  # remote: HOST:PORT
    secret_file: str | None = None  # remote: the shared secret
    emulated_cpu: str | None = None  # emulated: qemu -cpu name
    runtimes: tuple[str, ...] = ()  # every runtime a search may deploy with here; the first is the reference's

    def __post_init__(self) -> None:
        if not self.runtimes:
            object.__setattr__(self, "runtimes", (self.runtime,))

    @property
    def reference_runtime(self) -> str:
        """fp32 on this runtime is the denominator of every latency ratio on the target, so
        that ratios on its runtimes compare."""
        return self.runtimes[0]


_BUILDERS: dict[str, Callable[[TargetSpec], Target]] = {}
DEFAULT_SECRET_FILE = "~/.autoquant-secret"


def register_reach(reach: str) -> Callable[[Callable[[TargetSpec], Target]], Callable[[TargetSpec], Target]]:
    def deco(fn: Callable[[TargetSpec], Target]) -> Callable[[TargetSpec], Target]:
        _BUILDERS[reach] = fn
        return fn
    return deco


@register_reach("local")
def _local(spec: TargetSpec) -> Target:
    from autoquant.targets._host import HostTarget

    return HostTarget(spec.name, threads=spec.threads, protocol=spec.protocol, runtime=spec.runtime,
                      reference_runtime=spec.reference_runtime)


@register_reach("remote")
def _remote(spec: TargetSpec) -> Target:
    from autoquant.targets._remote import RemoteTarget
    from autoquant.targets._wire import read_secret

    if not spec.device:
        raise TargetError(
            f"target {spec.name!r} measures on a device, and none is known: pass --device HOST:PORT, set "
            f"AUTOQUANT_DEVICE, or put device = \"HOST:PORT\" in its TOML (on the board: autoquant device "
            f"serve); without a board, use an emulated target such as --target arm-a72-emulated"
        )
    secret_file = os.path.expanduser(spec.secret_file or DEFAULT_SECRET_FILE)
    return RemoteTarget(spec.name, spec.device, read_secret(secret_file), threads=spec.threads,
                        protocol=spec.protocol, runtime=spec.runtime, reference_runtime=spec.reference_runtime,
                        retries=device_retries())


DEFAULT_RETRIES = 4  # tries after the first, 0.5 s apart and doubling: about 7.5 s before a board counts as down


def device_retries() -> int:
    """How often a remote target tries again before its board counts as unreachable:
    ``AUTOQUANT_DEVICE_RETRIES`` (0-10), else ``DEFAULT_RETRIES``."""
    text = os.environ.get("AUTOQUANT_DEVICE_RETRIES")
    if text is None or text == "":
        return DEFAULT_RETRIES
    if not text.strip().isdigit() or int(text) > 10:
        raise TargetError(f"AUTOQUANT_DEVICE_RETRIES must be a whole number from 0 to 10, got {text[:40]!r}")
    return int(text)


@register_reach("emulated")
def _emulated(spec: TargetSpec) -> Target:
    from autoquant.targets._emulated import EmulatedTarget

    if not spec.emulated_cpu:
        raise TargetError(f"target {spec.name!r} is emulated but names no emulated_cpu (e.g. \"cortex-a72\")")
    return EmulatedTarget(spec.name, spec.emulated_cpu, runs=spec.protocol.calls, warmup=spec.protocol.warmup,
                          runtime=spec.runtime, reference_runtime=spec.reference_runtime)


_KEYS = {"name", "description", "reach", "runtime", "threads", "accelerated_precisions", "cost_unit", "protocol",
         "device", "secret_file", "emulated_cpu"}


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
    for key in ("warmup", "calls", "block"):  # a measurement of hours is a typo, not a protocol
        check_integer(getattr(proto, key), f"{path}: [protocol] {key}", 0, MAX_CALLS, error=TargetError)
    threads = check_integer(data.get("threads", 1), f"{path}: threads", 1, MAX_THREADS, error=TargetError)
    runtimes = _runtimes(data.get("runtime", "onnxruntime"), path)
    return TargetSpec(
        name=str(data.get("name", path.stem)), description=str(data.get("description", "")),
        reach=str(data.get("reach", "local")), runtime=runtimes[0], runtimes=runtimes,
        threads=threads, accelerated_precisions=tuple(data.get("accelerated_precisions", ("fp32", "int8"))),
        cost_unit=str(data.get("cost_unit", "ms")), protocol=proto,
        device=data.get("device") or None, secret_file=data.get("secret_file") or None,
        emulated_cpu=data.get("emulated_cpu") or None,
    )


def _runtimes(value: Any, path: Path) -> tuple[str, ...]:
    """``runtime = "NAME"`` or ``runtime = ["NAME", ...]`` (a search then also picks the runtime)."""
    from autoquant.runtimes import available_runtimes

    names = [value] if isinstance(value, str) else value
    known = available_runtimes()
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise TargetError(f"{path}: runtime must be a name or a list of names from {known}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TargetError(f"{path}: unknown runtime {unknown[0]!r}; autoquant runs {known}")
    return tuple(dict.fromkeys(names))


def available_targets() -> dict[str, Path]:
    return shipped_tomls("hw_targets")


def find_target_spec(name_or_path: str) -> TargetSpec:
    """The declaration of a target named in ``hw_targets/`` or given as a .toml path."""
    try:
        path = find_toml(name_or_path, "hw_targets", what="target")
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    return load_target_spec(path)


def get_target(name_or_path: str, *, device: str | None = None, secret_file: str | None = None,
               runtime: str | None = None) -> Target:
    """A target by name (``hw_targets/NAME.toml``) or by the path of a TOML file, measuring
    with ``runtime`` (one of its TOML's runtimes; default the first).

    For remote targets the device address comes from ``device``, else the
    ``AUTOQUANT_DEVICE`` environment variable, else the TOML; the secret file
    likewise (``AUTOQUANT_SECRET_FILE``, default ~/.autoquant-secret).
    """
    spec = find_target_spec(name_or_path)
    if runtime is not None and runtime not in spec.runtimes:
        raise TargetError(f"target {spec.name!r} runs {list(spec.runtimes)}, not {runtime!r}: add it to the "
                          "target's runtime list")
    spec = dataclasses.replace(
        spec, device=device or os.environ.get("AUTOQUANT_DEVICE") or spec.device,
        secret_file=secret_file or os.environ.get("AUTOQUANT_SECRET_FILE") or spec.secret_file,
        runtime=runtime or spec.runtime)
    builder = _BUILDERS.get(spec.reach)
    if builder is None:
        raise TargetError(
            f"target {spec.name!r} is reached by {spec.reach!r}, which this version cannot measure; "
            f"supported: {sorted(_BUILDERS)}"
        )
    return builder(spec)
