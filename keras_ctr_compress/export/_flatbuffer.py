"""Reading a .tflite flatbuffer with the schema bindings shipped in ai-edge-litert.

``ai_edge_litert.schema_py_generated`` is the generated flatbuffer reader of the
LiteRT schema (``tflite::Model``); it needs only the ``flatbuffers`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

_FILE_IDENTIFIER = b"TFL3"
_CUSTOM = schema.BuiltinOperator.CUSTOM

#: BuiltinOperator code -> name ("FULLY_CONNECTED", ...).
BUILTIN_NAMES: dict[int, str] = {
    v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
}
#: TensorType code -> numpy-style dtype name ("float32", "int8", "int4", ...).
TENSOR_TYPE_NAMES: dict[int, str] = {
    v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_") and isinstance(v, int)
}


@dataclass(frozen=True)
class OpCode:
    """One entry of the model's operator-code table."""

    builtin: int
    custom_code: str | None

    @property
    def name(self) -> str:
        """The builtin's name, or the custom code (``FlexAsString``) for CUSTOM ops."""
        if self.builtin == _CUSTOM:
            return self.custom_code or "CUSTOM"
        return BUILTIN_NAMES.get(self.builtin, f"BUILTIN_{self.builtin}")

    @property
    def is_custom(self) -> bool:
        return self.builtin == _CUSTOM


@dataclass(frozen=True)
class FlatTensor:
    """A tensor of the flatbuffer and the size of the constant buffer it points to."""

    subgraph: int
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    buffer: int
    nbytes: int


def read_model(path: str | Path) -> tuple[bytes, schema.Model]:
    """Reads ``path`` and returns its bytes and the root ``Model`` table.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a LiteRT flatbuffer (no ``TFL3`` identifier).
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != _FILE_IDENTIFIER:
        raise ValueError(f"{path}: not a LiteRT (.tflite) flatbuffer (no 'TFL3' file identifier)")
    return data, schema.Model.GetRootAs(data, 0)


def opcodes(model: schema.Model) -> list[OpCode]:
    """The operator-code table (one entry per distinct op kind used)."""
    out = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # Codes above 127 live only in `builtin_code`; old files only fill the
        # deprecated int8 field: the real code is the larger of the two.
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        out.append(OpCode(code, custom.decode("utf-8", "replace") if custom else None))
    return out


def op_counts(model: schema.Model) -> dict[str, int]:
    """How many operators of each kind all subgraphs hold."""
    codes = opcodes(model)
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.OperatorsLength()):
            name = codes[sg.Operators(i).OpcodeIndex()].name
            counts[name] = counts.get(name, 0) + 1
    return counts


def buffer_nbytes(model: schema.Model, index: int) -> int:
    """Bytes of constant data in buffer ``index`` (0 for activations / empty buffers).

    Files over 2 GB keep buffers outside the flatbuffer (``offset`` / ``size``).
    """
    if index <= 0 or index >= model.BuffersLength():
        return 0
    buf = model.Buffers(index)
    if buf.Offset() > 1:
        return int(buf.Size())
    return int(buf.DataLength())


def buffer_data(data: bytes, model: schema.Model, index: int) -> bytes:
    """The constant bytes of buffer ``index`` of the file ``data``, whether inside the
    flatbuffer or after it (buffer-offset layout: ``offset`` / ``size``)."""
    if index <= 0 or index >= model.BuffersLength():
        return b""
    buf = model.Buffers(index)
    if buf.Offset() > 1:
        return bytes(data[buf.Offset():buf.Offset() + buf.Size()])
    return buf.DataAsNumpy().tobytes() if buf.DataLength() else b""


def tensors(model: schema.Model) -> list[FlatTensor]:
    """Every tensor of every subgraph, with its constant-buffer size."""
    out = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            name = (t.Name() or b"").decode("utf-8", "replace")
            shape = tuple(int(t.Shape(k)) for k in range(t.ShapeLength()))
            dtype = TENSOR_TYPE_NAMES.get(t.Type(), f"type{t.Type()}")
            out.append(FlatTensor(s, i, name, dtype, shape, t.Buffer(), buffer_nbytes(model, t.Buffer())))
    return out
