"""How the search command's options become a RunConfig (parsed, not run)."""

from __future__ import annotations

from autoquant.cli import _parser
from autoquant.cli._search import _config
from autoquant.search import ProblemSettings


def _settings(*extra: str) -> ProblemSettings:
    argv = ["search", "--policy", "p.zip", *extra]
    args = _parser(argv).parse_args(argv)
    args.argv = ("autoquant", *argv)  # as main() records the command line
    return _config(args, method="joint", agent="random").settings  # type: ignore[no-any-return]


def test_bias_correction_is_on_unless_the_command_line_turns_it_off() -> None:
    assert _settings().bias_correction is True
    assert _settings("--no-bias-correction").bias_correction is False
