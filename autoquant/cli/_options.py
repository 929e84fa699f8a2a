"""Options shared by the commands, and the argparse types that convert them. A type also
caps the numbers that size work (said in --help, refused before anything starts); the
checks of a run's settings are the RunConfig's, made from the options as given."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "integer",
    "seconds",
    "add_protocol_argument",
    "ACTIVATION_NAMES",
    "add_policy_arguments",
    "add_target_arguments",
    "load_from_args",
    "names",
    "non_negative",
    "positive",
    "strides",
]


def strides(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 4,2,1, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"strides must be positive integers, got {text!r}")
    return values


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""
    expected = (f"an integer from {low} to {high:,}" if high is not None
                else ("a positive integer" if low == 1 else f"an integer >= {low}"))

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text[:40]!r}")
        return value

    return parse


positive = integer(1)
non_negative = integer(0)


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# The activations a state dict may use (autoquant.policy._arch.ACTIVATIONS), named
# here so that building the parser imports no torch (the device side has none).
ACTIVATION_NAMES = ("elu", "gelu", "leaky_relu", "relu", "sigmoid", "silu", "tanh")


def add_policy_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--policy and the options that say how to read it (inspect, evaluate, search, compare)."""
    parser.add_argument("--policy", required=required, type=Path,
                        help="SB3 .zip, torch state dict / TorchScript .pt")
    parser.add_argument("--env", help="gymnasium id (default: what the file implies)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a .pt holding a pickled nn.Module (runs code from the file)")
    parser.add_argument("--activation", choices=ACTIVATION_NAMES,
                        help="activation of a state-dict network (default relu, or the SB3 algorithm's)")
    parser.add_argument("--conv-strides", type=strides, metavar="S1,S2,...",
                        help="conv strides of a state-dict CNN that is not the Nature CNN")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None, help="hardware target: a name from 'autoquant targets' "
                        "or a .toml path (default host; a resumed run keeps its own); search: several, "
                        "comma-separated, search them as one fleet; export from a fleet: the target's name")
    parser.add_argument("--device", metavar="HOST:PORT", help="the board of a remote target "
                        "(else AUTOQUANT_DEVICE, else the target's TOML)")
    parser.add_argument("--secret-file", help="the device's shared secret (else AUTOQUANT_SECRET_FILE, "
                        "else ~/.autoquant-secret)")


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability such as 0.25, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def add_protocol_argument(parser: argparse.ArgumentParser) -> None:
    """--sticky-actions: the stochastic protocol of Atari games (evaluate, search, compare)."""
    parser.add_argument("--sticky-actions", type=probability, default=None, metavar="P",
                        help="Atari only: repeat the previous action with probability P on every frame (Machado et "
                             "al. 2018; 0.25 is ALE v5's default), every seed a game of its own; 0 plays the "
                             "deterministic game from its 30 no-op starts (default: the env id's own, "
                             "deterministic for NoFrameskip-v4)")


def load_from_args(args: argparse.Namespace) -> Any:
    from autoquant.policy import load_policy

    return load_policy(args.policy, env_id=args.env, trust_pickle=args.trust_pickle,
                       activation=args.activation, conv_strides=args.conv_strides)


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]
