"""The ``kcc`` command (also installed as ``keras-ctr-compress``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from keras_ctr_compress.utils import quiet_tensorflow

DEFAULT_DEMO_DATA = "synthetic"

#: ``--help`` examples per command (shown under the options).
EXAMPLES = {
    "kcc": """examples:
  kcc demo                                                   # the whole path on synthetic data
  kcc train --data csv:clicks.csv,schema=schema.json --out runs/m
  kcc search --model runs/m --data csv:clicks.csv,schema=schema.json --max-ratio 4 --trials 20 --out runs/s
  kcc export runs/m --out runs/m.tflite
  kcc score runs/m.tflite --data csv:clicks.csv,schema=schema.json
  kcc <command> --help                                       # options and examples of one command""",
    "train": """examples:
  kcc train --data synthetic:rows=100000 --out runs/m
  kcc train --data csv:clicks.csv,schema=schema.json --model deepfm --epochs 10 --out runs/m
  kcc train --data parquet:clicks/,schema=schema.json,reader=pyarrow --mlp 64,32 --out runs/m
  kcc train --out runs/m --resume                            # continue an interrupted run
  kcc --quiet train --data criteo:day_0.tsv --out runs/c     # no per-epoch lines""",
    "export": """examples:
  kcc export runs/m --out runs/m.tflite                      # float32, parity-checked, size + latency
  kcc export runs/m --out runs/m_drq.tflite --quantize drq   # dynamic-range quantisation
  kcc export runs/m --out runs/m.tflite --no-latency --parity-rows 2000""",
    "score": """examples:
  kcc score runs/m.tflite --data csv:new_clicks.csv,schema=schema.json --split all
  kcc score runs/s/best.tflite --data synthetic:rows=100000  # the test split of the same data""",
    "search": """examples:
  kcc search --model runs/m --data csv:clicks.csv,schema=schema.json --max-ratio 4 --trials 20 --out runs/s
  kcc search --model runs/m --data synthetic:rows=100000 --max-ratio 10 --trials 5 --out runs/s --quiet""",
    "compress": """examples:
  kcc compress --model runs/m --plan runs/s/best_plan.json --data csv:clicks.csv,schema=schema.json --out runs/c""",
    "bench": """examples:
  kcc bench --list                                           # the registered methods
  kcc bench --dataset frappe --methods fp32,drq,alpt-4 --seeds 0,1,2 --json benchmarks/results/frappe.json
  kcc bench --dataset synthetic --methods fp32,drq --seeds 0 --quick --json /tmp/quick.json""",
    "memory": """examples:
  kcc memory --rows 10000000 --dim 16 --json benchmarks/results/memory_lpt_10m.json
  kcc memory --rows 100000 --dim 8 --configs fp32-adam,lpt-sgd --steps 10 --json /tmp/m.json""",
    "scale": """examples:
  kcc scale --rows 10000,100000 --methods fp32,drq --json /tmp/scale.json""",
    "report": """examples:
  kcc report --results benchmarks/results --readme README.md""",
    "demo": """examples:
  kcc demo                                                   # train, search, export, verify, report
  kcc demo --quick --out /tmp/demo                           # a tiny smoke run""",
}


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(msg: str) -> None:
    """A progress line on stderr; ``kcc --quiet`` silences it (errors are always shown)."""
    from keras_ctr_compress.console import progress

    progress(msg)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``kcc train: error: ...``), like every
    other error of the command; ``--help`` still shows the full usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="deepfm", help="fm | fwfm | deepfm | deepfwfm | dcnv2")
    p.add_argument("--seed", type=int, default=0, help="training seed (the split uses --split-seed)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--embedding-dim", type=int, default=10)
    p.add_argument("--mlp", type=_ints, default=[400, 400, 400], help="hidden sizes, e.g. 400,400,400")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--embedding-l2", type=float, default=1e-3)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="kcc", description=__doc__, epilog=EXAMPLES["kcc"],
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    ap.add_argument("--quiet", action="store_true",
                    help="no progress output (epochs, calibration, trials, rows); results and errors still print")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a reference CTR model and save it with its vocabularies")
    p.add_argument("--data", default=None, help="dataset spec, e.g. criteo:PATH or synthetic:rows=100000")
    p.add_argument("--out", required=True, help="output folder (model.keras, preprocessor.json, meta.json; "
                   "checkpoint.npz after every epoch while training)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted training in --out from its last finished epoch "
                   "(its saved settings are used)")
    _add_skip_bad_rows(p)
    _add_train_args(p)

    p = sub.add_parser("export", help="export a trained model folder to a verified .tflite")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True, help="the .tflite to write (its vocabularies go beside it)")
    p.add_argument("--quantize", choices=["none", "drq"], default="none")
    p.add_argument("--parity-rows", type=int, default=1000)
    p.add_argument("--no-latency", action="store_true")

    p = sub.add_parser("score", help="score raw rows through a .tflite artefact in the LiteRT interpreter")
    p.add_argument("tflite")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--split-seed", type=int, default=0)
    _add_skip_bad_rows(p)

    _add_search_parsers(sub)

    p = sub.add_parser("bench", help="benchmark methods side by side and write the JSON record")
    p.add_argument("--dataset", default=None, help="frappe, frappe-nfm, criteo-8k, movielens100k, synthetic or a "
                   "spec (required unless --list or --merge)")
    p.add_argument("--model", default="deepfm")
    p.add_argument("--methods", default="fp32,drq")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--json", default=None, help="the record to write (required unless --list)")
    p.add_argument("--quick", action="store_true", help="smoke run on a 20k-row slice")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--workdir", default=None, help="keep candidate files here")
    p.add_argument("--reference-dir", default=None,
                   help="reuse the fp32 references saved here by an earlier run with the same dataset, "
                   "model, seed and epochs (trained and saved there when missing)")
    p.add_argument("--list", action="store_true", help="list the registered methods and exit")
    p.add_argument("--merge", nargs="+", metavar="RECORD", default=None,
                   help="no training: merge the records of separate runs (e.g. one seed each) into --json")
    p.add_argument("--budget-ratio", type=float, default=None,
                   help="searched methods: the file at most 1/R of the fp32 file (default 16)")
    p.add_argument("--trials", type=int, default=None, help="searched methods: trials per search (default 20)")

    p = sub.add_parser("memory", help="peak training memory of an fp32 vs an int8-stored (lpt) table, "
                       "each configuration in its own process")
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--configs", default="fp32-adam,lpt-adagrad,lpt-sgd")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--json", required=True, help="the record to write")

    p = sub.add_parser("scale", help="scale sweep: export time, bytes, latency and memory as the "
                       "embedding tables grow (each export / scoring in its own process)")
    p.add_argument("--rows", type=_ints, default=[10_000, 100_000, 1_000_000, 10_000_000],
                   help="total embedding rows per scale (26 fields, dim 16)")
    p.add_argument("--methods", default="fp32,drq,alpt-4,searched")
    p.add_argument("--plan", default=None, help="plan JSON for 'searched' (e.g. kcc search's best plan)")
    p.add_argument("--workdir", default="runs/scale", help="where the .tflite files go")
    p.add_argument("--json", required=True, help="the record to write (its plot goes beside it)")

    p = sub.add_parser("report", help="render benchmark records into tables and plots")
    p.add_argument("--results", default="benchmarks/results", help="folder of JSON records")
    p.add_argument("--readme", default=None, help="also refresh the results block of this README")
    p.add_argument("--headline", default=None, help="record name (stem) for the README block")

    p = sub.add_parser("demo", help="the main job on built-in synthetic data")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default=DEFAULT_DEMO_DATA)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    for name, command in sub.choices.items():  # `kcc train ... --debug` works as well as `kcc --debug train`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks on errors")
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="no progress output (epochs, calibration, trials, rows); results and errors still print")
        command.epilog = EXAMPLES.get(name)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return ap


