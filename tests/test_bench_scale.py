"""The scale sweep (kcc scale): every export and scoring in its own process, a record
with bytes, memory and interleaved latency, and a plot."""

import pytest

from keras_ctr_compress.bench.scale import plot_scale_sweep, run_scale_sweep, sweep_fields
from keras_ctr_compress.cli import main
from keras_ctr_compress.search import Plan, TablePlan


def test_sweep_fields_split_the_rows():
    fields = sweep_fields(10_000)
    assert len(fields) == 26 and sum(f.vocab_size for f in fields) == 10_000
    assert [f.name for f in fields[:2]] == ["c0", "c1"]


def test_scale_sweep_end_to_end(tmp_path):
    plan = Plan(tables={"c25": TablePlan("quant", bits=4), "c0": TablePlan("pruned")})
    plan_path = plan.save(tmp_path / "plan.json")
    rec = run_scale_sweep([300], ["fp32", "alpt-4", "searched"], workdir=tmp_path / "w", plan=plan_path,
                          latency_seconds=0.02, log=None)
    rows = {r["method"]: r for r in rec["results"]}
    for method, row in rows.items():
        assert (tmp_path / "w" / "300" / f"{method}.tflite").stat().st_size == row["tflite_bytes"]
        assert row["export_extra_mb"] > 0 and row["score_extra_mb"] >= 0 and row["predictions_finite"]
        assert row["latency_us_b1"] > 0 and row["latency_us_b256"] > row["latency_us_b1"]
    # int4 codes: the alpt-4 file holds the tables at an eighth of fp32's bytes (+ the DRQ'd MLP)
    assert rows["alpt-4"]["tflite_bytes"] < rows["fp32"]["tflite_bytes"] / 3
    assert rows["searched"]["input_columns"] == list(range(1, 26))
    assert rows["fp32"]["export_extra_over_fp32_model"] > 0
    png = plot_scale_sweep(rec, tmp_path / "sweep.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_scale_sweep_bad_arguments_fail_before_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown scale-sweep method 'int3'"):
        run_scale_sweep([1000], ["fp32", "int3"], workdir=tmp_path, log=None)
    with pytest.raises(ValueError, match="must be at least the field count 26"):
        run_scale_sweep([10], ["fp32"], workdir=tmp_path, log=None)
    assert main(["scale", "--rows", "1000", "--methods", "searched", "--workdir", str(tmp_path),
                 "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kcc scale: error: method 'searched' needs a plan (--plan PLAN.json)"]
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.iterdir())
