"""``kcc search`` and ``kcc compress``: what they run.

``cli.py`` declares their options (it must stay light to import) and calls
``cmd_search`` / ``cmd_compress``; the work is :func:`~keras_ctr_compress.search.search`
and :func:`~keras_ctr_compress.search.apply_plan`.

Narrowing the space from the command line:

- ``--fix ENTRY=JSON`` (repeatable): ``--fix 'dense.dnn_0={"units": 100}'``,
  ``--fix 'tables.user={"method": "quant", "bits": 8}'``, ``--fix drq=true``,
  ``--fix pairs=null``;
- ``--restrict ENTRY:KEY=V1,V2`` (repeatable): ``--restrict 'tables.*:methods=fp32,quant'``,
  ``--restrict 'tables.*:bits=8,4'``, ``--restrict 'dense.*:ranks=null,16,32'``,
  ``--restrict pairs:sparsities=0,0.5``; values are read as JSON where they parse
  (``null`` is full rank / all units), else as text;
- ``--space FILE``: a whole space (``SearchSpace.to_json``), narrowed further by the above.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

# ------------------------------------------------------------------------- narrowing


def parse_value(text: str):
    """JSON where it parses (numbers, ``null``, ``true``), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def narrow(space, fixes: list[str], restricts: list[str]):
    """``space`` with the ``--fix`` / ``--restrict`` options applied.

    Raises:
        ValueError: a malformed option (named) or one the space refuses.
    """
    for opt in fixes:
        entry, sep, value = opt.partition("=")
        if not sep or not entry.strip():
            raise ValueError(f"--fix {opt!r}: expected ENTRY=JSON, e.g. 'dense.dnn_0={{\"units\": 100}}'")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"--fix {opt!r}: the value is not JSON ({e.msg})") from None
        space = space.fix(entry.strip(), parsed)
    for opt in restricts:
        head, sep, values = opt.partition("=")
        entry, sep2, key = head.partition(":")
        if not (sep and sep2 and entry.strip() and key.strip() and values.strip()):
            raise ValueError(f"--restrict {opt!r}: expected ENTRY:KEY=V1,V2, e.g. 'tables.*:methods=fp32,quant'")
        space = space.restrict(entry.strip(), **{key.strip(): [parse_value(v) for v in values.split(",")]})
    return space


def _load(model_dir: str, data: str | None, split_seed: int | None, skip_bad_rows: int | None = None,
          log: Callable[[str], None] = print):
    """The trained model and its data; split seed and bad-row tolerance default to the
    ones the model was trained with (its meta.json)."""
    from keras_ctr_compress.artifacts import load_trained
    from keras_ctr_compress.data import load_dataset

    if skip_bad_rows is not None and skip_bad_rows < 0:
        raise ValueError(f"--skip-bad-rows must be >= 0, got {skip_bad_rows}")
    tm = load_trained(model_dir)
    spec = data or tm.meta.get("data")
    if not spec:
        raise ValueError(f"{model_dir}: its meta.json names no dataset; pass --data SPEC")
    seed = tm.meta.get("split_seed", 0) if split_seed is None else split_seed
    skip = tm.meta.get("skip_bad_rows", 0) if skip_bad_rows is None else skip_bad_rows
    ds = load_dataset(spec, seed=seed, preprocessor=tm.preprocessor, skip_bad_rows=skip)
    if ds.info.get("skipped_rows"):
        log(f"skipped {ds.info['skipped_rows']} malformed rows (--skip-bad-rows {skip}); "
            f"first: {ds.info['skipped_examples'][0]}")
    return tm, ds, spec


# ---------------------------------------------------------------------------- search


