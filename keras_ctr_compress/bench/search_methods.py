"""Benchmark methods of the budgeted search: ``searched`` (keras-tuner Bayesian
optimisation) and ``searched-random`` (random search, the same budget and trials).

The search runs on the train / valid split only (fine-tuning on train, trials and
early stopping scored on valid); the harness then scores the exported best plan on
test like every other method. Options (``kcc bench --budget-ratio R --trials N``,
``run_benchmark(method_options=...)``):

- ``budget_ratio``: the file at most ``1/R`` of the fp32 file (default 16);
- ``trials``: trials per search (default 20; 4 with ``--quick``);
- ``final_epochs``: epochs (early stopping) for the best plan (default 12; 2 quick);
- ``latency_plans``: files timed to calibrate the latency model (default 10; 4 quick).

Each search keeps its folder (``<workdir>/seed<k>/<method>/``: trials, Pareto front,
plot); a rerun with the same ``--workdir`` resumes it. The latency model is calibrated
once per model layout and workdir and shared by every search of the run.
"""

from __future__ import annotations

from keras_ctr_compress.bench.registry import Candidate, MethodContext, add_method

DEFAULTS = {"budget_ratio": 16.0, "trials": 20, "final_epochs": 12, "latency_plans": 10}
QUICK = {"trials": 4, "final_epochs": 2, "latency_plans": 4}


def _options(ctx: MethodContext) -> dict:
    given = dict(ctx.extra.get("method_options") or {})
    base = {**DEFAULTS, **(QUICK if ctx.quick else {})}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"searched: unknown option {unknown[0]!r} (options: {', '.join(DEFAULTS)})")
    return {**base, **{k: v for k, v in given.items() if v is not None}}


def _make(tuner: str, name: str):
    def run(ctx: MethodContext) -> Candidate:
        from keras_ctr_compress.search import LatencyModel, search
        from keras_ctr_compress.search.driver import PROJECT

        opts = _options(ctx)
        out = ctx.path(name)  # <workdir>/seed<k>/<name>
        lat_path = ctx.workdir / f"latency_model_{ctx.model_name}.json"
        latency = None
        if lat_path.exists():
            try:
                latency = LatencyModel.load(lat_path, ctx.fp32_model)
            except ValueError:  # another layout (e.g. other model kwargs): calibrate again
                latency = None
        resume = (out / "tuner" / PROJECT / "oracle.json").exists()
        res = search(ctx.fp32_model, ctx.dataset, max_ratio=float(opts["budget_ratio"]), trials=int(opts["trials"]),
                     tuner=tuner, out_dir=out, seed=ctx.seed, resume=resume, final_epochs=int(opts["final_epochs"]),
                     latency_model=latency, latency_plans=int(opts["latency_plans"]), verbose=1)
        if latency is None and (out / "latency_model.json").exists():  # none with latency_plans=0
            LatencyModel.load(out / "latency_model.json", ctx.fp32_model).save(lat_path)
        best = res.best
        trial_aucs = [t["val_auc"] for t in res.trials]
        extra = {"search": {
            "tuner": tuner, "trials": len(res.trials), "budget_ratio": float(opts["budget_ratio"]),
            "max_bytes": res.budget.max_bytes, "fp32_bytes": res.fp32_bytes,
            "best_trial_val_auc": max(trial_aucs), "best_trial_id": best["trial_id"],
            "final_val_auc": best["val_auc"], "final_epochs": best["final_epochs"],
            "bytes_predicted": best["bytes_predicted"], "latency_us_predicted": best["latency_us_predicted"],
            "latency_us_measured_alone": best["latency_us_measured"],
            "latency_ratio_predicted": best.get("latency_ratio_predicted"),
            "latency_ratio_measured_in_search": best.get("latency_ratio_measured"),
            "trial_val_aucs": trial_aucs, "trial_bytes": [t["bytes"] for t in res.trials],
            "all_trials_within_budget": all(t["bytes"] <= res.budget.max_bytes for t in res.trials),
            "timings": dict(res.timings), "latency_model": res.latency,
            "pareto": [{k: t[k] for k in ("trial_id", "val_auc", "bytes", "latency_us", "plan")} for t in res.pareto],
            "out_dir": str(out),
        }}
        train = sum(t["train_seconds"] for t in res.trials) + float(best.get("final_train_seconds") or 0.0)
        # A DRQ plan ships the converter's lossy file: its exact parity is the float export's
        # (checked by export_plan, recorded here); the shipped file's difference is reported.
        drq = res.best_plan.drq
        extra["search"]["float_export_parity_max_abs"] = best["parity_max_abs"]
        return Candidate(tflite_path=res.tflite_path, keras_model=None if drq else res.best_model,
                         reference_model=res.best_model if drq else None, train_seconds=train,
                         plan=res.best_plan.to_dict(), extra=extra, input_columns=best["kept_field_indices"])

    return run


add_method("searched", _make("bayesian", "searched"),
           description="budgeted search (keras-tuner BayesianOptimization over plans within 1/R of the fp32 "
           "file, --budget-ratio R, --trials N, 1-epoch trials on train/valid), best plan fine-tuned and exported")
add_method("searched-random", _make("random", "searched-random"),
           description="the same budgeted search with keras-tuner RandomSearch (the Bayesian search's baseline)")
