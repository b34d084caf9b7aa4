"""Benchmark methods of quantised embeddings (issue: quantized embeddings): the ALPT
comparison ``qat-B``, ``lpt-dr-B``, ``lpt-sr-B``, ``alpt-B`` for B in 8, 4, 2, and
SHARK's row-wise mixed precision ``rowwise`` at the embedding bytes of uniform int4.

The ALPT family trains FROM SCRATCH, as in the ALPT paper (Li et al., AAAI 2023):
the reference model (same builder, same seed, same initial weights) with every
``emb_<field>`` table (dim >= 2) replaced by a ``QuantizedEmbedding`` before the first
step, LSQ's step initialisation ``2 mean|w| / sqrt(Qp)`` on the initial table, one
step per table (the authors' later code; fp16 steps per row would add 2 bytes a row,
more than int4 codes of a dim-10 row save), then the fp32 row's training recipe
(epochs, early stopping on exact validation AUC, learning-rate decay): ``qat`` trains a
float shadow table with the model's Adam, ``lpt-*`` / ``alpt`` store int8 codes and
update looked-up rows with row-wise Adagrad (learning rate :data:`LPT_TABLE_LR` of the
method and code width; ``alpt``'s step by Adam at :data:`ALPT_STEP_LR` of the width; both
decayed with the model's Adam by ``DecayOnPlateau``; rows a step skips get
the L2 decay lazily, ``skipped_row_decay``). The L2 on the tables is the fp32 recipe's times
:data:`LPT_L2_SCALE` of the method: a regulariser's strength depends on the optimizer
that applies it (Adam normalises its gradient away, row-wise Adagrad does not), so
each low-precision method's scale was chosen on validation AUC. Low-precision
training is what these methods are for: their training memory is the point (the
``kcc memory`` record), so a fine-tune of a float-trained model would not test them.
(Measured, frappe seed 0, fine-tuning the trained fp32 model instead: the
stochastic-rounding noise of small updates made every lpt fine-tune worse than the
rounded starting point, so early stopping kept it, and the paper's ordering could not
show.)

``rowwise`` is SHARK's post-training compression of a production model: the trained
fp32 tables go into tiers by their decayed, click-weighted access priority under the
byte budget of uniform int4, then a brief fine-tune (tiers re-assigned each epoch).

What ships: the quantised tables as packed codes plus scales, and the rest (the MLP,
the dim-1 first-order tables) by LiteRT dynamic-range quantisation, so that these
rows compare whole files with the ``drq`` row. DRQ does not touch the quantised
tables (integer codes; the converter only quantises float constants of >= 1024
elements). Exact parity is enforced where it is defined: the same model exported
without DRQ (quantised tables, float MLP) must equal Keras within 1e-5; the shipped
file's difference to that Keras model is reported (DRQ's error), like ``drq``'s.
"""

from __future__ import annotations

import time

from keras_ctr_compress.bench.registry import Candidate, MethodContext, add_method
from keras_ctr_compress.compress.quantize import (
    METHOD_PRESETS,
    finalize_quantized,
    quantize_and_finetune,
    quantize_embeddings,
    quantized_layers,
    uniform_bits_budget,
)
from keras_ctr_compress.export import check_parity, export_litert, size_breakdown
from keras_ctr_compress.layers import RowwiseQuantEmbedding
from keras_ctr_compress.models import TrainConfig, build_model, train_model

