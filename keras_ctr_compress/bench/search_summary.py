"""Summary of a benchmark record's ``searched`` / ``searched-random`` rows against the
search issue's targets, and the Pareto plot and table of one search folder.

``python -m keras_ctr_compress.bench.search_summary RECORD.json --pareto-from DIR``
writes ``<record>_summary.json`` (with the command that made it) and
``<record>_pareto.png`` / ``<record>_pareto.md``.
"""

from __future__ import annotations


def search_summary(record: dict) -> dict:
    """The searched rows of a benchmark record, summarised against the issue's targets.

    - per seed: fp32 and searched test AUC, the searched file's bytes against the budget;
    - means over seeds: test AUC gap (searched - fp32), best validation AUC of the
      Bayesian and the random search at the same trial count;
    - per search: overhead per trial (search machinery; and everything but the
      fine-tuning fit), RSS growth over the trials, latency predicted vs measured.
    """
    import numpy as np

    from keras_ctr_compress.search.tuner import default_initial_points

    rows = record["results"]
    fp32 = {r["seed"]: r for r in rows if r["method"] == "fp32"}
    out: dict = {"record_command": record.get("command"), "seeds": record.get("seeds"), "methods": {}}
    for method in ("searched", "searched-random"):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        per_seed = []
        for r in mine:
            s = r["extra"]["search"]
            t = s["timings"]
            per_seed.append({
                "seed": r["seed"], "fp32_test_auc": fp32[r["seed"]]["test_auc"], "test_auc": r["test_auc"],
                "test_auc_gap": r["test_auc"] - fp32[r["seed"]]["test_auc"],
                "tflite_bytes": r["tflite_bytes"], "max_bytes": s["max_bytes"],
                "within_budget": r["tflite_bytes"] <= s["max_bytes"], "fp32_bytes": s["fp32_bytes"],
                "bytes_predicted": s["bytes_predicted"],
                "bytes_rel_error": (s["bytes_predicted"] - r["tflite_bytes"]) / r["tflite_bytes"],
                "best_trial_val_auc": s["best_trial_val_auc"], "final_val_auc": s["final_val_auc"],
                "trials": s["trials"], "all_trials_within_budget": s["all_trials_within_budget"],
                "search_overhead_s_mean": t.get("search_overhead_seconds_mean"),
                "search_overhead_s_max": t.get("search_overhead_seconds_max"),
                "beyond_training_s_mean": t.get("beyond_training_seconds_mean"),
                "build_s_mean": t.get("build_seconds_mean"), "train_s_mean": t.get("train_seconds_mean"),
                "rss_growth_mb": t.get("rss_growth_mb"), "rss_growth_mb_from_start": t.get("rss_growth_mb_from_start"),
                "latency_us_predicted": s["latency_us_predicted"], "latency_us_measured": s["latency_us_measured_alone"],
                "latency_rel_error": (s["latency_us_predicted"] - s["latency_us_measured_alone"])
                / s["latency_us_measured_alone"] if s["latency_us_predicted"] is not None else None,
                "latency_b1_vs_fp32": r["latency_us_b1"] / fp32[r["seed"]]["latency_us_b1"],
                **_latency_ratio(s, r["latency_us_b1"] / fp32[r["seed"]]["latency_us_b1"]),
                "latency_model_loo_median_abs_rel_error": s["latency_model"].get("loo_median_abs_rel_error"),
                **trial_quality(s["trial_val_aucs"], default_initial_points(s["trials"])),
            })
        mean = {k: float(np.mean([p[k] for p in per_seed])) for k in (
            "test_auc", "fp32_test_auc", "test_auc_gap", "best_trial_val_auc", "final_val_auc",
            "search_overhead_s_mean", "beyond_training_s_mean", "rss_growth_mb", "later_trials_median_val_auc")}
        for k in ("later_trials", "later_trials_broken", "later_trials_near_best"):
            mean[k] = int(sum(p[k] for p in per_seed))  # totals over the seeds
        out["methods"][method] = {"per_seed": per_seed, "mean": mean,
                                  "all_within_budget": all(p["within_budget"] for p in per_seed),
                                  "auc_target_met": mean["test_auc_gap"] >= -0.002}
    if {"searched", "searched-random"} <= set(out["methods"]):
        b, r = out["methods"]["searched"]["mean"], out["methods"]["searched-random"]["mean"]
        out["bayesian_vs_random"] = {"best_trial_val_auc_bayesian": b["best_trial_val_auc"],
                                     "best_trial_val_auc_random": r["best_trial_val_auc"],
                                     "difference": b["best_trial_val_auc"] - r["best_trial_val_auc"],
                                     "bayesian_beats_random": b["best_trial_val_auc"] > r["best_trial_val_auc"],
                                     **{f"{k}_{name}": m[k] for name, m in (("bayesian", b), ("random", r))
                                        for k in ("later_trials_median_val_auc", "later_trials_broken",
                                                  "later_trials_near_best", "later_trials")}}
    return out


