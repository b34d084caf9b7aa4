"""The built-in synthetic CTR data: a test bed with a known Bayes-optimal model.

Each row has ``fields`` categorical fields ``c0, c1, ...`` (pre-encoded ids
``1..V_f``; id 0 stays free for OOV; vocabulary sizes grow geometrically with the
field index) whose ids follow a bounded Zipf law, plus ``numeric`` integer-count
fields ``n0, ...`` (log-normal, a share ``missing`` of them missing) that go through
the Criteo bucketing like real counts. The label is Bernoulli(sigmoid(z)) with the
ground-truth logit::

    z = bias
      + sum_f          a * s_f(i_f) * w_f(i_f)               first order (informative fields)
      + sum_(f,g) in P b * <u_f(i_f), u_g(i_g)>              rank-r field-pair interactions
      + c * tanh(t_p(i_p) * t_q(i_q) * t_r(i_r))             a small 3-way nonlinearity
      + sum_j          d * h_j(bucket(x_j))                  numeric (missing: its own value)

- ``w``, ``u`` (``rank`` dims), ``t`` are standard normals derived from a SplitMix64
  hash of (seed, field, id, component), scaled by frequency gates: nothing of size
  ``V_f`` is ever allocated, parameters are computed only for the ids a chunk holds,
  so vocabularies of millions of ids cost nothing until used.
- Frequency gates: with ``n`` an id's expected count in 160,000 rows (the default
  training split; independent of ``rows``, so more rows of one seed are more samples
  of the same distribution), first-order weights are scaled by
  ``n^2 / (n^2 + 2000^2)`` and interaction latents by ``n^2 / (n^2 + 8000^2)``. The
  signal sits on ids frequent enough to learn, as in real logs where rare ids carry
  little; this is what makes the Bayes AUC reachable (measured: a DeepFM, dim 10,
  MLP 400-400-400, the default recipe, ends 0.0065 / 0.0081 AUC below it on seeds
  0 / 1 of the default data; with ungated rare ids the gap was 0.036).
- P: ``groups`` disjoint groups of ``group_size`` informative fields, drawn from the
  fields with the smallest vocabularies; all pairs inside a group interact, pairs
  across groups do not (6 of 66 pairs by default). An FM with embedding dim
  >= groups * rank represents this exactly; field-pair pruning should keep P.
- ``noise_fields`` fields (chosen by the seed) have no effect at all: a check for
  field pruning. The numeric effect is a function of the Criteo bucket, so the
  standard preprocessing loses nothing.
- ``bias`` is solved on a fixed pilot sample so that the mean CTR is ``ctr``.

Rows are generated in fixed blocks of 65,536 from ``SeedSequence([seed, 1, block])``,
so row ``k`` is the same for every ``rows`` and whether it is streamed or not; 1M
rows take about 2 s. ``info`` reports the structure (noise fields, groups, pairs)
and, once split, ``bayes_auc`` / ``bayes_logloss``: the metrics of the true
probability on the test split, the ceiling any model can reach.

Spec keys: ``rows, fields, vocab`` (one size for all, or ``a:b:c`` per field),
``total_vocab`` (spread geometrically over the fields when ``vocab`` is absent),
``zipf, noise_fields, numeric, seed, rank, groups, group_size, ctr, missing``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from dataclasses import fields as dc_fields

import numpy as np

from keras_ctr_compress.data.errors import BadRows
from keras_ctr_compress.data.readers import ID, NUMERIC, Chunk, Column, Source
from keras_ctr_compress.data.split import splitmix64

BLOCK_ROWS = 1 << 16
REFERENCE_ROWS = 160_000  # the default training split: where "frequent enough" is measured
SHRINK_COUNT = 2000.0       # first-order weights fade in around this many occurrences
PAIR_SHRINK_COUNT = 8000.0  # interaction latents only for ids this frequent
PILOT_ROWS = 1 << 15
MAX_VOCAB = 2**31 - 2

# Shares of the logit variance (for frequent ids) of each part of the truth.
FIRST_ORDER_VAR = 3.0
PAIR_VAR = 1.5
NONLINEAR_SCALE = 0.35
NUMERIC_SCALE = 0.45


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator (defaults: the ``synthetic`` dataset).

    The default (200k rows, 12 categorical fields of which 3 noise, 2 numeric, 20k ids
    in all, Zipf 1.6, Bayes AUC about 0.83-0.85, CTR 0.25) trains a DeepFM (dim 10,
    MLP 400-400-400) in about a minute on 2 cores to within 0.01 AUC of its Bayes AUC.
    """

    rows: int = 200_000
    fields: int = 12
    noise_fields: int = 3
    numeric: int = 2
    vocab: tuple[int, ...] | None = None
    total_vocab: int = 20_000
    zipf: float = 1.6
    rank: int = 3
    groups: int = 2
    group_size: int = 3
    ctr: float = 0.25
    missing: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.rows < 10:
            raise ValueError(f"synthetic rows must be >= 10, got {self.rows}")
        if self.fields < 2:
            raise ValueError(f"synthetic fields must be >= 2, got {self.fields}")
        if not 0 <= self.noise_fields <= self.fields - 1:
            raise ValueError(f"noise_fields must be in [0, fields - 1] = [0, {self.fields - 1}], got {self.noise_fields}")
        if self.numeric < 0:
            raise ValueError(f"numeric must be >= 0, got {self.numeric}")
        if self.vocab is not None:
            if len(self.vocab) != self.fields:
                raise ValueError(f"vocab lists {len(self.vocab)} sizes for {self.fields} fields")
            if any(v < 1 or v > MAX_VOCAB for v in self.vocab):
                raise ValueError(f"vocab sizes must be in [1, {MAX_VOCAB}], got {self.vocab}")
        if self.total_vocab < self.fields:
            raise ValueError(f"total_vocab must be >= fields ({self.fields}), got {self.total_vocab}")
        if self.zipf <= 0:
            raise ValueError(f"zipf exponent must be > 0, got {self.zipf}")
        if not 1 <= self.rank <= 16:
            raise ValueError(f"rank must be in [1, 16], got {self.rank}")
        if self.groups < 0:
            raise ValueError(f"groups must be >= 0, got {self.groups}")
        if not 2 <= self.group_size <= self.fields:
            raise ValueError(f"group_size must be in [2, fields], got {self.group_size}")
        if not 0.01 <= self.ctr <= 0.99:
            raise ValueError(f"ctr must be in [0.01, 0.99], got {self.ctr}")
        if not 0 <= self.missing < 1:
            raise ValueError(f"missing must be in [0, 1), got {self.missing}")

    @classmethod
    def from_options(cls, options: dict[str, str], where: str = "synthetic") -> SyntheticConfig:
        """From spec options (strings); unknown keys are the spec parser's job."""
        kw: dict = {}
        types = {f.name: f.type for f in dc_fields(cls)}
        for key, raw in options.items():
            if key not in types:
                continue
            try:
                if key == "vocab":
                    sizes = [int(float(v)) for v in raw.replace("_", "").split(":")]
                    n = int(options.get("fields", cls.fields))
                    kw[key] = tuple(sizes * n if len(sizes) == 1 else sizes)
                elif key in ("zipf", "ctr", "missing"):
                    kw[key] = float(raw)
                else:
                    value = float(raw.replace("_", ""))
                    if not value.is_integer():
                        raise ValueError
                    kw[key] = int(value)
            except ValueError:
                raise ValueError(f"{where}: option {key}={raw!r} is not valid") from None
        return cls(**kw)

    def vocab_sizes(self) -> tuple[int, ...]:
        """Per-field vocabulary sizes (excluding OOV): ``vocab`` or ``total_vocab`` spread
        geometrically from 10 (or less) upwards."""
        if self.vocab is not None:
            return tuple(int(v) for v in self.vocab)
        return _geometric_sizes(self.total_vocab, self.fields)


