"""Raw column values -> int32 ids ``(n, F)``: per-field vocabularies, saved as JSON.

Id layout of a ``categorical`` or ``numeric`` field (the models' contract: id 0 is
the OOV id of every field)::

    0      OOV: a token seen fewer than ``min_count`` times in the fitted data, or never
    1      missing: an empty categorical value, a NaN / empty numeric value
    2, ... the kept tokens, most frequent first (ties: smaller token first)

so ``vocab_size = 2 + number of kept tokens``, and ids do not depend on the order
rows were seen in. Numeric values are bucketised like Criteo's integer features
(the convention of the PNN / AutoInt / FuxiCTR preprocessing):
``x > 2 -> floor(ln(x)^2)``, else ``int(x)`` (truncation, so negative values keep
their own tokens); the bucket is then the field's token.

An ``id`` field holds already-encoded non-negative integers: ``vocab_size = max id
seen + 1``; ids outside ``[0, vocab_size)``, non-integers and missing values map to
0. (So a real id 0 shares the OOV row, as the source's own encoding decided.)

Fitting streams: :meth:`Preprocessor.update` merges the token counts of one chunk
(``np.unique`` per column, a dict over the uniques only), :meth:`finalize` builds the
vocabularies. :meth:`transform` is vectorised the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_ctr_compress.data.readers import ID, KINDS, NUMERIC, Chunk, Column
from keras_ctr_compress.data.schema import Field

OOV_ID = 0
MISSING_ID = 1
FIRST_TOKEN_ID = 2
FORMAT = "keras_ctr_compress.preprocessor"
VERSION = 1


def bucketize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Criteo numeric bucketing: ``(bucket int64, missing mask)``.

    ``x > 2 -> floor(ln(x)^2)``, else ``int(x)`` (toward zero); NaN / inf -> missing.
    """
    x = np.asarray(x, dtype=np.float64)
    missing = ~np.isfinite(x)
    safe = np.where(missing, 0.0, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.floor(np.log(np.where(safe > 2, safe, 3.0)) ** 2)
    bucket = np.where(safe > 2, logs, np.trunc(safe))
    return bucket.astype(np.int64), missing


def _as_tokens(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Categorical values -> (fixed-width unicode array, missing mask).

    ``""`` and ``None`` are missing; non-string values become their ``str`` (so an
    integer column can be categorical)."""
    values = np.asarray(values)
    if values.dtype.kind == "U":
        return values, values == ""
    if values.dtype.kind == "f":
        missing = ~np.isfinite(values)
        ints = np.where(missing, 0, values)
        text = np.where(ints == np.trunc(ints), ints.astype(np.int64).astype(str), ints.astype(str))
        return np.where(missing, "", text), missing
    if values.dtype.kind in "iub":
        return values.astype(str), np.zeros(values.shape, dtype=bool)
    if values.dtype == object:
        nulls = np.equal(values, None)
        if nulls.any():
            values = np.where(nulls, "", values)
        text = values.astype(str)
        return text, text == ""
    text = values.astype(str)
    return text, text == ""


@dataclass
class FieldVocab:
    """One field's vocabulary. ``tokens[k]`` has id ``k + 2`` (``id`` fields: none)."""

    name: str
    source: str
    tokens: list
    vocab_size: int

    def to_json(self) -> dict:
        d = {"name": self.name, "source": self.source, "vocab_size": self.vocab_size}
        if self.source != ID:
            d["tokens"] = self.tokens
        return d


class Preprocessor:
    """Per-field vocabularies mapping raw values to the int32 ids models take.

    Args:
        columns: the input columns in field order (:class:`Column` or
            ``(name, kind)`` pairs; kind ``categorical``, ``numeric`` or ``id``).
        min_count: tokens seen fewer times than this while fitting map to OOV (0).

    Example::

        pre = Preprocessor([("site", "categorical"), ("price", "numeric")], min_count=2)
        pre.fit(chunks)                     # streams; or update(chunk) ... finalize()
        x = pre.transform({"site": np.array(["a", "b"], dtype=object),
                           "price": np.array([3.0, np.nan])})   # int32 (2, 2)
        pre.save("preprocessor.json"); same = Preprocessor.load("preprocessor.json")
    """

    def __init__(self, columns: Sequence[Column | tuple[str, str]], min_count: int = 1):
        cols = [c if isinstance(c, Column) else Column(*c) for c in columns]
        if not cols:
            raise ValueError("a Preprocessor needs at least one column")
        names = [c.name for c in cols]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate column names: {names}")
        if not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        self.columns = cols
        self.min_count = int(min_count)
        self._counts: dict[str, dict] = {c.name: {} for c in cols}
        self._max_id: dict[str, int] = {c.name: -1 for c in cols}
        self.vocabs: list[FieldVocab] | None = None
        self._index: list[dict] = []

    # ------------------------------------------------------------------ fitting

    @property
    def fitted(self) -> bool:
        return self.vocabs is not None

    def update(self, chunk: Chunk | Mapping[str, np.ndarray]) -> Preprocessor:
        """Adds one chunk's token counts (before :meth:`finalize`)."""
        if self.fitted:
            raise RuntimeError("this Preprocessor is already finalized; create a new one to refit")
        columns = chunk.columns if isinstance(chunk, Chunk) else chunk
        for c in self.columns:
            values = self._column(columns, c.name)
            if c.kind == ID:
                ids = _valid_ids(values)
                if ids.size:
                    self._max_id[c.name] = max(self._max_id[c.name], int(ids.max()))
                continue
            if c.kind == NUMERIC:
                bucket, missing = bucketize(values)
                tokens = bucket[~missing]
            else:
                text, missing = _as_tokens(values)
                tokens = text[~missing]
            if tokens.size == 0:
                continue
            uniq, counts = np.unique(tokens, return_counts=True)
            acc = self._counts[c.name]
            # A loop over the chunk's distinct tokens only, not its rows.
            for tok, cnt in zip(uniq.tolist(), counts.tolist(), strict=True):
                acc[tok] = acc.get(tok, 0) + cnt
        return self

    def finalize(self) -> Preprocessor:
        """Builds the vocabularies from the counts so far (ids sorted by count, then token)."""
        vocabs = []
        for c in self.columns:
            if c.kind == ID:
                vocabs.append(FieldVocab(c.name, ID, [], max(1, self._max_id[c.name] + 1)))
                continue
            kept = [(tok, n) for tok, n in self._counts[c.name].items() if n >= self.min_count]
            kept.sort(key=lambda tn: (-tn[1], tn[0]))
            tokens = [t for t, _ in kept]
            vocabs.append(FieldVocab(c.name, c.kind, tokens, FIRST_TOKEN_ID + len(tokens)))
        self._set_vocabs(vocabs)
        self._counts = {c.name: {} for c in self.columns}  # free the counts
        return self

    def fit(self, chunks: Iterable[Chunk | Mapping[str, np.ndarray]]) -> Preprocessor:
        """``update`` on every chunk, then ``finalize``."""
        for chunk in chunks:
            self.update(chunk)
        return self.finalize()

    def _set_vocabs(self, vocabs: list[FieldVocab]) -> None:
        self.vocabs = vocabs
        self._index = [
            {tok: k + FIRST_TOKEN_ID for k, tok in enumerate(v.tokens)} if v.source != ID else {}
            for v in vocabs
        ]

    # ------------------------------------------------------------------ encoding

    def transform(self, chunk: Chunk | Mapping[str, np.ndarray]) -> np.ndarray:
        """Encodes raw columns to int32 ids ``(n, F)`` (unseen tokens -> 0, missing -> 1)."""
        if not self.fitted:
            raise RuntimeError("Preprocessor is not fitted: call fit() or finalize() first")
        columns = chunk.columns if isinstance(chunk, Chunk) else chunk
        n = None
        out: np.ndarray | None = None
        for j, (c, vocab) in enumerate(zip(self.columns, self.vocabs, strict=True)):
            values = np.asarray(self._column(columns, c.name))
            if n is None:
                n = values.shape[0]
                out = np.empty((n, len(self.columns)), dtype=np.int32)
            elif values.shape[0] != n:
                raise ValueError(f"column {c.name!r} has {values.shape[0]} rows, expected {n}")
            out[:, j] = self._encode(j, c.kind, vocab, values)
        return out

    def _encode(self, j: int, kind: str, vocab: FieldVocab, values: np.ndarray) -> np.ndarray:
        if kind == ID:
            x = np.asarray(values)
            if x.dtype.kind in "iu":
                ok = (x >= 0) & (x < vocab.vocab_size)
                return np.where(ok, x, OOV_ID).astype(np.int32)
            xf = x.astype(np.float64)
            ok = np.isfinite(xf) & (xf >= 0) & (xf < vocab.vocab_size) & (xf == np.trunc(xf))
            return np.where(ok, xf, OOV_ID).astype(np.int32)
        if kind == NUMERIC:
            tokens, missing = bucketize(values)
        else:
            tokens, missing = _as_tokens(values)
        uniq, inv = np.unique(tokens, return_inverse=True)
        index = self._index[j]
        ids_u = np.fromiter((index.get(t, OOV_ID) for t in uniq.tolist()), dtype=np.int32, count=len(uniq))
        ids = ids_u[inv.reshape(-1)]
        ids[missing] = MISSING_ID
        return ids

    @staticmethod
    def _column(columns: Mapping[str, np.ndarray], name: str) -> np.ndarray:
        try:
            return columns[name]
        except KeyError:
            raise KeyError(f"the data has no column {name!r} (have: {', '.join(columns)})") from None

    # ------------------------------------------------------------------ facts

    @property
    def fields(self) -> list[Field]:
        """The fields as models see them (name, vocab_size, source)."""
        if not self.fitted:
            raise RuntimeError("Preprocessor is not fitted")
        return [Field(v.name, v.vocab_size, v.source) for v in self.vocabs]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def tokens_of(self, name: str) -> list:
        """The kept tokens of field ``name`` (token ``k`` has id ``k + 2``)."""
        for v in self.vocabs or []:
            if v.name == name:
                return list(v.tokens)
        raise KeyError(f"no field {name!r}")

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        if not self.fitted:
            raise RuntimeError("Preprocessor is not fitted")
        return {"format": FORMAT, "version": VERSION, "min_count": self.min_count,
                "missing_id": MISSING_ID, "oov_id": OOV_ID,
                "numeric_buckets": "x>2: floor(ln(x)^2); else int(x)",
                "fields": [v.to_json() for v in self.vocabs]}

    def to_json(self) -> str:
        """Compact JSON (what is saved; its length is what the edge artefact counts)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def nbytes_on_disk(self) -> int:
        """Bytes of the saved file."""
        return len(self.to_json().encode("utf-8"))

    def save(self, path: str | Path) -> Path:
        """Writes the JSON atomically (temporary file, then ``os.replace``)."""
        from keras_ctr_compress.utils import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.to_json().encode("utf-8"))
        return path

    @classmethod
    def from_dict(cls, d: dict, where: str = "preprocessor") -> Preprocessor:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{where}: not a keras_ctr_compress preprocessor file (format {d.get('format') if isinstance(d, dict) else None!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"{where}: preprocessor version {d.get('version')!r} (expected {VERSION})")
        fields = d.get("fields")
        if not isinstance(fields, list) or not fields:
            raise ValueError(f"{where}: 'fields' must be a non-empty list")
        vocabs = []
        for k, f in enumerate(fields):
            try:
                name, source, size = f["name"], f["source"], int(f["vocab_size"])
                tokens = list(f.get("tokens", []))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: field {k} lacks name / source / vocab_size") from None
            if source not in KINDS:
                raise ValueError(f"{where}: field {name!r} has source {source!r} (expected one of {KINDS})")
            if source != ID and size != FIRST_TOKEN_ID + len(tokens):
                raise ValueError(f"{where}: field {name!r} vocab_size {size} does not match its {len(tokens)} tokens")
            vocabs.append(FieldVocab(name, source, tokens, size))
        pre = cls([Column(v.name, v.source) for v in vocabs], min_count=int(d.get("min_count", 1)))
        pre._set_vocabs(vocabs)
        return pre

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        """Reads a file written by :meth:`save` (one-line errors for bad files)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such preprocessor file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupted preprocessor JSON ({getattr(e, 'msg', e)})") from None
        return cls.from_dict(d, where=str(path))

    def __repr__(self) -> str:
        state = ", ".join(f"{v.name}:{v.vocab_size}" for v in self.vocabs) if self.fitted else "unfitted"
        return f"Preprocessor({state})"


def _valid_ids(values: np.ndarray) -> np.ndarray:
    """The non-negative integral values of an id column (as int64)."""
    x = np.asarray(values)
    if x.dtype.kind in "iu":
        return x[x >= 0].astype(np.int64)
    xf = x.astype(np.float64)
    ok = np.isfinite(xf) & (xf >= 0) & (xf == np.trunc(xf))
    return xf[ok].astype(np.int64)


def log2_bucket(x: float) -> int | None:
    """Scalar reference of the numeric bucketing (tests and docs): ``None`` = missing."""
    if x is None or not math.isfinite(x):
        return None
    return int(math.floor(math.log(x) ** 2)) if x > 2 else int(x)
