"""``kcc demo``: the main job on the built-in synthetic data, end to end.

Train a DeepFM baseline, search a compression plan under a byte budget (keras-tuner
Bayesian optimisation, a few one-epoch trials on train / valid), fine-tune and export
the best plan, check parity, export the fp32 model and its dynamic-range quantised
twin (drq) beside it, score the fp32 artefact on raw rows in the LiteRT interpreter,
time all files interleaved, and print a side-by-side table whose headline row is the
searched plan; ``report.md`` holds the table and the search's Pareto front.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from keras_ctr_compress.utils import atomic_path, atomic_write_text

QUICK_DATA = "synthetic:rows=20000,fields=8,seed=0"
#: the searched row: file at most 1/16 of fp32's, 4 trials (the quick demo: 1/4, 2 trials,
#: no latency calibration; its tiny model is mostly graph structure)
SEARCH_OPTIONS = {"budget_ratio": 16, "trials": 4, "final_epochs": 3, "latency_plans": 4}
QUICK_SEARCH_OPTIONS = {"budget_ratio": 4, "trials": 2, "final_epochs": 1, "latency_plans": 0}


def run_demo(out: str | Path = "runs/demo", data: str = "synthetic", epochs: int = 15,
             quick: bool = False, log: Callable[[str], None] = print) -> dict:
    from keras_ctr_compress.artifacts import PREPROCESSOR_FILE, save_trained
    from keras_ctr_compress.bench import run_benchmark, summarize
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.models import ModelConfig, TrainConfig
    from keras_ctr_compress.scoring import artefact_bytes, score_tflite, write_sidecar
    from keras_ctr_compress.search.pareto import front_table

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick and data == "synthetic":
        data = QUICK_DATA
    ds = load_dataset(data, seed=0)
    log(f"[demo] data {data}: {ds.split_sizes()} rows, {ds.num_fields} fields, "
        f"Bayes-optimal test AUC {ds.info.get('bayes_auc', float('nan')):.4f}")
    model_kwargs = {"mlp": (64, 32)} if quick else {}
    tcfg = TrainConfig(epochs=2 if quick else epochs, verbose=2)
    model_dir = out / "model"

    def save_reference(seed, model, summary):
        meta = {"data": data, "split_seed": 0, "dataset": ds.name, "split": ds.split_sizes(),
                "model_config": ModelConfig(name="deepfm", **model_kwargs).to_dict(),
                "train_config": tcfg.to_dict(), "train": summary}
        save_trained(model_dir, model, ds.preprocessor, meta)

    options = QUICK_SEARCH_OPTIONS if quick else SEARCH_OPTIONS
    search_dir = out / "bench" / "seed0" / "searched"
    if search_dir.exists():  # a new demo run searches afresh (the reference is retrained)
        shutil.rmtree(search_dir)
    rec = run_benchmark(ds, model="deepfm", methods=["fp32", "searched", "drq"], seeds=[0],
                        workdir=out / "bench", train_config=tcfg, model_kwargs=model_kwargs,
                        latency_seconds=0.5 if quick else 1.5, log=log, on_reference=save_reference,
                        method_options=options)
    atomic_write_text(out / "bench.json", json.dumps(rec, indent=1) + "\n")
    rows = {r["method"]: r for r in rec["results"]}
    sources = {"fp32": out / "bench" / "seed0" / "fp32.tflite", "drq": out / "bench" / "seed0" / "drq.tflite",
               "searched": search_dir / "best.tflite"}
    for method in rows:
        dst = out / f"{method}.tflite"
        if "input_columns" not in rows[method]:  # a field-pruned file reads fewer columns than the vocabularies
            write_sidecar(dst, model_dir / PREPROCESSOR_FILE)
        with atomic_path(dst, suffix=".tflite") as tmp:  # a killed demo leaves no truncated .tflite
            shutil.copyfile(sources[method], tmp)
    for name in ("best_plan.json", "pareto.png", "pareto.json"):
        shutil.copyfile(search_dir / name, out / f"searched_{name}")
    log("[demo] scoring the fp32 artefact on raw test rows in the LiteRT interpreter")
    scored = score_tflite(out / "fp32.tflite", data)
    gap = abs(scored["auc"] - rows["fp32"]["test_auc"])
    summary = summarize(rec)
    summary.sort(key=lambda r: r["method"] != "searched")  # the headline row first
    table = _table(summary, {m: artefact_bytes(out / f"{m}.tflite")["total"] for m in rows})
    found = rows["searched"]["extra"]["search"]
    head = next(r for r in summary if r["method"] == "searched")
    lines = [
        "# keras-ctr-compress demo", "",
        f"Data: `{data}` ({ds.split_sizes()}), model DeepFM, seed 0. "
        f"Bayes-optimal test AUC (the ceiling): {ds.info.get('bayes_auc', float('nan')):.4f}.", "",
        f"**Searched plan** ({found['trials']} keras-tuner trials, budget 1/{found['budget_ratio']:g} of the fp32 "
        f"file = {found['max_bytes']:,} B): {head['bytes']:,.0f} B ({head['bytes_ratio']:.3f} of fp32), test AUC "
        f"{head['auc_mean']:.4f} vs fp32 {rows['fp32']['test_auc']:.4f}, batch-1 latency "
        f"{head['lat_b1_ratio']:.2f}x fp32's. Plan: `searched_best_plan.json`.", "",
        table, "",
        "Search trials on the Pareto front (validation AUC, bytes, predicted latency; plot "
        "`searched_pareto.png`):", "",
        front_table(found["pareto"], found["fp32_bytes"]), "",
        f"`kcc score` on raw test rows through `fp32.tflite` + its vocabularies: AUC {scored['auc']:.6f} "
        f"(Keras-side record {rows['fp32']['test_auc']:.6f}, difference {gap:.1e}).",
        f"Latencies: LiteRT interpreter, num_threads=1, medians, measured interleaved; ratios vs fp32 "
        f"in the same run. Machine: {rec['machine']['cpu']} ({rec['machine']['cores']} cores).",
        f"Total time {time.perf_counter() - t0:.0f}s.",
    ]
    report = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", report)
    print(report)
    return rec


def _table(summary: list[dict], artefact: dict[str, int]) -> str:
    lines = ["| method | test AUC | logloss | .tflite bytes | artefact bytes | size vs fp32 | "
             "b1 latency (us) | b256 latency (us) | b1 vs fp32 | b256 vs fp32 | parity |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['auc_mean']:.4f} | {s['logloss_mean']:.4f} | {s['bytes']:,.0f} | "
            f"{artefact[s['method']]:,} | {s['bytes_ratio']:.3f} | {s['lat_b1_us']:.1f} | "
            f"{s['lat_b256_us']:.1f} | {s['lat_b1_ratio']:.2f} | {s['lat_b256_ratio']:.2f} | "
            f"{s['parity_max_abs']:.1e} |")
    return "\n".join(lines)
