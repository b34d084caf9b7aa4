"""Benchmark methods of quantised embeddings (issue: quantized embeddings): the ALPT
comparison ``qat-B``, ``lpt-dr-B``, ``lpt-sr-B``, ``alpt-B`` for B in 8, 4, 2, and
SHARK's row-wise mixed precision ``rowwise`` at the embedding bytes of ``alpt-4``.

What ships: every field's embedding table (``emb_<field>``, dim >= 2) quantised by the
method with one step size per table (the ALPT authors' code; per-row fp16 steps would
add 2 bytes a row, more than int4 codes of a dim-10 row save), fine-tuned from the
trained fp32 model, then exported with LiteRT dynamic-range quantisation of the rest
(the MLP and the dim-1 first-order tables, which DRQ turns into int8), so that these
rows compare whole files with the ``drq`` row. DRQ does not touch the quantised
tables (integer codes; the converter only quantises float constants of >= 1024
elements). Exact parity is enforced where it is defined: on the same model exported
without DRQ (quantised tables, float MLP) LiteRT must equal Keras within 1e-5; the
shipped file's difference to that Keras model is reported like ``drq``'s.
"""

from __future__ import annotations

from keras_ctr_compress.bench.registry import Candidate, MethodContext, add_method
from keras_ctr_compress.compress.quantize import (
    METHOD_PRESETS,
    quantize_and_finetune,
    quantized_layers,
    uniform_bits_budget,
)
from keras_ctr_compress.export import check_parity, export_litert, size_breakdown
from keras_ctr_compress.layers import RowwiseQuantEmbedding

BITS = (8, 4, 2)
#: Fine-tuning of every quantised model: Adam 1e-4 on the Keras-trained weights,
#: the lpt tables' own row-wise Adagrad, exact validation AUC, early stopping.
FINETUNE = {"epochs": 3, "learning_rate": 1e-4, "patience": 1}
#: The lpt tables' row-wise Adagrad rate when fine-tuning a trained model. The layer's
#: default (1e-2, a from-scratch rate) made every lpt fine-tune worse than the swapped
#: model on frappe and synthetic data (early stopping then kept the swap); 1e-3 and 1e-4
#: both improved it on synthetic data.
TABLE_LEARNING_RATE = 1e-3
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


def _make(name: str, method: str, bits: int):
    def run(ctx: MethodContext) -> Candidate:
        options = {**FINETUNE, "epochs": 1} if ctx.quick else dict(FINETUNE)
        if method == "rowwise":
            layer_kwargs = {"byte_budget": _rowwise_budget(bits)}
        else:
            layer_kwargs = {"granularity": GRANULARITY}
            if METHOD_PRESETS[method][0] == "lpt":
                layer_kwargs["table_learning_rate"] = TABLE_LEARNING_RATE
        model, info = quantize_and_finetune(
            ctx.fp32_model, ctx.dataset.train, ctx.dataset.valid, method=method, bits=bits,
            seed=ctx.seed, **options, **layer_kwargs,
        )
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
                "granularity": None if method == "rowwise" else GRANULARITY, "finetune": options,
                "table_learning_rate": layer_kwargs.get("table_learning_rate")}
        extra = {
            "quantized_parity_max_abs": parity,
            "quantized_tables_analytic_bytes": analytic,
            "quantized_tables_file_bytes": shipped,
            "initial_val_auc": info["initial_val_auc"], "best_val_auc": info["best_val_auc"],
            "best_epoch": info["best_epoch"],
        }
        if "tier_history" in info:
            extra["rows_per_tier"] = info["tier_history"][-1] if info["tier_history"] else None
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
                   "fine-tuned from fp32; MLP by DRQ")
add_method("rowwise", _make("rowwise", "rowwise", ROWWISE_BITS),
           description="SHARK row-wise mixed precision (fp16/int8/int4/int2/pruned tiers by decayed, "
           "click-weighted access priority) at the embedding bytes of uniform int4 (alpt-4); MLP by DRQ")
