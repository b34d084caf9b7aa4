"""Keras 3 -> LiteRT (.tflite) export with builtin ops only, written atomically.

Keras' ``model.export(format="litert")`` converts through a temporary SavedModel and
``TFLiteConverter.from_saved_model``; it enables Select-TF (Flex) ops by default, so
an op without a builtin kernel would export silently as ``CUSTOM:Flex...`` and then
fail on the device. Here the converter is restricted to builtins, and every written
file is re-read and checked before it replaces the destination.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_ctr_compress.export import _flatbuffer as fb
from keras_ctr_compress.export._quiet import CapturedOutput, captured_output
from keras_ctr_compress.utils import return_freed_memory, variable_bytes

QUANTIZATIONS = (None, "drq")
# Weight dtypes of custom-quantised layers (codes, fp16 scale bit patterns).
_CODE_DTYPES = {"int8", "uint8", "int16", "uint16", "int4", "uint4", "int2"}

_UNSUPPORTED_OP = re.compile(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op")
_SELECT_OPS_LINE = re.compile(r"TF Select ops: ([A-Za-z0-9_, ]+)")
_OP_LOCATION = re.compile(r'fused\["([A-Za-z0-9_]+):", "([^"@]+)@')


class ExportError(ValueError):
    """The model cannot be exported to a LiteRT file that runs with builtin ops only,
    or the written file failed its checks."""


def list_ops(path: str | Path) -> list[str]:
    """Names of the op kinds a .tflite file uses, in its operator-code order.

    Builtins appear by name (``FULLY_CONNECTED``); custom ops by their custom code
    (``FlexAsString`` for a Select-TF op).
    """
    _, model = fb.read_model(path)
    return [code.name for code in fb.opcodes(model)]


def op_counts(path: str | Path) -> dict[str, int]:
    """How many operators of each kind the file holds (all subgraphs)."""
    _, model = fb.read_model(path)
    return fb.op_counts(model)


def assert_builtins_only(path: str | Path) -> None:
    """Raises :class:`ExportError` naming every custom op (Flex or other) in ``path``.

    The stock LiteRT interpreter resolves builtin ops only: a ``Flex*`` op needs the
    Select-TF delegate (tens of MB on a phone) and any other custom op a registered
    kernel, so a file with either is not shippable.
    """
    _raise_on_custom_ops(path, str(path))


def _raise_on_custom_ops(path: str | Path, label: str) -> None:
    _, model = fb.read_model(path)
    custom = [code.name for code in fb.opcodes(model) if code.is_custom]
    if custom:
        flex = [c for c in custom if c.startswith("Flex")]
        other = [c for c in custom if not c.startswith("Flex")]
        parts = []
        if flex:
            parts.append(f"Select-TF (Flex) ops {', '.join(flex)}")
        if other:
            parts.append(f"custom ops {', '.join(other)}")
        raise ExportError(
            f"{label}: holds {' and '.join(parts)}; the LiteRT runtime runs builtin ops only. "
            "Rewrite the layers that use them with keras.ops that have a builtin kernel."
        )


def _converter_kwargs(quantization: str | None, sparsity: bool, low_memory: bool = False) -> dict[str, Any]:
    """The TFLiteConverter attributes Keras' exporter sets from ``model.export`` kwargs."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization must be one of {QUANTIZATIONS}; got {quantization!r}")
    if not isinstance(sparsity, bool):
        raise ExportError(f"sparsity must be True or False; got {sparsity!r}")
    if sparsity and quantization is not None:
        # Measured (shared/litert.md): EXPERIMENTAL_SPARSITY together with
        # Optimize.DEFAULT produced wrong outputs under XNNPACK.
        raise ExportError(
            f"sparsity=True cannot be combined with quantization={quantization!r}: "
            "converter sparsity plus dynamic-range quantisation gives wrong outputs under XNNPACK"
        )
    kwargs: dict[str, Any] = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantization == "drq":
        kwargs["optimizations"] = [tf.lite.Optimize.DEFAULT]
    elif sparsity:
        kwargs["optimizations"] = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if low_memory:
        # Constant buffers go after the flatbuffer (offset + size) instead of through
        # the FlatBufferBuilder, and the converter skips its two Python round trips of
        # the whole model (buffer deduplication, conversion metadata), each of which
        # held extra copies of every weight.
        kwargs["_experimental_use_buffer_offset"] = True
    return kwargs


