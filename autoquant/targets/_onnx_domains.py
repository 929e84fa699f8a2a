"""What an ONNX model uses, read from its protobuf bytes without the onnx package (the
device side has only onnxruntime and numpy): its operator domains, and whether any
tensor keeps its data outside the model (external data, which onnxruntime would read
from files on the device).

The walk is iterative, over zero-copy views, and refuses subgraphs nested deeper than
``MAX_GRAPH_DEPTH``: a hostile model costs time linear in its size, never a
RecursionError.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["MAX_GRAPH_DEPTH", "STANDARD_DOMAINS", "ModelScan", "model_domains", "scan_model"]

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
MAX_GRAPH_DEPTH = 64  # If/Loop/Scan bodies nest a few levels in real models

# Field numbers (onnx.proto) of the messages that can hold nodes, graphs or tensors.
# ModelProto: 7 graph, 20 training_info, 25 functions.
# TrainingInfoProto: 1 initialization, 2 algorithm (graphs).
# FunctionProto: 7 node, 11 attribute_proto, 10 domain, 1 name.
# GraphProto: 1 node, 5 initializer, 15 sparse_initializer.
# NodeProto: 7 domain, 5 attribute.
# AttributeProto: 5 t, 10 tensors, 6 g, 11 graphs, 22 sparse_tensor, 23 sparse_tensors.
# SparseTensorProto: 1 values, 2 indices (tensors).
# TensorProto: 8 name, 13 external_data, 14 data_location (1 = EXTERNAL).
_EXTERNAL = 1
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 10: "tensor", 6: "graph", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


@dataclass
class ModelScan:
    """What ``scan_model`` found: operator domains used by nodes (functions as
    ``function:DOMAIN.NAME``), and the names of tensors stored as external data."""

    domains: set[str] = field(default_factory=set)
    external: list[str] = field(default_factory=list)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, varint value or length-delimited view) of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            pos += 8
            yield number, wire, 0
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated field")
            yield number, wire, buf[pos:pos + n]
            pos += n
        elif wire == 5:
            pos += 4
            yield number, wire, 0
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(buf):
        raise ValueError("truncated message")


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", "replace")


def scan_model(model: bytes) -> ModelScan:
    """Walk every node, graph (subgraphs and functions included) and tensor of an ONNX
    model. ValueError if the bytes are not a protobuf message with a graph, or its
    subgraphs nest deeper than ``MAX_GRAPH_DEPTH``."""
    scan = ModelScan()
    saw_graph = False
    stack: list[tuple[str, memoryview, int]] = [("model", memoryview(model), 0)]
    while stack:
        kind, msg, depth = stack.pop()
        children = _CHILDREN.get(kind, {})
        domain: str | None = None
        name = ""
        external = False
        function_name = ""
        for number, wire, value in _fields(msg):
            if isinstance(value, int):
                if kind == "tensor" and number == 14 and wire == 0 and value == _EXTERNAL:
                    external = True
                continue
            if kind == "node" and number == 7:
                domain = _text(value)
            elif kind == "function" and number in (1, 10):
                if number == 10:
                    domain = _text(value)
                else:
                    function_name = _text(value)
            elif kind == "tensor" and number == 8:
                name = _text(value)
            elif kind == "tensor" and number == 13:
                external = True
            elif number in children:
                child = children[number]
                if kind == "model" and child == "graph":
                    saw_graph = True
                nested = depth + 1 if child == "graph" else depth
                if nested > MAX_GRAPH_DEPTH:
                    raise ValueError(f"subgraphs nest deeper than {MAX_GRAPH_DEPTH} levels")
                stack.append((child, value, nested))
        if kind == "node":
            scan.domains.add(domain or "")
        elif kind == "function":
            scan.domains.add(f"function:{domain or ''}.{function_name}")
        elif kind == "tensor" and external:
            scan.external.append(name or "(unnamed)")
    if not saw_graph:
        raise ValueError("no graph in the model")
    return scan


def model_domains(model: bytes) -> set[str]:
    """Every operator domain the model's nodes use (declared but unused opset imports
    do not count). ValueError if the bytes are not a protobuf message."""
    return scan_model(model).domains
