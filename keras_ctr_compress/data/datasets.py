"""Dataset specs -> sources -> encoded :class:`CTRDataset` s and tf.data pipelines.

``load_dataset`` materialises compact int32 ids for train / valid / test in two
streaming passes over the source: the first fits the vocabularies on the TRAIN rows
only (so valid / test categories unseen in train map to OOV, as they would in
production), the second encodes. ``stream_tf_dataset`` re-reads a source chunk by
chunk for data larger than memory.

Default ``min_count`` (tokens rarer than this in train map to OOV): 2 for Criteo
sources (``criteo:`` and ``criteo-8k``: on small samples most hashed values occur
once, and a per-field OOV row learns the "rare" signal), 1 elsewhere (Frappe,
MovieLens and libFM ids are all meaningful; synthetic ``id`` fields have none).

Named datasets are cached as encoded arrays in ``$KCC_CACHE_DIR`` (default
``~/.cache/keras_ctr_compress``), keyed by the source files' sizes and mtimes and
by every option; ``cache=false`` in the spec bypasses it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from keras_ctr_compress.data import paths
from keras_ctr_compress.data.preprocess import Preprocessor
from keras_ctr_compress.data.readers import (
    Chunk,
    CriteoSource,
    LibFMSource,
    Source,
    load_schema,
)
from keras_ctr_compress.data.schema import CTRDataset, Split
from keras_ctr_compress.data.spec import DataSpec, parse_spec
from keras_ctr_compress.data.split import SPLIT_NAMES, TEST, TRAIN, part_code, split_codes

CACHE_VERSION = 1
FRAPPE_NFM_NAMES = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")
_IGNORED_FILES = re.compile(r"^(readme|source|license|repo_license|notice|terms)\b|\.(md|json|py|sh|zip)$", re.I)
_PART_WORDS = {"train": "train", "training": "train", "dev": "valid", "valid": "valid", "val": "valid",
               "validation": "valid", "test": "test", "testing": "test"}


# --------------------------------------------------------------------------- spec -> source


def default_min_count(spec: DataSpec) -> int:
    """The dataset's default vocabulary threshold (see the module docstring); for a
    schema-described file, the schema's ``min_count`` when it sets one."""
    if spec.kind in ("csv", "parquet", "arrow"):
        schema_min = load_schema(spec.options["schema"]).min_count
        return 1 if schema_min is None else schema_min
    return 2 if spec.kind in ("criteo", "criteo-8k") else 1


def _part_of(path: Path) -> str | None:
    words = re.split(r"[._\-]", path.name.lower())
    found = {_PART_WORDS[w] for w in words if w in _PART_WORDS}
    return found.pop() if len(found) == 1 else None


def data_files(path: str | Path, mode: str = "auto", suffixes: tuple[str, ...] | None = None
               ) -> list[tuple[Path, str | None]]:
    """The files a spec path stands for, each with its split part (or ``None``).

    A file is itself. A folder: its data files (not hidden, not README / SOURCE /
    LICENSE / .json / .md ..., only ``suffixes`` when given). ``mode``:
    ``files`` = the folder holds one train, one dev/valid/val and one test file, used
    as the split; ``hash`` = all files in name order, split by the seeded hash;
    ``auto`` = ``files`` when those three are there, ``hash`` for a single file,
    else an error listing what was found.
    """
    path = Path(path).expanduser()
    if mode not in ("auto", "files", "hash"):
        raise ValueError(f"split must be auto, files or hash, got {mode!r}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if mode == "files":
            raise ValueError(f"{path}: split=files needs a folder with train/dev/test files")
        return [(path, None)]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and not _IGNORED_FILES.search(p.name)
                   and (suffixes is None or p.name.lower().endswith(suffixes)))
    if not files:
        raise FileNotFoundError(f"{path}: no data files in this folder")
    if mode == "hash":
        return [(p, None) for p in files]
    parts = {}
    for p in files:
        part = _part_of(p)
        if part is not None:
            parts.setdefault(part, []).append(p)
    complete = all(len(parts.get(name, [])) == 1 for name in SPLIT_NAMES)
    if complete:
        return [(parts[name][0], name) for name in SPLIT_NAMES]
    if mode == "auto" and len(files) == 1:
        return [(files[0], None)]
    found = ", ".join(p.name for p in files)
    raise ValueError(f"{path}: expected one train, one dev/valid and one test file (found {found}); "
                     f"add split=hash to read all of them and split 8:1:1 by the seeded hash")


