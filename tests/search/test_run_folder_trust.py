"""A run folder is data: nothing in it chooses where autoquant reads, writes or connects.

Each test hands the commands a folder edited the way a hostile colleague could edit it
(a symlink, a planted model, run.json naming a database, a target file or a device) and
checks that the user's files, databases and devices are left alone.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from tests.conftest import cli_main as run_cli  # in-process: these are error tests


@pytest.fixture
def run(run_copy: Path) -> Path:
    """A fresh copy of the session's finished run for each test to tamper with."""
    return run_copy


def _one_line(proc, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert "Traceback" not in proc.stderr


def _edit(run: Path, **config: object) -> None:
    info = json.loads((run / "run.json").read_text())
    info["config"].update(config)
    (run / "run.json").write_text(json.dumps(info))


def test_a_symlink_in_the_folder_never_redirects_a_write(run: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "report.md").unlink()
    (run / "report.md").symlink_to(victim)
    (run / "pareto.png").unlink()
    (run / "pareto.png").symlink_to(victim)
    proc = run_cli("search", "--out", str(run), "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious"
    assert not (run / "report.md").is_symlink() and "autoquant report" in (run / "report.md").read_text()
    # a folder of the run that is a link out of it is refused, not written through
    from autoquant._io import atomic_write
    from autoquant.errors import UsageError

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run / "best").symlink_to(outside)
    with pytest.raises(UsageError, match="symlink"):
        atomic_write(run / "best" / "policy.onnx", b"graph", inside=run)
    assert list(outside.iterdir()) == []
    # a planted temporary file is never written through either
    (run / "notes.txt.partial").symlink_to(victim)
    atomic_write(run / "notes.txt", b"new", inside=run)
    assert victim.read_text() == "precious" and (run / "notes.txt").read_bytes() == b"new"


def test_export_never_copies_a_model_its_trial_did_not_record(run: Path, tmp_path: Path) -> None:
    from autoquant.search import load_run

    clean = run_cli("export", str(run), "--trial", "0", "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    key = load_run(run).record(0).key  # type: ignore[union-attr]
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    (run / "models").mkdir(exist_ok=True)
    (run / "models" / f"{key}.onnx").symlink_to(secret)  # a link to a file outside
    proc = run_cli("export", str(run), "--trial", "0", "--out", str(tmp_path / "linked"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "linked" / "policy.onnx").read_bytes() == (tmp_path / "clean" / "policy.onnx").read_bytes()
    (run / "models" / f"{key}.onnx").unlink()
    (run / "models" / f"{key}.onnx").write_bytes(b"planted graph")  # a file under a trial never fine-tuned
    proc = run_cli("export", str(run), "--trial", "0", "--out", str(tmp_path / "planted"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "planted" / "policy.onnx").read_bytes() == (tmp_path / "clean" / "policy.onnx").read_bytes()


def test_run_json_never_chooses_the_database(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    _edit(run, storage=f"sqlite:///{other}")
    for args in (("export", str(run), "--trial", "0", "--out", str(tmp_path / "o")),
                 ("search", "--out", str(run), "--resume", "--trials", "5", "--quiet")):
        _one_line(run_cli(*args), "never chooses a database", "--storage")
    assert not other.exists() and not (tmp_path / "o").exists()


def test_the_study_database_is_the_folders_own_file(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-run.db"
    shutil.copyfile(run / "study.db", other)
    (run / "study.db").unlink()
    (run / "study.db").symlink_to(other)
    before = other.read_bytes()
    _one_line(run_cli("search", "--out", str(run), "--resume", "--trials", "5", "--quiet"), "study.db", "symlink")
    assert other.read_bytes() == before


class _Listener:
    """A TCP port on 127.0.0.1 that counts who connects to it (a device nobody should call)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_run_json_never_chooses_a_target_file_a_device_or_a_secret(run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOQUANT_DEVICE", raising=False)
    monkeypatch.delenv("AUTOQUANT_SECRET_FILE", raising=False)
    listener = _Listener()
    try:
        (run / "planted-secret").write_text("0" * 64)
        toml = run / "board.toml"
        toml.write_text(f'name = "board"\nreach = "remote"\nruntime = "onnxruntime"\nthreads = 1\n'
                        f'device = "127.0.0.1:{listener.port}"\nsecret_file = "{run / "planted-secret"}"\n')
        _edit(run, target=str(toml))
        for args in (("export", str(run), "--trial", "0", "--out", str(tmp_path / "o")),
                     ("search", "--out", str(run), "--resume", "--trials", "5", "--quiet")):
            _one_line(run_cli(*args), "never chooses a target file", "--target")
        # a shipped remote target with the device and the secret named in run.json
        _edit(run, target="arm", device=f"127.0.0.1:{listener.port}", secret_file=str(run / "planted-secret"))
        for args in (("export", str(run), "--trial", "0", "--out", str(tmp_path / "o")),
                     ("search", "--out", str(run), "--resume", "--trials", "5", "--quiet")):
            proc = run_cli(*args)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert listener.connections == 0
    finally:
        listener.close()


@pytest.mark.parametrize("content, words", [
    ("{", ("run.json", "not valid JSON")),
    ('{"format": "autoquant.run", "version": 2, "config": []}', ("run.json", "config")),
    ('[' * 5000, ("run.json", "nests deeper")),
])
def test_a_broken_run_json_is_one_line(run: Path, tmp_path: Path, content: str, words: tuple[str, ...]) -> None:
    (run / "run.json").write_text(content)
    _one_line(run_cli("export", str(run), "--trial", "0", "--out", str(tmp_path / "o")), *words)


def test_a_broken_confirm_json_or_state_set_is_one_line(run: Path, tmp_path: Path) -> None:
    (run / "best").mkdir(exist_ok=True)
    (run / "best" / "confirm.json").write_text('{"format": "autoquant.confirm", "trial": ')
    _one_line(run_cli("export", str(run), "--trial", "best", "--out", str(tmp_path / "o")), "confirm.json")
    (run / "states.npz").write_bytes(b"PK\x03\x04 not an archive")
    _one_line(run_cli("export", str(run), "--trial", "0", "--out", str(tmp_path / "o")), "states.npz")


def test_a_run_whose_study_is_gone_says_so(run: Path, tmp_path: Path) -> None:
    """A missing study.db read as an empty study: 'trial 0 has no plan (trials 0..-1)'."""
    (run / "study.db").unlink()
    _one_line(run_cli("export", str(run), "--trial", "0", "--out", str(tmp_path / "o")),
              "study.db is missing", "restore the file")
    assert not (run / "study.db").exists()  # reading never creates an empty study in its place
    assert not (tmp_path / "o").exists()
