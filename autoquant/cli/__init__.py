"""The ``autoquant`` command line: small command classes, listed in ``commands()``, and
``main() -> int``. Only the command named on the command line declares its options, so that
a command imports only what it needs (``device serve`` runs on the device extra alone)."""

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

__all__ = ["Command", "commands", "main"]


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


def commands() -> list[type[Command]]:
    """Every command, in the order ``autoquant --help`` lists them. A new command is its own
    class plus one line here."""
    from autoquant.cli._actorq import ActorQCommand
    from autoquant.cli._engine import EvaluateCommand, InspectCommand
    from autoquant.cli._search import CompareCommand, ExportCommand, SearchCommand
    from autoquant.cli._targets import DeviceCommand, TargetsCommand

    return [SearchCommand, ExportCommand, CompareCommand, EvaluateCommand, InspectCommand, TargetsCommand,
            DeviceCommand, ActorQCommand]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(2, f"autoquant: error: {message} (see '{self.prog} --help')\n")


def _named_command(argv: Sequence[str], names: set[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in names else None
    return None


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    classes = commands()
    chosen = _named_command(argv, {cls.name for cls in classes})
    parser = _Parser(prog="autoquant", description="Compress RL policies for a target device.")
    parser.add_argument("--version", action="version", version=f"autoquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cls in classes:
        command = cls()
        p = sub.add_parser(cls.name, help=command.help, description=command.help)
        if cls.name != chosen:  # listed in --help; its options are declared only when it runs
            continue
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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, which names its --help
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "_command", None) is None:
        parser.print_help()
        return 2
    command: Command = args._command
    args.argv = ("autoquant", *argv)  # the command line as typed, for the records a command keeps
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