def _add_search_parsers(sub) -> None:
    """``kcc search`` and ``kcc compress`` (their work: ``keras_ctr_compress.search.commands``)."""
    p = sub.add_parser("search", help="budgeted search of a compression plan (keras-tuner) for a trained model")
    p.add_argument("--model", required=True, help="trained model folder (kcc train --out)")
    p.add_argument("--data", default=None, help="dataset spec (default: the one the model was trained on)")
    p.add_argument("--split-seed", type=int, default=None, help="default: the model's")
    p.add_argument("--skip-bad-rows", type=int, default=None, metavar="N",
                   help="skip and count up to N malformed input rows (default: the model's kcc train setting)")
    p.add_argument("--out", required=True, help="search folder: state, trials, Pareto front, best plan and file")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-bytes", type=int, default=None, help="cap on the exported .tflite bytes")
    budget.add_argument("--max-ratio", type=float, default=None,
                        help="cap as a ratio: the file at most 1/R of the fp32 file's bytes (R >= 1, e.g. 16)")
    p.add_argument("--max-latency-us", type=float, default=None,
                   help="cap on the batch-1 latency (LiteRT, 1 thread; predicted by a model calibrated here)")
    p.add_argument("--soft-budget", action="store_true", help="penalise plans over the budget instead of skipping them")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--tuner", choices=["bayesian", "random", "hyperband"], default="bayesian")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    p.add_argument("--trial-epochs", type=int, default=1, help="fine-tuning epochs per trial")
    p.add_argument("--final-epochs", type=int, default=12, help="at most this many epochs for the best plan")
    p.add_argument("--fix", action="append", default=[], metavar="ENTRY=JSON",
                   help="fix one plan entry, e.g. 'dense.dnn_0={\"units\": 100}' or drq=true (repeatable)")
    p.add_argument("--restrict", action="append", default=[], metavar="ENTRY:KEY=V1,V2",
                   help="keep only these choices, e.g. 'tables.*:methods=fp32,quant' or 'dense.*:ranks=null,16' "
                   "(repeatable)")
    p.add_argument("--space", default=None, help="a search space JSON file (SearchSpace.to_json)")
    p.add_argument("--latency-model", default=None, help="reuse a calibrated latency_model.json")
    p.add_argument("--latency-plans", type=int, default=10, help="files measured to calibrate latency")

    p = sub.add_parser("compress", help="apply a plan to a trained model: compress, fine-tune, export, verify")
    p.add_argument("--model", required=True, help="trained model folder (kcc train --out)")
    p.add_argument("--plan", required=True, help="plan JSON (e.g. kcc search's best_plan.json)")
    p.add_argument("--data", default=None, help="dataset spec (default: the one the model was trained on)")
    p.add_argument("--split-seed", type=int, default=None, help="default: the model's")
    p.add_argument("--skip-bad-rows", type=int, default=None, metavar="N",
                   help="skip and count up to N malformed input rows (default: the model's kcc train setting)")
    p.add_argument("--out", required=True, help="output folder: model.tflite, model.keras, plan.json, meta.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-finetune", action="store_true", help="transforms only")


