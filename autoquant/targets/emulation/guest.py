"""Runs inside the emulated aarch64 Python (under qemu-aarch64): onnxruntime on one
model, for the instruction-count plugin (``libinsnmark``) or for Arm numerics.

``--mark``: marker system calls (number 0x7A51, which fails harmlessly with ENOSYS)
that the plugin logs with its running instruction count: two back to back first
(their difference is one marker's own cost), one before the timed loop and one after
every inference. ``--save``: the outputs for every row of ``--input`` (.npy, float32).
Session options match autoquant.targets._ort.make_session, with spinning off.
"""

from __future__ import annotations

import argparse
import sys

MARK_SYSCALL = 0x7A51


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--input", required=True, help=".npy of prepared observations")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=0)
    p.add_argument("--mark", action="store_true")
    p.add_argument("--save", help="write the outputs of every input row here (.npy)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    if a.mark:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        syscall.argtypes = [ctypes.c_long, ctypes.c_long]

        def mark(tag: int) -> None:
            syscall(MARK_SYSCALL, tag)
    else:
        def mark(tag: int) -> None:
            pass

    mark(1)
    mark(2)
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    with open(a.model, "rb") as f:
        session = ort.InferenceSession(f.read(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    data = np.load(a.input, allow_pickle=False).astype(np.float32)
    feed = {name: np.ascontiguousarray(data[:1])}
    for _ in range(a.warmup):
        session.run(None, feed)
    mark(3)
    for _ in range(a.runs):
        session.run(None, feed)
        mark(4)
    if a.save:
        outs = [session.run(None, {name: np.ascontiguousarray(data[i:i + 1])})[0] for i in range(len(data))]
        np.save(a.save, np.concatenate(outs).astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
