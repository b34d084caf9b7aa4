"""The benchmark harness itself: registry, record schema, summary tables."""

import copy
import json
from pathlib import Path

import pytest

from keras_ctr_compress.bench import (
    Candidate,
    add_method,
    get_method,
    load_record,
    method_names,
    render_table,
    save_record,
    summarize,
    validate_record,
)

FIXTURE = Path(__file__).parent / "fixtures" / "record_small.json"


def _fixture():
    return json.loads(FIXTURE.read_text())


def test_builtin_methods_registered():
    assert {"fp32", "drq"} <= set(method_names())
    assert "dynamic-range" in get_method("drq").description


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        add_method("fp32", lambda ctx: Candidate(tflite_path=Path("x")), description="dup")


def test_unknown_method_is_an_error_listing_known_ones():
    with pytest.raises(ValueError, match=r"unknown benchmark method 'nope'.*fp32"):
        get_method("nope")


@pytest.mark.parametrize("bad", ["", "a b", "a,b"])
def test_bad_method_names(bad):
    with pytest.raises(ValueError, match="invalid benchmark method name"):
        add_method(bad, lambda ctx: None, description="x")


def test_fixture_validates_and_summarizes():
    rec = _fixture()
    validate_record(rec)
    s = {r["method"]: r for r in summarize(rec)}
    assert s["fp32"]["auc_mean"] == pytest.approx(0.91)
    assert s["fp32"]["auc_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert s["drq"]["bytes_ratio"] == pytest.approx(0.3)
    # ratio of medians of the same run: drq b1 median 6, fp32 median 11
    assert s["drq"]["lat_b1_ratio"] == pytest.approx(6 / 11)
    assert s["drq"]["lat_b256_ratio"] == pytest.approx(90 / 110)


def test_table_from_fixture():
    table = render_table(_fixture())
    lines = table.splitlines()
    assert lines[0].startswith("| model | method | AUC")
    assert len(lines) == 4
    assert "| deepfm | drq | 0.9000 ± 0.0141 (n=2) | 0.3000 | 300 | 0.300 | 0.55 | 0.82 |" in table


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda r: r.update(schema=2), "schema must be 1"),
        (lambda r: r.pop("dataset"), "dataset"),
        (lambda r: r["split"].update(test="x"), "split.test"),
        (lambda r: r["results"][0].update(test_auc="high"), r"results\[0\].test_auc"),
        (lambda r: r["results"][1].pop("tflite_bytes"), r"results\[1\].tflite_bytes"),
        (lambda r: [x.update(method="other") for x in r["results"]], "no fp32 reference row"),
    ],
)
def test_invalid_records_are_rejected(mutate, msg):
    rec = copy.deepcopy(_fixture())
    mutate(rec)
    with pytest.raises(ValueError, match=msg):
        validate_record(rec)


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "r.json"
    save_record(_fixture(), path)
    assert load_record(path) == _fixture()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_load_corrupted_record(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema": 1, "dataset": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_record(path)


def test_invalid_record_is_not_written(tmp_path):
    rec = _fixture()
    rec["schema"] = 3
    with pytest.raises(ValueError):
        save_record(rec, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_pareto_front_hand_made():
    from keras_ctr_compress.bench.report import pareto_front

    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3.5)]
    assert pareto_front(pts) == [0, 1, 3]


