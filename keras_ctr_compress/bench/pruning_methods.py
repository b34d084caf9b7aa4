"""Benchmark methods of DeepLight pruning and SHARK field pruning (issue: pruning)."""

from __future__ import annotations

import json

from keras_ctr_compress.bench.registry import Candidate, MethodContext, add_method
from keras_ctr_compress.compress import prune_deeplight, prune_fields
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


def _shark_fields(ctx: MethodContext) -> Candidate:
    n_keep = max(2, round(SHARK_KEEP * ctx.dataset.num_fields))
    model, report = prune_fields(ctx.fp32_model, ctx.dataset, n_fields=n_keep, method="taylor",
                                 finetune_epochs=1 if ctx.quick else 2, seed=ctx.seed)
    path = ctx.path("shark-fields.tflite")
    export_litert(model, path)
    return Candidate(tflite_path=path, keras_model=model, plan=_jsonable(report.to_dict()),
                     input_columns=list(report.kept_indices))


add_method("shark-fields", _shark_fields,
           description="SHARK (Zhang et al. 2023) field pruning: drop the 30% least important "
           "fields by the first-order Taylor score, fine-tune; no table, input or weights remain "
           "for dropped fields")