BITS = (8, 4, 2)
#: The tables' L2 as a multiple of the fp32 recipe's, per method, the best of 1, 0.3 and
#: 0.1 on validation AUC (frappe DeepFM, 4 bits, 10 epochs, seed 0; ``alpt`` confirmed
#: on seed 1): ``alpt`` 0.9767 / 0.9790 / 0.9785 (seed 1: 0.9770 / 0.9785), ``lpt-sr``
#: 0.9770 / 0.9743 / 0.9748, ``lpt-dr`` 0.9727 / 0.9726 / 0.9712 (fp32 itself: 0.9811 at 1,
#: 0.9808 at 0.3). A learned step grows with the weights; a fixed step (LSQ's, from
#: the random initial table) clips them, so only ``alpt`` gains from a weaker L2.
#: ``qat`` trains its float table with the model's Adam, as fp32 does: scale 1.
#: Rechecked with the full recipe (40 epochs, early stopping; seeds 0 / 1 / 2): ``alpt-4``
#: at 0.3 reaches validation AUC 0.9804 / 0.9803 / 0.9796, at 1 0.9811 / 0.9798 / 0.9792
#: (means 0.9801 and 0.9800, table rate 0.05): a tie once training runs to convergence;
#: 0.3 kept.
LPT_L2_SCALE = {"qat": 1.0, "lpt-dr": 1.0, "lpt-sr": 1.0, "alpt": 0.3}
#: The lpt tables' row-wise Adagrad learning rate, by method and code width. 8 bits: 0.05,
#: the layer's default (the best of 0.01 / 0.05 / 0.1 at 8 bits, 10-epoch runs). Coarser
#: codes want larger updates: stochastic rounding adds noise of the step's size whatever
#: the update's, so a larger update carries more signal per step. At 4 and 2 bits each
#: method's rate is the one of 0.05 / 0.1 / 0.2 with the highest mean validation AUC over
#: seeds 0 and 1, full recipe (frappe DeepFM; where 0.2 won, 0.4 ran and lost: alpt on
#: seed 0 only; benchmarks/experiments/alpt_table_lr_2026-12-07, lpt_table_lr_2026-12-08):
#: alpt 0.2 at both, lpt-sr 0.1 at both, lpt-dr 0.2 at 4 bits and 0.1 at 2. A learned
#: step grows with larger updates; a fixed one clips them, which costs most at 2 bits.
LPT_TABLE_LR = {
    "lpt-dr": {8: 0.05, 4: 0.2, 2: 0.1},
    "lpt-sr": {8: 0.05, 4: 0.1, 2: 0.1},
    "alpt": {8: 0.05, 4: 0.2, 2: 0.2},
}
#: ``alpt``'s step-size learning rate (its own Adam) by code width. 8 bits: the layer's
#: default, 1e-5 (ALPT's range is 1e-6 to 2e-5; not tuned at 8 bits). At 4 bits, with the
#: table rate above, 3e-6 had the highest mean validation AUC over seeds 0 and 1 of 1e-6 /
#: 3e-6 / 1e-5 / 2e-5 (0.98112 / 0.98219 / 0.98137 / 0.98113): a step that moves more
#: slowly than the rows it quantises (benchmarks/experiments/lpt_table_lr_2026-12-08).
#: At 2 bits 1e-5 stays: 3e-6 and 2e-5 both lost (0.95267 and 0.95394 against 0.95658);
#: four levels leave the step no room to lag.
ALPT_STEP_LR = {8: 1e-5, 4: 3e-6, 2: 1e-5}
#: ``rowwise``'s fine-tuning: Adam 1e-4 on the Keras-trained weights, exact validation
#: AUC, early stopping.
FINETUNE = {"epochs": 3, "learning_rate": 1e-4, "patience": 1}
GRANULARITY = "table"
PARITY_ATOL = 1e-5
PARITY_ROWS = 4096
#: ``rowwise`` gets each table's bytes under uniform int4 with the step granularity above.
ROWWISE_BITS = 4


def _quantized_file_bytes(path, names: set[str]) -> dict[str, int]:
    """Bytes of the quantised layers' tensors in the file, by category."""
    out: dict[str, int] = {}
    for t in size_breakdown(path).tensors:
        if t.layer in names and not t.shared:
            out[t.category] = out.get(t.category, 0) + t.bytes
    return out


def _rowwise_budget(bits: int):
    """Each table's uniform ``bits`` bytes, or the smallest tiered size of the table
    where that is more (a few-row table cannot pay for a remap out of int4 bytes)."""
    uniform = uniform_bits_budget(bits, GRANULARITY)

    def budget(table) -> int:
        smallest = RowwiseQuantEmbedding(table.input_dim, table.output_dim).min_byte_budget()
        return max(uniform(table), smallest)

    return budget


def _train_from_scratch(ctx: MethodContext, method: str, bits: int):
    """The reference model with quantised tables from the first step, trained by the
    fp32 row's recipe; returns ``(finalized model, info)``."""
    kind, preset = METHOD_PRESETS[method]
    t0 = time.perf_counter()
    # qat trains its float table with the model's Adam: no table rate of its own
    table_lr = {"learning_rate": LPT_TABLE_LR[method][bits]} if kind == "lpt" else {}
    # of the lpt methods only alpt learns its step
    step_lr = {"step_learning_rate": ALPT_STEP_LR[bits]} if method == "alpt" else {}
    model = build_model(ctx.model_name, ctx.dataset.fields, seed=ctx.seed, **ctx.extra.get("model_kwargs", {}))
    qmodel = quantize_embeddings(model, method=kind, bits=bits, step_init="lsq", granularity=GRANULARITY,
                                 seed=ctx.seed, **preset, **_table_regularizer(model, LPT_L2_SCALE[method]),
                                 **table_lr, **step_lr)
    config = TrainConfig(**{**ctx.train_config.to_dict(), "seed": ctx.seed})
    summary = train_model(qmodel, ctx.dataset.train, ctx.dataset.valid, config)
    info = {"regime": "from scratch", "train_config": config.to_dict(), "epochs": summary["epochs"],
            **({"table_learning_rate": table_lr["learning_rate"]} if table_lr else {}), **step_lr,
            "best_epoch": summary["best_epoch"], "best_val_auc": summary["best_val_auc"],
            "train_seconds": time.perf_counter() - t0}
    return finalize_quantized(qmodel), info