def open_source(spec: str | DataSpec, *, skip_bad_rows: int | None = None) -> Source:
    """The streaming :class:`Source` of a spec (named datasets resolved in the shared
    data folder). ``skip_bad_rows`` overrides the spec's option when given."""
    spec = parse_spec(spec)
    if skip_bad_rows is None or skip_bad_rows == 0:
        skip_bad_rows = spec.get_int("skip_bad_rows", skip_bad_rows or 0, minimum=0)
    kw = {"skip_bad_rows": skip_bad_rows, "limit": spec.get_int("limit", None, minimum=1)}
    split = spec.options.get("split", "auto")
    kind = spec.kind
    if kind == "criteo":
        return CriteoSource(data_files(spec.path, split), name=spec.name, **kw)
    if kind == "criteo-8k":
        folder = paths.shared_dataset_dir("criteo_widersdnn_8k")
        return CriteoSource(data_files(folder, "files", (".tsv",)), name="criteo-8k", **kw)
    if kind == "libfm":
        names = spec.options["names"].split(":") if "names" in spec.options else None
        offsets = _int_list(spec, "offsets") if "offsets" in spec.options else None
        return LibFMSource(data_files(spec.path, split), names=names, offsets=offsets, name=spec.name, **kw)
    if kind == "frappe-nfm":
        folder = paths.shared_dataset_dir("frappe")
        files = [(folder / "frappe.validation.libfm", None), (folder / "frappe.test.libfm", None)]
        return LibFMSource(files, names=FRAPPE_NFM_NAMES, name="frappe-nfm", **kw)
    if kind in ("csv", "parquet", "arrow"):
        from keras_ctr_compress.data.tfio import open_table_source

        schema = load_schema(spec.options["schema"])
        suffixes = {"parquet": (".parquet", ".pq"), "arrow": (".arrow", ".feather", ".ipc")}.get(kind)
        files = data_files(spec.path, split, suffixes)
        # tensorflow-io where its native ops load, else pyarrow; one line says which.
        src = open_table_source(kind, files, schema, reader=spec.options.get("reader", "auto"), **kw)
        src.name = spec.name
        return src
    if kind == "frappe":
        from keras_ctr_compress.data.frappe import frappe_source

        path = Path(spec.path).expanduser() if spec.path else paths.shared_dataset_dir("frappe_raw")
        return frappe_source(path, **kw)
    if kind == "movielens100k":
        from keras_ctr_compress.data.movielens import movielens_source

        path = Path(spec.path).expanduser() if spec.path else paths.shared_dataset_dir("movielens_100k_recbole")
        return movielens_source(path, **kw)
    if kind == "synthetic":
        from keras_ctr_compress.data.synthetic import SyntheticConfig, SyntheticSource

        return SyntheticSource(SyntheticConfig.from_options(spec.options, where=spec.text), **kw)
    raise ValueError(f"data spec {spec.text!r}: kind {kind!r} has no reader")  # parse_spec prevents this


def _int_list(spec: DataSpec, key: str) -> list[int]:
    try:
        return [int(v) for v in spec.options[key].split(":")]
    except ValueError:
        raise ValueError(f"data spec {spec.text!r}: {key} must be integers separated by ':'") from None


# --------------------------------------------------------------------------- splitting


def chunk_parts(chunk: Chunk, seed: int) -> np.ndarray:
    """int8 split code per row: the file's part when the source is pre-split, else
    the seeded hash of the global row index."""
    if chunk.part is not None:
        return np.full(len(chunk), part_code(chunk.part), dtype=np.int8)
    return split_codes(chunk.rows, seed)


