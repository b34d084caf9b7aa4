"""Applying a Plan to a trained model: the existing transforms, composed in one order.

:func:`apply_plan` builds the compressed model a
:class:`~keras_ctr_compress.search.plan.Plan` describes, from a trained reference
model, and fine-tunes it; :func:`export_plan` writes its LiteRT file (dynamic-range
quantisation of the float rest when the plan asks) and checks parity.

The order, and why:

1. Structure, in ONE :func:`~keras_ctr_compress.compress.rebuild_model` call: pruned
   fields (their column, tables and first-layer rows go), kept Dense units and kept
   field pairs. Units are chosen as :class:`~keras_ctr_compress.compress.StructuredPruning`
   chooses them (largest L2 norm of incoming weights); a removed neuron's output is
   replaced by its mean on the calibration rows, folded into the next bias (for ReLU
   and linear layers; exact on average, where ``rebuild_model`` alone would assume the
   neuron was dead). Pairs (``sparsity``) are ranked by their mean ``|r_fg <v_f, v_g>|``
   on the calibration rows: a data score that works for FM (all ``r = 1``) and FwFM.
2. Low rank (:func:`~keras_ctr_compress.compress.low_rank`, AFM) of the ``lowrank``
   tables and the Dense layers with a rank, calibrated on the training rows of the
   kept fields, then the tables' projections folded into the first Dense layer
   (exact; the plan's bytes assume it). Ranks are applied literally
   (``skip_unprofitable=False``): the plan, not the transform, decides.
3. Quantised tables (:func:`~keras_ctr_compress.compress.quantize_embeddings`):
   ``quant`` tables by the plan's ``quant_training`` preset, ``rowwise`` tables with
   fixed fractions, their row priorities counted on the training data.
4. Fine-tuning: the ``finetune`` recipe (exact validation AUC, early stopping, never
   worse than the incoming weights), re-assigning row tiers between epochs.
5. :func:`~keras_ctr_compress.compress.finalize_quantized`: packed tables, ready to export.

The input model is never modified (every step builds a new model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from keras_ctr_compress.compress.field_importance import select_fields
from keras_ctr_compress.compress.low_rank import low_rank
from keras_ctr_compress.compress.pruning import copy_model, rebuild_model
from keras_ctr_compress.compress.quantize import (
    METHOD_PRESETS,
    RowPriorityCallback,
    finalize_quantized,
    quantize_embeddings,
    update_row_priorities,
)
from keras_ctr_compress.compress.user_model import as_reference_model
from keras_ctr_compress.data.schema import CTRDataset
from keras_ctr_compress.layers import FieldPairInteraction
from keras_ctr_compress.search.anatomy import Resolved, anatomy, resolve
from keras_ctr_compress.search.plan import Plan

#: Training rows used for calibration (AFM statistics, unit means, pair scores).
CALIBRATION_ROWS = 65_536
#: Parity tolerance of the float (non-DRQ) export against Keras (shared/litert.md).
PARITY_ATOL = 1e-4


def apply_plan(
    model: keras.Model,
    plan: Plan,
    data: CTRDataset,
    finetune: bool = True,
    *,
    seed: int = 0,
    calibration_rows: int = CALIBRATION_ROWS,
    verbose: int = 0,
) -> tuple[keras.Model, dict]:
    """Builds the compressed model ``plan`` describes from the trained ``model``.

    Example::

        small, info = apply_plan(model, Plan.load("plan.json"), dataset)
        x_test = select_fields(dataset.test.x, info["kept_field_indices"])
        export_plan(small, plan, "small.tflite", check_x=x_test[:2000])

    Args:
        model: the trained float reference model (left untouched).
        plan: the plan (validated against ``model`` first).
        data: the model's dataset: ``train`` calibrates and fine-tunes, ``valid``
            early-stops (all fields; pruned columns are dropped here).
        finetune: fine-tune with ``plan.finetune`` (``False``: transforms only).
        seed: seeds the transforms' random parts and fine-tuning.
        calibration_rows: training rows used to calibrate.
        verbose: Keras' fit verbosity.

    Returns:
        ``(compressed model, info)``: the finalized model reads the kept columns
        (``info["kept_field_indices"]``, for :func:`~keras_ctr_compress.compress.select_fields`);
        ``info`` holds the plan, the kept fields, units and pairs, the low-rank report,
        validation AUC before and after fine-tuning, and seconds per step.

    Raises:
        ValueError: the plan does not fit the model (see :func:`~keras_ctr_compress.search.validate`)
            or the data does not fit the model.
    """
    model = _reference(model, data)
    res = resolve(anatomy(model), plan)
    if data.num_fields != len(res.anatomy.fields):
        raise ValueError(f"data has {data.num_fields} fields but model {model.name!r} has "
                         f"{len(res.anatomy.fields)}")
    keras.utils.set_random_seed(seed)
    seconds: dict[str, float] = {}
    calib = np.asarray(data.train.x[:calibration_rows])
    info: dict = {"plan": plan.to_dict(), "model": model.name}

    t = time.perf_counter()
    current, structure = _apply_structure(model, res, calib)
    info.update(structure)
    sub = select_fields(data, res.kept_indices) if res.pruned else data
    seconds["structure"] = time.perf_counter() - t

    t = time.perf_counter()
    current, info["low_rank"] = _apply_low_rank(current, res, sub.train.x[:calibration_rows])
    seconds["low_rank"] = time.perf_counter() - t

    t = time.perf_counter()
    current, rowwise = _apply_quantization(current, res, sub)
    seconds["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    info["finetune"] = None
    if finetune and plan.finetune.epochs > 0:
        callbacks = [RowPriorityCallback(sub.train.x, sub.train.y, batch_size=plan.finetune.batch_size)] if rowwise else []
        info["finetune"] = _finetune(current, sub, plan, seed, verbose, callbacks)
    seconds["finetune"] = time.perf_counter() - t

    final = finalize_quantized(current) if _has_quantized(current) else current
    if final is model:  # an all-fp32 plan: still hand back an independent model
        final = copy_model(model)
    info["seconds"] = seconds
    return final, info


def _reference(model: keras.Model, data: CTRDataset) -> keras.Model:
    """A user-built model in the id-matrix layout, its columns in the data's field
    order when the data's fields name its inputs (a reference model is returned as is)."""
    names = sorted(t._keras_history.operation.name for t in model.inputs)
    fields = [f.name for f in data.fields]
    return as_reference_model(model, fields=fields if sorted(fields) == names else None)


