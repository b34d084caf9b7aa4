"""MovieLens-100K as CTR data, from RecBole's atomic files (``ml-100k.inter/.user/.item``).

Label: rating >= 4 is a click (positive), 1-3 not. Fields (all categorical):

- ``user_id``, ``item_id``;
- ``age``: the MovieLens-1M age buckets (under 18, 18-24, 25-34, 35-44, 45-49,
  50-55, 56+) as tokens ``1, 18, 25, 35, 45, 50, 56``;
- ``gender``, ``occupation``;
- ``zip``: the first 2 characters of the zip code (the region; full codes are
  nearly unique per user and add nothing beyond ``user_id``);
- ``genre``: the movie's FIRST listed genre (one token per field keeps the model
  one-id-per-field; the genre set as one token would make ~200 sparse tokens);
- ``year``: the release year.

The timestamp is dropped. Users or items absent from the side files get missing
values. Rows keep the ``.inter`` order; the split is the seeded 8:1:1 hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from keras_ctr_compress.data.errors import DataError, located
from keras_ctr_compress.data.readers import CATEGORICAL, ArraySource, Column, read_first_line

FIELDS = ("user_id", "item_id", "age", "gender", "occupation", "zip", "genre", "year")
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_AGE_TOKENS = np.array(["1", "18", "25", "35", "45", "50", "56"], dtype=object)


def _read_atomic(path: Path, needed: tuple[str, ...]) -> dict[str, pa.ChunkedArray]:
    """A RecBole atomic file (tab-separated, header ``name:type``) as string columns."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: MovieLens file not found")
    header = read_first_line(path).decode("utf-8", errors="replace").split("\t")
    try:  # every column as text: ids and years are tokens, "" = missing
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=False,
                                                                    column_types={h: pa.string() for h in header}))
    except pa.ArrowInvalid as e:
        raise DataError(located(path, "?", f"{str(e).splitlines()[0][:160]} (expected tab-separated RecBole atomic rows)")) from None
    names = {n.split(":")[0]: n for n in table.column_names}
    missing = [c for c in needed if c not in names]
    if missing:
        raise DataError(located(path, 1, f"header lacks {missing} (expected {', '.join(needed)})"))
    return {c: table.column(names[c]) for c in needed}


def _lookup(keys: np.ndarray, table_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[row of table_keys == key] for each key, "" when absent (via a dict over
    the distinct keys only)."""
    index = {k: v for k, v in zip(table_keys.tolist(), values.tolist(), strict=True)}
    uniq, inv = np.unique(keys.astype(str), return_inverse=True)
    mapped = np.array([index.get(k, "") for k in uniq.tolist()], dtype=object)
    return mapped[inv]


def movielens_source(folder: Path, **kw) -> ArraySource:
    """The joined ratings as a source (lines point into ``ml-100k.inter``)."""
    folder = Path(folder)
    inter_path = folder / "ml-100k.inter"
    inter = _read_atomic(inter_path, ("user_id", "item_id", "rating"))
    users = _read_atomic(folder / "ml-100k.user", ("user_id", "age", "gender", "occupation", "zip_code"))
    items = _read_atomic(folder / "ml-100k.item", ("item_id", "release_year", "class"))
    rating = _ratings(inter["rating"], inter_path)
    to_np = {k: inter[k].to_numpy(zero_copy_only=False).astype(object) for k in ("user_id", "item_id")}
    u = {k: v.to_numpy(zero_copy_only=False).astype(object) for k, v in users.items()}
    it = {k: v.to_numpy(zero_copy_only=False).astype(object) for k, v in items.items()}
    age = np.array([float(a) if a.strip().isdigit() else np.nan for a in u["age"]])
    age_tok = np.where(np.isnan(age), "", _AGE_TOKENS[np.searchsorted(_AGE_EDGES, np.nan_to_num(age), side="right")])
    zip_tok = np.array([z.strip()[:2] for z in u["zip_code"]], dtype=object)
    genre_tok = np.array([(g.split() or [""])[0] for g in it["class"]], dtype=object)
    uid, iid = to_np["user_id"], to_np["item_id"]
    cols = {
        "user_id": uid, "item_id": iid,
        "age": _lookup(uid, u["user_id"], age_tok),
        "gender": _lookup(uid, u["user_id"], u["gender"]),
        "occupation": _lookup(uid, u["user_id"], u["occupation"]),
        "zip": _lookup(uid, u["user_id"], zip_tok),
        "genre": _lookup(iid, it["item_id"], genre_tok),
        "year": _lookup(iid, it["item_id"], it["release_year"]),
    }
    labels = (rating >= 4).astype(np.int8)
    src = ArraySource("movielens100k", [Column(f, CATEGORICAL) for f in FIELDS], cols, labels,
                      source=str(inter_path), lines=np.arange(2, len(labels) + 2), **kw)
    src.info = {"label": "rating >= 4", "genre": "first listed genre", "zip": "first 2 characters"}
    return src


def _ratings(col: pa.ChunkedArray, path: Path) -> np.ndarray:
    x = np.array([_num(v) for v in col.to_pylist()])
    bad = np.flatnonzero(np.isnan(x))
    if len(bad):
        k = int(bad[0])
        raise DataError(located(path, k + 2, f"rating {col[k].as_py()!r} (expected a number 1-5)"))
    return x


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