def cmd_search(a, log: Callable[[str], None]) -> int:
    from keras_ctr_compress.compress import select_fields
    from keras_ctr_compress.export import LiteRTModel
    from keras_ctr_compress.models import auc_logloss
    from keras_ctr_compress.search import SearchSpace, search, search_space
    from keras_ctr_compress.search.pareto import front_table

    if a.max_ratio is not None and a.max_ratio < 1:
        raise ValueError(f"--max-ratio {a.max_ratio:g}: the file may be at most 1/R of the fp32 file, so R must be "
                         f">= 1 (did you mean --max-ratio {1 / a.max_ratio:g}?)")
    tm, ds, _ = _load(a.model, a.data, a.split_seed, a.skip_bad_rows, log)
    if a.space:
        path = Path(a.space)
        try:
            space = SearchSpace.from_json(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such search space file") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a search space JSON ({type(e).__name__}: {e})") from None
    else:
        space = search_space(tm.model)
    space = narrow(space, a.fix, a.restrict)
    res = search(tm.model, ds, max_bytes=a.max_bytes, max_ratio=a.max_ratio, max_latency_us=a.max_latency_us,
                 trials=a.trials, tuner=a.tuner, space=space, out_dir=a.out, seed=a.seed, resume=a.resume,
                 soft_budget=a.soft_budget, trial_epochs=a.trial_epochs, final_epochs=a.final_epochs,
                 latency_model=a.latency_model, latency_plans=a.latency_plans, log=log)
    if res.role == "worker":
        print(f"worker done: {len(res.trials)} trials run here; the chief writes the results in {a.out}")
        return 0
    b = res.best
    x = select_fields(ds.test.x, b["kept_field_indices"])
    auc, ll = auc_logloss(ds.test.y, LiteRTModel(res.tflite_path).predict(x), where="test split")
    print(front_table(res.pareto, res.fp32_bytes))
    print(f"best plan (trial {b['trial_id']}): {res.out_dir / 'best_plan.json'}")
    print(f"  {b['bytes']:,} B (1/{res.fp32_bytes / b['bytes']:.1f} of fp32 {res.fp32_bytes:,} B; cost model "
          f"{b['bytes_predicted']:,}), val AUC {b['val_auc']:.5f}, test AUC {auc:.5f} (LiteRT, {len(x):,} rows)")
    pred = b["latency_us_predicted"]
    print(f"  latency batch 1: {b['latency_us_measured']:.1f} us measured"
          + (f", {pred:.1f} us predicted ({b['latency_rel_error']:+.0%})" if pred is not None else "")
          + f"; parity {b['parity_max_abs']:.1e}")
    print(f"  file {res.tflite_path}; Pareto front {res.out_dir / 'pareto.json'}, plot {res.pareto_png}")
    return 0


# -------------------------------------------------------------------------- compress


def cmd_compress(a, log: Callable[[str], None]) -> int:
    from keras_ctr_compress.artifacts import PREPROCESSOR_FILE, save_trained
    from keras_ctr_compress.compress import select_fields
    from keras_ctr_compress.export import LiteRTModel
    from keras_ctr_compress.models import auc_logloss
    from keras_ctr_compress.scoring import write_sidecar
    from keras_ctr_compress.search import Plan, apply_plan, export_plan, plan_bytes, validate

    plan = Plan.load(a.plan)
    tm, ds, spec = _load(a.model, a.data, a.split_seed, a.skip_bad_rows, log)
    validate(plan, tm.model)  # before any work: one line naming the bad entry
    predicted = plan_bytes(tm.model, plan)
    log(f"[compress] {Path(a.plan).name}: {predicted:,} B predicted; applying to {a.model}")
    small, info = apply_plan(tm.model, plan, ds, finetune=not a.no_finetune, seed=a.seed)
    kept = info["kept_field_indices"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    exported = export_plan(small, plan, out / "model.tflite", check_x=select_fields(ds.valid.x[:2000], kept))
    if len(kept) == ds.num_fields and (Path(a.model) / PREPROCESSOR_FILE).exists():
        write_sidecar(out / "model.tflite", Path(a.model) / PREPROCESSOR_FILE)  # kcc score reads it
    x = select_fields(ds.test.x, kept)
    auc, ll = auc_logloss(ds.test.y, LiteRTModel(out / "model.tflite").predict(x), where="test split")
    plan.save(out / "plan.json")
    save_trained(out, small, tm.preprocessor, {
        "data": spec, "split_seed": tm.meta.get("split_seed", 0), "source_model": str(a.model),
        "plan": plan.to_dict(), "kept_field_indices": kept, "apply": {k: v for k, v in info.items() if k != "plan"},
        "test": {"auc": auc, "logloss": ll}, "tflite_bytes": exported["bytes"]})
    ft = info["finetune"]
    print(f"{out / 'model.tflite'}: {exported['bytes']:,} B (cost model {predicted:,}), parity "
          f"{exported['parity_max_abs']:.1e}" + (f", DRQ difference {exported['drq_max_abs']:.1e}" if plan.drq else ""))
    if ft:
        print(f"fine-tuned {ft['epochs']} epochs: val AUC {ft['initial_val_auc']:.5f} -> {ft['best_val_auc']:.5f}")
    print(f"test AUC {auc:.5f}  logloss {ll:.5f} (LiteRT, kept columns {kept})")
    return 0