# ------------------------------------------------------------------------ structure


def _apply_structure(model: keras.Model, res: Resolved, calib: np.ndarray) -> tuple[keras.Model, dict]:
    """Fields, units and pairs removed in one rebuild (step 1)."""
    an = res.anatomy
    units = _choose_units(model, res, calib)
    pairs = _choose_pairs(model, res, calib)
    names = {f.index: f.name for f in an.fields}
    out = {
        "kept_fields": [t.field.name for t in res.tables],
        "kept_field_indices": res.kept_indices,
        "pruned_fields": list(res.pruned),
        "kept_units": {k: [int(i) for i in v] for k, v in units.items()},
        "kept_pairs": None if not pairs else [[names[i], names[j]] for i, j in next(iter(pairs.values()))],
    }
    if not (res.pruned or units or pairs):
        return model, out
    prepared = _mean_replaced(model, units, calib) if units else model
    rebuilt = rebuild_model(prepared, kept_fields=res.kept_indices if res.pruned else None,
                            kept_units=units, kept_pairs=pairs)
    return rebuilt, out


def _choose_units(model: keras.Model, res: Resolved, calib) -> dict[str, np.ndarray]:
    """Kept neuron indices per pruned layer: largest L2 norm of incoming weights."""
    out = {}
    for d in res.dense:
        if d.units < d.info.units:
            kernel = keras.ops.convert_to_numpy(model.get_layer(d.info.name).kernel)
            norms = np.linalg.norm(kernel, axis=0)
            out[d.info.name] = np.sort(np.argsort(-norms, kind="stable")[: d.units])
    return out


