"""Fuzz the device wire format and the server's request checks: ``_wire.unpack`` on
arbitrary bytes and on framed bodies with arbitrary blob tables,
``validate_request`` on packed jobs with arbitrary settings, models (valid, mutated,
random, nested, external data) and inputs, and the header checks that run before a
body is read (``verify_request_headers``, ``check_timestamp``). Either a result or a
WireError, never another exception.

Examples per run: 200 + 200 + 200 + 200 + 200 (1000), about 3 s on 2 cores."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from onnx import numpy_helper

from autoquant.errors import WireError
from autoquant.targets._server import DeviceLimits, check_timestamp, validate_request
from autoquant.targets._wire import HEADER, pack, sign_request, unpack, verify_request_headers
from tests.fuzz.common import fuzz, json_values


def _tiny_model(external: bool = False) -> bytes:
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    if external:
        weight.ClearField("raw_data")
        weight.data_location = onnx.TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", "weights.bin"
    graph = oh.make_graph([oh.make_node("MatMul", ["obs", "W"], ["out"])], "g",
                          [oh.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, [1, 4])],
                          [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 2])], [weight])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


MODEL = _tiny_model()
EXTERNAL = _tiny_model(external=True)
LIMITS = DeviceLimits(max_batch=64)


@fuzz(200)
@given(st.binary(max_size=512))
def test_unpack_arbitrary_bytes(body: bytes) -> None:
    try:
        unpack(body)
    except WireError:
        pass


_ENTRIES = st.fixed_dictionaries(
    {"name": st.sampled_from(["model", "x", "reference"]) | json_values(), "size": st.integers(-2, 64) | json_values()},
    optional={"dtype": st.sampled_from(["f4", "f8", "i8", "i4", "u1", "i1", "O", "V8"]) | json_values(),
              "shape": st.lists(st.integers(-2, 2**62), max_size=10) | json_values()},
) | json_values()


@pytest.mark.slow
@fuzz(200)
@given(json_values(), st.lists(_ENTRIES, max_size=5) | json_values(), st.binary(max_size=256), st.booleans())
def test_unpack_framed_bodies(header: object, blobs: object, payload: bytes, lie: bool) -> None:
    fields = {**header, "blobs": blobs} if isinstance(header, dict) else header
    head = json.dumps(fields).encode()
    body = HEADER.pack(len(head) + (7 if lie else 0)) + head + payload
    try:
        unpack(body)
    except WireError:
        event("refused")
    else:
        event("unpacked")


def _mutated(model: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(model)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out)


_MODELS = st.one_of(
    st.just(MODEL), st.just(EXTERNAL), st.binary(max_size=128),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4).map(
        lambda e: _mutated(MODEL, e)),
    st.integers(0, 300).map(lambda n: MODEL[:n]),
)
_ARRAYS = st.tuples(st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
                    st.lists(st.integers(0, 70), max_size=4)).map(
    lambda t: np.zeros(t[1], t[0]) if math.prod(t[1]) <= 4096 else np.zeros((1, 4), np.float32))
_PROTOCOLS = st.dictionaries(st.sampled_from(["warmup", "calls", "block", "statistic"]) | st.text(max_size=5),
                             st.integers(-1, 30_000) | st.sampled_from(["p10", "median", "min"]) | json_values(),
                             max_size=4) | json_values()
_JOB_HEADERS = st.fixed_dictionaries({}, optional={
    "threads": st.integers(-1, 4) | json_values(), "protocol": _PROTOCOLS,
    "layers": st.lists(st.text(max_size=5), max_size=3) | json_values(), "extra": json_values()})
_JOB_BLOBS = st.dictionaries(st.sampled_from(["model", "reference", "x", "other"]), _MODELS | _ARRAYS, max_size=4)
_GOOD_HEADER = {"threads": 1, "protocol": {"warmup": 1, "calls": 5, "block": 5, "statistic": "p10"}, "layers": []}
_NEAR_HEADERS = _JOB_HEADERS.map(lambda changes: {**_GOOD_HEADER, **changes}) | st.just(_GOOD_HEADER)
_NEAR_BLOBS = st.dictionaries(st.sampled_from(["model", "reference", "x"]), _MODELS | _ARRAYS, max_size=1).map(
    lambda changes: {"model": MODEL, "x": np.zeros((1, 4), np.float32), **changes})


@fuzz(200)
@given(_JOB_HEADERS | _NEAR_HEADERS, _JOB_BLOBS | _NEAR_BLOBS, st.sampled_from(["measure", "infer", "facts"]))
def test_validate_request(header: dict, blobs: dict, kind: str) -> None:
    try:
        validate_request(pack(header, blobs), kind, LIMITS)
    except WireError as exc:
        assert "\n" not in str(exc)
        event("refused")
    else:
        event("accepted")


_TEXT = st.text(max_size=40) | st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "0x10", "1_000"])


@fuzz(200)
@given(_TEXT | st.floats(allow_nan=True).map(str) | st.floats(-120, 120).map(lambda d: f"{time.time() + d:.3f}"))
def test_check_timestamp(text: str) -> None:
    why = check_timestamp(text, now=time.time())
    assert why is None or isinstance(why, str)
    if why is None:
        assert math.isfinite(float(text))


_HEADER_NAMES = st.sampled_from(["X-Autoquant-Timestamp", "X-Autoquant-Nonce", "X-Autoquant-Content-SHA256",
                                 "X-Autoquant-Signature"])


@fuzz(200)
@given(st.dictionaries(_HEADER_NAMES, _TEXT | st.text(min_size=100, max_size=300)), st.integers(0, 2**40),
       st.booleans())
def test_verify_request_headers(headers: dict[str, str], length: int, start_signed: bool) -> None:
    secret = b"k" * 32
    if start_signed:
        headers = {**sign_request(secret, "POST", "/v1/facts", b"x" * (length % 100)), **headers}
    why = verify_request_headers(secret, "POST", "/v1/facts", headers, length)
    assert why is None or isinstance(why, str)