def cmd_search(a) -> int:
    from keras_ctr_compress.search.commands import cmd_search as run

    return run(a, _progress)


def cmd_compress(a) -> int:
    from keras_ctr_compress.search.commands import cmd_compress as run

    return run(a, _progress)


def _add_skip_bad_rows(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-rows", type=int, default=0, metavar="N",
                   help="skip and count up to N malformed input rows instead of stopping at the first "
                   "(each is named FILE:LINE in the error otherwise)")


#: ``kcc train`` options a resumed run takes from its checkpoint (``--resume``)
TRAIN_SETTINGS = ("data", "model", "seed", "split_seed", "epochs", "batch_size", "lr", "patience",
                  "embedding_dim", "mlp", "dropout", "embedding_l2", "skip_bad_rows")


def cmd_train(a) -> int:
    from keras_ctr_compress.artifacts import CHECKPOINT_FILE, save_trained
    from keras_ctr_compress.console import keras_verbose
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.models import (
        ModelConfig,
        TrainConfig,
        build_model,
        evaluate,
        train_model,
    )
    from keras_ctr_compress.models.training import check_labels

    out = Path(a.out)
    ckpt = out / CHECKPOINT_FILE
    saved_fingerprint = _resume_settings(a, ckpt) if a.resume else _check_fresh_start(a, ckpt)
    if a.skip_bad_rows < 0:
        raise ValueError(f"--skip-bad-rows must be >= 0, got {a.skip_bad_rows}")
    ds = load_dataset(a.data, seed=a.split_seed, skip_bad_rows=a.skip_bad_rows)
    _progress(f"[train] {ds.name}: {ds.split_sizes()} rows, {ds.num_fields} fields")
    if ds.info.get("skipped_rows"):
        _log(f"[train] skipped {ds.info['skipped_rows']} malformed rows (--skip-bad-rows {a.skip_bad_rows}); "
             f"first: {ds.info['skipped_examples'][0]}")
    check_labels(ds.test.y, "test split", need_both=True)  # fail now, not after training
    fingerprint = _data_fingerprint(ds)
    if saved_fingerprint is not None and fingerprint != saved_fingerprint:
        raise ValueError(f"{ckpt}: the data of {a.data} changed since the interrupted run (other rows or "
                         f"vocabularies); delete {ckpt} to start over")
    mcfg = ModelConfig(name=a.model, embedding_dim=a.embedding_dim, mlp=tuple(a.mlp),
                       dropout=a.dropout, embedding_l2=a.embedding_l2)
    model = build_model(mcfg, ds.fields, seed=a.seed)
    tcfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, learning_rate=a.lr,
                       patience=a.patience, seed=a.seed, verbose=keras_verbose(2))
    run_info = {"args": {k: getattr(a, k) for k in TRAIN_SETTINGS}, "data_fingerprint": fingerprint}
    summary = train_model(model, ds.train, ds.valid, tcfg, checkpoint=ckpt, resume=a.resume, run_info=run_info)
    test = evaluate(model, ds.test)
    meta = {"data": a.data, "split_seed": a.split_seed, "skip_bad_rows": a.skip_bad_rows, "dataset": ds.name,
            "split": ds.split_sizes(), "fields": [f.__dict__ for f in ds.fields],
            "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(),
            "train": summary, "test": test, "dataset_info": _plain(ds.info)}
    save_trained(out, model, ds.preprocessor, meta)
    ckpt.unlink(missing_ok=True)  # the folder is complete: the checkpoint has done its job
    print(f"test AUC {test['auc']:.4f}  logloss {test['logloss']:.4f}  "
          f"({summary['epochs']} epochs, best {summary['best_epoch']}, {summary['train_seconds']:.0f}s) -> {out}")
    return 0


