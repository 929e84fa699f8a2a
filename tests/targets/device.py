"""A real device server in a subprocess on loopback, with the heavy libraries blocked
so that it proves the device side needs only onnxruntime and numpy."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from collections.abc import Callable

from autoquant.search import TrialRecord, trial_records
from tests.conftest import ROOT

BLOCKED = ("torch", "gymnasium", "stable_baselines3", "brevitas", "optuna", "onnx", "torch_pruning")
_LAUNCH = ("import sys; [sys.modules.__setitem__(m, None) for m in {blocked!r}]; "
           "from autoquant.cli import main; sys.exit(main(sys.argv[1:]))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Device:
    address: str
    secret_file: Path
    process: subprocess.Popen[bytes]
    args: list[str]

    def pause(self) -> None:
        """SIGSTOP: the server stops answering, and anything waiting on it waits."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.process = _launch(self.args)


def _launch(args: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH.format(blocked=BLOCKED), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.time() + 60
    line = b""
    while time.time() < deadline:
        line = proc.stderr.readline()
        if b"serving on" in line or proc.poll() is not None:
            break
    if b"serving on" not in line:
        proc.kill()
        raise RuntimeError(f"device server did not start: {line!r}")
    return proc


def start_device(tmp: Path, *, max_model_mb: int = 4, max_seconds: int = 60, extra: tuple[str, ...] = ()) -> Device:
    secret_file = tmp / "secret"
    secret_file.write_text(secrets.token_hex(32))
    port = free_port()
    args = ["device", "serve", "--host", "127.0.0.1", "--port", str(port), "--secret-file", str(secret_file),
            "--max-model-mb", str(max_model_mb), "--max-seconds", str(max_seconds), *extra]
    return Device(f"127.0.0.1:{port}", secret_file, _launch(args), args)


def study_records(db: Path, name: str) -> list[TrialRecord]:
    """The trials of study ``name`` in the SQLite file ``db`` (none while it is being created)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except Exception:  # noqa: BLE001 - the schema or the study may not exist yet
        return []
    return trial_records(study)


def wait_for(what: str, proc: subprocess.Popen[bytes], check: Callable[[], bool], timeout_s: float = 300) -> None:
    """Poll ``check`` until it holds; fail at once if ``proc`` exits first."""
    deadline = time.time() + timeout_s
    while not check():
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise AssertionError(f"the search exited ({proc.returncode}) before {what}: {err}")
        if time.time() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.1)


def hold_a_trial(device: Device, search: subprocess.Popen[bytes], db: Path, name: str, *,
                 completed: int = 1) -> TrialRecord:
    """Let a search measuring on ``device`` complete ``completed`` trials, pause the device,
    and return a running trial whose plan was never measured: it needs the device, so it
    cannot finish, and the search is inside it for as long as the device stays paused.
    What a test does next happens mid-trial every time, however loaded the machine."""
    wait_for(f"{completed} completed trials", search,
             lambda: sum(r.state == "COMPLETE" for r in study_records(db, name)) >= completed)
    device.pause()
    held: list[TrialRecord] = []

    def in_flight() -> bool:
        records = study_records(db, name)
        measured = {r.key for r in records if r.state == "COMPLETE"}
        held[:] = [r for r in records if r.state == "RUNNING" and r.key is not None and r.key not in measured]
        return bool(held)

    wait_for("a trial waiting on the paused device", search, in_flight)
    return held[0]
