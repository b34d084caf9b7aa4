"""The bad-input table: every kind of bad input, through the real ``kcc`` command.

Each case runs ``keras_ctr_compress.cli.main([...])`` (the function the ``kcc``
script calls) on files written here and checks the contract of design.md "Errors
and data safety": exit status 2, exactly one line on stderr starting with
``kcc <command>: error:`` that names the file / line / field, no traceback, and no
file written (nothing half-written left behind: the folder holds exactly what it
held before). Inputs that are not errors by design (NaN numerics, unseen
categories, out-of-range raw ids, rows skipped under ``--skip-bad-rows``) are in
the table too, with what they produce instead. Two cases also run the installed
``kcc`` in a subprocess, where stderr is the whole process's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from keras_ctr_compress.cli import main

HEADER = "clicked,site,app,price,user"
SCHEMA = {"label": "clicked", "categorical": ["site", "app"], "numeric": ["price"], "id": ["user"]}
FAST = ["--epochs", "1", "--mlp", "8", "--embedding-dim", "2", "--batch-size", "128"]


def good_rows(n: int, seed: int = 0, site_prefix: str = "s") -> list[str]:
    """Rows whose click depends on site and price (so AUC is defined and learnable)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        site, app, price, user = rng.integers(10), rng.integers(5), rng.gamma(2.0, 3.0), rng.integers(50)
        p = 1 / (1 + np.exp(-(0.4 * site - 2 + 0.1 * price)))
        rows.append(f"{int(rng.random() < p)},{site_prefix}{site},a{app},{price:.2f},{user}")
    return rows


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_schema(folder: Path, schema: dict | None = None) -> Path:
    path = folder / "schema.json"
    path.write_text(json.dumps(schema or SCHEMA))
    return path


def with_line(rows: list[str], line: int, text: str) -> list[str]:
    """``rows`` with physical line ``line`` of the file (the header is line 1) replaced."""
    out = list(rows)
    out[line - 2] = text
    return out


def spec(data: Path, schema: Path) -> str:
    return f"csv:{data},schema={schema}"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained and exported by kcc on the CSV layout above."""
    root = tmp_path_factory.mktemp("bad_inputs")
    data = write_csv(root / "data.csv", good_rows(400))
    schema = write_schema(root)
    model_dir = root / "model"
    assert main(["train", "--data", spec(data, schema), "--out", str(model_dir), *FAST]) == 0
    tflite = root / "m.tflite"
    assert main(["export", str(model_dir), "--out", str(tflite), "--no-latency"]) == 0
    return {"root": root, "data": data, "schema": schema, "model": model_dir, "tflite": tflite}


def copy_model(trained: dict, tmp: Path) -> Path:
    dst = tmp / "model"
    shutil.copytree(trained["model"], dst)
    return dst


def copy_tflite(trained: dict, tmp: Path) -> Path:
    dst = tmp / "m.tflite"
    shutil.copyfile(trained["tflite"], dst)
    shutil.copyfile(trained["tflite"].with_name("m.preprocessor.json"), tmp / "m.preprocessor.json")
    return dst


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, command: str, expected: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"kcc {command}: error:")]
    assert rc == 2, (rc, err)
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert "Traceback" not in err
    assert expected in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One bad input: ``setup(tmp, trained)`` writes the files and returns the argv
    (``{tmp}`` is the case's folder); ``expected`` must appear in the error line."""

    name: str
    setup: Callable[[Path, dict], list[str]]
    expected: str
    #: complete files the command may keep although it failed (a cache, never a result)
    kept: frozenset[str] = frozenset()


def _csv_case(line: int, text: str | bytes, *extra: str):
    def setup(tmp: Path, trained: dict) -> list[str]:
        rows = good_rows(120)
        path = tmp / "bad.csv"
        if isinstance(text, bytes):
            body = "\n".join([HEADER, *rows]).encode() + b"\n"
            lines = body.split(b"\n")
            lines[line - 1] = text
            path.write_bytes(b"\n".join(lines))
        else:
            write_csv(path, with_line(rows, line, text))
        return ["train", "--data", spec(path, write_schema(tmp)), "--out", f"{tmp}/out", *extra, *FAST]
    return setup


