"""Runs inside the emulated aarch64 Python (under qemu-aarch64): one model on one
runtime (onnxruntime, or LiteRT with XNNPACK), for the instruction-count plugin
(``libinsnmark``) or for Arm numerics.

``--mark``: marker system calls (number 0x7A51, which fails harmlessly with ENOSYS)
that the plugin logs with its running instruction count: two back to back first
(their difference is one marker's own cost), one before the timed loop and one after
every inference. ``--save``: the outputs for every row of ``--input`` (.npy, float32).
Session options match autoquant.runtimes' host sessions (onnxruntime: spinning off;
LiteRT: its default XNNPACK delegate, one thread). A LiteRT model takes NHWC input: the
observations are moved to that layout before the timed loop, as the host session does.
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
    p.add_argument("--runtime", choices=("onnxruntime", "litert"), default="onnxruntime")
    a = p.parse_args(argv)

    import numpy as np

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
    data = np.load(a.input, allow_pickle=False).astype(np.float32)
    if a.runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        with open(a.model, "rb") as f:
            interpreter = Interpreter(model_content=f.read(), num_threads=a.threads)
        if data.ndim == 4:
            data = np.transpose(data, (0, 2, 3, 1))
        data = np.ascontiguousarray(data)
        x_index = interpreter.get_input_details()[0]["index"]
        y_index = interpreter.get_output_details()[0]["index"]
        shape = [1]

        def run(x: np.ndarray) -> np.ndarray:
            if shape[0] != len(x):
                interpreter.resize_tensor_input(x_index, x.shape)
                interpreter.allocate_tensors()
                shape[0] = len(x)
            interpreter.set_tensor(x_index, x)
            interpreter.invoke()
            return interpreter.get_tensor(y_index)

        interpreter.allocate_tensors()
    else:
        import onnxruntime as ort

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

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: x})[0]

    one = np.ascontiguousarray(data[:1])
    if a.runtime == "litert":
        def call() -> None:
            run(one)
    else:
        feed = {name: one}

        def call() -> None:
            session.run(None, feed)
    for _ in range(a.warmup):
        call()
    mark(3)
    for _ in range(a.runs):
        call()
        mark(4)
    if a.save:
        outs = [np.array(run(np.ascontiguousarray(data[i:i + 1]))) for i in range(len(data))]
        if a.runtime == "litert" and outs and outs[0].ndim == 4:  # NHWC back to the graph's NCHW
            outs = [np.transpose(o, (0, 3, 1, 2)) for o in outs]
        np.save(a.save, np.concatenate(outs).astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