def _check_columns(pre: Preprocessor, source: Source) -> None:
    have = set(source.column_names())
    missing = [c.name for c in pre.columns if c.name not in have]
    if missing:
        raise ValueError(f"the preprocessor expects columns {missing} that {source.name} does not have "
                         f"(it has {', '.join(source.column_names())})")


def fit_preprocessor(spec: str | DataSpec | Source, *, seed: int = 0, min_count: int | None = None,
                     skip_bad_rows: int = 0) -> Preprocessor:
    """Fits vocabularies on the train rows of a source, in one streaming pass."""
    source = spec if isinstance(spec, Source) else open_source(spec, skip_bad_rows=skip_bad_rows)
    if min_count is None:
        min_count = _spec_min_count(parse_spec(spec)) if not isinstance(spec, Source) else 1
    pre = Preprocessor(source.columns, min_count=min_count)
    for chunk in source.chunks():
        train = chunk_parts(chunk, seed) == TRAIN
        if train.any():
            pre.update(chunk.select(train))
    return pre.finalize()


def _spec_min_count(spec: DataSpec, override: int | None = None) -> int:
    if override is not None:
        return int(override)
    return spec.get_int("min_count", default_min_count(spec), minimum=1)


# --------------------------------------------------------------------------- load


def load_dataset(spec: str | DataSpec, *, seed: int = 0, preprocessor: Preprocessor | None = None,
                 min_count: int | None = None, skip_bad_rows: int = 0) -> CTRDataset:
    """Reads, encodes and splits a dataset.

    Example::

        ds = load_dataset("csv:clicks.csv,schema=schema.json")   # or "synthetic:rows=100000"
        ds.train.x.shape, ds.train.y.shape                        # (n, F) int32, (n,) float32
        [f.name for f in ds.fields], ds.preprocessor.save("preprocessor.json")

    Args:
        spec: a dataset spec string (see :mod:`keras_ctr_compress.data.spec`).
        seed: the split seed (8:1:1 by a hash of each row's index; sources whose
            files are the split ignore it).
        preprocessor: encode with this fitted one (e.g. loaded next to a trained
            model) instead of fitting on train; unseen categories map to OOV 0.
        min_count: vocabulary threshold; default the spec's ``min_count`` option,
            else the dataset's default.
        skip_bad_rows: tolerate up to this many malformed rows (counted in
            ``info["skipped_rows"]``); default: the spec's option, else 0.

    Returns:
        a :class:`CTRDataset` with int32 ids, float32 labels and ``info`` (row
        counts, positive rate, skipped rows, load seconds; the synthetic data adds
        ``bayes_auc`` and ``bayes_logloss`` on its test split).
    """
    t0 = time.perf_counter()
    ds_spec = parse_spec(spec)
    mc = _spec_min_count(ds_spec, min_count)
    use_cache = preprocessor is None and _cacheable(ds_spec)
    key = None
    if use_cache:
        key = _cache_key(ds_spec, seed, mc, skip_bad_rows)
        cached = _read_cache(key, ds_spec)
        if cached is not None:
            cached.info["load_seconds"] = time.perf_counter() - t0
            cached.info["cached"] = True
            return cached
    source = open_source(ds_spec, skip_bad_rows=skip_bad_rows)
    if preprocessor is None:
        pre = fit_preprocessor(source, seed=seed, min_count=mc)
    else:
        if not getattr(preprocessor, "fitted", False):
            raise ValueError("the given preprocessor is not fitted")
        _check_columns(preprocessor, source)
        pre = preprocessor
    parts, extra = _encode_all(source, pre, seed)
    if not any(len(p) for p in parts):
        from keras_ctr_compress.data.errors import DataError

        raise DataError(f"{ds_spec.text}: no data rows (the file is empty, holds only a header, or every row "
                        "was skipped as malformed)")
    info = _info(ds_spec, source, pre, parts, seed, extra)
    info["load_seconds"] = time.perf_counter() - t0
    ds = CTRDataset(name=ds_spec.name, fields=pre.fields, train=parts[0], valid=parts[1], test=parts[2],
                    preprocessor=pre, info=info)
    if use_cache and key is not None:
        _write_cache(key, ds)
    return ds