def _criteo_bad_columns(tmp: Path, trained: dict) -> list[str]:
    row = "\t".join(["1", *["3"] * 13, *["68fd1e64"] * 26])
    path = tmp / "day.tsv"
    path.write_text("\n".join([row, row, "1\t2\t3", row]) + "\n")
    return ["train", "--data", f"criteo:{path}", "--out", f"{tmp}/out", *FAST]


def _libfm_bad_token(tmp: Path, trained: dict) -> list[str]:
    path = tmp / "x.libfm"
    path.write_text("1 0:1 5:1 9:1\n-1 1:1 abc 9:1\n1 2:1 6:1 8:1\n")
    return ["train", "--data", f"libfm:{path}", "--out", f"{tmp}/out", *FAST]


def _parquet_corrupted(tmp: Path, trained: dict) -> list[str]:
    path = tmp / "x.parquet"
    path.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    return ["train", "--data", f"parquet:{path},schema={write_schema(tmp)}", "--out", f"{tmp}/out", *FAST]


def _split_folder(valid_rows: list[str], test_rows: list[str] | None = None):
    def setup(tmp: Path, trained: dict) -> list[str]:
        folder = tmp / "parts"
        folder.mkdir()
        write_csv(folder / "train.csv", good_rows(200))
        write_csv(folder / "valid.csv", valid_rows)
        write_csv(folder / "test.csv", good_rows(60, seed=2) if test_rows is None else test_rows)
        return ["train", "--data", spec(folder, write_schema(tmp)), "--out", f"{tmp}/out", *FAST]
    return setup


def _schema_text(text: str):
    def setup(tmp: Path, trained: dict) -> list[str]:
        data = write_csv(tmp / "d.csv", good_rows(50))
        (tmp / "schema.json").write_text(text)
        return ["train", "--data", spec(data, tmp / "schema.json"), "--out", f"{tmp}/out", *FAST]
    return setup


def _model_file(mutate: Callable[[Path], None]):
    def setup(tmp: Path, trained: dict) -> list[str]:
        model = copy_model(trained, tmp)
        mutate(model)
        return ["export", str(model), "--out", f"{tmp}/x.tflite", "--no-latency"]
    return setup


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _corrupt_zip_member(path: Path) -> None:
    """Flips bytes inside the weights member of a .keras archive (the zip CRC catches it)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model.weights.h5")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    data[start: start + 64] = bytes(b ^ 0xFF for b in data[start: start + 64])
    path.write_bytes(bytes(data))


def _lambda_model(model_dir: Path) -> None:
    """A model.keras holding a Python lambda: arbitrary code, refused by safe mode."""
    import keras

    ids = keras.Input((4,), dtype="int32", name="ids")
    out = keras.layers.Lambda(lambda t: keras.ops.cast(t[:, :1], "float32") * 0.0 + 0.5)(ids)
    keras.Model(ids, out).save(model_dir / "model.keras")


def _foreign_preprocessor(model_dir: Path) -> None:
    """A preprocessor.json from another run: more site tokens than the model's table."""
    pre = json.loads((model_dir / "preprocessor.json").read_text())
    site = pre["fields"][0]
    site["tokens"] = site["tokens"] + [f"new{k}" for k in range(40)]
    site["vocab_size"] = 2 + len(site["tokens"])
    (model_dir / "preprocessor.json").write_text(json.dumps(pre))


def _interrupted_folder(model_dir: Path) -> None:
    for name in ("meta.json", "model.keras", "preprocessor.json"):
        (model_dir / name).unlink()
    (model_dir / "checkpoint.npz").write_bytes(b"")


