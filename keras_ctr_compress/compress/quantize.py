"""Quantised embeddings for a trained model: swap, row priorities, fine-tuning, finalizing.

The ALPT (arXiv 2212.05735) and SHARK F-Quantisation (arXiv 2308.09395) workflow on a
trained Keras 3 functional model:

1. :func:`quantize_embeddings` replaces its ``keras.layers.Embedding`` tables by
   :class:`~keras_ctr_compress.layers.QuantizedEmbedding` (``"qat"`` / ``"lpt"``) or
   :class:`~keras_ctr_compress.layers.RowwiseQuantEmbedding` (``"rowwise"``),
   initialised from the trained tables with calibrated step sizes;
2. for ``"rowwise"``, :func:`update_row_priorities` counts accesses and clicks on the
   training data and assigns tiers, and :class:`RowPriorityCallback` re-assigns them
   between epochs;
3. the returned model is fine-tuned with plain ``model.fit`` (``lpt`` tables update
   themselves in the backward pass, see ``QuantizedEmbedding``);
4. :func:`finalize_quantized` turns every quantised layer into its packed inference
   form, ready for ``keras_ctr_compress.export.export_litert``.

:func:`quantize_and_finetune` runs the whole chain with the benchmark's method names
(:data:`METHOD_PRESETS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

from keras_ctr_compress.compress.swap import ensure_functional, replace_layers
from keras_ctr_compress.layers.quantized_embedding import (
    QuantizedEmbedding,
    quantized_embedding_byte_cost,
)
from keras_ctr_compress.layers.rowwise_quant_embedding import RowwiseQuantEmbedding

METHODS = ("qat", "lpt", "rowwise")

#: Benchmark method name -> (``quantize_embeddings`` method, layer options). The four
#: ALPT rows of the paper's comparison: QAT with a fixed step, LPT with deterministic
#: or stochastic rounding and a fixed step, and ALPT (stochastic rounding, learned step).
METHOD_PRESETS: dict[str, tuple[str, dict]] = {
    "qat": ("qat", {"learn_step": False, "rounding": "deterministic"}),
    "lpt-dr": ("lpt", {"learn_step": False, "rounding": "deterministic"}),
    "lpt-sr": ("lpt", {"learn_step": False, "rounding": "stochastic"}),
    "alpt": ("lpt", {"learn_step": True, "rounding": "stochastic"}),
    "rowwise": ("rowwise", {}),
}

QUANTIZED_LAYERS = (QuantizedEmbedding, RowwiseQuantEmbedding)


def _plain_embeddings(model: keras.Model) -> list[keras.layers.Embedding]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)]


def _select_embeddings(model: keras.Model, layer_names) -> list[str]:
    tables = _plain_embeddings(model)
    if layer_names is None:
        chosen = [t.name for t in tables if t.output_dim >= 2]
    elif layer_names == "all":
        chosen = [t.name for t in tables]
    elif isinstance(layer_names, str) or not isinstance(layer_names, Sequence):
        raise ValueError(f"`layer_names` must be None, 'all' or a list of layer names. Received: {layer_names!r}")
    else:
        by_name = {layer.name: layer for layer in model.layers}
        available = [t.name for t in tables]
        for name in layer_names:
            if name not in by_name:
                raise ValueError(
                    f"model {model.name!r} has no layer {name!r}; its keras.layers.Embedding layers are {available}"
                )
            if not isinstance(by_name[name], keras.layers.Embedding):
                raise ValueError(
                    f"layer {name!r} is a {type(by_name[name]).__name__}, not a keras.layers.Embedding; "
                    f"quantisable layers of {model.name!r}: {available}"
                )
        chosen = list(dict.fromkeys(layer_names))
    if not chosen:
        raise ValueError(
            f"model {model.name!r} has no keras.layers.Embedding layer to quantise "
            f"(layer_names={layer_names!r}; None selects the tables of width >= 2)"
        )
    return chosen


def _check_embedding(layer: keras.layers.Embedding) -> None:
    if layer.mask_zero:
        raise ValueError(f"layer {layer.name!r}: Embedding(mask_zero=True) is not supported by the quantised layers")
    if getattr(layer, "lora_enabled", False):
        raise ValueError(f"layer {layer.name!r}: a LoRA-enabled Embedding cannot be quantised; merge LoRA first")
    if getattr(layer, "quantization_mode", None):
        raise ValueError(f"layer {layer.name!r}: the Embedding is already quantised by Keras "
                         f"({layer.quantization_mode!r}); quantise the float model")


def quantize_embeddings(
    model: keras.Model,
    layer_names: Sequence[str] | str | None = None,
    method: str = "qat",
    bits: int | None = None,
    **layer_kwargs,
) -> keras.Model:
    """A copy of ``model`` with its embedding tables replaced by quantised layers.

    Each selected ``keras.layers.Embedding`` becomes a layer of the same name, size and
    regulariser, initialised from its trained table: ``QuantizedEmbedding`` codes and
    step sizes calibrated on the table (``step_init="mse"``: the step with the least
    squared error, per row or table; pass ``step_init="lsq"`` for ALPT's from-scratch
    ``2 mean|w| / sqrt(Qp)``), or a ``RowwiseQuantEmbedding`` holding the float table with tiers
    assigned by its policy (priorities are still zero: call
    :func:`update_row_priorities` with training data). ``model`` is left untouched;
    the other layers are copies with the same weights.

    Example:

    >>> q = quantize_embeddings(model, method="lpt", bits=4, rounding="stochastic")
    >>> q.fit(x, y)                                   # doctest: +SKIP
    >>> export_litert(finalize_quantized(q), "m.tflite")  # doctest: +SKIP

    Args:
        model: a built Keras 3 functional (or Sequential) model.
        layer_names: ``None`` for every Embedding of width >= 2 (the first-order
            ``lin_*`` tables of width 1 stay float: a 2-byte row scale would cost more
            than it saves), ``"all"`` for every Embedding, or a list of layer names.
        method: ``"qat"`` or ``"lpt"`` (``QuantizedEmbedding`` mode) or ``"rowwise"``.
        bits: code width for ``qat`` / ``lpt`` (default 8); not used by ``rowwise``
            (its ``tiers`` say the precisions).
        **layer_kwargs: further options of the new layers. For ``rowwise``,
            ``byte_budget`` may also be a callable ``(embedding_layer) -> int`` (see
            :func:`uniform_bits_budget`).

    Returns:
        the new (uncompiled) model.

    Raises:
        ValueError: a subclassed model, an unknown method, a named layer that is
            missing or not an Embedding, an unsupported Embedding (``mask_zero``,
            LoRA, Keras-quantised), or bad layer options.
    """
    ensure_functional(model)
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if method == "rowwise" and bits is not None:
        raise ValueError("`bits` does not apply to method='rowwise': pass `tiers=(...)` (e.g. ('int8', 'int4'))")
    for key in ("input_dim", "output_dim", "name", "mode"):
        if key in layer_kwargs:
            raise ValueError(f"`{key}` is set by quantize_embeddings; do not pass it")
    targets = set(_select_embeddings(model, layer_names))
    for layer in model.layers:
        if layer.name in targets:
            _check_embedding(layer)

    def replace(layer):
        if layer.name not in targets:
            return None
        return _quantized_copy(layer, method, 8 if bits is None else bits, layer_kwargs)

    new_model, _ = replace_layers(model, replace)
    return new_model


def _quantized_copy(layer: keras.layers.Embedding, method: str, bits: int, layer_kwargs: dict):
    table = keras.ops.convert_to_numpy(layer.embeddings)
    kwargs = {
        "embeddings_initializer": layer.embeddings_initializer,
        "embeddings_regularizer": layer.embeddings_regularizer,
        **layer_kwargs,
    }
    if method != "rowwise":
        # A trained table is calibrated (least squared error); LSQ's 2 mean|w| / sqrt(Qp)
        # is an initialisation for training from scratch and wastes about 3 of 8 bits
        # on a trained table (measured: 0.03 max prediction change at int8 vs 0.002).
        kwargs.setdefault("step_init", "mse")
    if method == "rowwise":
        if callable(kwargs.get("byte_budget")):
            kwargs["byte_budget"] = int(kwargs["byte_budget"](layer))
        new = RowwiseQuantEmbedding(layer.input_dim, layer.output_dim, name=layer.name, **kwargs)
        new.build()
        new.set_float_weights(table)
        new.assign_tiers()
        return new
    new = QuantizedEmbedding(layer.input_dim, layer.output_dim, bits=bits, mode=method, name=layer.name, **kwargs)
    new.build()
    new.set_float_weights(table)
    return new


def uniform_bits_budget(bits: int, granularity: str = "row") -> Callable[[keras.layers.Layer], int]:
    """A ``byte_budget`` callable for ``rowwise``: each table gets the exported bytes of
    the same table quantised uniformly to ``bits`` (codes + scales, no remap)."""

    def budget(layer) -> int:
        return sum(quantized_embedding_byte_cost(layer.input_dim, layer.output_dim, bits, granularity).values())

    return budget


def quantized_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The ``QuantizedEmbedding`` / ``RowwiseQuantEmbedding`` layers of ``model``."""
    return [layer for layer in model.layers if isinstance(layer, QUANTIZED_LAYERS)]