def _encode_all(source: Source, pre: Preprocessor, seed: int) -> tuple[list[Split], dict]:
    xs: list[list[np.ndarray]] = [[], [], []]
    ys: list[list[np.ndarray]] = [[], [], []]
    p_test: list[np.ndarray] = []
    for chunk in source.chunks():
        codes = chunk_parts(chunk, seed)
        x = pre.transform(chunk)
        for k in range(3):
            sel = codes == k
            if sel.any():
                xs[k].append(x[sel])
                ys[k].append(chunk.labels[sel].astype(np.float32))
        if "p_true" in chunk.extra:
            p_test.append(chunk.extra["p_true"][codes == TEST])
    nf = len(pre.columns)
    parts = [Split(np.concatenate(xs[k]) if xs[k] else np.zeros((0, nf), np.int32),
                   np.concatenate(ys[k]) if ys[k] else np.zeros(0, np.float32)) for k in range(3)]
    extra = {"p_test": np.concatenate(p_test)} if p_test else {}
    return parts, extra


def _info(spec: DataSpec, source: Source, pre: Preprocessor, parts: list[Split], seed: int, extra: dict) -> dict:
    n = sum(len(p) for p in parts)
    pos = sum(float(p.y.sum()) for p in parts)
    info = {
        "spec": spec.text, "rows": n, "positive_rate": pos / n if n else float("nan"),
        "split": "files" if source.presplit else f"hash 8:1:1 (seed {seed})",
        "split_seed": seed, "min_count": pre.min_count, "skipped_rows": source.last_bad.count,
        "skipped_examples": list(source.last_bad.examples), "num_fields": len(pre.columns),
        "preprocessor_bytes": pre.nbytes_on_disk(),
    }
    for k, v in source.info.items():
        info.setdefault(k, v)
    if "p_test" in extra:
        from keras_ctr_compress.data.synthetic import bayes_metrics

        info.update(bayes_metrics(parts[TEST].y, extra["p_test"]))
    return info


# --------------------------------------------------------------------------- cache


def _cacheable(spec: DataSpec) -> bool:
    return spec.kind in ("frappe", "frappe-nfm", "criteo-8k", "movielens100k") and spec.get_bool("cache", True)


def _source_files(spec: DataSpec) -> list[Path]:
    if spec.kind == "frappe":
        base = Path(spec.path).expanduser() if spec.path else paths.shared_dataset_dir("frappe_raw")
        return [base / "frappe.csv" if base.is_dir() else base]
    if spec.kind == "frappe-nfm":
        folder = paths.shared_dataset_dir("frappe")
        return [folder / "frappe.validation.libfm", folder / "frappe.test.libfm"]
    if spec.kind == "criteo-8k":
        return [p for p, _ in data_files(paths.shared_dataset_dir("criteo_widersdnn_8k"), "files", (".tsv",))]
    base = Path(spec.path).expanduser() if spec.path else paths.shared_dataset_dir("movielens_100k_recbole")
    return [base / f"ml-100k.{ext}" for ext in ("inter", "user", "item")]


def _cache_key(spec: DataSpec, seed: int, min_count: int, skip_bad_rows: int) -> str:
    stats = []
    for p in _source_files(spec):
        st = p.stat()  # a missing file raises FileNotFoundError naming it
        stats.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    opts = {k: v for k, v in sorted(spec.options.items()) if k != "cache"}
    blob = json.dumps({"v": CACHE_VERSION, "kind": spec.kind, "opts": opts, "seed": seed,
                       "min_count": min_count, "skip": skip_bad_rows, "files": stats}, sort_keys=True)
    return f"{spec.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _read_cache(key: str, spec: DataSpec) -> CTRDataset | None:
    path = paths.cache_dir() / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            parts = [Split(z[f"x_{n}"], z[f"y_{n}"]) for n in SPLIT_NAMES]
    except Exception:  # a damaged cache file is rebuilt, never trusted
        return None
    pre = Preprocessor.from_dict(meta["preprocessor"], where=str(path))
    return CTRDataset(name=meta["name"], fields=pre.fields, train=parts[0], valid=parts[1], test=parts[2],
                      preprocessor=pre, info=meta["info"])