def _check_fresh_start(a, ckpt: Path) -> None:
    """A new run needs ``--data`` and must not silently discard an interrupted one."""
    from keras_ctr_compress.models.training import read_checkpoint_info

    if a.data is None:
        raise ValueError("--data is required (or --resume to continue an interrupted run in --out)")
    if ckpt.exists():
        try:
            info = read_checkpoint_info(ckpt)
            where = f" (epoch {info['epoch']} of {info['config']['epochs']})"
        except (ValueError, KeyError):
            where = ""
        raise ValueError(f"{ckpt.parent} holds the checkpoint of an interrupted training{where}: continue it "
                         f"with kcc train --resume --out {ckpt.parent}, or delete {ckpt} to start over")


def _resume_settings(a, ckpt: Path) -> str:
    """Fills ``a`` with the interrupted run's settings; an option given with another
    value than the saved one is an error, not silently ignored. Returns the saved data
    fingerprint."""
    from keras_ctr_compress.models.training import read_checkpoint_info

    if not ckpt.exists():
        done = (ckpt.parent / "meta.json").exists()
        raise FileNotFoundError(f"{ckpt}: no checkpoint to resume" + (
            f" ({ckpt.parent} holds a finished training)" if done else
            " (kcc train --resume continues a run that was interrupted with this --out)"))
    run = read_checkpoint_info(ckpt).get("run") or {}
    saved = run.get("args")
    if not isinstance(saved, dict) or any(k not in saved for k in TRAIN_SETTINGS):
        raise ValueError(f"{ckpt}: was not written by kcc train (no saved settings to resume with)")
    defaults = build_parser().parse_args(["train", "--out", str(a.out)])
    for k in TRAIN_SETTINGS:
        given = getattr(a, k)
        if given != getattr(defaults, k) and given != saved[k]:
            raise ValueError(f"--{k.replace('_', '-')} {given} differs from the interrupted run's {saved[k]}; "
                             "resume without it (the saved settings are used)")
        setattr(a, k, saved[k])
    return run.get("data_fingerprint")


