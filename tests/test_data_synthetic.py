"""The synthetic generator: determinism, structure, ceiling metrics, huge vocabularies."""

from __future__ import annotations

import numpy as np
import pytest

from keras_ctr_compress.data import SyntheticConfig, SyntheticSource, load_dataset
from keras_ctr_compress.data.readers import concat_chunks
from keras_ctr_compress.data.synthetic import hashed_normal, zipf_ids, zipf_prob


def gen(**kw):
    return concat_chunks(SyntheticSource(SyntheticConfig(**kw)).chunks())


def test_same_seed_same_rows_other_seed_other_rows():
    a, b, c = gen(rows=3000, seed=3), gen(rows=3000, seed=3), gen(rows=3000, seed=4)
    for k in a.columns:
        np.testing.assert_array_equal(a.columns[k], b.columns[k])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.columns["c5"], c.columns["c5"])


def test_fewer_rows_are_a_prefix_of_more_rows():
    small, big = gen(rows=1000), gen(rows=70_000)  # big spans two generation blocks
    np.testing.assert_array_equal(small.columns["c3"], big.columns["c3"][:1000])
    np.testing.assert_array_equal(small.extra["p_true"], big.extra["p_true"][:1000])


def test_structure_and_rates():
    src = SyntheticSource(SyntheticConfig(rows=20_000, seed=0))
    c = concat_chunks(src.chunks())
    info = src.info
    assert [col.name for col in src.columns] == [f"c{k}" for k in range(12)] + ["n0", "n1"]
    assert len(info["noise_fields"]) == 3 and len(info["interaction_groups"]) == 2
    assert len(info["interaction_pairs"]) == 6
    noise = set(info["noise_fields"])
    assert not any(f in noise for pair in info["interaction_pairs"] for f in pair)
    assert 0.2 <= c.labels.mean() <= 0.35
    for k in range(12):
        ids = c.columns[f"c{k}"]
        assert ids.min() >= 1 and ids.max() <= info["vocab"][k]
    missing = np.isnan(c.columns["n0"]).mean()
    assert 0.15 < missing < 0.25
    assert sum(info["vocab"]) == pytest.approx(20_000, rel=0.01)


def test_noise_fields_do_not_move_the_truth():
    src = SyntheticSource(SyntheticConfig(rows=5000, seed=2))
    gen_ = src.generator
    cols, _, p = gen_.block(0, 5000)
    noise = gen_.noise[0]
    shuffled = dict(cols)
    shuffled[f"c{noise}"] = np.random.default_rng(0).permutation(cols[f"c{noise}"])
    z0 = gen_._logit(cols, 5000)
    z1 = gen_._logit(shuffled, 5000)
    np.testing.assert_allclose(z0, z1)
    informative = gen_.informative[0]
    shuffled[f"c{informative}"] = np.random.default_rng(0).permutation(cols[f"c{informative}"])
    assert not np.allclose(z0, gen_._logit(shuffled, 5000))


def test_load_reports_bayes_metrics():
    ds = load_dataset("synthetic:rows=20000,fields=8,seed=0")
    assert 0.5 < ds.info["bayes_auc"] < 1.0
    assert 0.0 < ds.info["bayes_logloss"] < 0.69
    assert ds.num_fields == 8 + 2
    assert [f.source for f in ds.fields] == ["id"] * 8 + ["numeric"] * 2
    assert ds.split_sizes()["train"] == pytest.approx(16_000, rel=0.03)
    again = load_dataset("synthetic:rows=20000,fields=8,seed=0")
    np.testing.assert_array_equal(ds.test.x, again.test.x)


def test_ten_million_ids_without_tables():
    # 10M ids in all: nothing V-sized is allocated, so this is as fast as a small vocab.
    ds = load_dataset("synthetic:rows=3000,fields=16,total_vocab=10000000,noise_fields=4")
    info = ds.info
    assert sum(info["vocab"]) == pytest.approx(10_000_000, rel=0.01)
    assert max(f.vocab_size for f in ds.fields) <= max(info["vocab"]) + 1
    assert ds.train.x.dtype == np.int32


def test_zipf_sampler_matches_its_probabilities():
    u = np.random.default_rng(0).random(400_000)
    ids = zipf_ids(u, 50, 1.3)
    freq = np.bincount(ids, minlength=51)[1:] / len(ids)
    np.testing.assert_allclose(freq[:10], zipf_prob(np.arange(1, 11), 50, 1.3), rtol=0.03)
    assert zipf_prob(np.arange(1, 51), 50, 1.3).sum() == pytest.approx(1.0)
    assert zipf_prob(np.arange(1, 51), 50, 1.0).sum() == pytest.approx(1.0)


def test_hashed_normals_look_normal():
    z = hashed_normal(np.arange(200_000), np.uint64(12345))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert np.array_equal(z[:10], hashed_normal(np.arange(10), np.uint64(12345)))


@pytest.mark.parametrize("spec, match", [
    ("synthetic:fields=1", "fields must be >= 2"),
    ("synthetic:noise_fields=12", "noise_fields"),
    ("synthetic:vocab=5:6,fields=3,noise_fields=1", "vocab lists 2 sizes"),
    ("synthetic:ctr=2", "ctr must be"),
    ("synthetic:rows=abc", "not valid"),
])
def test_bad_synthetic_options(spec, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(spec)
