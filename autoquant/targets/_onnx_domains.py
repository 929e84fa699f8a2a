"""Which operator domains an ONNX model uses, read from its protobuf bytes without the
onnx package (the device side has only onnxruntime and numpy)."""

from __future__ import annotations

__all__ = ["STANDARD_DOMAINS", "model_domains"]

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})

# ModelProto: 7 graph, 25 functions. GraphProto: 1 node.
# NodeProto: 7 domain, 5 attribute (AttributeProto: 6 g, 11 graphs = subgraphs).
# OperatorSetIdProto: 1 domain. FunctionProto: 5 node, 4 opset_import.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
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


def _fields(buf: bytes):  # type: ignore[no-untyped-def]
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            yield field, wire, None
        elif wire == 1:
            pos += 8
            yield field, wire, None
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated field")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire == 5:
            pos += 4
            yield field, wire, None
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(buf):
        raise ValueError("truncated message")


def _string_field(msg: bytes, number: int) -> str:
    for field, wire, value in _fields(msg):
        if field == number and wire == 2 and value is not None:
            return value.decode("utf-8", "replace")
    return ""


def _graph_domains(graph: bytes, out: set[str]) -> None:
    for field, wire, node in _fields(graph):
        if field == 1 and wire == 2 and node is not None:
            for nf, nw, value in _fields(node):
                if nf == 7 and nw == 2 and value is not None:
                    out.add(value.decode("utf-8", "replace"))
                elif nf == 5 and nw == 2 and value is not None:  # attribute: subgraphs
                    for af, aw, sub in _fields(value):
                        if af in (6, 11) and aw == 2 and sub is not None:
                            _graph_domains(sub, out)
            if not any(nf == 7 for nf, _, _ in _fields(node)):
                out.add("")


def model_domains(model: bytes) -> set[str]:
    """Every operator domain the model's nodes use (declared but unused opset imports
    do not count). ValueError if the bytes are not a protobuf message."""
    domains: set[str] = set()
    saw_graph = False
    for field, wire, value in _fields(model):
        if value is None:
            continue
        if field == 7 and wire == 2:
            saw_graph = True
            _graph_domains(value, domains)
        elif field == 25 and wire == 2:
            domains.add("function:" + _string_field(value, 2))
    if not saw_graph:
        raise ValueError("no graph in the model")
    return domains
