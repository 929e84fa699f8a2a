"""Fuzz the zoo YAML reader (``read_zoo_yaml``): arbitrary text, YAML assembled from
the constructs that break loaders (python tags, the OrderedDict tag with any
arguments, anchors and aliases, timestamps, binary, deep nesting), and the real
``args.yml`` with pieces inserted. Either a dict or a PolicyLoadError, never another
exception, and a python tag never runs anything.

Examples per run: 150 + 250 + 150 (550), about 2 s on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from autoquant.errors import PolicyLoadError
from autoquant.policy import read_zoo_yaml
from tests.conftest import policy_path
from tests.fuzz.common import fuzz, nested


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def _read(folder: Path, text: str) -> None:
    path = folder / "args.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        data = read_zoo_yaml(path)
    except PolicyLoadError as exc:
        assert "\n" not in str(exc), str(exc)
        event("refused")
    else:
        assert isinstance(data, dict)
        event("read")
    assert not (folder / "ran").exists(), "a python tag ran code"


_ODICT = "!!python/object/apply:collections.OrderedDict"
_PIECES = st.sampled_from([
    _ODICT, f"{_ODICT}\n", f"{_ODICT} ", "!!python/object/apply:os.system ['touch {ran}']",
    "!!python/name:os.system", "!!python/tuple", "!!binary", "!!timestamp", "!!set", "!!omap", "!!str", "!!int",
    "&a ", "*a", "&b [*b]", "<<: *a", "- ", "- - ", "? ", ": ", "\n", "\n  ", "[", "]", "{", "}", ",", "'", '"',
    "env", "CartPole-v1", "2021-02-30", "2021-02-28 25:61:00", "0x", "0o9", "1e999", ".nan", "~", "null",
    "%YAML 1.1\n", "---\n", "...\n", "#", "|", ">", "\t", "\\", "\x00", "\ufeff",
]) | st.text(max_size=6)


@fuzz(150)
@given(st.text(max_size=300))
def test_any_text(folder: Path, text: str) -> None:
    _read(folder, text)


@fuzz(250)
@given(st.lists(_PIECES, max_size=30).map("".join) | nested(st.integers(1, 5000)))
def test_assembled_yaml(folder: Path, text: str) -> None:
    _read(folder, text.replace("{ran}", str(folder / "ran")))


@fuzz(150)
@given(st.lists(st.tuples(st.integers(0, 2000), _PIECES), min_size=1, max_size=6))
def test_real_args_yml_with_pieces_inserted(folder: Path, edits: list[tuple[int, str]]) -> None:
    text = policy_path("dqn-CartPole-v1", "args.yml").read_text()
    for position, piece in edits:
        at = position % (len(text) + 1)
        text = text[:at] + piece.replace("{ran}", str(folder / "ran")) + text[at:]
    _read(folder, text)
