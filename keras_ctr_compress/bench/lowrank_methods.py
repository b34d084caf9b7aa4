"""Benchmark methods of AFM low-rank compression (issue: low-rank) and its weight-SVD
baseline, before and after fine-tuning, plus the fair ``fp32-ft`` reference (the fp32
model given the same extra fine-tuning, so that "beats fp32" is not just more training)."""

from __future__ import annotations

import keras

from keras_ctr_compress.bench.registry import Candidate, MethodContext, add_method
from keras_ctr_compress.compress import compress_low_rank, finetune
from keras_ctr_compress.export import export_litert

#: (tag, Dense rank, embedding rank); the first hidden layer stays dense (as the paper).
#: Frappe's 400-wide hidden layers lose nothing measurable down to rank 8 with either
#: method (the r16 record), so ranks 4 and 2 and the embedding ranks (dim 10 -> 6, 4)
#: are where the two methods can differ.
SETTINGS = (("d2", 2, None), ("d4", 4, None), ("d8", 8, None), ("d16", 16, None), ("d32", 32, None),
            ("d16-e6", 16, 6), ("d32-e6", 32, 6), ("d16-e4", 16, 4), ("d64-e4", 64, 4))
FINETUNE = {"epochs": 5, "learning_rate": 1e-4, "patience": 1}


def _finetune_options(ctx: MethodContext) -> dict:
    return {**FINETUNE, "epochs": 1} if ctx.quick else dict(FINETUNE)


def _make(method: str, dense_rank: int, emb_rank: int | None, ft: bool, name: str, weighting: str,
          power: float):
    def run(ctx: MethodContext) -> Candidate:
        model, info = compress_low_rank(
            ctx.fp32_model, ctx.dataset, method=method, dense_rank=dense_rank,
            embedding_rank=emb_rank, fold_embeddings=emb_rank is not None, finetune=ft,
            seed=ctx.seed, finetune_options=_finetune_options(ctx), table_weighting=weighting,
            covariance_power=power,
        )
        path = ctx.path(f"{name}.tflite")
        export_litert(model, path)
        return Candidate(tflite_path=path, keras_model=model, train_seconds=info["train_seconds"],
                         plan=info["plan"])

    return run


#: name prefix -> (low_rank method, table weighting, Dense covariance power, what it is).
#: ``afmu`` is AFM with the table statistics taken over the distinct rows
#: (``table_weighting="uniform"``) instead of the looked-up vectors, ``afms`` with rows
#: weighted by the square root of their lookup count: only tables differ, so neither has
#: Dense-only rows. ``afmt`` tempers both: tables as ``afms``, Dense layers fitted to
#: ``K^T C_x^(1/2) K`` (``covariance_power=0.5``).
_FAMILIES = {
    "afm": ("afm", "frequency", 1.0, "principal subspace of each layer's outputs on calibration data (AFM)"),
    "svd": ("svd", "frequency", 1.0, "truncated SVD of the weights (baseline)"),
    "afmu": ("afm", "uniform", 1.0, "principal subspace of each layer's outputs (AFM), tables fitted to "
             "every row once instead of frequency-weighted"),
    "afms": ("afm", "sqrt", 1.0, "principal subspace of each layer's outputs (AFM), table rows weighted by "
             "the square root of their lookup count"),
    "afmt": ("afm", "sqrt", 0.5, "tempered AFM (Dense: principal subspace of K^T C_x^(1/2) K; table rows "
             "weighted by the square root of their lookup count)"),
}
for _prefix, (_method, _weighting, _power, _how) in _FAMILIES.items():
    for _tag, _d, _e in SETTINGS:
        if _prefix in ("afmu", "afms") and _e is None:
            continue
        for _ft in (False, True):
            _name = f"{_prefix}-{_tag}{'-ft' if _ft else ''}"
            add_method(
                _name, _make(_method, _d, _e, _ft, _name, _weighting, _power),
                description=f"low-rank: Dense rank {_d}" + (f", embedding rank {_e} (projection folded "
                "into the first Dense)" if _e else "") + f" by the {_how}"
                + ("; then fine-tuned" if _ft else "; no fine-tuning"),
            )


def _fp32_ft(ctx: MethodContext) -> Candidate:
    model = keras.models.clone_model(ctx.fp32_model)
    model.set_weights(ctx.fp32_model.get_weights())
    info = finetune(model, ctx.dataset.train, ctx.dataset.valid, seed=ctx.seed, **_finetune_options(ctx))
    path = ctx.path("fp32-ft.tflite")
    export_litert(model, path)
    return Candidate(tflite_path=path, keras_model=model, train_seconds=info["train_seconds"])


add_method("fp32-ft", _fp32_ft, description="the fp32 model fine-tuned with the low-rank methods' "
           "fine-tuning schedule (the fair reference for fine-tuned rows)")


def fm_part(model: keras.Model) -> keras.Model:
    """The model without its DNN: ``sigmoid(first order + pairs)`` of a DeepFM / DeepFwFM.

    A timing reference, not a compression method: the DNN (the part low-rank and
    structured pruning shrink) costs ``latency(model) - latency(fm_part(model))``,
    both measured interleaved in one run. Shares ``model``'s layers (no new weights).

    Raises:
        ValueError: the model has no ``linear`` sum or ``pairs`` layer.
    """
    try:
        terms = [model.get_layer("linear").output, model.get_layer("pairs").output]
    except ValueError:
        raise ValueError(f"model {model.name!r} has no 'linear' and 'pairs' layers (FM / FwFM part); "
                         "fm-part needs deepfm or deepfwfm") from None
    logit = keras.layers.Add(name="fm_logit")(terms)
    return keras.Model(model.inputs, keras.layers.Activation("sigmoid", name="fm_ctr")(logit),
                       name=f"{model.name}_fm_part")


def _fm_part(ctx: MethodContext) -> Candidate:
    model = fm_part(ctx.fp32_model)
    path = ctx.path("fm-part.tflite")
    export_litert(model, path)
    return Candidate(tflite_path=path, keras_model=model)


add_method("fm-part", _fm_part, description="timing reference: the fp32 model without its DNN "
           "(first order + FM/FwFM terms only); the DNN part's latency is a row's minus this one's")
