"""Readers of every format on small temp files: values, line numbers, malformed rows."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keras_ctr_compress.data import (
    CriteoSource,
    CSVSource,
    DataError,
    LibFMSource,
    ParquetSource,
    load_schema,
    open_source,
)
from keras_ctr_compress.data.readers import concat_chunks

NUM = [f"I{k}" for k in range(1, 14)]
CAT = [f"C{k}" for k in range(1, 27)]


def criteo_row(label="0", i1="1", c1="68fd1e64", sep="\t", k=0) -> str:
    nums = [i1] + [str((k + j) % 7) if j % 3 else "" for j in range(1, 13)]
    cats = [c1] + [f"{(k * 31 + j) % 5:08x}" if j % 4 else "" for j in range(1, 26)]
    return sep.join([label, *nums, *cats])


def write(path, lines, newline="\n", encoding="utf-8"):
    data = newline.join(lines) + newline
    path.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return path


def read_all(source):
    return concat_chunks(source.chunks())


def criteo(path, **kw):
    return CriteoSource([(path, None)], **kw)


# ----------------------------------------------------------------------------- criteo


def test_criteo_tsv_values_and_lines(tmp_path):
    p = write(tmp_path / "t.tsv", [criteo_row("1", "5", "aa", k=0), criteo_row("0", "", "", k=1),
                                   criteo_row("0", "-1", "bb", k=2)])
    c = read_all(criteo(p))
    assert len(c) == 3
    assert c.labels.tolist() == [1, 0, 0]
    assert c.columns["I1"][0] == 5.0 and np.isnan(c.columns["I1"][1]) and c.columns["I1"][2] == -1.0
    assert c.columns["C1"].tolist() == ["aa", "", "bb"]
    assert c.columns["C1"].dtype == object and c.columns["I2"].dtype == np.float64
    assert c.lines.tolist() == [1, 2, 3] and c.rows.tolist() == [0, 1, 2]
    assert set(c.columns) == set(NUM + CAT)


@pytest.mark.parametrize("with_id", [True, False])
def test_criteo_kaggle_csv_header_variant(tmp_path, with_id):
    header = ("Id," if with_id else "") + ",".join(["Label", *NUM, *CAT])
    rows = [(f"{10000000 + k}," if with_id else "") + criteo_row(str(k % 2), str(k), f"c{k}", sep=",", k=k) for k in range(4)]
    p = write(tmp_path / "train.csv", [header, *rows])
    c = read_all(criteo(p))
    assert c.labels.tolist() == [0, 1, 0, 1]
    assert c.columns["I1"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert c.columns["C1"].tolist() == ["c0", "c1", "c2", "c3"]
    assert c.lines.tolist() == [2, 3, 4, 5]  # the header is line 1
    assert "Id" not in c.columns


def test_criteo_same_tokens_in_both_layouts(tmp_path):
    rows = [criteo_row(str(k % 2), str(k), f"c{k}", k=k) for k in range(5)]
    tsv = read_all(criteo(write(tmp_path / "a.tsv", rows)))
    csv_rows = [r.replace("\t", ",") for r in rows]
    csv = read_all(criteo(write(tmp_path / "b.csv", [",".join(["label", *NUM, *CAT]), *csv_rows])))
    for name in NUM:
        np.testing.assert_array_equal(tsv.columns[name], csv.columns[name])
    for name in CAT:
        assert tsv.columns[name].tolist() == csv.columns[name].tolist()


def test_criteo_bad_header_is_named(tmp_path):
    p = write(tmp_path / "x.csv", ["a,b,c", "1,2,3"])
    with pytest.raises(DataError, match=r"x\.csv:1: header"):
        read_all(criteo(p))


def test_block_boundaries_do_not_change_rows(tmp_path):
    rows = [criteo_row(str(k % 2), str(k), f"c{k}", k=k) for k in range(50)]
    p = write(tmp_path / "t.tsv", rows)
    whole = read_all(criteo(p))
    tiny = criteo(p, block_bytes=97)  # blocks cut mid-line and hold ~1 line
    chunks = list(tiny.chunks())
    assert len(chunks) > 10
    small = concat_chunks(chunks)
    assert small.lines.tolist() == whole.lines.tolist() == list(range(1, 51))
    for k in NUM:
        np.testing.assert_array_equal(small.columns[k], whole.columns[k])  # NaN-aware
    for k in CAT:
        assert small.columns[k].tolist() == whole.columns[k].tolist()


def test_gzip_and_missing_final_newline(tmp_path):
    rows = [criteo_row("1", "3", "zz", k=k) for k in range(3)]
    p = tmp_path / "t.tsv.gz"
    with gzip.open(p, "wb") as fh:
        fh.write("\n".join(rows).encode())  # no newline after the last row
    c = read_all(criteo(p))
    assert len(c) == 3 and c.lines.tolist() == [1, 2, 3]


def test_crlf_lines(tmp_path):
    p = write(tmp_path / "t.tsv", [criteo_row("1", "3", "zz", k=k) for k in range(3)], newline="\r\n")
    c = read_all(criteo(p))
    assert len(c) == 3 and c.columns["C26"][0] == c.columns["C26"][0].strip()


def test_nan_and_inf_numerics_are_missing(tmp_path):
    rows = [criteo_row("1", v, "a", k=k) for k, v in enumerate(["nan", "inf", "-Infinity", "NaN", "7"])]
    c = read_all(criteo(write(tmp_path / "t.tsv", rows)))
    assert np.isnan(c.columns["I1"][:4]).all() and c.columns["I1"][4] == 7.0


def test_limit_reads_only_the_first_rows(tmp_path):
    p = write(tmp_path / "t.tsv", [criteo_row("1", str(k), "a", k=k) for k in range(20)])
    c = read_all(criteo(p, limit=7, block_bytes=64))
    assert len(c) == 7 and c.columns["I1"].tolist() == list(map(float, range(7)))


# ----------------------------------------------------------------------------- malformed rows

GOOD = [criteo_row(str(k % 2), str(k), "a", k=k) for k in range(6)]


def _bad_file(tmp_path, bad_line: str | bytes, at: int = 3):
    """A TSV whose line ``at`` (1-based) is ``bad_line``."""
    lines = [g.encode() for g in GOOD]
    lines.insert(at - 1, bad_line if isinstance(bad_line, bytes) else bad_line.encode())
    p = tmp_path / "bad.tsv"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


BAD_CASES = {
    "columns": ("\t".join(criteo_row().split("\t")[:-2]), r"38 columns \(expected 40 tab-separated columns\)"),
    "empty": ("", r"empty line \(expected"),
    "utf8": (criteo_row(c1="ab").encode().replace(b"ab", b"a\xff\xfe"), r"not valid UTF-8 \(expected UTF-8 text\)"),
    "numeric": (criteo_row(i1="12x"), r"column I1 = '12x' is not a number \(expected a number"),
    "label": (criteo_row(label="2"), r"label '2' \(expected 0 or 1\)"),
    "label_text": (criteo_row(label="yes"), r"label 'yes' \(expected 0 or 1\)"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_each_malformed_kind_names_file_and_line(tmp_path, kind):
    bad, message = BAD_CASES[kind]
    p = _bad_file(tmp_path, bad, at=3)
    with pytest.raises(DataError) as e:
        read_all(criteo(p))
    text = str(e.value)
    assert text.startswith(f"{p}:3: "), text
    assert re.search(message, text), text
    assert "\n" not in text


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_skip_bad_rows_skips_and_counts(tmp_path, kind):
    p = _bad_file(tmp_path, BAD_CASES[kind][0], at=3)
    src = criteo(p, skip_bad_rows=1)
    c = read_all(src)
    assert len(c) == len(GOOD)
    assert src.last_bad.count == 1
    assert 3 not in c.lines.tolist() and c.lines.tolist() == [1, 2, 4, 5, 6, 7]
    assert c.rows.tolist() == [0, 1, 3, 4, 5, 6]  # bad rows keep their index: the split stays put


def test_more_bad_rows_than_allowed_fails_on_the_first_extra(tmp_path):
    lines = [GOOD[0], "", GOOD[1], criteo_row(label="7"), GOOD[2], criteo_row(i1="x")]
    p = write(tmp_path / "b.tsv", lines)
    src = criteo(p, skip_bad_rows=2)
    with pytest.raises(DataError, match=r"b\.tsv:6: column I1 = 'x'.*more than skip_bad_rows=2"):
        read_all(src)
    assert read_all(criteo(p, skip_bad_rows=3)) is not None


def test_bad_rows_in_two_blocks_are_reported_in_order(tmp_path):
    lines = [GOOD[k % 6] for k in range(40)]
    lines[5] = "1\tx"
    lines[33] = criteo_row(label="9")
    p = write(tmp_path / "b.tsv", lines)
    src = criteo(p, skip_bad_rows=5, block_bytes=200)
    c = read_all(src)
    assert src.last_bad.count == 2 and len(c) == 38
    assert src.last_bad.examples[0].startswith(f"{p}:6: 2 columns")
    assert src.last_bad.examples[1].startswith(f"{p}:34: label '9'")


# ----------------------------------------------------------------------------- csv + schema


def _schema(tmp_path, **kw):
    d = {"label": "click", "categorical": ["site", "app"], "numeric": ["price"], "delimiter": ",", "header": True}
    d.update(kw)
    p = tmp_path / "schema.json"
    p.write_text(json.dumps(d))
    return p


def test_csv_with_header_and_extra_columns(tmp_path):
    p = write(tmp_path / "d.csv", ["id,site,click,price,app,junk", "1,a,1,3.5,x,?", '2,"b,c",0,,y,?', "3,a,0,1e2,,?"])
    src = CSVSource([(p, None)], load_schema(_schema(tmp_path)))
    c = read_all(src)
    assert c.labels.tolist() == [1, 0, 0]
    assert c.columns["site"].tolist() == ["a", "b,c", "a"]  # quoted delimiter
    assert c.columns["app"].tolist() == ["x", "y", ""]
    assert c.columns["price"][0] == 3.5 and np.isnan(c.columns["price"][1]) and c.columns["price"][2] == 100.0
    assert c.lines.tolist() == [2, 3, 4]


def test_csv_without_header_uses_schema_columns(tmp_path):
    s = _schema(tmp_path, header=False, delimiter=";", columns=["click", "site", "app", "price"], id=["uid"])
    with pytest.raises(ValueError, match="not in its \"columns\" list"):
        load_schema(s)
    s = _schema(tmp_path, header=False, delimiter=";", columns=["click", "site", "app", "price", "uid"], id=["uid"])
    p = write(tmp_path / "d.txt", ["1;a;x;2;7", "0;b;y;;3"])
    c = read_all(CSVSource([(p, None)], load_schema(s)))
    assert c.columns["uid"].tolist() == [7.0, 3.0] and c.lines.tolist() == [1, 2]


def test_csv_header_lacking_a_column(tmp_path):
    p = write(tmp_path / "d.csv", ["site,click,app", "a,1,x"])
    with pytest.raises(DataError, match=r"d\.csv:1: header lacks columns \['price'\]"):
        read_all(CSVSource([(p, None)], load_schema(_schema(tmp_path))))


def test_csv_malformed_rows(tmp_path):
    p = write(tmp_path / "d.csv", ["site,click,price,app", "a,1,1,x", "a,3,1,x", "a,0,abc,x", "a,0", "a,1,2,y"])
    schema = load_schema(_schema(tmp_path))
    with pytest.raises(DataError, match=r"d\.csv:3: label '3' \(expected 0 or 1\)"):
        read_all(CSVSource([(p, None)], schema))
    src = CSVSource([(p, None)], schema, skip_bad_rows=3)
    c = read_all(src)
    assert src.last_bad.count == 3 and c.lines.tolist() == [2, 6]


@pytest.mark.parametrize("bad, match", [
    ("[1, 2]", "must be a JSON object"), ('{"categorical": ["a"]}', 'needs "label"'),
    ('{"label": "y", "categorical": "a"}', "must be a list"), ('{"label": "y"}', "no feature columns"),
    ('{"label": "y", "categorical": ["y"]}', "used twice"), ('{"label": "y", "numeric": ["a"], "sep": ","}', "unknown schema keys"),
    ("{not json", "not valid JSON"),
])
def test_bad_schema_files(tmp_path, bad, match):
    p = tmp_path / "s.json"
    p.write_text(bad)
    with pytest.raises(ValueError, match=match):
        load_schema(p)


# ----------------------------------------------------------------------------- parquet


def test_parquet_reader_streams_batches(tmp_path):
    n = 1000
    table = pa.table({"click": pa.array(np.arange(n) % 2, pa.int64()), "site": pa.array([f"s{k % 7}" for k in range(n)]),
                      "app": pa.array([None if k % 5 == 0 else k % 3 for k in range(n)], pa.int64()),
                      "price": pa.array([None if k % 4 == 0 else float(k) for k in range(n)])})
    p = tmp_path / "d.parquet"
    pq.write_table(table, p, row_group_size=300)
    src = ParquetSource([(p, None)], load_schema(_schema(tmp_path)), chunk_rows=256)
    chunks = list(src.chunks())
    assert len(chunks) >= 4
    c = concat_chunks(chunks)
    assert len(c) == n and c.labels.tolist() == (np.arange(n) % 2).tolist()
    assert c.columns["site"][:3].tolist() == ["s0", "s1", "s2"]
    assert c.columns["app"][:3].tolist() == ["", "1", "2"]  # ints become tokens, null -> missing
    assert np.isnan(c.columns["price"][0]) and c.columns["price"][1] == 1.0
    assert c.lines[-1] == n and c.rows[-1] == n - 1


def test_parquet_bad_label_and_text_numbers(tmp_path):
    table = pa.table({"click": pa.array(["1", "0", "2", "1"]), "site": pa.array(["a", "b", "c", "d"]),
                      "app": pa.array(["x", "y", "z", "w"]), "price": pa.array(["1.5", "", "3", "zz"])})
    p = tmp_path / "d.parquet"
    pq.write_table(table, p)
    schema = load_schema(_schema(tmp_path))
    with pytest.raises(DataError, match=r"d\.parquet:row 3: label '2' \(expected 0 or 1\)"):
        read_all(ParquetSource([(p, None)], schema))
    src = ParquetSource([(p, None)], schema, skip_bad_rows=2)
    c = read_all(src)
    assert src.last_bad.count == 2 and c.lines.tolist() == [1, 2]
    assert c.columns["price"][0] == 1.5 and np.isnan(c.columns["price"][1])


def test_parquet_missing_column(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"click": [1], "site": ["a"]}), p)
    with pytest.raises(DataError, match=r"lacks columns \['app', 'price'\]"):
        read_all(ParquetSource([(p, None)], load_schema(_schema(tmp_path))))


# ----------------------------------------------------------------------------- libFM


def test_libfm_positional_fields(tmp_path):
    p = write(tmp_path / "d.libfm", ["1 3:1 10:1 20:1", "-1 4:1 11:1 20:1", "0 3:1 012:1.0 21:1 "])
    c = read_all(LibFMSource([(p, None)]))
    assert c.labels.tolist() == [1, 0, 0]
    assert list(c.columns) == ["f0", "f1", "f2"]
    assert c.columns["f1"].tolist() == ["10", "11", "12"]  # leading zeros canonicalised


def test_libfm_offsets_table(tmp_path):
    p = write(tmp_path / "d.libfm", ["1 20:1 3:1 10:1", "-1 4:1 11:1", "1 5:1 25:1"])
    c = read_all(LibFMSource([(p, None)], offsets=[0, 10, 20], names=["a", "b", "c"]))
    assert c.columns["a"].tolist() == ["3", "4", "5"]
    assert c.columns["b"].tolist() == ["10", "11", ""]
    assert c.columns["c"].tolist() == ["20", "", "25"]


@pytest.mark.parametrize("line, match", [
    ("2 3:1 10:1", r"label '2' \(expected 1, 0 or -1\)"),
    ("1 3:1", r"1 feature tokens \(expected label then 2 featid:1 tokens\)"),
    ("1 3:0.5 10:1", r"token '3:0.5' is not featid:1"),
    ("1 a:1 10:1", r"token 'a:1' is not featid:1"),
    ("", r"empty line"),
])
def test_libfm_malformed_rows(tmp_path, line, match):
    p = write(tmp_path / "d.libfm", ["1 3:1 10:1", "-1 4:1 11:1", line, "1 5:1 12:1"])
    with pytest.raises(DataError, match=re.escape(str(p)) + ":3: " + match):
        read_all(LibFMSource([(p, None)]))
    src = LibFMSource([(p, None)], skip_bad_rows=1)
    c = read_all(src)
    assert src.last_bad.count == 1 and c.lines.tolist() == [1, 2, 4]


def test_libfm_offsets_duplicate_field(tmp_path):
    p = write(tmp_path / "d.libfm", ["1 3:1 10:1", "1 3:1 4:1"])
    with pytest.raises(DataError, match=r":2: two features of field a"):
        read_all(LibFMSource([(p, None)], offsets=[0, 10], names=["a", "b"]))


# ----------------------------------------------------------------------------- folders


def test_folder_with_train_dev_test_is_the_split(tmp_path):
    for name, n in (("train.tsv", 5), ("dev.tsv", 2), ("test.tsv", 3)):
        write(tmp_path / name, [criteo_row(k=k) for k in range(n)])
    (tmp_path / "README.txt").write_text("not data")
    src = open_source(f"criteo:{tmp_path}")
    parts = [(c.part, len(c)) for c in src.chunks()]
    assert parts == [("train", 5), ("valid", 2), ("test", 3)]


def test_folder_without_a_full_split_is_an_error(tmp_path):
    write(tmp_path / "train.csv", [criteo_row()])
    write(tmp_path / "test.csv", [criteo_row()])
    with pytest.raises(ValueError, match="expected one train, one dev/valid and one test file.*split=hash"):
        open_source(f"criteo:{tmp_path}")
    src = open_source(f"criteo:{tmp_path},split=hash")
    assert sum(len(c) for c in src.chunks()) == 2


def test_parquet_folder_through_a_spec(tmp_path):
    from keras_ctr_compress.data import load_dataset

    folder = tmp_path / "pq"
    folder.mkdir()
    for k in range(2):
        n = 300
        pq.write_table(pa.table({"click": (np.arange(n) + k) % 2, "site": [f"s{j % 5}" for j in range(n)],
                                 "app": [f"a{j % 3}" for j in range(n)], "price": np.arange(n, dtype=float)}),
                       folder / f"part-{k}.parquet")
    ds = load_dataset(f"parquet:{folder},schema={_schema(tmp_path)},split=hash")
    assert sum(ds.split_sizes().values()) == 600 and ds.num_fields == 3
    assert [f.vocab_size for f in ds.fields][:2] == [2 + 5, 2 + 3]