def _score(mutate: Callable[[Path], None], data_rows: list[str] | None = None, *extra: str):
    def setup(tmp: Path, trained: dict) -> list[str]:
        tfl = copy_tflite(trained, tmp)
        mutate(tfl)
        data = trained["data"] if data_rows is None else write_csv(tmp / "new.csv", data_rows)
        return ["score", str(tfl), "--data", spec(data, trained["schema"]), *extra]
    return setup


def _no_change(path: Path) -> None:
    return None


def _compress(plan: dict | bytes):
    def setup(tmp: Path, trained: dict) -> list[str]:
        path = tmp / "plan.json"
        path.write_bytes(plan if isinstance(plan, bytes) else json.dumps(plan).encode())
        return ["compress", "--model", str(trained["model"]), "--plan", str(path), "--out", f"{tmp}/small"]
    return setup


def _resume_missing(tmp: Path, trained: dict) -> list[str]:
    return ["train", "--resume", "--out", f"{tmp}/never"]


def _resume_corrupted(tmp: Path, trained: dict) -> list[str]:
    out = tmp / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    return ["train", "--resume", "--out", str(out)]


def _fresh_over_checkpoint(tmp: Path, trained: dict) -> list[str]:
    out = tmp / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"")
    return ["train", "--data", spec(trained["data"], trained["schema"]), "--out", str(out), *FAST]