def _geometric_sizes(total: int, n: int) -> tuple[int, ...]:
    """``n`` sizes ``lo * r**k`` summing to about ``total``, ``lo = min(10, total // n)``."""
    lo = max(1, min(10, total // n))
    if lo * n >= total:
        return tuple([total // n] * n)
    a, b = 1.0, 10.0
    while lo * sum(b**k for k in range(n)) < total:
        b *= 2
    for _ in range(100):  # bisection on the ratio
        r = (a + b) / 2
        if lo * sum(r**k for k in range(n)) < total:
            a = r
        else:
            b = r
    sizes = [max(1, round(lo * a**k)) for k in range(n)]
    sizes[-1] += total - sum(sizes)
    return tuple(min(MAX_VOCAB, max(1, s)) for s in sizes)


# --------------------------------------------------------------------------- hashed parameters


def _mix(*parts: int) -> np.uint64:
    """A 64-bit key from small integers (seed, field, component, ...)."""
    h = np.array([0x243F6A8885A308D3], dtype=np.uint64)
    for p in parts:
        h = splitmix64(h ^ np.uint64(p & 0xFFFFFFFFFFFFFFFF))
    return h[0]


def hashed_normal(ids: np.ndarray, key: np.uint64) -> np.ndarray:
    """Standard normals, one per id, a pure function of (id, key) (Box-Muller on the
    two 32-bit halves of a SplitMix64 hash)."""
    h = splitmix64(np.asarray(ids, dtype=np.uint64) ^ key)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 1.0) / 2.0**32
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2.0**32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def zipf_ids(u: np.ndarray, vocab: int, a: float) -> np.ndarray:
    """Ids in ``1..vocab`` from uniforms: a bounded power law ``x^-a`` on
    ``[1, vocab + 1)``, floored (inverse CDF, no table of size ``vocab``)."""
    if abs(a - 1.0) < 1e-9:
        x = np.exp(u * math.log(vocab + 1.0))
    else:
        e = 1.0 - a
        x = (1.0 + u * ((vocab + 1.0) ** e - 1.0)) ** (1.0 / e)
    return np.clip(np.floor(x), 1, vocab).astype(np.int64)


def zipf_prob(ids: np.ndarray, vocab: int, a: float) -> np.ndarray:
    """Probability of each id under :func:`zipf_ids`."""
    i = np.asarray(ids, dtype=np.float64)
    if abs(a - 1.0) < 1e-9:
        return np.log1p(1.0 / i) / math.log(vocab + 1.0)
    e = 1.0 - a
    return ((i + 1.0) ** e - i**e) / ((vocab + 1.0) ** e - 1.0)


def _criteo_bucket(x: np.ndarray) -> np.ndarray:
    safe = np.where(np.isfinite(x), x, 0.0)
    return np.where(safe > 2, np.floor(np.log(np.maximum(safe, 2.0)) ** 2), np.trunc(safe))


# --------------------------------------------------------------------------- the generator


class SyntheticGenerator:
    """The ground truth of one :class:`SyntheticConfig` and its row blocks."""

    def __init__(self, config: SyntheticConfig):
        self.config = config
        self.vocab = config.vocab_sizes()
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x5EED]))
        f = config.fields
        self.noise = sorted(rng.choice(f, size=config.noise_fields, replace=False).tolist()) if config.noise_fields else []
        self.informative = [k for k in range(f) if k not in self.noise]
        # Interaction groups: disjoint sets of group_size informative fields; every pair
        # inside a group interacts through the fields' rank-r latents. (Pairs across
        # groups do not, so an FM with dim >= groups * rank represents it exactly.)
        # They are drawn from the informative fields with the smallest vocabularies:
        # as in real logs, crosses of frequent values carry the interaction signal,
        # and their latents can be estimated from the rows available.
        size = config.group_size
        n_groups = min(config.groups, len(self.informative) // size)
        by_size = sorted(self.informative, key=lambda k: (self.vocab[k], k))[: n_groups * size]
        order = rng.permutation(by_size).tolist()
        self.groups = [sorted(order[g * size:(g + 1) * size]) for g in range(n_groups)]
        self.pairs = sorted((a, b) for grp in self.groups for i, a in enumerate(grp) for b in grp[i + 1:])
        r = config.rank
        # The nonlinearity uses the three most frequent-valued informative fields.
        self.nonlinear = self.informative[:3] if len(self.informative) >= 3 else []
        self.numeric_phase = rng.uniform(0, 2 * np.pi, size=config.numeric)
        self.numeric_freq = rng.uniform(0.3, 0.8, size=config.numeric)
        self.numeric_missing_effect = rng.normal(size=config.numeric)
        self.numeric_mu = rng.uniform(0.5, 2.5, size=config.numeric)
        self.first_scale = math.sqrt(FIRST_ORDER_VAR / max(1, len(self.informative)))
        self.pair_scale = math.sqrt(PAIR_VAR / max(1, len(self.pairs)) / r)
        self.bias = 0.0
        self.bias = self._calibrate_bias()

    # columns ---------------------------------------------------------------
    @property
    def columns(self) -> list[Column]:
        cat = [Column(f"c{k}", ID) for k in range(self.config.fields)]
        return cat + [Column(f"n{j}", NUMERIC) for j in range(self.config.numeric)]

    def describe(self) -> dict:
        c = self.config
        return {
            "generator": "keras_ctr_compress.synthetic v1",
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(c).items()},
            "vocab": list(self.vocab),
            "noise_fields": [f"c{k}" for k in self.noise],
            "interaction_groups": [[f"c{k}" for k in grp] for grp in self.groups],
            "interaction_pairs": [[f"c{a}", f"c{b}"] for a, b in self.pairs],
            "nonlinear_fields": [f"c{k}" for k in self.nonlinear],
            "bias": self.bias,
        }

    # rows ------------------------------------------------------------------
    def block(self, k: int, n: int = BLOCK_ROWS) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Block ``k`` (rows ``k * BLOCK_ROWS ...``): (columns, labels int8, true p)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 1, k]))
        cols, z = self._draw(rng, n)
        p = 1.0 / (1.0 + np.exp(-(z + self.bias)))
        labels = (rng.random(n) < p).astype(np.int8)
        return cols, labels, p

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        c = self.config
        cols: dict[str, np.ndarray] = {}
        for f in range(c.fields):
            cols[f"c{f}"] = zipf_ids(rng.random(n), self.vocab[f], c.zipf)
        for j in range(c.numeric):
            x = np.floor(np.exp(rng.normal(self.numeric_mu[j], 1.2, size=n)))
            x[rng.random(n) < c.missing] = np.nan
            cols[f"n{j}"] = x
        return cols, self._logit(cols, n)

    def _params(self, f: int, ids: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-row first-order weight and latent vectors of field ``f`` (computed on
        the distinct ids only, then gathered)."""
        uniq, inv = np.unique(ids, return_inverse=True)
        n_exp = REFERENCE_ROWS * zipf_prob(uniq, self.vocab[f], self.config.zipf)
        shrink = n_exp**2 / (n_exp**2 + SHRINK_COUNT**2)
        shrink_pair = n_exp**2 / (n_exp**2 + PAIR_SHRINK_COUNT**2)
        seed = self.config.seed
        w = shrink * hashed_normal(uniq, _mix(seed, f, 0))
        lat = np.stack([shrink_pair * hashed_normal(uniq, _mix(seed, f, 1 + d)) for d in range(dims)], axis=1)
        return w[inv], lat[inv]

    def _logit(self, cols: dict[str, np.ndarray], n: int) -> np.ndarray:
        c = self.config
        z = np.zeros(n)
        dims = c.rank + 1  # rank latent dims + one scalar for the nonlinearity
        lat: dict[int, np.ndarray] = {}
        for f in self.informative:
            w, lat[f] = self._params(f, cols[f"c{f}"], dims)
            z += self.first_scale * w
        for a, b in self.pairs:
            ua, ub = lat[a][:, : c.rank], lat[b][:, : c.rank]
            z += self.pair_scale * np.einsum("nk,nk->n", ua, ub)
        if self.nonlinear:
            p, q, r = self.nonlinear
            z += NONLINEAR_SCALE * np.tanh(lat[p][:, -1] * lat[q][:, -1] * lat[r][:, -1])
        for j in range(c.numeric):
            x = cols[f"n{j}"]
            effect = np.sin(self.numeric_freq[j] * _criteo_bucket(x) + self.numeric_phase[j])
            z += NUMERIC_SCALE * np.where(np.isnan(x), self.numeric_missing_effect[j], effect)
        return z

    def _calibrate_bias(self) -> float:
        """The bias giving mean CTR ``ctr`` on a fixed pilot sample (bisection)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 2]))
        _, z = self._draw(rng, PILOT_ROWS)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < self.config.ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2


