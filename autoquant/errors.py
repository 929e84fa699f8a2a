"""Typed errors. Each one is a single line for the user: what was expected,
what came, and how to fix it. The CLI prints it and exits with ``exit_code``."""

from __future__ import annotations

__all__ = [
    "ActorQError",
    "AutoquantError",
    "BundleFormatError",
    "DeviceUnreachable",
    "EnvMismatchError",
    "ExportError",
    "Interrupted",
    "KernelMismatchError",
    "NetworkMismatchError",
    "PlanError",
    "PolicyLoadError",
    "TargetError",
    "UsageError",
    "WireError",
    "describe_exception",
    "first_line",
]


class AutoquantError(Exception):
    """Base class of every error autoquant raises on purpose."""

    exit_code: int = 2


class UsageError(AutoquantError):
    """A command-line option or argument is wrong."""


class PolicyLoadError(AutoquantError):
    """A policy file is missing, corrupt, of an unknown layout, or unsafe to load."""


class EnvMismatchError(AutoquantError):
    """The environment does not fit the network (observation or action shape)."""


class PlanError(AutoquantError):
    """A compression plan names unknown layers or invalid values."""


class TargetError(AutoquantError):
    """A hardware target is unknown, misconfigured or unreachable."""


class WireError(AutoquantError, ValueError):
    """A device request or answer is malformed or breaks one of the device's limits
    (a ValueError too, for callers that predate it)."""


class DeviceUnreachable(TargetError):
    """A remote device did not answer after the retries (down, or the network is)."""


class ExportError(AutoquantError):
    """A compressed network could not be exported to ONNX."""

    exit_code = 1


class KernelMismatchError(AutoquantError):
    """A plan asked for integer kernels and onnxruntime ran float ones."""

    exit_code = 1


class ActorQError(AutoquantError):
    """An ActorQ bundle cannot be made or applied."""


class BundleFormatError(ActorQError):
    """A folder is not an ActorQ bundle this autoquant reads (missing, corrupt, other version)."""


class NetworkMismatchError(ActorQError):
    """Learner weights do not fit the network a bundle was made for."""


class Interrupted(AutoquantError):
    """A signal (SIGTERM, SIGINT) stopped a command, which cleaned up before it ended; the exit
    code is the shell's for that signal (128 + its number: 143, 130)."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_exception(exc: BaseException) -> str:
    """``Type: first line``: how a failure is recorded (trials, reference points, jobs)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
