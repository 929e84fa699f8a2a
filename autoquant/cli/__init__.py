"""The ``autoquant`` command line: small command classes in a registry, ``main() -> int``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from autoquant._version import __version__
from autoquant.errors import AutoquantError, Interrupted

__all__ = ["Command", "main", "register"]

_COMMANDS: dict[str, type[Command]] = {}


class Command:
    """One subcommand: ``add_arguments`` declares its options, ``run`` does the work and
    returns a JSON-ready result, ``render`` prints it for people."""

    name: str = ""
    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        raise NotImplementedError

    def render(self, result: dict[str, Any]) -> str:
        return json.dumps(result, indent=2)


def register(cls: type[Command]) -> type[Command]:
    _COMMANDS[cls.name] = cls
    return cls


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(2, f"autoquant: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    from autoquant.cli import _actorq, _engine, _search, _targets  # noqa: F401 - register the commands

    parser = _Parser(prog="autoquant", description="Compress RL policies for a target device.")
    parser.add_argument("--version", action="version", version=f"autoquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, cls in _COMMANDS.items():
        command = cls()
        p = sub.add_parser(name, help=command.help, description=command.help)
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        command.add_arguments(p)
        p.set_defaults(_command=command, _parser=p)
    return parser


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what libraries print (the ALE banner, exporter chatter) to stderr, so that
    stdout holds only our output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, which names its --help
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "_command", None) is None:
        parser.print_help()
        return 2
    command: Command = args._command
    try:
        with _stdout_to_stderr():
            result = command.run(args)
    except Interrupted as exc:  # stopped by a signal, cleaned up: said as what happened, not as an error
        if args.debug:
            traceback.print_exc()
        print(f"autoquant: {exc}", file=sys.stderr)
        return exc.exit_code
    except AutoquantError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"autoquant: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autoquant: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"autoquant: error: {exc.name} is not installed; 'autoquant {args.command}' needs the full "
              "install: pip install 'autoquant[full]'", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"autoquant: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
              "traceback, and report it)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, default=_json_default))
    else:
        print(command.render(result))
    return 0


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
