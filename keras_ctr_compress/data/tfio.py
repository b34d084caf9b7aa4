"""tensorflow-io input for ``parquet:``, ``csv:`` and ``arrow:`` specs, detected at run time.

tensorflow-io is an optional extra (``pip install keras-ctr-compress[io]``). Its last
release (0.37.1) is built for TensorFlow 2.16: on other TF versions the Python package
imports but its native ops (``libtensorflow_io.so``) do not load. :func:`tfio_status`
finds out once per process by loading them; :func:`open_table_source` then picks the
reader and prints ONE line saying which is in use::

    [data] reader: tensorflow-io 0.37.1 (native ops load on TF 2.16.2)
    [data] reader: pyarrow + tf.data (tensorflow-io not installed)
    [data] reader: pyarrow + tf.data (tensorflow-io 0.37.1 native ops do not load on TF 2.21.0: ...)

The spec option ``reader=auto|tfio|pyarrow`` (default ``auto``: tensorflow-io when it
loads) overrides the choice; ``reader=tfio`` where it does not load is an error.

What goes through tensorflow-io, and where it falls back (each with a one-line notice):

- Parquet: ``tfio.IODataset.from_parquet`` streams the schema's columns. A null value
  in a file kills the process inside tensorflow-io (measured, uncatchable), so each
  file's null counts are read from its metadata with pyarrow first; a file with nulls
  in a used column, or without null counts, is read with pyarrow instead.
- CSV: ``tfio.IOTensor.from_csv`` (reads the whole file into memory; comma-separated
  with a header only: it has no delimiter option). Other layouts and ``.gz`` files use
  the pyarrow block reader, which also gives exact line numbers in messages (the
  tensorflow-io path names data rows, ``FILE:row N``).
- Arrow IPC / Feather v2: ``tfio.arrow.ArrowFeatherDataset``.

Rows from either reader go through the same checks (labels 0/1, numbers) and give
the same chunks, so ids and vocabularies do not depend on the reader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from keras_ctr_compress import console
from keras_ctr_compress.data.errors import DataError, located
from keras_ctr_compress.data.readers import (
    CATEGORICAL,
    ArrowSource,
    CSVSource,
    ParquetSource,
    Source,
    TableSchema,
    check_columns,
)

READERS = ("auto", "tfio", "pyarrow")
TFIO = "tensorflow-io"
PYARROW = "pyarrow + tf.data"


@dataclass(frozen=True)
class TfioStatus:
    """Whether tensorflow-io's native ops load here.

    Attributes:
        available: the ops loaded.
        version: tensorflow-io's version (None when not installed).
        tf_version: TensorFlow's version (None when TF is not importable).
        reason: why not, in one line (empty when available).
    """

    available: bool
    version: str | None
    tf_version: str | None
    reason: str = ""


_status: TfioStatus | None = None


def tfio_status(refresh: bool = False) -> TfioStatus:
    """Loads tensorflow-io's native ops once per process and reports the result.

    Importing ``tensorflow_io`` succeeds even where its ops cannot load (the library
    loads ``libtensorflow_io.so`` lazily), so this touches one op to force the load.

    Example:

    >>> s = tfio_status()          # doctest: +SKIP
    >>> s.available, s.reason      # doctest: +SKIP
    (False, 'tensorflow-io not installed')
    """
    global _status
    if _status is not None and not refresh:
        return _status
    import importlib.util

    if importlib.util.find_spec("tensorflow_io") is None:  # no need to import TF to say so
        _status = TfioStatus(False, None, None, "tensorflow-io not installed")
        return _status
    try:
        import tensorflow as tf

        tf_version = tf.__version__
    except Exception as e:  # noqa: BLE001  (any import failure means "no TF here")
        _status = TfioStatus(False, None, None, f"TensorFlow does not import ({type(e).__name__})")
        return _status
    try:
        import tensorflow_io as tfio
    except ImportError:  # (also when tensorflow-io is absent: checked by find_spec above)
        _status = TfioStatus(False, None, tf_version, "tensorflow-io not installed")
        return _status
    except Exception as e:  # noqa: BLE001  (a broken install must not stop the fallback)
        _status = TfioStatus(False, None, tf_version, f"tensorflow-io does not import: {_first_line(e)}")
        return _status
    version = getattr(tfio, "__version__", "?")
    try:
        from tensorflow_io.python.ops import core_ops

        core_ops.io_parquet_readable_info  # noqa: B018  (attribute access loads the .so)
    except Exception as e:  # noqa: BLE001  (NotImplementedError, NotFoundError, OSError seen)
        _status = TfioStatus(False, version, tf_version,
                             f"tensorflow-io {version} native ops do not load on TF {tf_version}: {_first_line(e)}")
        return _status
    _status = TfioStatus(True, version, tf_version)
    return _status


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def choose_reader(requested: str = "auto") -> str:
    """``"tfio"`` or ``"pyarrow"`` for a requested ``auto`` / ``tfio`` / ``pyarrow``.

    Raises:
        ValueError: an unknown reader, or ``tfio`` where its ops do not load (with the reason).
    """
    requested = (requested or "auto").strip().lower()
    if requested not in READERS:
        raise ValueError(f"reader must be one of {', '.join(READERS)}; got {requested!r}")
    if requested == "pyarrow":
        return "pyarrow"
    status = tfio_status()
    if status.available:
        return "tfio"
    if requested == "tfio":
        raise ValueError(f"reader=tfio was asked for but {status.reason} (install the io extra on a "
                         "TensorFlow version tensorflow-io supports, e.g. TF 2.16, or use reader=auto)")
    return "pyarrow"


def reader_line(reader: str, requested: str = "auto") -> str:
    """The one line that says which reader is in use (and why)."""
    s = tfio_status()
    if reader == "tfio":
        return f"[data] reader: {TFIO} {s.version} (native ops load on TF {s.tf_version})"
    why = "reader=pyarrow" if requested == "pyarrow" else s.reason
    return f"[data] reader: {PYARROW} ({why})"


def open_table_source(kind: str, files: Sequence[tuple[Path, str | None]], schema: TableSchema, *,
                      reader: str = "auto", **kw) -> Source:
    """The source of a ``parquet:`` / ``csv:`` / ``arrow:`` spec with the chosen reader.

    Args:
        kind: ``"parquet"``, ``"csv"`` or ``"arrow"``.
        files: ``(path, part)`` pairs (see ``datasets.data_files``).
        schema: the spec's schema.
        reader: ``auto`` / ``tfio`` / ``pyarrow``.
        **kw: ``skip_bad_rows``, ``limit``.
    """
    chosen = choose_reader(reader)
    console.notice(reader_line(chosen, reader))
    classes = {
        ("parquet", "pyarrow"): ParquetSource, ("parquet", "tfio"): TfioParquetSource,
        ("arrow", "pyarrow"): ArrowSource, ("arrow", "tfio"): TfioArrowSource,
        ("csv", "pyarrow"): CSVSource, ("csv", "tfio"): CSVSource,
    }
    if (kind, chosen) == ("csv", "tfio") and _tfio_csv_ok(schema, files):
        src: Source = TfioCSVSource(files, schema, **kw)
    else:
        if (kind, chosen) == ("csv", "tfio"):
            console.notice("[data] csv: tensorflow-io reads only comma-separated files with a header and "
                           "no .gz; this one is read with pyarrow")
        src = classes[(kind, chosen)](files, schema, **kw)
    src.info["reader"] = TFIO if isinstance(src, _TfioMixin) else PYARROW
    return src


def _tfio_csv_ok(schema: TableSchema, files) -> bool:
    return schema.delimiter == "," and schema.header and not any(str(p).endswith(".gz") for p, _ in files)


# --------------------------------------------------------------------------- sources


class _TfioMixin:
    """Marks the tensorflow-io sources (for ``info["reader"]``)."""


def _batch_from_tensors(columns: dict, needed: list[str], nulls: dict | None = None) -> pa.RecordBatch:
    """A pyarrow batch from tensorflow-io's tensors (strings arrive as bytes)."""
    arrays = []
    for name in needed:
        values = columns[name].numpy()
        mask = None if nulls is None or name not in nulls else nulls[name]
        if values.dtype == object:
            # binary -> string validates UTF-8 in C++ (a bad byte raises ArrowInvalid)
            arrays.append(pa.array(values, pa.binary(), mask=mask).cast(pa.string()))
        else:
            arrays.append(pa.array(values, mask=mask))
    return pa.RecordBatch.from_arrays(arrays, names=needed)