BAD_INPUTS = [
    # --- malformed rows (named FILE:LINE) ---
    Case("wrong column count", _csv_case(7, "1,s3,a1"), "bad.csv:7: 3 columns (expected 5 ','-separated columns)"),
    Case("non-numeric numeric", _csv_case(9, "1,s3,a1,cheap,4"), "bad.csv:9: column price = 'cheap' is not a number"),
    Case("bad UTF-8", _csv_case(5, b"1,s\xff3,a1,2.5,4"), "bad.csv:5: bytes that are not valid UTF-8"),
    Case("empty line", _csv_case(4, ""), "bad.csv:4: empty line (expected a row of 5 ','-separated columns)"),
    Case("label other than 0/1", _csv_case(6, "2,s3,a1,2.5,4"), "bad.csv:6: label '2' (expected 0 or 1)"),
    Case("Criteo TSV wrong column count", _criteo_bad_columns, "day.tsv:3: 3 columns (expected 40 tab-separated columns)"),
    Case("libFM bad token", _libfm_bad_token, "x.libfm:2: token 'abc' is not featid:1"),
    Case("corrupted Parquet file", _parquet_corrupted, "x.parquet:0: not a readable Parquet file"),
    Case("missing data file", lambda tmp, t: ["train", "--data", f"csv:{tmp}/nope.csv,schema={write_schema(tmp)}",
                                             "--out", f"{tmp}/out"], "nope.csv: no such file or folder"),
    Case("corrupted schema JSON", _schema_text('{"label": "clicked", "categorical": ['), "schema.json:1: schema is not valid JSON"),
    Case("schema with an unknown key", _schema_text('{"label": "clicked", "categorical": ["site"], "path": "/etc"}'),
         "unknown schema keys ['path']"),
    Case("unknown data spec option", lambda tmp, t: ["train", "--data", "synthetic:rows=100,colour=red", "--out", f"{tmp}/out"],
         "unknown option 'colour' for synthetic"),
    Case("negative --skip-bad-rows", lambda tmp, t: ["train", "--data", "synthetic:rows=100", "--out", f"{tmp}/out",
                                                    "--skip-bad-rows", "-1"], "--skip-bad-rows must be >= 0"),
    # --- validation / test sets on which AUC is undefined ---
    Case("one-class validation set", _split_folder(["0,s1,a1,2.0,3"] * 30), "validation split: AUC is undefined, all 30 labels are 0"),
    Case("empty validation set", _split_folder([]), "validation split: no rows to evaluate (empty split)"),
    Case("one-class test set", _split_folder(good_rows(40, seed=1), ["1,s1,a1,2.0,3"] * 20), "test split: AUC is undefined, all 20 labels are 1"),
    # --- truncated / corrupted / unsafe model folders ---
    Case("truncated .keras", _model_file(lambda d: _truncate(d / "model.keras")), "model.keras: cannot load Keras model"),
    Case("corrupted .keras (bytes flipped)", _model_file(lambda d: _corrupt_zip_member(d / "model.keras")),
         "model.keras: cannot load Keras model"),
    Case(".keras with a Python lambda (safe mode)", _model_file(_lambda_model), "model.keras: cannot load Keras model"),
    Case("corrupted meta.json", _model_file(lambda d: _truncate(d / "meta.json")), "meta.json: corrupted JSON"),
    Case("corrupted preprocessor.json", _model_file(lambda d: _truncate(d / "preprocessor.json")),
         "preprocessor.json: corrupted preprocessor JSON"),
    Case("preprocessor.json of another run", _model_file(_foreign_preprocessor), "field 'site' (column 0) has"),
    Case("interrupted training folder", _model_file(_interrupted_folder), "finish it with kcc train --resume --out"),
    Case("missing model folder", lambda tmp, t: ["export", f"{tmp}/nope", "--out", f"{tmp}/x.tflite"], "no such model folder"),
    Case("export --out not .tflite", lambda tmp, t: ["export", str(copy_model(t, tmp)), "--out", f"{tmp}/x.bin"],
         "--out must name a .tflite file"),
    # --- truncated / corrupted .tflite files and their vocabularies ---
    Case("truncated .tflite", _score(_truncate), "m.tflite: LiteRT cannot load it: The model is not a valid Flatbuffer buffer"),
    Case("random bytes as .tflite", _score(lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096))),
         "m.tflite: LiteRT cannot load it"),
    Case("empty .tflite", _score(lambda p: p.write_bytes(b"")), "m.tflite: LiteRT cannot load it"),
    Case("missing .tflite", _score(lambda p: p.unlink()), "m.tflite: no such file"),
    Case("missing vocabulary sidecar", _score(lambda p: p.with_name("m.preprocessor.json").unlink()),
         "m.preprocessor.json: the preprocessor file of m.tflite is missing"),
    Case("corrupted vocabulary sidecar", _score(lambda p: _truncate(p.with_name("m.preprocessor.json"))),
         "m.preprocessor.json: corrupted preprocessor JSON"),
    Case("malformed row at scoring", _score(_no_change, with_line(good_rows(60), 3, "1,s1")), "new.csv:3: 2 columns"),
    Case("one-class data at scoring", _score(_no_change, ["0,s1,a1,2.0,3"] * 10, "--split", "all"), "AUC is undefined, all 10 labels are 0"),
    # --- invalid plans and impossible budgets ---
    Case("plan: unknown layer", _compress({"version": 1, "dense": {"dnn_7": {"rank": 2}}}),
         "plan entry dense.dnn_7: model 'deepfm' has no Dense layer 'dnn_7'"),
    Case("plan: bits out of range", _compress({"version": 1, "tables": {"app": {"method": "quant", "bits": 16}}}),
         "plan entry tables.app: bits=16 is not allowed for method 'quant' (choose 8, 4 or 2)"),
    Case("plan: rank too large", _compress({"version": 1, "dense": {"dnn_0": {"rank": 64}}}),
         "plan entry dense.dnn_0: rank=64 must be in [1, 7]"),
    Case("plan: pruning every field", _compress({"version": 1, "tables": {f: {"method": "pruned"} for f in
                                                                         ("site", "app", "price", "user")}}),
         "plan entry tables: every field is pruned; keep at least 2"),
    Case("plan: truncated JSON", _compress(b'{"version": 1, "tables": {"site": {"meth'),
         "plan.json: plan: not valid JSON (line 1, column"),
    Case("plan: a pickle, not JSON", _compress(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."),
         "plan.json: not a plan file (not UTF-8 text; a plan is JSON)"),
    Case("plan: missing file", lambda tmp, t: ["compress", "--model", str(t["model"]), "--plan", f"{tmp}/nope.json",
                                              "--out", f"{tmp}/small"], "nope.json: no such plan file"),
    Case("impossible byte budget", lambda tmp, t: ["search", "--model", str(t["model"]), "--out", f"{tmp}/search",
                                                  "--max-bytes", "100", "--trials", "1"],
         "budget max_bytes=100 is below the smallest plan of the search space",
         # the search keeps its verified fp32 reference export in --out for a later run or resume
         kept=frozenset({"search", "search/fp32.tflite"})),
    # --- interrupted work ---
    Case("--resume without a checkpoint", _resume_missing, "never/checkpoint.npz: no checkpoint to resume"),
    Case("--resume with a corrupted checkpoint", _resume_corrupted, "checkpoint.npz: corrupted training checkpoint"),
    Case("new run over an interrupted one", _fresh_over_checkpoint, "holds the checkpoint of an interrupted training"),
    # --- command-line usage ---
    Case("non-integer option", lambda tmp, t: ["train", "--data", "synthetic", "--out", f"{tmp}/o", "--epochs", "many"],
         "argument --epochs: invalid int value: 'many'"),
    Case("train without --data", lambda tmp, t: ["train", "--out", f"{tmp}/o"], "--data is required"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_bad_input_gives_one_line_and_writes_nothing(case, trained, tmp_path, capsys):
    argv = case.setup(tmp_path, trained)
    before = files_under(tmp_path)
    try:
        rc, _, err = run_cli(argv, capsys)
    except SystemExit as e:  # argparse usage errors exit from inside parse_args
        rc, err = e.code, capsys.readouterr().err
    assert_one_line_error(rc, err, argv[0], case.expected)
    # no output, no temporary file, no half-written folder
    assert files_under(tmp_path) - before == set(case.kept)
    _record_case(case.name, rc, err)
    for name in case.kept:
        if name.endswith(".tflite"):  # what is kept is complete: it loads and runs
            from keras_ctr_compress.export import LiteRTModel

            model = LiteRTModel(tmp_path / name)
            assert np.all(np.isfinite(model.predict(np.ones((2, model.num_fields), np.int32))))


def _record_case(name: str, rc: int, err: str) -> None:
    """KCC_BAD_INPUT_TABLE=FILE appends what each bad input produced (a JSON line per
    case) for the table in the docs; the test itself does not depend on it."""
    import os

    if os.environ.get("KCC_BAD_INPUT_TABLE"):
        with open(os.environ["KCC_BAD_INPUT_TABLE"], "a") as fh:
            fh.write(json.dumps({"case": name, "exit": rc, "error": err.strip()}) + "\n")


# ---------------------------------------------------------------- not errors, by design


def test_skip_bad_rows_skips_and_counts(tmp_path, capsys):
    rows = good_rows(300)
    for line, text in ((5, "1,s3"), (9, "1,s3,a1,cheap,4"), (12, "2,s3,a1,2.5,4"), (20, "")):
        rows = with_line(rows, line, text)
    data = write_csv(tmp_path / "d.csv", rows)
    out = tmp_path / "m"
    rc, _, err = run_cli(["train", "--data", spec(data, write_schema(tmp_path)), "--out", str(out),
                          "--skip-bad-rows", "4", *FAST], capsys)
    assert rc == 0, err
    assert "skipped 4 malformed rows (--skip-bad-rows 4); first: " in err and "d.csv:5: 2 columns" in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset_info"]["skipped_rows"] == 4 and meta["skip_bad_rows"] == 4
    assert sum(meta["split"].values()) == 300 - 4
    # one more than the limit: the error names the first row past it
    rc, _, err = run_cli(["train", "--data", spec(data, tmp_path / "schema.json"), "--out", str(tmp_path / "m2"),
                          "--skip-bad-rows", "3", *FAST], capsys)
    assert_one_line_error(rc, err, "train", "d.csv:20: empty line")
    assert "[more than skip_bad_rows=3 bad rows]" in err and not (tmp_path / "m2").exists()
    # scoring takes the same limit
    tfl = tmp_path / "m.tflite"
    assert main(["export", str(out), "--out", str(tfl), "--no-latency"]) == 0
    rc, _, err = run_cli(["score", str(tfl), "--data", spec(data, tmp_path / "schema.json")], capsys)
    assert_one_line_error(rc, err, "score", "d.csv:5: 2 columns")
    rc, out_text, err = run_cli(["score", str(tfl), "--data", spec(data, tmp_path / "schema.json"),
                                 "--skip-bad-rows", "4"], capsys)
    assert rc == 0 and "AUC" in out_text, err
    # compressing takes the model's limit by default; --skip-bad-rows overrides it
    from keras_ctr_compress.search import Plan

    plan = Plan().save(tmp_path / "plan.json")
    argv = ["compress", "--model", str(out), "--plan", str(plan), "--no-finetune"]
    rc, _, err = run_cli([*argv, "--out", str(tmp_path / "c0"), "--skip-bad-rows", "0"], capsys)
    assert_one_line_error(rc, err, "compress", "d.csv:5: 2 columns")
    assert not (tmp_path / "c0").exists()
    rc, out_text, err = run_cli([*argv, "--out", str(tmp_path / "c4")], capsys)
    assert rc == 0 and "test AUC" in out_text, err
    assert "skipped 4 malformed rows (--skip-bad-rows 4)" in err


def test_nan_and_infinite_numerics_are_missing_values(tmp_path, trained, capsys):
    """nan / inf / -Infinity carry no magnitude: the reader treats them like an empty
    value (the field's missing id 1), documented in readers.py; training and scoring go on."""
    from keras_ctr_compress.data import MISSING_ID, Preprocessor, load_dataset

    rows = good_rows(200)
    for line, price in ((3, "nan"), (4, "inf"), (5, "-Infinity"), (6, "NaN"), (7, "")):
        rows = with_line(rows, line, f"1,s3,a1,{price},4")
    data = write_csv(tmp_path / "d.csv", rows)
    pre = Preprocessor.load(trained["model"] / "preprocessor.json")
    ds = load_dataset(spec(data, trained["schema"]), preprocessor=pre)
    x = np.concatenate([ds.train.x, ds.valid.x, ds.test.x])
    assert len(x) == 200 and int(np.sum(x[:, 2] == MISSING_ID)) == 5  # price is column 2
    rc, out, err = run_cli(["score", str(trained["tflite"]), "--data", spec(data, trained["schema"]),
                            "--split", "all"], capsys)
    assert rc == 0 and "rows 200" in out, err


def test_unseen_categories_and_out_of_range_raw_ids_go_to_oov(tmp_path, trained, capsys):
    """Categories the vocabulary never saw, and raw ``id`` values that are negative or
    beyond the fitted range, are the OOV id 0: scoring new data never fails on them."""
    from keras_ctr_compress.data import OOV_ID, Preprocessor, load_dataset

    rows = [r.replace(",a", ",zz") for r in good_rows(120, seed=5, site_prefix="new")]
    rows = [f"{r.rsplit(',', 1)[0]},{uid}" for r, uid in zip(rows, [-5, 10**6, 3] * 40, strict=True)]
    data = write_csv(tmp_path / "new.csv", rows)
    pre = Preprocessor.load(trained["model"] / "preprocessor.json")
    ds = load_dataset(spec(data, trained["schema"]), preprocessor=pre)
    x = np.concatenate([ds.train.x, ds.valid.x, ds.test.x])
    assert np.all(x[:, 0] == OOV_ID) and np.all(x[:, 1] == OOV_ID)  # site, app: never seen
    assert np.sum(x[:, 3] == OOV_ID) == 80  # user -5 and 1e6: out of range; 3: kept
    rc, out, err = run_cli(["score", str(trained["tflite"]), "--data", spec(data, trained["schema"]),
                            "--split", "all"], capsys)
    assert rc == 0 and "rows 120" in out, err


# ------------------------------------------------------------- ids fed to a model or file


def test_out_of_range_ids_fed_to_the_tflite(trained):
    from keras_ctr_compress.export import LiteRTModel

    m = LiteRTModel(trained["tflite"])
    ok = np.ones((4, m.num_fields), np.int32)
    assert np.all(np.isfinite(m.predict(ok)))
    neg = ok.copy()
    neg[2, 1] = -3
    with pytest.raises(ValueError, match=r"^m.tflite: id -3 at row 2, column 1 is out of range") as e:
        m.predict(neg)
    assert "\n" not in str(e.value)
    big = ok.copy()
    big[3, 0] = 10**6
    with pytest.raises(ValueError, match=r"^m.tflite: LiteRT refused row 3 .*gather index out of bounds"):
        m.predict(big)
    sizes = [f["vocab_size"] for f in json.loads(trained["tflite"].with_name("m.preprocessor.json").read_text())["fields"]]
    with pytest.raises(ValueError, match=rf"id 1000000 at row 3, column 0 is out of range; ids of column 0 must be \[0, {sizes[0]}\)"):
        LiteRTModel(trained["tflite"], vocab_sizes=sizes).predict(big)


def test_out_of_range_ids_fed_to_the_keras_model(trained):
    from keras_ctr_compress.artifacts import load_trained
    from keras_ctr_compress.data import Split
    from keras_ctr_compress.models import TrainConfig, evaluate, train_model

    model = load_trained(trained["model"]).model
    rows = model.get_layer("emb_site").input_dim
    x = np.ones((6, 4), np.int32)
    y = np.array([0, 1, 0, 1, 0, 1], np.float32)
    x[4, 0] = rows
    with pytest.raises(ValueError, match=rf"^test: id {rows} at row 4, column 0 is out of range \(column 0 of model"):
        evaluate(model, Split(x, y))
    x[4, 0], x[1, 3] = 0, -1
    with pytest.raises(ValueError, match=r"^training split: id -1 at row 1, column 3 is out of range"):
        train_model(model, Split(x, y), Split(np.ones((6, 4), np.int32), y), TrainConfig(epochs=1, verbose=0))
    with pytest.raises(ValueError, match=r"^training split: label 2.0 at row 5 \(expected 0 or 1\)"):
        train_model(model, Split(np.ones((6, 4), np.int32), np.array([0, 1, 0, 1, 0, 2], np.float32)),
                    Split(np.ones((6, 4), np.int32), y), TrainConfig(epochs=1, verbose=0))


# ------------------------------------------------------------------------ invalid plans


@pytest.fixture(scope="module")
def plan_model(trained):
    from keras_ctr_compress.artifacts import load_trained

    return load_trained(trained["model"]).model


PLAN_CASES = [
    ("unknown layer", {"version": 1, "dense": {"dnn_9": {"rank": 2}}},
     "plan entry dense.dnn_9: model 'deepfm' has no Dense layer 'dnn_9' (Dense layers: dnn_0, dnn_out)"),
    ("unknown field", {"version": 1, "tables": {"../../etc": {"method": "pruned"}}},
     "plan entry tables.../../etc: model 'deepfm' has no field '../../etc'"),
    ("bits out of range", {"version": 1, "tables": {"site": {"method": "quant", "bits": 3}}},
     "plan entry tables.site: bits=3 is not allowed for method 'quant' (choose 8, 4 or 2)"),
    ("bits as code", {"version": 1, "tables": {"site": {"method": "quant", "bits": "__import__('os')"}}},
     "plan entry tables.site: bits=\"__import__('os')\" is not allowed"),
    ("table rank too large", {"version": 1, "tables": {"site": {"method": "lowrank", "rank": 2}}},
     "plan entry tables.site: rank=2 must be in [1, 1] (below min(rows, dim)"),
    ("dense rank too large", {"version": 1, "dense": {"dnn_0": {"rank": 8}}},
     "plan entry dense.dnn_0: rank=8 must be in [1, 7]: below min(in, out) = min(8, 8) = 8 after pruning"),
    ("pruning every field", {"version": 1, "tables": {f: {"method": "pruned"} for f in ("site", "app", "price", "user")}},
     "plan entry tables: every field is pruned; keep at least 2"),
    ("a path where none belongs", {"version": 1, "output": "/etc/passwd"}, "plan entry (top level): unknown key 'output'"),
    ("future version", {"version": 2}, "plan entry version: plan version 2 is not supported"),
]


@pytest.mark.parametrize(("name", "plan", "expected"), PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_invalid_plans_fail_with_one_line_naming_the_entry(name, plan, expected, plan_model, tmp_path):
    from keras_ctr_compress.search import Plan, validate

    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(ValueError) as e:
        validate(Plan.load(path), plan_model)
    message = str(e.value)
    assert "\n" not in message and expected in message, message


@pytest.mark.parametrize("damage", ["truncated", "not JSON", "a JSON list", "pickle bytes"])
def test_corrupted_plan_files_are_named(damage, tmp_path):
    import pickle

    from keras_ctr_compress.search import Plan, TablePlan

    path = Plan(tables={"site": TablePlan("quant", bits=4)}).save(tmp_path / "plan.json")
    text = path.read_text()
    data = {"truncated": text[: len(text) // 2].encode(), "not JSON": b"version: 1\n", "a JSON list": b"[1, 2]",
            "pickle bytes": pickle.dumps({"version": 1})}[damage]
    path.write_bytes(data)
    with pytest.raises(ValueError) as e:
        Plan.load(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value), str(e.value)


# ------------------------------------------------------------------ the real process


def test_installed_command_prints_exactly_one_line(tmp_path):
    """The console script in its own process: exit status 2, one error line, last on
    stderr; TensorFlow's start-up chatter silenced (other lines are kcc's notices)."""
    data = write_csv(tmp_path / "bad.csv", with_line(good_rows(50), 4, "1,s1,a1"))
    argv = ["train", "--data", spec(data, write_schema(tmp_path)), "--out", f"{tmp_path}/out"]
    expected = "bad.csv:4: 3 columns"
    before = files_under(tmp_path)
    res = subprocess.run([sys.executable, "-m", "keras_ctr_compress.cli", *argv], capture_output=True,
                         text=True, timeout=300)
    lines = res.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith(f"kcc {argv[0]}: error: ")]
    assert res.returncode == 2 and len(errors) == 1 and errors[0] == lines[-1], res.stderr
    assert expected in errors[0], errors
    # anything else is the command's own "[stage] ..." notices, never library chatter
    assert all(ln.startswith("[") for ln in lines[:-1]), res.stderr
    assert files_under(tmp_path) == before


# ------------------------------------------------------------------------------ safety


def test_names_from_a_schema_never_become_paths(tmp_path, monkeypatch, capsys):
    """Column names that look like paths (relative, absolute) are data: training and
    exporting write exactly the files asked for, inside the folders given."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    hostile = ["../../escaped", f"{tmp_path}/absolute", "..", "con/../x"]
    header = "clicked," + ",".join(hostile)
    rng = np.random.default_rng(0)
    rows = [f"{int(rng.random() < 0.3)}," + ",".join(f"v{rng.integers(6)}" for _ in hostile) for _ in range(300)]
    write_csv(work / "d.csv", rows, header=header)
    (work / "s.json").write_text(json.dumps({"label": "clicked", "categorical": hostile}))
    rc, _, err = run_cli(["train", "--data", "csv:d.csv,schema=s.json", "--out", "m", *FAST], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["export", "m", "--out", "m.tflite", "--no-latency"], capsys)
    assert rc == 0, err
    assert files_under(tmp_path) == {"a", "a/b", "a/b/d.csv", "a/b/s.json", "a/b/m", "a/b/m/model.keras",
                                     "a/b/m/preprocessor.json", "a/b/m/meta.json", "a/b/m.tflite",
                                     "a/b/m.preprocessor.json"}
