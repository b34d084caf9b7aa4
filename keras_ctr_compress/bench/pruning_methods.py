"""Benchmark methods of DeepLight pruning and SHARK field pruning (issue: pruning)."""

from __future__ import annotations

import json

from keras_ctr_compress.bench.registry import Candidate, MethodContext, add_method
from keras_ctr_compress.compress import field_importance, prune_deeplight, prune_fields
from keras_ctr_compress.export import export_litert

#: DeepLight's Criteo setting: 90% DNN and field-pair sparsity, embeddings at 0.444 x S.
DEEPLIGHT = {"target_sparsity": 0.9, "emb_r": 0.444, "emb_corr": 1.0}
#: SHARK: drop the 30% least important fields by the Taylor score.
SHARK_KEEP = 0.7


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _deeplight(structured: bool, name: str):
    def run(ctx: MethodContext) -> Candidate:
        if ctx.model_name != "deepfwfm":
            raise ValueError(f"method {name!r} needs --model deepfwfm (DeepLight's base model); "
                             f"got {ctx.model_name!r}")
        epochs = {"prune_epochs": 1, "finetune_epochs": 1} if ctx.quick else {}
        model, report = prune_deeplight(ctx.fp32_model, ctx.dataset, structured=structured,
                                        seed=ctx.seed, **DEEPLIGHT, **epochs)
        path = ctx.path(f"{name}.tflite")
        export_litert(model, path)
        return Candidate(tflite_path=path, keras_model=model, train_seconds=report["seconds"],
                         plan=_jsonable(report))

    return run


add_method("deeplight", _deeplight(False, "deeplight"),
           description="DeepLight (Deng et al. 2021): magnitude pruning of DNN (S=0.9), field pairs "
           "(S=0.9) and embeddings (0.444 S) during training, mask mode; unstructured zeros")
add_method("deeplight-structured", _deeplight(True, "deeplight-structured"),
           description="DeepLight's schedule on whole DNN neurons and field pairs, physically "
           "removed so the exported layers are smaller (real LiteRT speed)")


#: Random field choices averaged by ``shark-fields-random`` (SHARK's random baseline).
RANDOM_DRAWS = 5


def _n_keep(ctx: MethodContext) -> int:
    return max(2, round(SHARK_KEEP * ctx.dataset.num_fields))


def _prune(ctx: MethodContext, method: str, seed: int):
    return prune_fields(ctx.fp32_model, ctx.dataset, n_fields=_n_keep(ctx), method=method,
                        finetune_epochs=1 if ctx.quick else 2, seed=seed)


def _importance_agreement(ctx: MethodContext) -> dict:
    """Taylor and norm rankings of the fp32 model against the exact permutation
    importance (validation split): Spearman rank correlations and the scores."""
    from scipy.stats import spearmanr

    scores = {m: field_importance(ctx.fp32_model, ctx.dataset, m, seed=ctx.seed).tolist()
              for m in ("taylor", "permutation", "norm")}
    exact = scores["permutation"]
    return {
        "fields": [f.name for f in ctx.dataset.fields],
        "scores": scores,
        "spearman_taylor_vs_permutation": float(spearmanr(scores["taylor"], exact).statistic),
        "spearman_norm_vs_permutation": float(spearmanr(scores["norm"], exact).statistic),
    }


def _field_candidate(ctx: MethodContext, name: str, model, report, extra: dict | None = None) -> Candidate:
    path = ctx.path(f"{name}.tflite")
    export_litert(model, path)
    return Candidate(tflite_path=path, keras_model=model, plan=_jsonable(report.to_dict()),
                     input_columns=list(report.kept_indices), train_seconds=report.seconds,
                     extra=extra or {})


def _shark_fields_by(method: str):
    def run(ctx: MethodContext) -> Candidate:
        model, report = _prune(ctx, method, ctx.seed)
        extra = {"importance": _importance_agreement(ctx)} if method == "taylor" else None
        return _field_candidate(ctx, f"shark-fields{'' if method == 'taylor' else '-' + method}",
                                model, report, extra)

    return run


def _shark_fields_random(ctx: MethodContext) -> Candidate:
    """RANDOM_DRAWS random field choices, each pruned and fine-tuned as SHARK's; the
    row ships the first draw's file, ``extra`` holds every draw's test AUC."""
    from keras_ctr_compress.compress import select_fields
    from keras_ctr_compress.models import evaluate

    draws, first = [], None
    for d in range(RANDOM_DRAWS):
        model, report = _prune(ctx, "random", 1000 * ctx.seed + d)
        test = evaluate(model, select_fields(ctx.dataset.test, report.kept_indices))
        draws.append({"kept_fields": report.kept_fields, "test_auc": test["auc"]})
        if first is None:
            first = (model, report)
    aucs = [d["test_auc"] for d in draws]
    extra = {"random_draws": draws, "random_mean_test_auc": sum(aucs) / len(aucs)}
    return _field_candidate(ctx, "shark-fields-random", *first, extra)


add_method("shark-fields", _shark_fields_by("taylor"),
           description="SHARK (Zhang et al. 2023) field pruning: drop the 30% least important "
           "fields by the first-order Taylor score, fine-tune; no table, input or weights remain "
           "for dropped fields (extra: Spearman of Taylor and norm vs exact permutation importance)")
add_method("shark-fields-permutation", _shark_fields_by("permutation"),
           description="field pruning as shark-fields, ranked by the exact permutation importance "
           "(AUC drop with the column shuffled; F extra passes over the validation split)")
add_method("shark-fields-norm", _shark_fields_by("norm"),
           description="field pruning as shark-fields, ranked by the mean embedding norm (baseline)")
add_method("shark-fields-random", _shark_fields_random,
           description=f"field pruning as shark-fields with random field choices ({RANDOM_DRAWS} "
           "draws; the row is draw 1, extra.random_mean_test_auc their mean)")