def _parquet_has_nulls(path: Path, needed: list[str]) -> str | None:
    """Why a Parquet file must not go to tensorflow-io (nulls, or unknown null
    counts), from its metadata alone; None when it is safe."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(located(path, 0, f"not a readable Parquet file ({_first_line(e)})")) from None
    index = {meta.schema.column(k).name: k for k in range(meta.num_columns)}
    check_columns(path, index, needed, "Parquet file")
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for name in needed:
            stats = group.column(index[name]).statistics
            if stats is None or not stats.has_null_count:
                return f"column {name!r} has no null count in its metadata"
            if stats.null_count:
                return f"column {name!r} holds {stats.null_count} nulls (in row group {g})"
    return None


class TfioParquetSource(_TfioMixin, ParquetSource):
    """Parquet through ``tfio.IODataset.from_parquet`` (see the module docstring)."""

    def _batches(self, path: Path, needed: list[str]) -> Iterator[pa.RecordBatch]:
        why = _parquet_has_nulls(path, needed)
        if why is not None:
            # tensorflow-io aborts the process on a null; pyarrow reads it safely.
            console.notice(f"[data] {path.name}: {why}; read with pyarrow (tensorflow-io aborts on nulls)")
            yield from ParquetSource._batches(self, path, needed)
            return
        import tensorflow_io as tfio

        ds = tfio.IODataset.from_parquet(str(path), columns=needed).batch(self.chunk_rows)
        for batch in _guarded(ds, path):
            yield _batch_from_tensors(batch, needed)


class TfioArrowSource(_TfioMixin, ArrowSource):
    """Arrow IPC / Feather v2 through ``tfio.arrow.ArrowFeatherDataset``."""

    def _batches(self, path: Path, needed: list[str]) -> Iterator[pa.RecordBatch]:
        import pyarrow.ipc as ipc
        import tensorflow as tf
        import tensorflow_io.arrow as arrow_io

        try:
            schema = ipc.open_file(pa.memory_map(str(path), "r")).schema
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(located(path, 0, f"not a readable Arrow IPC (Feather v2) file ({_first_line(e)})")) from None
        check_columns(path, schema.names, needed, "Arrow file")
        cols = tuple(schema.get_field_index(n) for n in needed)
        types = tuple(_tf_type(schema.field(n).type, tf, path, n) for n in needed)
        ds = arrow_io.ArrowFeatherDataset([str(path)], columns=cols, output_types=types,
                                          output_shapes=tuple([] for _ in needed), batch_size=self.chunk_rows)
        for batch in _guarded(ds, path):
            yield _batch_from_tensors(dict(zip(needed, batch, strict=True)), needed)


def _tf_type(t: pa.DataType, tf, path: Path, name: str):
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return tf.string
    if pa.types.is_boolean(t):
        return tf.bool
    if pa.types.is_integer(t):
        return tf.int64 if t.bit_width == 64 else tf.int32
    if pa.types.is_floating(t):
        return tf.float64 if t.bit_width == 64 else tf.float32
    raise DataError(located(path, 0, f"column {name} has Arrow type {t}, which tensorflow-io's Arrow reader "
                                     "does not take (expected strings, integers, floats or booleans); use reader=pyarrow"))


class TfioCSVSource(_TfioMixin, ParquetSource):
    """Comma-separated text with a header through ``tfio.IOTensor.from_csv``.

    The whole file is read into memory (tensorflow-io's CSV reader has no streaming
    mode); missing values come from its null mask. Messages name data rows
    (``FILE:row N``); the pyarrow reader names physical lines.
    """

    def __init__(self, files: Sequence[tuple[Path, str | None]], schema: TableSchema, **kw):
        super().__init__(files, schema, **kw)
        self.name = "csv"

    def _batches(self, path: Path, needed: list[str]) -> Iterator[pa.RecordBatch]:
        import tensorflow_io as tfio

        CSVSource([(path, None)], self.schema)._layout_for(path)  # header check, same message
        try:
            t = tfio.IOTensor.from_csv(str(path))
            columns = {n: t(n).to_tensor() for n in needed}
            kinds = {c.name: c.kind for c in self.columns}
            # Numbers (and the label) need the null mask: tensorflow-io fills them with 0.
            nulls = {n: t.isnull(n).to_tensor().numpy() for n in needed if kinds.get(n) != CATEGORICAL}
        except Exception as e:  # noqa: BLE001  (tf.errors.* for malformed rows)
            raise DataError(located(path, 0, f"tensorflow-io cannot parse this CSV ({_first_line(e)}); "
                                             "reader=pyarrow names the bad line")) from None
        batch = _batch_from_tensors(columns, needed, nulls)
        for s in range(0, batch.num_rows, self.chunk_rows):
            yield batch.slice(s, self.chunk_rows)


def _guarded(ds, path: Path) -> Iterator:
    """Iterates a tf.data dataset, turning TensorFlow's errors into a located DataError."""
    it = iter(ds)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001  (tf.errors.OpError and friends)
            raise DataError(located(path, 0, f"tensorflow-io failed reading it ({_first_line(e)})")) from None
        yield batch

