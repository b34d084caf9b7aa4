"""``kcc demo``: the main job on the built-in synthetic data, end to end.

Train a DeepFM baseline, export it (fp32) and its dynamic-range quantised twin
(drq), check parity, score the .tflite artefact on raw rows in the LiteRT
interpreter, time both interleaved, print a side-by-side table and write
``report.md``. (The budgeted compression search will take drq's place as the
headline row once it lands.)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from keras_ctr_compress.utils import atomic_path, atomic_write_text

QUICK_DATA = "synthetic:rows=20000,fields=8,seed=0"


def run_demo(out: str | Path = "runs/demo", data: str = "synthetic", epochs: int = 15,
             quick: bool = False, log: Callable[[str], None] = print) -> dict:
    from keras_ctr_compress.artifacts import PREPROCESSOR_FILE, save_trained
    from keras_ctr_compress.bench import run_benchmark, summarize
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.models import ModelConfig, TrainConfig
    from keras_ctr_compress.scoring import artefact_bytes, score_tflite, write_sidecar

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

    rec = run_benchmark(ds, model="deepfm", methods=["fp32", "drq"], seeds=[0],
                        workdir=out / "bench", train_config=tcfg, model_kwargs=model_kwargs,
                        latency_seconds=0.5 if quick else 1.5, log=log, on_reference=save_reference)
    atomic_write_text(out / "bench.json", __import__("json").dumps(rec, indent=1) + "\n")
    rows = {r["method"]: r for r in rec["results"]}
    for method in rows:
        dst = out / f"{method}.tflite"
        write_sidecar(dst, model_dir / PREPROCESSOR_FILE)
        with atomic_path(dst, suffix=".tflite") as tmp:  # a killed demo leaves no truncated .tflite
            shutil.copyfile(out / "bench" / "seed0" / f"{method}.tflite", tmp)
    log("[demo] scoring the fp32 artefact on raw test rows in the LiteRT interpreter")
    scored = score_tflite(out / "fp32.tflite", data)
    gap = abs(scored["auc"] - rows["fp32"]["test_auc"])
    table = _table(summarize(rec), {m: artefact_bytes(out / f"{m}.tflite")["total"] for m in rows})
    lines = [
        "# keras-ctr-compress demo", "",
        f"Data: `{data}` ({ds.split_sizes()}), model DeepFM, seed 0. "
        f"Bayes-optimal test AUC (the ceiling): {ds.info.get('bayes_auc', float('nan')):.4f}.", "",
        table, "",
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
