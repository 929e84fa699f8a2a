"""Emulated Arm: the aarch64 build of a runtime (onnxruntime, or LiteRT with XNNPACK)
under qemu user-mode emulation on this x86 machine, for a board one does not have.

Wall time under emulation means nothing (100-250x slower), so the cost figure is the
number of guest instructions per inference, counted by a TCG plugin: deterministic
to about 0.3 % and sensitive to the emulated CPU's features (cortex-a72 has no
dot-product instructions, cortex-a76 has). It is reported in instructions, labelled
emulated, never as milliseconds. The same emulation gives Arm numerics for fidelity.
``autoquant targets --setup-emulation`` prepares the root filesystem once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from autoquant.errors import TargetError
from autoquant.runtimes import guest_script
from autoquant.targets._base import LatencyResult

__all__ = ["EmulatedTarget", "emulation_dir", "setup_emulation"]

HERE = Path(__file__).resolve().parent / "emulation"
GUEST_ENV = {
    "PYTHONHASHSEED": "0",           # the same dict/set layouts every run
    "PYTHONDONTWRITEBYTECODE": "1",  # setup precompiled everything: never write .pyc
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "ORT_DISABLE_TELEMETRY": "1",    # onnxruntime's telemetry thread adds noise
}


def emulation_dir() -> Path:
    return Path(os.environ.get("AUTOQUANT_EMULATION_DIR", Path.home() / ".cache" / "autoquant" / "emulation"))


def setup_emulation(cpus: list[str], *, log: Any = None) -> Path:
    """Prepare (idempotently) qemu-user, the arm64 Python with onnxruntime, the
    counting plugin and one machine per CPU. Needs root only to install qemu-user."""
    target = emulation_dir()
    env = {**os.environ, "EMU_DIR": str(target), "CPUS": " ".join(cpus)}
    proc = subprocess.run(["bash", str(HERE / "setup.sh")], env=env, capture_output=True, text=True)
    if log is not None and proc.stdout:
        log(proc.stdout.strip())
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TargetError(f"emulation setup failed: {tail}")
    return target


class EmulatedTarget:
    """A runtime's aarch64 build under qemu-aarch64 ``-cpu CPU``; cost = instructions."""

    emulated = True  # its numerics cost seconds a batch: the search's sensitivities use the host's

    def __init__(self, name: str, cpu: str, *, runs: int = 20, warmup: int = 3,
                 runtime: str = "onnxruntime", reference_runtime: str | None = None) -> None:
        from autoquant.runtimes import get_runtime

        self.name = name
        self.cpu = cpu
        self.runtime = get_runtime(runtime)  # compiles on the host; the guest runs its aarch64 build
        self.reference_runtime = get_runtime(reference_runtime or runtime)  # fp32's, the ratios' denominator
        self.runs = runs
        self.warmup = warmup
        self.root = emulation_dir()
        self.machine = self.root / "machines" / cpu
        plugin = self.root / "plugins" / "libinsnmark.so"
        if not (self.machine / ".done").exists() or not plugin.exists() or not shutil.which("qemu-aarch64"):
            raise TargetError(
                f"target {name!r} emulates a {cpu} and its root filesystem is not prepared: run "
                f"'autoquant targets --setup-emulation' (about a minute; installs qemu-user as root)")
        self.plugin = plugin
        for rt in {self.runtime.name, self.reference_runtime.name} - {"onnxruntime"}:
            if not self._guest_package(rt):
                raise TargetError(
                    f"target {name!r} runs {rt} and the emulated root filesystem lacks it: with {rt} installed on "
                    f"this machine, run 'autoquant targets --setup-emulation' again")
        self._counts: dict[str, float] = {}
        self._facts: dict[str, Any] | None = None

    def _guest(self, args: list[str], *, count: bool, runtime: Any = None) -> str:
        runtime = runtime or self.runtime
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "plugin.log")
            cmd = ["qemu-aarch64", "-L", str(self.machine), "-cpu", self.cpu]
            for key, value in GUEST_ENV.items():
                cmd += ["-E", f"{key}={value}"]
            if count:
                cmd += ["-plugin", str(self.plugin), "-d", "plugin", "-D", log]
            cmd += [str(self.machine / "usr" / "bin" / "python3.11"), guest_script(), *args,
                    "--runtime", runtime.name]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")},
                                  timeout=1800)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise TargetError(f"emulated {runtime.name} on {self.cpu} failed: {tail}")
            return Path(log).read_text() if count else ""

    def instructions(self, model: bytes, x: np.ndarray, *, runtime: Any = None) -> float:
        """Guest instructions per inference of ``model`` (ONNX) at batch 1 on ``runtime`` (a
        runtime object; default this target's), cached by model and runtime."""
        runtime = runtime or self.runtime
        key = runtime.name + ":" + hashlib.sha256(model).hexdigest()
        if key not in self._counts:
            compiled = runtime.compile(model)
            with tempfile.TemporaryDirectory() as tmp:
                path, inputs = os.path.join(tmp, "model" + runtime.suffix), os.path.join(tmp, "x.npy")
                Path(path).write_bytes(compiled)
                np.save(inputs, np.ascontiguousarray(x[:1], dtype=np.float32))
                log = self._guest([path, "--input", inputs, "--runs", str(self.runs), "--warmup",
                                   str(self.warmup), "--mark"], count=True, runtime=runtime)
            marks = [(int(a), int(b)) for a, b in re.findall(r"^mark (\d+) (\d+)$", log, re.M)]
            counts = [c for _, c in marks]
            loop = [c for tag, c in marks if tag in (3, 4)]
            if len(counts) < 2 or len(loop) != self.runs + 1:
                raise TargetError(f"the instruction-count plugin logged {len(marks)} marks, expected "
                                  f"{self.runs + 3}: is the plugin built for this qemu?")
            marker = counts[1] - counts[0]
            self._counts[key] = (loop[-1] - loop[0]) / self.runs - marker
        return self._counts[key]

    def measure(self, candidate: bytes, reference: bytes | None, x: np.ndarray) -> LatencyResult:
        cand = self.instructions(candidate, x)
        ref = self.instructions(reference, x, runtime=self.reference_runtime) if reference is not None else None
        return LatencyResult(
            target=self.name, unit="instructions", candidate={"instructions": cand},
            reference=None if ref is None else {"instructions": ref}, statistic="instructions",
            calls=self.runs, facts={**self.facts(), "where": f"emulated {self.cpu} (qemu user mode)",
                                     "session": self._session_options()})

    def _session_options(self) -> dict[str, Any]:
        options = self.runtime.session_options(1)
        return {**options, "allow_spinning": 0} if self.runtime.name == "onnxruntime" else options

    def infer(self, model: bytes, x: np.ndarray) -> np.ndarray:
        """Outputs computed by the runtime's aarch64 build (Arm numerics) for ``model`` (ONNX)."""
        with tempfile.TemporaryDirectory() as tmp:
            path, inputs, out = (os.path.join(tmp, f) for f in ("model" + self.runtime.suffix, "x.npy", "out.npy"))
            Path(path).write_bytes(self.runtime.compile(model))
            np.save(inputs, np.ascontiguousarray(x, dtype=np.float32))
            self._guest([path, "--input", inputs, "--warmup", "0", "--save", out], count=False)
            return np.load(out, allow_pickle=False)

    def _site(self) -> Path:
        return self.root / "rootfs" / "usr" / "lib" / "python3" / "dist-packages"

    def _guest_package(self, runtime: str | None = None) -> str | None:
        """The version of a runtime's wheel in the emulated root filesystem (default: this
        target's runtime)."""
        name = runtime or self.runtime.name
        prefix = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert"}.get(name, name)
        found = sorted(p.name for p in self._site().glob(f"{prefix}-*.dist-info"))
        return found[0][len(prefix) + 1:].removesuffix(".dist-info") if found else None

    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            cpuinfo = (self.machine / "proc" / "cpuinfo").read_text()
            features = re.search(r"^Features\s*:\s*(.*)$", cpuinfo, re.M)
            qemu = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
            self._facts = {
                "cpu": f"{self.cpu} (emulated)", "features": features.group(1) if features else "",
                "machine": "aarch64", "cores": 1, "threads": 1, "emulated": True,
                "onnxruntime": self._guest_package("onnxruntime"), "qemu": qemu,
                **({"runtime": self.runtime.name, self.runtime.name: self._guest_package()}
                   if self.runtime.name != "onnxruntime" else {}),
                **({"reference_runtime": self.reference_runtime.name}
                   if self.reference_runtime is not self.runtime else {}),
                "cost": "guest instructions per inference (batch 1)",
            }
        return self._facts