def finalize_quantized(model: keras.Model) -> keras.Model:
    """A copy of ``model`` whose quantised layers are in their packed ``inference`` form.

    Export this model: codes at 0.25-1 byte per weight, fp16 row scales, tier
    sub-tables and remaps. ``model`` is left untouched.
    """
    ensure_functional(model)

    def replace(layer):
        if isinstance(layer, QUANTIZED_LAYERS) and layer.mode != "inference":
            return layer.finalize()
        return None

    new_model, _ = replace_layers(model, replace)
    return new_model


def embedding_byte_cost(model: keras.Model) -> dict[str, int]:
    """Analytic exported bytes of ``model``'s embedding tables, by part.

    Quantised layers report their finalized ``byte_cost`` (``codes``, ``scales``,
    ``remap``, ``weights``); plain ``keras.layers.Embedding`` tables count as float32
    ``weights``. ``total`` is the sum.
    """
    parts = {"codes": 0, "scales": 0, "remap": 0, "weights": 0}
    for layer in model.layers:
        if isinstance(layer, QUANTIZED_LAYERS):
            for key, n in layer.byte_cost().items():
                parts[key] = parts.get(key, 0) + n
        elif isinstance(layer, keras.layers.Embedding):
            parts["weights"] += 4 * layer.input_dim * layer.output_dim
    parts["total"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------------------- row priorities


def _rowwise_layers(model: keras.Model, layer_names) -> list[RowwiseQuantEmbedding]:
    layers = [
        layer for layer in model.layers
        if isinstance(layer, RowwiseQuantEmbedding) and layer.mode == "qat"
        and (layer_names is None or layer.name in layer_names)
    ]
    if layer_names is not None:
        missing = sorted(set(layer_names) - {layer.name for layer in layers})
        if missing:
            raise ValueError(f"model {model.name!r}: no trainable RowwiseQuantEmbedding named {missing}")
    return layers


def layer_input_ids(model: keras.Model, layers: Sequence[keras.layers.Layer], x, batch_size: int = 4096) -> list[np.ndarray]:
    """The ids each of ``layers`` looks up when ``model`` reads ``x`` (one pass)."""
    if not layers:
        return []
    for layer in layers:
        calls = len(getattr(layer, "_inbound_nodes", ()) or ())
        if calls != 1:
            raise ValueError(f"layer {layer.name!r} is called {calls} times in the model; "
                             "row priorities need a table looked up once")
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    out = probe.predict(x, batch_size=batch_size, verbose=0)
    out = out if isinstance(out, list) else [out]
    return [np.asarray(o).astype("int64") for o in out]


def update_row_priorities(
    model: keras.Model,
    x,
    y,
    layer_names: Sequence[str] | None = None,
    batch_size: int = 1024,
    reassign: bool = True,
) -> dict[str, np.ndarray]:
    """Updates the row priorities of ``model``'s ``RowwiseQuantEmbedding`` layers from
    ``(x, y)`` taken as consecutive batches of ``batch_size`` (one decay per batch),
    then (``reassign``) re-assigns their tiers. Returns the rows per tier by layer."""
    y = np.asarray(y).reshape(-1)
    layers = _rowwise_layers(model, layer_names)
    counts = {}
    for layer, ids in zip(layers, layer_input_ids(model, layers, x), strict=True):
        layer.update_priorities(ids, y, batch_size=batch_size)
        counts[layer.name] = layer.assign_tiers() if reassign else layer.tier_counts()
    return counts


class RowPriorityCallback(keras.callbacks.Callback):
    """Re-assigns SHARK tiers between epochs: after every ``every`` epochs the row
    priorities are updated from ``(x, y)`` (the training data, replayed in the given
    order: Keras' shuffled order is not visible to callbacks) and the tiers of the
    model's ``RowwiseQuantEmbedding`` layers re-assigned. Put it after callbacks that
    evaluate the epoch (the new tiers hold from the next epoch on). ``history``
    records the rows per tier of each update."""

    def __init__(self, x, y, layer_names: Sequence[str] | None = None, batch_size: int = 1024, every: int = 1):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be a positive integer. Received: {every!r}")
        self.x, self.y = x, y
        self.layer_names, self.batch_size, self.every = layer_names, batch_size, every
        self.history: list[dict[str, list[int]]] = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        counts = update_row_priorities(self.model, self.x, self.y, self.layer_names, self.batch_size)
        self.history.append({k: [int(n) for n in v] for k, v in counts.items()})


# ---------------------------------------------------------------------------- benchmark chain


def quantize_and_finetune(
    model: keras.Model,
    train,
    valid,
    *,
    method: str,
    bits: int = 4,
    layer_names: Sequence[str] | str | None = None,
    epochs: int = 3,
    learning_rate: float = 1e-4,
    table_learning_rate: float | None = None,
    batch_size: int = 1024,
    patience: int = 1,
    seed: int = 0,
    verbose: int = 0,
    **layer_kwargs,
) -> tuple[keras.Model, dict]:
    """Trained fp32 model -> quantised, fine-tuned, finalized model (ready to export).

    Example::

        small, info = quantize_and_finetune(model, ds.train, ds.valid, method="alpt", bits=4,
                                            granularity="table", epochs=2)
        export_litert(small, "alpt4.tflite")     # packed int4 codes + fp16 scales per row

    Args:
        model: the trained float model (left untouched).
        train, valid: encoded splits (``.x`` int32 ``(n, F)``, ``.y``).
        method: a :data:`METHOD_PRESETS` name: ``"qat"``, ``"lpt-dr"``, ``"lpt-sr"``,
            ``"alpt"`` or ``"rowwise"``.
        bits: code width (``qat`` / ``lpt``); for ``rowwise`` the byte budget of each
            table defaults to that of uniform ``bits``-bit codes
            (:func:`uniform_bits_budget`) unless ``fractions`` or ``byte_budget`` is given.
        layer_names: tables to quantise (see :func:`quantize_embeddings`).
        epochs, learning_rate, batch_size, patience, seed, verbose: fine-tuning with
            the training recipe (Adam on the other weights, exact validation AUC,
            early stopping, best weights kept, incoming weights kept when no epoch
            beats them). ``learning_rate`` is Adam's, for every Keras-trained weight
            (``qat`` / ``rowwise`` shadow tables included).
        table_learning_rate: the ``lpt`` tables' own learning rate (the layer's
            ``learning_rate``; its default when None).
        **layer_kwargs: options of the quantised layers (they override the preset),
            e.g. ``optimizer="sgd"``, ``granularity="table"``, ``step_learning_rate``.

    Returns:
        ``(finalized model, info)`` with ``info``: ``method``, ``bits``, ``layers``
        (the quantised layer names), ``initial_val_auc``, ``best_val_auc``,
        ``best_epoch`` (0: no epoch beat the swapped model), ``epochs``,
        ``train_seconds``, ``embedding_bytes`` (:func:`embedding_byte_cost` of the
        finalized model) and, for ``rowwise``, ``tier_history``.
    """
    from keras_ctr_compress.models.training import TrainConfig, evaluate, train_model

    if method not in METHOD_PRESETS:
        raise ValueError(f"`method` must be one of {tuple(METHOD_PRESETS)}. Received: method={method!r}")
    kind, preset = METHOD_PRESETS[method]
    kwargs = {**preset, **layer_kwargs}
    if table_learning_rate is not None:
        if kind != "lpt":
            raise ValueError(f"`table_learning_rate` applies to the lpt methods, not to {method!r}")
        kwargs["learning_rate"] = table_learning_rate
    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    if kind == "rowwise":
        if "fractions" not in kwargs and "byte_budget" not in kwargs:
            kwargs["byte_budget"] = uniform_bits_budget(bits)
        qmodel = quantize_embeddings(model, layer_names, method="rowwise", **kwargs)
        update_row_priorities(qmodel, train.x, train.y, batch_size=batch_size)
    else:
        qmodel = quantize_embeddings(model, layer_names, method=kind, bits=bits, **kwargs)
    callbacks = [RowPriorityCallback(train.x, train.y, batch_size=batch_size)] if kind == "rowwise" else []
    initial_auc = evaluate(qmodel, valid, where="validation split")["auc"]
    initial_weights = qmodel.get_weights()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         patience=patience, seed=seed, verbose=verbose, lr_decays=0)
    summary = train_model(qmodel, train, valid, config, callbacks=callbacks)
    best_epoch, best_auc = summary["best_epoch"], summary["best_val_auc"]
    if not best_auc > initial_auc:
        qmodel.set_weights(initial_weights)
        best_epoch, best_auc = 0, initial_auc
    final = finalize_quantized(qmodel)
    info = {
        "method": method,
        "bits": bits,
        "layers": [layer.name for layer in quantized_layers(final)],
        "initial_val_auc": initial_auc,
        "best_val_auc": best_auc,
        "best_epoch": best_epoch,
        "epochs": summary["epochs"],
        "train_seconds": time.perf_counter() - t0,
        "embedding_bytes": embedding_byte_cost(final),
    }
    if callbacks:
        info["tier_history"] = callbacks[0].history
    return final, info
