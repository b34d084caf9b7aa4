"""Spec strings, the shared-data lookup, and the seeded 8:1:1 split."""

from __future__ import annotations

import numpy as np
import pytest

from keras_ctr_compress.data import DataSpec, find_shared_data_dir, parse_spec, split_codes
from keras_ctr_compress.data.paths import cache_dir
from keras_ctr_compress.data.split import splitmix64


@pytest.mark.parametrize("text, kind, path, options", [
    ("criteo:/d/train.tsv", "criteo", "/d/train.tsv", {}),
    ("criteo:/d,min_count=5,limit=1000", "criteo", "/d", {"min_count": "5", "limit": "1000"}),
    ("libfm:a.libfm,offsets=0:10:20", "libfm", "a.libfm", {"offsets": "0:10:20"}),
    ("csv:x.csv,schema=s.json", "csv", "x.csv", {"schema": "s.json"}),
    ("parquet:x.parquet,schema=s.json,skip_bad_rows=3", "parquet", "x.parquet", {"schema": "s.json", "skip_bad_rows": "3"}),
    ("frappe", "frappe", None, {}),
    ("frappe,min_count=2", "frappe", None, {"min_count": "2"}),
    ("frappe-nfm", "frappe-nfm", None, {}),
    ("criteo-8k:min_count=3", "criteo-8k", None, {"min_count": "3"}),
    ("movielens100k", "movielens100k", None, {}),
    ("movielens100k:/data/ml", "movielens100k", "/data/ml", {}),
    ("synthetic", "synthetic", None, {}),
    ("synthetic:rows=1000,fields=8", "synthetic", None, {"rows": "1000", "fields": "8"}),
    (" Synthetic:ROWS=10 ", "synthetic", None, {"rows": "10"}),
])
def test_parse_spec(text, kind, path, options):
    spec = parse_spec(text)
    assert (spec.kind, spec.path, spec.options) == (kind, path, options)
    assert parse_spec(spec) is spec


@pytest.mark.parametrize("text, match", [
    ("avazu:/x", "unknown kind 'avazu'"),
    ("criteo", "criteo needs a path"),
    ("csv:x.csv", "needs a schema file"),
    ("criteo:/x,colour=red", "unknown option 'colour' for criteo"),
    ("criteo:/x,limit=1,limit=2", "given twice"),
    ("criteo:/x,min_count=5,/y", "is not key=value"),
    ("synthetic:/tmp/x", "synthetic takes no path"),
    ("", "non-empty"),
])
def test_bad_specs_say_what_was_expected(text, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(text)


def test_typed_option_getters():
    spec = parse_spec("synthetic:rows=2e5,zipf=1.3,seed=1_000")
    assert spec.get_int("rows") == 200_000 and spec.get_int("seed") == 1000
    assert spec.get_float("zipf") == 1.3 and spec.get_int("fields", 12) == 12
    with pytest.raises(ValueError, match="not an integer"):
        parse_spec("synthetic:rows=1.5").get_int("rows")
    with pytest.raises(ValueError, match="must be >= 1"):
        parse_spec("criteo:/x,limit=0").get_int("limit", minimum=1)
    assert DataSpec("criteo", "/a/b/train.tsv").name == "criteo:train.tsv"


def test_shared_data_dir_env_and_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KCC_DATA_DIR", str(tmp_path))
    assert find_shared_data_dir() == tmp_path
    monkeypatch.setenv("KCC_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="KCC_DATA_DIR"):
        find_shared_data_dir()
    monkeypatch.delenv("KCC_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    import keras_ctr_compress.data.paths as paths

    monkeypatch.setattr(paths, "__file__", str(tmp_path / "pkg" / "paths.py"))
    with pytest.raises(FileNotFoundError, match=r"shared data folder not found.*looked in"):
        find_shared_data_dir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert find_shared_data_dir() == tmp_path / "shared" / "data"


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KCC_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path


def test_splitmix64_reference_values():
    # SplitMix64 outputs for seed state 0 (Vigna's reference generator: state += golden, then mix).
    assert int(splitmix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF
    assert int(splitmix64(np.array([0x9E3779B97F4A7C15], np.uint64))[0]) == 0x6E789E6AA1B965F4


def test_split_is_deterministic_and_8_1_1():
    rows = np.arange(200_000)
    a = split_codes(rows, seed=0)
    assert np.array_equal(a, split_codes(rows, seed=0))
    frac = np.bincount(a, minlength=3) / len(rows)
    assert frac == pytest.approx([0.8, 0.1, 0.1], abs=0.005)
    b = split_codes(rows, seed=1)
    assert (a != b).mean() > 0.25  # another seed reshuffles


def test_split_is_per_row_so_chunking_does_not_matter():
    rows = np.arange(10_000)
    whole = split_codes(rows, 7)
    pieces = np.concatenate([split_codes(rows[s:s + 333], 7) for s in range(0, 10_000, 333)])
    assert np.array_equal(whole, pieces)
    assert split_codes(rows[5000:5001], 7)[0] == whole[5000]
