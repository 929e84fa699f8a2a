"""The zoo's python-object YAML is read without executing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoquant.errors import PolicyLoadError
from autoquant.policy import read_zoo_yaml
from tests.conftest import policy_path


def test_args_yml_reads_safely() -> None:
    path = policy_path("dqn-CartPole-v1", "args.yml")
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(path.read_text())
    data = read_zoo_yaml(path)
    assert data["env"] == "CartPole-v1" and data["algo"] == "dqn"


def test_other_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "args.yml"
    evil.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(PolicyLoadError):
        read_zoo_yaml(evil)
    assert not marker.exists()
