"""The built-in benchmark methods: the fp32 reference and LiteRT dynamic-range
quantisation. Compression methods register themselves in their own modules."""

from __future__ import annotations

from keras_ctr_compress.bench.registry import Candidate, MethodContext, register_method
from keras_ctr_compress.export import export_litert


@register_method("fp32", description="the trained float32 model exported as is (the reference row)")
def fp32(ctx: MethodContext) -> Candidate:
    return Candidate(tflite_path=ctx.fp32_tflite, keras_model=ctx.fp32_model)


@register_method(
    "drq",
    description="LiteRT dynamic-range quantisation of the fp32 model: int8 weights with one "
    "scale per tensor, dequantised at run time; the baseline every method must beat",
)
def drq(ctx: MethodContext) -> Candidate:
    """LiteRT dynamic-range quantisation of the trained fp32 model (``Optimize.DEFAULT``).

    Fair peer: one converter flag, no training, applied to the same fp32 model; every
    float weight of >= 1024 elements becomes int8 with one scale per tensor. Any method
    that does not beat it in bytes and AUC is not worth its complexity.
    """
    path = ctx.path("drq.tflite")
    export_litert(ctx.fp32_model, path, quantization="drq")
    return Candidate(tflite_path=path, keras_model=None)
