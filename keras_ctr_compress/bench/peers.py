"""Peer baselines: what CTR engineers use today to shrink a model.

Each is registered as a benchmark method and run on the same split and seeds as
fp32, so that its row can be compared with ours directly.
"""

from __future__ import annotations

import math

import keras

from keras_ctr_compress.bench.registry import Candidate, MethodContext, register_method
from keras_ctr_compress.compress.swap import replace_layers
from keras_ctr_compress.export import export_litert
from keras_ctr_compress.layers.hashed_embedding import HashedEmbedding
from keras_ctr_compress.layers.qr_embedding import QREmbedding
from keras_ctr_compress.models import TrainConfig, build_model, train_model

#: table shrink factor of the weight-sharing peers (about the size ratio of int4 codes)
SHARING_FACTOR = 8


def _keras_ptq(ctx: MethodContext, mode: str) -> Candidate:
    model = keras.models.clone_model(ctx.fp32_model)
    model.set_weights(ctx.fp32_model.get_weights())
    for layer in model.layers:
        # Keras' quantized Dense does not convert to LiteRT (litert.md): embeddings only.
        if isinstance(layer, keras.layers.Embedding):
            layer.quantize(mode)
    path = ctx.path(f"keras-{mode}.tflite")
    export_litert(model, path)
    return Candidate(tflite_path=path, keras_model=model)


@register_method(
    "keras-int8",
    description="Keras' own post-training Embedding.quantize('int8') on every table (the "
    "built-in PTQ a Keras user tries first; Dense layers stay float because Keras' int8 Dense "
    "does not convert to LiteRT)",
)
def keras_int8(ctx: MethodContext) -> Candidate:
    """Keras' built-in post-training int8 quantisation of every Embedding table.

    Fair peer: it is the first thing a Keras 3 user calls, applied to the same trained
    fp32 model our methods start from, exported by the same builtins-only path. Its
    Dense layers stay float because Keras' quantized Dense does not convert.
    """
    return _keras_ptq(ctx, "int8")


@register_method(
    "keras-int4",
    description="Keras' Embedding.quantize('int4'): shows its real exported size (the table is "
    "unpacked before the gather, so the file holds about one byte per weight)",
)
def keras_int4(ctx: MethodContext) -> Candidate:
    """Keras' post-training ``Embedding.quantize("int4")`` on the same trained model.

    Fair peer: the same one-call PTQ at our 4-bit width; its row shows the size the
    exported file really has (Keras unpacks the int4 table before the gather, so the
    converter stores a byte per weight).
    """
    return _keras_ptq(ctx, "int4")


def _retrain_with_tables(ctx: MethodContext, make_layer, tag: str) -> Candidate:
    base = build_model(ctx.model_name, ctx.dataset.fields, seed=ctx.seed,
                       **ctx.extra.get("model_kwargs", {}))

    def replace(layer):
        if isinstance(layer, keras.layers.Embedding) and layer.name.startswith("emb_"):
            return make_layer(layer)
        return None

    model, _ = replace_layers(base, replace)
    cfg = TrainConfig(**{**ctx.train_config.to_dict(), "seed": ctx.seed})
    summary = train_model(model, ctx.dataset.train, ctx.dataset.valid, cfg)
    path = ctx.path(f"{tag}.tflite")
    export_litert(model, path)
    return Candidate(tflite_path=path, keras_model=model, train_seconds=summary["train_seconds"],
                     extra={"shrink_factor": SHARING_FACTOR})


@register_method(
    "hashing",
    description=f"hashing trick: each field's table cut to ceil(n/{SHARING_FACTOR}) rows shared by "
    "ids equal mod that size, trained from scratch with the fp32 recipe (the cheapest "
    "weight-sharing baseline)",
)
def hashing(ctx: MethodContext) -> Candidate:
    """The hashing trick: each table shrunk to ``ceil(n / 8)`` rows shared mod that size.

    Fair peer: the weight-sharing shortcut production CTR systems use to bound table
    size, at about int4's shrink factor, trained from scratch with the fp32 recipe and
    seed (its collisions cannot be applied to a trained table).
    """
    def make(layer):
        buckets = max(1, math.ceil(layer.input_dim / SHARING_FACTOR))
        return HashedEmbedding(layer.input_dim, layer.output_dim, buckets, name=layer.name,
                               embeddings_initializer=layer.embeddings_initializer,
                               embeddings_regularizer=layer.embeddings_regularizer)

    return _retrain_with_tables(ctx, make, "hashing")


@register_method(
    "qr",
    description=f"quotient-remainder compositional embeddings (Shi et al. 2020) with "
    f"{SHARING_FACTOR} collisions per quotient row, trained from scratch with the fp32 recipe",
)
def qr(ctx: MethodContext) -> Candidate:
    """Quotient-remainder compositional embeddings (Shi et al., KDD 2020).

    Fair peer: the published improvement on hashing at the same shrink factor (each id
    gets a unique quotient/remainder pair), trained from scratch with the fp32 recipe.
    """
    def make(layer):
        return QREmbedding(layer.input_dim, layer.output_dim, SHARING_FACTOR, name=layer.name,
                           embeddings_initializer=layer.embeddings_initializer,
                           embeddings_regularizer=layer.embeddings_regularizer)

    return _retrain_with_tables(ctx, make, "qr")