def _mean_replaced(model: keras.Model, units: Mapping[str, np.ndarray], calib) -> keras.Model:
    """A copy whose to-be-removed ReLU / linear neurons output their calibration mean.

    ``rebuild_model`` folds a removed neuron's ``activation(bias)`` into the next
    layer's bias. Zeroing the neuron's kernel column and setting its bias to its mean
    output makes that constant the mean (``relu(m) = m`` for ``m >= 0``).
    """
    copy = copy_model(model)
    layers = [copy.get_layer(name) for name in units]
    probe = keras.Model(copy.inputs, [layer.output for layer in layers])
    outs = probe.predict(calib, batch_size=4096, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    for layer, out in zip(layers, outs, strict=True):
        act = keras.activations.serialize(layer.activation)
        if act not in ("relu", "linear") or not layer.use_bias:
            continue
        removed = np.setdiff1d(np.arange(layer.units), units[layer.name])
        kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
        bias = keras.ops.convert_to_numpy(layer.bias).copy()
        kernel[:, removed] = 0.0
        bias[removed] = np.asarray(out, "float64").mean(axis=0)[removed]
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
    return copy


def _choose_pairs(model: keras.Model, res: Resolved, calib) -> dict[str, list[tuple[int, int]]]:
    """Kept pairs (original field indices) of the pair layer, or {} for the closed form."""
    an = res.anatomy
    if res.pair_count is None:
        return {}
    layer = model.get_layer(an.pair_layer)
    if res.kept_pairs is not None:
        return {layer.name: list(res.kept_pairs)}
    kept = set(res.kept_indices)
    available = [(i, j) for i, j in layer.kept_pairs if i in kept and j in kept]
    if res.pair_count >= len(available):
        return {layer.name: available}
    scores = pair_scores(model, layer, calib, available)
    order = np.argsort(-scores, kind="stable")[: res.pair_count]
    return {layer.name: sorted(available[k] for k in order)}


def pair_scores(model: keras.Model, layer: FieldPairInteraction, x, pairs) -> np.ndarray:
    """Mean ``|r_fg <v_f, v_g>|`` of each pair over the rows ``x``, shape ``(len(pairs),)``.

    The pair's contribution to the logit, in magnitude: the data score used to keep
    the most useful pairs (DeepLight ranks FwFM pairs by ``|r_fg|`` alone, which says
    nothing for FM, whose weights are all 1).
    """
    probe = keras.Model(model.inputs, layer.input)
    v = np.asarray(probe.predict(x, batch_size=4096, verbose=0), "float64")
    r = layer.pair_weight_matrix()
    return np.array([np.mean(np.abs(r[i, j] * np.sum(v[:, i] * v[:, j], axis=-1))) for i, j in pairs])


# ------------------------------------------------------------------------- low rank


def _apply_low_rank(current: keras.Model, res: Resolved, calib) -> tuple[keras.Model, dict | None]:
    ranks = {t.field.emb: t.plan.rank for t in res.tables if t.plan.method == "lowrank"}
    ranks.update({d.info.name: d.rank for d in res.dense if d.rank is not None})
    if not ranks:
        return current, None
    new, report = low_rank(current, calib, ranks=ranks, layers=list(ranks), method="afm",
                           fold_embeddings=True, skip_unprofitable=False)
    return new, report.to_dict()


# ---------------------------------------------------------------------- quantisation


def _apply_quantization(current: keras.Model, res: Resolved, data: CTRDataset) -> tuple[keras.Model, bool]:
    """Swaps the ``quant`` / ``rowwise`` tables; returns the model and whether any is rowwise."""
    ft = res.plan.finetune
    kind, preset = METHOD_PRESETS[ft.quant_training]
    groups: dict[tuple[int, str], list[str]] = {}
    for t in res.tables:
        if t.plan.method == "quant":
            groups.setdefault((t.plan.bits, t.plan.granularity), []).append(t.field.emb)
    for (bits, granularity), names in groups.items():
        kwargs = dict(preset, granularity=granularity)
        if kind == "lpt":
            kwargs["learning_rate"] = ft.table_learning_rate
        current = quantize_embeddings(current, names, method=kind, bits=bits, **kwargs)
    rowwise = [t for t in res.tables if t.plan.method == "rowwise"]
    for t in rowwise:
        current = quantize_embeddings(current, [t.field.emb], method="rowwise", tiers=t.plan.tiers,
                                      fractions=t.plan.fractions)
    if rowwise:
        update_row_priorities(current, data.train.x, data.train.y, batch_size=ft.batch_size)
    return current, bool(rowwise)


def _has_quantized(model: keras.Model) -> bool:
    from keras_ctr_compress.compress.quantize import quantized_layers

    return bool(quantized_layers(model))


# ------------------------------------------------------------------------ fine-tune


def _finetune(model: keras.Model, data: CTRDataset, plan: Plan, seed: int, verbose: int, callbacks) -> dict:
    """``compress.finetune`` with extra callbacks (row-tier updates): same recipe."""
    from keras_ctr_compress.models.training import TrainConfig, evaluate, train_model

    ft = plan.finetune
    initial = evaluate(model, data.valid, where="validation split")["auc"]
    before = model.get_weights()
    config = TrainConfig(epochs=ft.epochs, batch_size=ft.batch_size, learning_rate=ft.learning_rate,
                         patience=ft.patience, seed=seed, verbose=verbose, lr_decays=ft.lr_decays)
    summary = train_model(model, data.train, data.valid, config, callbacks=callbacks)
    best_epoch, best = summary["best_epoch"], summary["best_val_auc"]
    if not best > initial:
        model.set_weights(before)
        best_epoch, best = 0, initial
    return {"initial_val_auc": initial, "best_val_auc": best, "best_epoch": best_epoch,
            "epochs": summary["epochs"], "train_seconds": summary["train_seconds"]}


# --------------------------------------------------------------------------- export


def export_plan(
    model: keras.Model,
    plan: Plan,
    path: str | Path,
    *,
    check_x: np.ndarray | None = None,
    atol: float = PARITY_ATOL,
    keep_float: bool = False,
) -> dict:
    """Exports a model built by :func:`apply_plan` and checks it against Keras.

    Parity is exact where it is defined: the model exported WITHOUT dynamic-range
    quantisation (quantised tables, float rest) must match Keras within ``atol``.
    With ``plan.drq`` the shipped file is the DRQ export (every float weight of at
    least 1024 elements to int8; the custom-quantised tables are integer and stay as
    they are, see ``bench/quant_methods.py``) and its difference to Keras is reported.

    Args:
        model: the compressed model.
        plan: its plan (``drq`` decides the shipped file).
        path: the shipped ``.tflite``.
        check_x: id rows in the COMPRESSED model's layout (``select_fields(x,
            info["kept_field_indices"])``); None skips the parity checks.
        atol: tolerance of the float export's parity.
        keep_float: with ``drq``, keep the float export next to ``path`` (``<stem>.float.tflite``).

    Returns:
        ``{"path", "bytes", "parity_max_abs", "drq_max_abs", "float_path", "float_bytes"}``
        (DRQ entries None without ``drq``).

    Raises:
        ParityError: the float export differs from Keras by more than ``atol``.
    """
    from keras_ctr_compress.export import check_parity, export_litert

    path = Path(path)
    float_path = path.with_name(f"{path.stem}.float.tflite") if plan.drq else path
    export_litert(model, float_path)
    out = {"path": str(path), "float_path": str(float_path) if plan.drq and keep_float else None,
           "float_bytes": float_path.stat().st_size, "parity_max_abs": None, "drq_max_abs": None}
    if check_x is not None:
        out["parity_max_abs"] = check_parity(model, float_path, check_x, atol=atol)
    if plan.drq:
        export_litert(model, path, quantization="drq")
        if check_x is not None:
            out["drq_max_abs"] = check_parity(model, path, check_x, atol=math.inf)
        if not keep_float:
            float_path.unlink()
    out["bytes"] = path.stat().st_size
    return out
