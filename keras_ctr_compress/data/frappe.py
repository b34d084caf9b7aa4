"""The full 288,609-row Frappe, rebuilt from the original usage log ``frappe.csv``.

Rebuilt exactly as the NFM / AFM libFM files were made (their README; checked
against those files by the data curators): every raw log row is a positive with
fields user, item, daytime, weekday, isweekend, homework, cost, weather, country,
city (the usage count ``cnt`` is dropped); each positive gets 2 negatives that copy
its user and context and change only the item; for each user the negative items are
``2 x (that user's row count)`` DISTINCT items drawn without replacement from the
items the user never used in any context, assigned to that user's positives in file
order (2 per positive). The draw uses a fixed seed (:data:`NEGATIVE_SEED`), so the
rebuild is identical on every machine; rows come out as ``pos, neg, neg`` per log row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from keras_ctr_compress.data.errors import DataError, located
from keras_ctr_compress.data.readers import CATEGORICAL, ArraySource, Column

FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")
RAW_COLUMNS = ("user", "item", "cnt", *FIELDS[2:])
NEGATIVES_PER_POSITIVE = 2
NEGATIVE_SEED = 2017
EXPECTED_ROWS = 288_609


def read_frappe_log(path: Path) -> dict[str, np.ndarray]:
    """The raw log (tab-separated, header) as object arrays of str, one per column."""
    try:
        table = pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in RAW_COLUMNS},
                                                 strings_can_be_null=False),
        )
    except pa.ArrowInvalid as e:
        raise DataError(located(path, "?", f"unreadable Frappe log ({str(e).splitlines()[0][:160]}) (expected tab-separated {', '.join(RAW_COLUMNS)})")) from None
    missing = [c for c in RAW_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(located(path, 1, f"header lacks {missing} (expected {', '.join(RAW_COLUMNS)})"))
    return {c: table.column(c).to_numpy(zero_copy_only=False).astype(object) for c in RAW_COLUMNS}


def rebuild(log: dict[str, np.ndarray], seed: int = NEGATIVE_SEED) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Positives + sampled negatives: (columns of FIELDS as object str arrays,
    int8 labels, index of the raw log row each output row came from)."""
    user, item = log["user"], log["item"]
    n = len(user)
    # Work on integer codes (sorted distinct items) so set operations stay in C.
    items_all, item_code = np.unique(item.astype(str), return_inverse=True)
    item_code = item_code.reshape(-1)
    rng = np.random.default_rng(seed)
    negatives = np.empty((n, NEGATIVES_PER_POSITIVE), dtype=np.int64)
    users, user_of_row = np.unique(user.astype(str), return_inverse=True)
    user_of_row = user_of_row.reshape(-1)
    order = np.argsort(user_of_row, kind="stable")  # rows of each user, in file order
    bounds = np.searchsorted(user_of_row[order], np.arange(len(users) + 1))
    all_codes = np.arange(len(items_all))
    for u in range(len(users)):
        rows = order[bounds[u]: bounds[u + 1]]
        pool = np.setdiff1d(all_codes, item_code[rows], assume_unique=False)
        need = NEGATIVES_PER_POSITIVE * len(rows)
        if need > len(pool):
            raise DataError(f"Frappe user {users[u]}: needs {need} unused items, only {len(pool)} exist")
        negatives[rows] = rng.choice(pool, size=need, replace=False).reshape(len(rows), NEGATIVES_PER_POSITIVE)
    item = np.concatenate([item_code[:, None], negatives], axis=1).reshape(-1)
    per = 1 + NEGATIVES_PER_POSITIVE
    origin = np.repeat(np.arange(n), per)
    cols = {f: log[f][origin] for f in FIELDS if f != "item"}
    cols["item"] = items_all.astype(object)[item]
    labels = np.tile(np.array([1] + [0] * NEGATIVES_PER_POSITIVE, dtype=np.int8), n)
    return {f: cols[f] for f in FIELDS}, labels, origin


def frappe_source(path: Path, **kw) -> ArraySource:
    """The rebuilt Frappe as a source (lines point at the raw log row)."""
    if path.is_dir():
        path = path / "frappe.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: Frappe log not found (expected frappe.csv from the Frappe v1.0 release)")
    cols, labels, origin = rebuild(read_frappe_log(path))
    src = ArraySource("frappe", [Column(f, CATEGORICAL) for f in FIELDS], cols, labels,
                      source=str(path), lines=origin + 2, **kw)
    src.info = {"negatives_per_positive": NEGATIVES_PER_POSITIVE, "negative_seed": NEGATIVE_SEED,
                "log_rows": int(len(origin) // 3)}
    return src
