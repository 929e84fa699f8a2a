"""A real device server in a subprocess on loopback, with the heavy libraries blocked
so that it proves the device side needs only onnxruntime and numpy."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def start_device(tmp: Path, *, max_model_mb: int = 4, max_seconds: int = 60) -> Device:
    secret_file = tmp / "secret"
    secret_file.write_text(secrets.token_hex(32))
    port = free_port()
    args = ["device", "serve", "--host", "127.0.0.1", "--port", str(port), "--secret-file", str(secret_file),
            "--max-model-mb", str(max_model_mb), "--max-seconds", str(max_seconds)]
    return Device(f"127.0.0.1:{port}", secret_file, _launch(args), args)