def _table_regularizer(model, scale: float) -> dict:
    """``{"embeddings_regularizer": L2(scale x the model's table L2)}`` (empty where the
    model's tables carry no L2 or ``scale`` is 1: the tables keep their own)."""
    import keras

    from keras_ctr_compress.layers.quantized_embedding import l2_coefficient

    l2 = [l2_coefficient(layer.embeddings_regularizer) for layer in model.layers
          if isinstance(layer, keras.layers.Embedding) and layer.embeddings_regularizer is not None]
    if scale == 1.0 or not l2:
        return {}
    if len(set(l2)) > 1:
        raise ValueError(f"the model's tables carry different L2 coefficients {sorted(set(l2))}; "
                         "the low-precision rows scale one common coefficient")
    return {"embeddings_regularizer": keras.regularizers.L2(scale * l2[0])}


def _finetune_rowwise(ctx: MethodContext, bits: int):
    options = {**FINETUNE, "epochs": 1} if ctx.quick else dict(FINETUNE)
    model, info = quantize_and_finetune(ctx.fp32_model, ctx.dataset.train, ctx.dataset.valid, method="rowwise",
                                        bits=bits, seed=ctx.seed, byte_budget=_rowwise_budget(bits), **options)
    info = {**{k: info[k] for k in ("initial_val_auc", "best_val_auc", "best_epoch", "epochs", "train_seconds")},
            "regime": "post-training + fine-tune", "finetune": options,
            "rows_per_tier": info["tier_history"][-1] if info.get("tier_history") else None}
    return model, info


def _make(name: str, method: str, bits: int):
    def run(ctx: MethodContext) -> Candidate:
        if method == "rowwise":
            model, info = _finetune_rowwise(ctx, bits)
        else:
            model, info = _train_from_scratch(ctx, method, bits)
        plain = ctx.path(f"{name}.float-mlp.tflite")
        export_litert(model, plain)
        parity = check_parity(model, plain, ctx.dataset.test.x[:PARITY_ROWS], atol=PARITY_ATOL)
        layers = quantized_layers(model)
        names = {layer.name for layer in layers}
        analytic: dict[str, int] = {}
        for layer in layers:  # codes, scales, remaps, fp16 rows: what the layer says it costs
            for key, n in layer.byte_cost().items():
                analytic[key] = analytic.get(key, 0) + n
        path = ctx.path(f"{name}.tflite")
        export_litert(model, path, quantization="drq")
        shipped = _quantized_file_bytes(path, names)
        plan = {"method": method, "bits": bits, "tables": sorted(names),
                "granularity": None if method == "rowwise" else GRANULARITY, "regime": info["regime"],
                "table_l2_scale": LPT_L2_SCALE.get(method)}
        extra = {
            "quantized_parity_max_abs": parity,
            "quantized_tables_analytic_bytes": analytic,
            "quantized_tables_file_bytes": shipped,
            **{k: v for k, v in info.items() if k not in ("regime", "train_seconds")},
        }
        plain.unlink()
        return Candidate(tflite_path=path, keras_model=None, reference_model=model,
                         train_seconds=info["train_seconds"], plan=plan, extra=extra)

    return run


_WHAT = {
    "qat": "QAT: float shadow tables fake-quantised, fixed step, deterministic rounding",
    "lpt-dr": "LPT: int8-stored tables, deterministic rounding, fixed step",
    "lpt-sr": "LPT: int8-stored tables, stochastic rounding, fixed step",
    "alpt": "ALPT: int8-stored tables, stochastic rounding, learned step (LSQ)",
}
for _method in ("qat", "lpt-dr", "lpt-sr", "alpt"):
    assert _method in METHOD_PRESETS
    for _bits in BITS:
        add_method(f"{_method}-{_bits}", _make(f"{_method}-{_bits}", _method, _bits),
                   description=f"{_WHAT[_method]}; {_bits}-bit embedding codes, one step per table, "
                   f"trained from scratch by the fp32 recipe (tables' L2 x{LPT_L2_SCALE[_method]:g}); MLP by DRQ")
add_method("rowwise", _make("rowwise", "rowwise", ROWWISE_BITS),
           description="SHARK row-wise mixed precision (fp16/int8/int4/int2/pruned tiers by decayed, "
           "click-weighted access priority) at the embedding bytes of uniform int4, applied to the trained "
           "fp32 model and fine-tuned; MLP by DRQ")