#: a trial below this validation AUC broke the model (a pruned key field scores ~0.5)
BROKEN_AUC = 0.6
#: a trial within this much of its search's best validation AUC counts as near the best
NEAR_BEST = 0.0025


def trial_quality(val_aucs: list[float], initial: int) -> dict:
    """What the trials after the ``initial`` random ones (where the Bayesian oracle
    proposes; the random oracle keeps drawing) were worth: their median validation AUC,
    how many broke the model (< :data:`BROKEN_AUC`) and how many came within
    :data:`NEAR_BEST` of the search's best trial. The best alone is one draw of luck;
    these say how the proposals were spent."""
    import numpy as np

    def scored(aucs):  # a trial that failed has no AUC
        return [a for a in aucs if a is not None and a == a]

    later, best = scored(val_aucs[initial:]), max(scored(val_aucs), default=float("nan"))
    return {"later_trials": len(later),
            "later_trials_median_val_auc": float(np.median(later)) if later else float("nan"),
            "later_trials_broken": sum(a < BROKEN_AUC for a in later),
            "later_trials_near_best": sum(a >= best - NEAR_BEST for a in later)}


def _latency_ratio(s: dict, measured_ratio: float) -> dict:
    """Predicted vs measured latency as ratios to the fp32 file (the measured ratio from
    the harness's interleaved timing), so that the machine's drift cancels."""
    ratio = s.get("latency_ratio_predicted")
    if ratio is None:
        return {}
    return {"latency_ratio_predicted": ratio, "latency_ratio_measured": measured_ratio,
            "latency_ratio_rel_error": (ratio - measured_ratio) / measured_ratio}


def main(argv: list[str] | None = None) -> int:
    """``python -m keras_ctr_compress.bench.search_summary RECORD.json [--pareto-from DIR]``:
    writes ``<record>_summary.json`` and, from one search folder, its Pareto plot and
    table as ``<record>_pareto.png`` / ``_pareto.md``."""
    import argparse
    import json
    import shutil
    import sys
    from pathlib import Path

    from keras_ctr_compress.search.pareto import front_table
    from keras_ctr_compress.utils import atomic_path, atomic_write_text

    ap = argparse.ArgumentParser(prog="python -m keras_ctr_compress.bench.search_summary")
    ap.add_argument("record")
    ap.add_argument("--pareto-from", default=None, help="a search folder (e.g. <workdir>/seed0/searched)")
    a = ap.parse_args(argv)
    rec_path = Path(a.record)
    summary = search_summary(json.loads(rec_path.read_text()))
    summary["command"] = " ".join(["python -m keras_ctr_compress.bench.search_summary", *(argv or sys.argv[1:])])
    stem = rec_path.with_suffix("")
    if a.pareto_from:
        src = Path(a.pareto_from)
        front = json.loads((src / "pareto.json").read_text())
        trials = json.loads((src / "trials.json").read_text())
        with atomic_path(Path(f"{stem}_pareto.png"), suffix=".png") as tmp:
            shutil.copyfile(src / "pareto.png", tmp)
        table = front_table(front["front"], front["fp32_bytes"])
        atomic_write_text(Path(f"{stem}_pareto.md"), f"Pareto front of `{src}` ({len(trials)} trials, budget "
                          f"{front['budget']['max_bytes']:,} B; validation AUC after each trial's 1-epoch "
                          f"fine-tune)\n\n{table}\n")
        summary["pareto"] = {"from": str(src), "front": front["front"], "trials": len(trials)}
    atomic_write_text(Path(f"{stem}_summary.json"), json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("pareto",)}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