def _data_fingerprint(ds) -> str:
    """A hash of the encoded splits and the vocabularies: a resumed run must train on
    exactly the rows the interrupted one did."""
    import hashlib

    import numpy as np

    h = hashlib.sha256(ds.preprocessor.to_json().encode("utf-8"))
    for part in (ds.train, ds.valid, ds.test):
        h.update(np.ascontiguousarray(part.x).tobytes())
        h.update(np.ascontiguousarray(part.y).tobytes())
    return h.hexdigest()


def _plain(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def cmd_export(a) -> int:
    from keras_ctr_compress.artifacts import PREPROCESSOR_FILE, load_trained
    from keras_ctr_compress.data import load_dataset
    from keras_ctr_compress.export import (
        check_parity,
        export_litert,
        measure_latency,
        size_breakdown,
    )
    from keras_ctr_compress.scoring import artefact_bytes, write_sidecar

    tm = load_trained(a.model_dir)
    out = Path(a.out)
    if out.suffix != ".tflite":
        raise ValueError(f"--out must name a .tflite file, got {out}")
    ds = load_dataset(tm.meta["data"], seed=tm.meta.get("split_seed", 0), preprocessor=tm.preprocessor,
                      skip_bad_rows=tm.meta.get("skip_bad_rows", 0))
    x = ds.test.x[: a.parity_rows]
    atol = 1e-4 if a.quantize == "none" else float("inf")
    # The file takes its name only once it passed the parity check, and after its
    # vocabularies: a failed or interrupted export leaves no .tflite behind.
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial.tflite")
    try:
        t0 = time.perf_counter()
        export_litert(tm.model, tmp, quantization=None if a.quantize == "none" else a.quantize)
        try:
            diff = check_parity(tm.model, tmp, x, atol=atol)
        except ValueError as e:  # name the file the user asked for, not the temporary one
            raise ValueError(f"{out} not written: {str(e).replace(tmp.name, out.name)}") from e
        if (Path(a.model_dir) / PREPROCESSOR_FILE).exists():
            write_sidecar(out, Path(a.model_dir) / PREPROCESSOR_FILE)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    _progress(f"[export] wrote {out} in {time.perf_counter() - t0:.1f}s (builtins only)")
    print(f"parity vs Keras on {len(x)} test rows: max abs diff {diff:.2e}"
          + ("" if a.quantize == "none" else " (quantised: reported, not enforced)"))
    print(size_breakdown(out).to_text())
    print("artefact bytes:", artefact_bytes(out))
    if not a.no_latency:
        lat = measure_latency({"model": out}, ds.test.x, batch_sizes=(1, 256), min_seconds=1.0)
        for b, v in lat["model"].items():
            print(f"latency batch {b}: median {v['median_us']:.1f} us (num_threads=1)")
    return 0


def cmd_score(a) -> int:
    from keras_ctr_compress.scoring import score_tflite

    res = score_tflite(a.tflite, a.data, split=a.split, seed=a.split_seed, skip_bad_rows=a.skip_bad_rows)
    print(f"rows {res['rows']}  AUC {res['auc']:.6f}  logloss {res['logloss']:.6f}")
    return 0


def cmd_bench(a) -> int:
    from keras_ctr_compress.bench import method_names, render_table, run_benchmark
    from keras_ctr_compress.models import TrainConfig

    if a.list:
        from keras_ctr_compress.bench import get_method

        for name in method_names():
            print(f"{name:16s} {get_method(name).description}")
        return 0
    if a.json is None:
        raise ValueError("--json is required (the record to write)")
    if a.merge:
        from keras_ctr_compress.bench import load_record, merge_records, save_record

        rec = merge_records([load_record(p) for p in a.merge], where=list(a.merge))
        save_record(rec, a.json)
        print(render_table(rec))
        print(f"merged {len(a.merge)} records ({len(rec['results'])} rows) into {a.json}")
        return 0
    if a.dataset is None:
        raise ValueError("--dataset is required (a dataset name or spec)")
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    options = {k: v for k, v in (("budget_ratio", a.budget_ratio), ("trials", a.trials)) if v is not None}
    rec = run_benchmark(a.dataset, model=a.model, methods=methods, seeds=a.seeds, json_out=a.json,
                        quick=a.quick, workdir=a.workdir,
                        train_config=TrainConfig(epochs=a.epochs, verbose=0), log=_progress,
                        method_options=options, reference_dir=a.reference_dir)
    print(render_table(rec))
    print(f"record written to {a.json}")
    return 0


def cmd_memory(a) -> int:
    from keras_ctr_compress.bench.memory import run_memory_benchmark, write_record

    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    rec = run_memory_benchmark(a.rows, a.dim, configs, steps=a.steps, log=_progress)
    rec["command"] = (f"kcc memory --rows {a.rows} --dim {a.dim} --configs {','.join(configs)} "
                      f"--steps {a.steps} --json {a.json}")
    write_record(rec, a.json)
    for c, ratio in rec["fp32_state_bytes_over"].items():
        rss = rec["fp32_share_over"].get(c)
        rss_text = f"{rss:.2f}x" if rss is not None else "below RSS resolution"
        print(f"fp32-adam table state / {c}: {ratio:.2f}x exact bytes, RSS growth {rss_text}")
    print(f"record written to {a.json}")
    return 0


def cmd_scale(a) -> int:
    from keras_ctr_compress.bench.memory import write_record
    from keras_ctr_compress.bench.scale import plot_scale_sweep, run_scale_sweep

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    rec = run_scale_sweep(a.rows, methods, workdir=a.workdir, plan=a.plan, log=_progress)
    write_record(rec, a.json)
    png = plot_scale_sweep(rec, Path(a.json).with_suffix(".png"))
    for r in rec["results"]:
        print(f"{r['total_rows']:>11,} {r['method']:9s} {r['tflite_bytes']:>13,} B  export {r['export_seconds']:6.1f}s "
              f"+{r['export_extra_mb']:8,.0f} MB  b1 {r['latency_us_b1']:9.1f} us  b256 {r['latency_us_b256']:10.1f} us")
    print(f"record written to {a.json}, plot {png}")
    return 0


def cmd_report(a) -> int:
    from keras_ctr_compress.bench.report import write_results_readme

    out = write_results_readme(a.results, a.readme, a.headline)
    print(f"wrote {out}" + (f" and refreshed {a.readme}" if a.readme else ""))
    return 0


def cmd_demo(a) -> int:
    from keras_ctr_compress.demo import run_demo

    run_demo(out=a.out, data=a.data, epochs=a.epochs, quick=a.quick, log=_progress)
    return 0


COMMANDS = {"train": cmd_train, "export": cmd_export, "score": cmd_score, "bench": cmd_bench,
            "demo": cmd_demo, "report": cmd_report, "memory": cmd_memory, "scale": cmd_scale,
            "search": cmd_search, "compress": cmd_compress}


def main(argv: list[str] | None = None) -> int:
    """Runs one command. Any error ends it with exactly one line on stderr,
    ``kcc <command>: error: <what, naming the file / line / field>``, and exit status
    2 (no traceback unless ``--debug``); an interrupt exits with 130. Every file a
    command writes is written atomically, so neither leaves a half-written one."""
    from keras_ctr_compress import console
    from keras_ctr_compress.utils import one_line_error

    quiet_tensorflow()
    args = build_parser().parse_args(argv)
    console.reset_notices()  # one-off facts (the reader in use) are stated by every command
    was_quiet = os.environ.get("KCC_QUIET")
    if args.quiet:
        console.set_quiet(True)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _log(f"kcc {args.command}: interrupted")
        return 130
    except Exception as e:
        if args.debug:
            raise
        _log(f"kcc {args.command}: error: {one_line_error(e)}")
        return 2
    finally:  # --quiet is this command's; a later main() in the same process starts as before
        if args.quiet and was_quiet is None:
            os.environ.pop("KCC_QUIET", None)
        elif args.quiet:
            os.environ["KCC_QUIET"] = was_quiet


if __name__ == "__main__":
    sys.exit(main())