class SyntheticSource(Source):
    """The generator as a streaming source: chunks of 65,536 rows with the true
    click probability in ``chunk.extra["p_true"]``."""

    def __init__(self, config: SyntheticConfig | None = None, **kw):
        super().__init__(**kw)
        self.config = config or SyntheticConfig()
        self.generator = SyntheticGenerator(self.config)
        self.columns = self.generator.columns
        self.name = "synthetic"
        self.info = self.generator.describe()

    def _chunks(self, bad: BadRows) -> Iterator[Chunk]:
        total = self.config.rows
        for k in range(math.ceil(total / BLOCK_ROWS)):
            start = k * BLOCK_ROWS
            n = min(BLOCK_ROWS, total - start)
            cols, labels, p = self.generator.block(k)
            rows = np.arange(start, start + n, dtype=np.int64)
            yield Chunk({key: v[:n] for key, v in cols.items()}, labels[:n], "synthetic", rows + 1, rows,
                        extra={"p_true": p[:n]})


def bayes_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC and log loss of the true probabilities (the Bayes-optimal ceiling)."""
    from sklearn.metrics import log_loss, roc_auc_score

    y = np.asarray(y).reshape(-1)
    if y.size == 0 or np.unique(y).size < 2:
        return {"bayes_auc": float("nan"), "bayes_logloss": float("nan")}
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    return {"bayes_auc": float(roc_auc_score(y, p)), "bayes_logloss": float(log_loss(y, p, labels=[0, 1]))}