def test_report_from_fixture(tmp_path):
    from keras_ctr_compress.bench.report import END, START, WHY_END, WHY_START, write_results_readme

    results = tmp_path / "results"
    results.mkdir()
    (results / "fixture.json").write_text(FIXTURE.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\n{WHY_START}\nstale\n{WHY_END}\noutro\n")
    out = write_results_readme(results, readme)
    text = out.read_text()
    assert "## fixture" in text and "| deepfm | drq |" in text and "`fixture.json`" in text
    assert (results / "fixture_summary.png").stat().st_size > 1000
    assert (results / "fixture_summary_latency.png").stat().st_size > 1000
    new = readme.read_text()
    assert "old" not in new and "| deepfm | fp32 |" in new and new.startswith("intro") and new.endswith("outro\n")
    # the why-not table: drq's numbers from the record (bytes 300/1000, fp32 AUC 0.91 beside it)
    assert "stale" not in new and "| LiteRT dynamic-range quantisation | deepfm | 0.300 |" in new
    assert "0.9000 (0.9100)" in new


def test_report_joins_a_datasets_records_and_flags_disagreement(tmp_path):
    from keras_ctr_compress.bench.report import dataset_rows, reference_notes, write_results_readme

    results = tmp_path / "results"
    results.mkdir()
    a = _fixture()
    b = _fixture()
    # a second record of the same dataset: one more method, fp32 trained differently on seed 1
    b["results"] = [dict(r) for r in b["results"] if r["method"] == "fp32"]
    b["results"][1]["test_auc"] = 0.95
    b["results"] += [dict(r, method="alpt-4", tflite_bytes=200, latency_us_b1=r["latency_us_b1"] / 2)
                     for r in b["results"]]
    b["machine"] = {"cpu": "other", "cores": 64}
    (results / "a.json").write_text(json.dumps(a))
    (results / "b.json").write_text(json.dumps(b))
    (results / "memory.json").write_text(json.dumps({
        "schema": "kcc-memory/1", "rows": 10, "dim": 2, "steps": 1, "batch": 4, "command": "kcc memory",
        "results": [{"config": "fp32-adam", "table_dtype": "float32", "peak_rss_mb": 900.0, "table_share_mb": 80.0},
                    {"config": "lpt-sgd", "table_dtype": "int8", "peak_rss_mb": 830.0, "table_share_mb": 10.0}],
        "fp32_share_over": {"lpt-sgd": 8.0}}))
    (results / "notes.json").write_text("{}")
    records = [(results / "a.json", a), (results / "b.json", b)]
    rows = {r["method"]: r for r in dataset_rows(records)}
    assert list(rows) == ["fp32", "drq", "alpt-4"]
    assert rows["alpt-4"]["record"] == "b.json" and rows["drq"]["record"] == "a.json"
    # ratios against the fp32 row of the row's own record
    assert rows["alpt-4"]["bytes_ratio"] == 0.2 and abs(rows["alpt-4"]["lat_b1_ratio"] - 0.5) < 1e-9
    notes = reference_notes(records)
    assert any("fp32 deepfm seed 1 differs between records" in n for n in notes)
    assert any("different machines" in n for n in notes)
    text = write_results_readme(results).read_text()
    assert text.count("## fixture") == 1 and "| deepfm | alpt-4 |" in text
    assert "## Training memory (`memory.json`)" in text and "| lpt-sgd | int8 | 830 | 10 | 8.00x |" in text
    assert "not benchmark records of a known schema): notes.json" in text


def _one_seed(seed: int, scale: float) -> dict:
    """The fixture's rows of one seed, as if timed in their own run on a machine
    ``scale`` times slower."""
    rec = _fixture()
    rec["results"] = [dict(r, latency_us_b1=r["latency_us_b1"] * scale, latency_us_b256=r["latency_us_b256"] * scale)
                      for r in rec["results"] if r["seed"] == seed]
    rec["seeds"] = [seed]
    return rec


def test_merge_records_keeps_runs_apart(tmp_path):
    from keras_ctr_compress.bench import merge_records
    from keras_ctr_compress.cli import main

    a, b = _one_seed(0, 1.0), _one_seed(1, 3.0)  # the second run drifted 3x slower
    merged = merge_records([a, b])
    validate_record(merged)
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2
    s = {r["method"]: r for r in summarize(merged)}
    # per run: drq/fp32 = 5/10 and 21/36 (7*3 / 12*3); the median of the two runs' ratios
    assert s["drq"]["lat_b1_ratio"] == pytest.approx((5 / 10 + 7 / 12) / 2)
    assert s["drq"]["auc_mean"] == pytest.approx(0.90)
    for name, rec in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(rec))
    out = tmp_path / "m.json"
    assert main(["bench", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json", str(out)]) == 0
    assert load_record(out)["results"] == merged["results"]


def test_merge_records_splits_one_seed_over_runs():
    """Seed 0's methods split over two runs (one core each): each run timed its own
    fp32 file of the one cached reference; the summary counts the seed once and each
    method's latency ratio uses its own run's fp32 timing."""
    from keras_ctr_compress.bench import merge_records

    a = _one_seed(0, 1.0)
    b = _one_seed(0, 3.0)
    a["results"] = [r for r in a["results"] if r["method"] == "fp32"] + [
        dict(r, method="alpt-4", latency_us_b1=4.0) for r in a["results"] if r["method"] == "drq"]
    b["results"] = [r for r in b["results"] if r["method"] in ("fp32", "drq")]  # drq at 15 us vs fp32 30 us
    merged = merge_records([a, b, _one_seed(1, 1.0)])
    validate_record(merged)
    assert [(r["method"], r["seed"], r["run"]) for r in merged["results"]] == [
        ("fp32", 0, 0), ("alpt-4", 0, 0), ("drq", 0, 1), ("fp32", 1, 2), ("drq", 1, 2)]
    assert [(r["method"], r["seed"], r["run"]) for r in merged["reference_repeats"]] == [("fp32", 0, 1)]
    s = {r["method"]: r for r in summarize(merged)}
    assert s["fp32"]["seeds"] == 2 and s["fp32"]["auc_mean"] == pytest.approx(0.91)
    assert s["alpt-4"]["lat_b1_ratio"] == pytest.approx(4 / 10)
    assert s["drq"]["lat_b1_ratio"] == pytest.approx((15 / 30 + 7 / 12) / 2)
    # merging the merged record again keeps its repeats (with their runs renumbered)
    again = merge_records([_one_seed(2, 1.0), merged])
    assert [(r["seed"], r["run"]) for r in again["reference_repeats"]] == [(0, 2)]


def test_merge_records_refuses_what_does_not_compare():
    from keras_ctr_compress.bench import merge_records

    a = _one_seed(0, 1.0)
    with pytest.raises(ValueError, match=r"record 1: drq seed 0 is also in record 0"):
        merge_records([a, copy.deepcopy(a)])
    retrained = copy.deepcopy(a)
    retrained["results"] = [dict(r, test_auc=0.95) for r in retrained["results"] if r["method"] == "fp32"]
    with pytest.raises(ValueError, match=r"record 1: fp32 seed 0 scores AUC 0.95 but record 0's 0.9: "
                                         r"not the same reference"):
        merge_records([a, retrained])
    other = _one_seed(1, 1.0)
    other["machine"] = {"cpu": "elsewhere"}
    with pytest.raises(ValueError, match="record 1: machine .* differs from record 0's"):
        merge_records([a, other])
    other = _one_seed(1, 1.0)
    other["split"] = {"train": 1, "valid": 1, "test": 1}
    with pytest.raises(ValueError, match="record 1: split .* differs"):
        merge_records([a, other])


def test_every_method_make_bench_runs_is_registered():
    """`make bench` names its methods in Makefile variables: each must be registered
    (an unregistered peer once made a whole record fail after hours of queueing)."""
    import re

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    groups = dict(re.findall(r"^(QUANT|PEERS|LOWRANK|PRUNING|SEARCH)\s*:=\s*(\S+)$", makefile, re.M))
    assert set(groups) == {"QUANT", "PEERS", "LOWRANK", "PRUNING", "SEARCH"}
    named = {m for v in groups.values() for m in v.split(",")}
    assert named - set(method_names()) == set()
    assert {"tfmot-prune", "alpt-4", "afm-d16-ft", "searched"} <= named


def test_report_summarises_field_importance_over_seeds():
    from pathlib import Path

    from keras_ctr_compress.bench.report import _field_importance_lines

    def row(method, seed, auc, extra=None):
        return {"method": method, "seed": seed, "test_auc": auc, **({"extra": extra} if extra else {})}

    imp = [{"spearman_taylor_vs_permutation": 0.9, "spearman_norm_vs_permutation": 0.5},
           {"spearman_taylor_vs_permutation": 0.8, "spearman_norm_vs_permutation": 0.7}]
    rec = {"results": [row("fp32", s, 0.98) for s in (0, 1)]
           + [row("shark-fields", s, 0.97 + s / 100, {"importance": imp[s]}) for s in (0, 1)]
           + [row("shark-fields-random", s, 0.99, {"random_mean_test_auc": 0.90 + s / 100,
                                                   "random_draws": [{}] * 5}) for s in (0, 1)]}
    (line,) = [x for x in _field_importance_lines(Path("r.json"), rec) if x]
    assert "2 seeds" in line and "Taylor 0.850, embedding norm 0.600" in line
    # the random baseline is the mean of its draws (0.905), not its row's shipped draw (0.99)
    assert "shark-fields 0.9750" in line and "random (5 draws) 0.9050" in line
    assert _field_importance_lines(Path("r.json"), {"results": [row("fp32", 0, 0.98)]}) == []