def _write_cache(key: str, ds: CTRDataset) -> None:
    from keras_ctr_compress.utils import atomic_path

    path = paths.cache_dir() / f"{key}.npz"
    meta = {"name": ds.name, "preprocessor": ds.preprocessor.to_dict(), "info": _jsonable(ds.info)}
    arrays = {f"x_{n}": getattr(ds, n).x for n in SPLIT_NAMES} | {f"y_{n}": getattr(ds, n).y for n in SPLIT_NAMES}
    try:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    except OSError:
        pass  # a read-only or full cache folder only costs speed


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# --------------------------------------------------------------------------- streaming


def iter_encoded(spec: str | DataSpec | Source, preprocessor: Preprocessor, which: str = "train", *,
                 seed: int = 0, skip_bad_rows: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Streams ``(x int32 (n, F), y float32 (n,))`` per source chunk of one split
    (``"train"``, ``"valid"``, ``"test"`` or ``"all"``), re-reading the source."""
    source = spec if isinstance(spec, Source) else open_source(spec, skip_bad_rows=skip_bad_rows)
    _check_columns(preprocessor, source)
    code = None if which == "all" else part_code(which)
    for chunk in source.chunks():
        if code is not None:
            chunk = chunk.select(chunk_parts(chunk, seed) == code)
        if len(chunk):
            yield preprocessor.transform(chunk), chunk.labels.astype(np.float32)


def _rebatch(pieces: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int, shuffle: bool, seed: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Fixed-size batches from variable-size pieces (the last one may be short);
    ``shuffle`` permutes rows within each piece (a chunk-local shuffle)."""
    rng = np.random.default_rng(seed)
    bx, by, held = [], [], 0
    for x, y in pieces:
        if shuffle:
            perm = rng.permutation(len(y))
            x, y = x[perm], y[perm]
        bx.append(x)
        by.append(y)
        held += len(y)
        if held >= batch_size:
            x_all, y_all = np.concatenate(bx), np.concatenate(by)
            full = (held // batch_size) * batch_size
            for s in range(0, full, batch_size):
                yield x_all[s: s + batch_size], y_all[s: s + batch_size]
            bx, by, held = [x_all[full:]], [y_all[full:]], held - full
    if held:
        yield np.concatenate(bx), np.concatenate(by)


def stream_tf_dataset(spec: str | DataSpec, preprocessor: Preprocessor, which: str = "train", *,
                      batch_size: int = 1024, seed: int = 0, shuffle: bool = False, skip_bad_rows: int = 0):
    """A ``tf.data.Dataset`` of ``(x int32 (b, F), y float32 (b,))`` batches that
    re-reads ``spec`` chunk by chunk on every iteration (memory: about one chunk),
    for data larger than memory. ``shuffle`` permutes rows within each chunk only
    (pair it with ``.shuffle(k)`` over batches for more mixing)."""
    import tensorflow as tf

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if which != "all":
        part_code(which)
    nf = len(preprocessor.columns)
    epoch = {"n": 0}

    def gen():
        epoch["n"] += 1  # a different within-chunk order each pass, still seeded
        pieces = iter_encoded(spec, preprocessor, which, seed=seed, skip_bad_rows=skip_bad_rows)
        yield from _rebatch(pieces, batch_size, shuffle, seed * 1000003 + epoch["n"])

    return tf.data.Dataset.from_generator(
        gen, output_signature=(tf.TensorSpec((None, nf), tf.int32), tf.TensorSpec((None,), tf.float32)))


def iter_tf_dataset(split: Split, batch_size: int = 1024, shuffle: bool = True, seed: int = 0):
    """A ``tf.data.Dataset`` of ``(x, y)`` batches over an in-memory split (shuffled
    each epoch with ``seed`` when ``shuffle``)."""
    import tensorflow as tf

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if shuffle:
        ds = ds.shuffle(max(1, len(split)), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