#: Models with at least this many weight bytes export in low-memory mode by default.
LOW_MEMORY_BYTES = 256 * 2**20
#: glibc's mmap threshold during a low-memory export: freed blocks of at least this
#: size go straight back to the OS (:func:`~keras_ctr_compress.utils.return_freed_memory`;
#: measured on the 1e7-row fp32 DeepFM: extra peak RSS of the export 3,536 MB by
#: default, 2,426 MB with buffer offsets alone, 2,042 MB with both).
_MMAP_THRESHOLD = 2**20


def _describe_conversion_error(error: BaseException, log: CapturedOutput) -> str:
    """One readable reason for a failed conversion, naming ops without a builtin kernel."""
    text = f"{error}\n{log.text}"
    ops = list(dict.fromkeys(_UNSUPPORTED_OP.findall(text)))
    if not ops:
        m = _SELECT_OPS_LINE.search(text)
        ops = [o.strip() for o in m.group(1).split(",") if o.strip()] if m else []
    if ops:
        where = {op: node for op, node in _OP_LOCATION.findall(text)}
        named = ", ".join(f"{op} (at {where[op]})" if op in where else op for op in ops)
        return (
            f"ops without a LiteRT builtin kernel: {named}. Builtins only are allowed "
            "(Flex ops do not run on the stock runtime): rewrite those layers with keras.ops "
            "that have builtin kernels"
        )
    first = next((ln for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    return f"{type(error).__name__}: {first}"


def _check_model(model: Any, quantization: str | None) -> None:
    if not isinstance(model, keras.Model):
        raise ExportError(f"expected a keras.Model; got {type(model).__name__}")
    if not model.built:
        raise ExportError(f"model {model.name!r} is not built; call it once or build it before export")
    if quantization == "drq":
        _check_drq_stackable(model)


#: The converter's dynamic-range pass only quantises float constants with at least
#: this many elements (TFLite's ``kWeightsMinNumElementsDefault``).
DRQ_MIN_ELEMENTS = 1024


def _check_drq_stackable(model: keras.Model) -> None:
    """Refuses DRQ where it would touch a custom-quantised layer.

    shared/litert.md: dynamic-range quantisation re-quantises the float scale vectors of
    custom-quantised tables and adds error. This project's quantised layers keep codes
    and per-row scales as integer weights (untouched by DRQ); a float weight of such a
    layer (a per-table step, a fp16-tier table kept as float) is safe only while it is
    below the size DRQ quantises. Then DRQ quantises only the other layers (the MLP).
    """
    for layer in _leaf_layers(model):
        weights = list(getattr(layer, "weights", []))
        if not any(str(w.dtype) in _CODE_DTYPES for w in weights):
            continue
        # DRQ touches float tensors only: an int32 index (a row remap past 32,768 rows) is safe
        big = [w.path for w in weights
               if "float" in str(w.dtype) and int(np.prod(w.shape)) >= DRQ_MIN_ELEMENTS]
        if big:
            raise ExportError(
                f"model {model.name!r}: layer {layer.name!r} holds integer (custom-quantised) codes "
                f"and float weights {big[:4]} that dynamic-range quantisation would re-quantise; "
                "DRQ must not be stacked on them: export with quantization=None"
            )


def _leaf_layers(model: keras.Model) -> list:
    """Layers without sub-layers (where weights live), however deeply nested."""
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if not list(layer._flatten_layers(include_self=False, recursive=False))]


def _smoke_run(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Loads ``path`` and runs one batch of 2 all-zero rows.

    Returns the names of inputs with a fixed batch dimension (then nothing is run)
    and the outputs of the run.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    inputs = interp.get_input_details()
    fixed = [d["name"] for d in inputs if len(d["shape_signature"]) == 0 or d["shape_signature"][0] != -1]
    if fixed:
        return fixed, []
    for d in inputs:
        interp.resize_tensor_input(d["index"], [2, *d["shape_signature"][1:]], strict=True)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
    interp.invoke()
    return [], [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def _verify_file(path: Path, label: str) -> None:
    """Checks a freshly written file: builtins only, loads, dynamic batch, finite outputs.

    The smoke run catches files that load but compute nothing sensible, e.g.
    uninitialised variables whose outputs are all NaN. ``label`` names the file in
    errors (the destination, not the temporary name).
    """
    _raise_on_custom_ops(path, label)
    with captured_output() as log:
        try:
            fixed, outs = _smoke_run(path)
        except Exception as e:
            error: Exception | None = e
        else:
            error = None
    if error is not None:
        raise ExportError(f"{label}: the written file does not run in LiteRT: {error}\n{log.tail()}") from error
    if fixed:
        raise ExportError(
            f"{label}: inputs {fixed} have a fixed batch dimension; the file must accept any batch size"
        )
    bad = [i for i, o in enumerate(outs) if not np.all(np.isfinite(o))]
    if bad:
        raise ExportError(f"{label}: outputs {bad} are not finite on an all-zero input batch")


def _temp_path(path: Path) -> Path:
    """A fresh name in ``path``'s folder, so that ``os.replace`` is an atomic rename.

    Not pre-created with ``mkstemp``: that file would be mode 0600 and the shipped
    model unreadable to other users; Keras creates it with the usual umask. Keras
    insists on the ``.tflite`` suffix.
    """
    return path.parent / f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp.tflite"


def export_litert(
    model: keras.Model,
    path: str | Path,
    *,
    quantization: str | None = None,
    sparsity: bool = False,
    low_memory: bool | None = None,
    verbose: bool = False,
) -> Path:
    """Exports ``model`` to a LiteRT file at ``path`` with builtin ops only.

    The file is written under a temporary name in ``path``'s folder, checked
    (builtins only, loads in the interpreter, dynamic batch dimension, finite outputs
    on a smoke batch) and only then renamed onto ``path``. On any failure no new file
    is left behind (an older file at ``path`` stays as it was).

    Example::

        path = export_litert(model, "runs/m.tflite")                      # float32, builtins only
        export_litert(model, "runs/m_drq.tflite", quantization="drq")     # int8 weights, DRQ
        check_parity(model, path, ds.test.x[:1000])                       # max |LiteRT - Keras|

    Args:
        model: a built Keras 3 model (functional, with custom layers allowed).
        path: destination, must end with ``.tflite``; parent folders are created.
        quantization: ``None`` (float32) or ``"drq"``: the converter's dynamic-range
            quantisation (``Optimize.DEFAULT``: int8 weights, one scale per tensor,
            dequantised at run time; the converter leaves tensors of fewer than 1024
            elements in float32). Refused on a model that already holds integer
            (custom-quantised) weights: stacking it re-quantises their scales.
        sparsity: ``True`` stores weights with many zeros in a sparse format
            (``Optimize.EXPERIMENTAL_SPARSITY``); smaller file, no speed-up. Refused
            together with ``quantization`` (measured wrong outputs).
        low_memory: store the constant buffers after the flatbuffer (LiteRT's
            buffer-offset layout, which the interpreter reads like any file; also
            the only layout for files over 2 GB) and return freed memory to the OS
            at once: the export's extra peak memory drops from about 5x the weight
            bytes to about 3x. The converter then skips its buffer deduplication
            (identical constants are stored once each time they occur) and its
            conversion-metadata entry. ``None`` (default): on for models with at
            least :data:`LOW_MEMORY_BYTES` of weights, unless ``sparsity``
            (refused together: the sparse buffer-offset file does not run).
        verbose: show the converter's own logging instead of capturing it (captured
            logging is quoted in the error when the export fails).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: bad options, an op without a builtin kernel, or a written file
            that fails its checks.
    """
    path = Path(path)
    if path.suffix != ".tflite":
        raise ExportError(f"the LiteRT file name must end with .tflite; got {path}")
    if low_memory is None:
        low_memory = not sparsity and variable_bytes(model.weights) >= LOW_MEMORY_BYTES
    elif not isinstance(low_memory, bool):
        raise ExportError(f"low_memory must be True, False or None; got {low_memory!r}")
    elif low_memory and sparsity:
        # Measured: the sparsified buffer-offset file fails in the interpreter (RESHAPE
        # to a negative dimension).
        raise ExportError("sparsity=True cannot be combined with low_memory=True: the converter's sparse "
                          "buffer-offset file does not run in LiteRT")
    kwargs = _converter_kwargs(quantization, sparsity, low_memory)
    _check_model(model, quantization)
    if low_memory:
        return_freed_memory(_MMAP_THRESHOLD)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with captured_output(enabled=not verbose) as log:
            try:
                model.export(str(tmp), format="litert", verbose=verbose, **kwargs)
            except Exception as e:
                error: Exception | None = e
            else:
                error = None
        if error is not None:
            raise ExportError(
                f"LiteRT export of model {model.name!r} to {path} failed: "
                f"{_describe_conversion_error(error, log)}"
            ) from error
        _verify_file(tmp, str(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
