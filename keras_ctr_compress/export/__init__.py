"""LiteRT export (builtin ops only), parity check, size breakdown and latency.

The path of a compressed model to the device: :func:`export_litert` writes a
verified ``.tflite``; :func:`check_parity` compares it with the Keras model;
:func:`size_breakdown` shows where its bytes go; :class:`LiteRTModel` scores id
matrices with it; :func:`measure_latency` times several files interleaved.
"""

from keras_ctr_compress.export.latency import measure_latency, ratios
from keras_ctr_compress.export.litert import (
    ExportError,
    assert_builtins_only,
    export_litert,
    list_ops,
    op_counts,
)
from keras_ctr_compress.export.parity import ParityError, check_parity, keras_predict
from keras_ctr_compress.export.runner import LiteRTModel
from keras_ctr_compress.export.size import (
    DENSE_WEIGHTS,
    EMBEDDING_REMAP,
    EMBEDDING_SCALES,
    EMBEDDING_TABLES,
    OTHER,
    SizeReport,
    TensorBytes,
    artefact_bytes,
    default_category,
    size_breakdown,
)

__all__ = [
    "DENSE_WEIGHTS",
    "EMBEDDING_REMAP",
    "EMBEDDING_SCALES",
    "EMBEDDING_TABLES",
    "OTHER",
    "ExportError",
    "LiteRTModel",
    "ParityError",
    "SizeReport",
    "TensorBytes",
    "artefact_bytes",
    "assert_builtins_only",
    "check_parity",
    "default_category",
    "export_litert",
    "keras_predict",
    "list_ops",
    "measure_latency",
    "op_counts",
    "ratios",
    "size_breakdown",
]
