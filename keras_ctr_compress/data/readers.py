"""Streaming readers: every source yields :class:`Chunk` s of raw column values.

A chunk holds one block of rows as numpy arrays: categorical columns as object
arrays of ``str`` (``""`` = missing), numeric columns as float64 (NaN = missing),
pre-encoded ``id`` columns as numbers, int8 labels in {0, 1}, and for every row its
line in the source file (for messages) and its global row index (for the split).
No reader holds more than one block of a file in memory.

Malformed rows raise :class:`~keras_ctr_compress.data.errors.DataError` with a
one-line ``FILE:LINE: what (expected ...)`` message; with ``skip_bad_rows=N`` up to
N of them are skipped and counted instead. What counts as malformed: an empty line,
bytes that are not UTF-8, the wrong number of columns (or libFM tokens), a label
other than 0/1 (libFM: 1/0/-1), a numeric value that is not a number, a libFM token
that is not ``featid:1``. Numeric values ``nan`` / ``inf`` (any case) are accepted
and treated as missing, like an empty value: they carry no usable magnitude, and
rejecting them would make a whole file unreadable for one odd value.

Delimited text is parsed block by block with pyarrow's C++ CSV parser (quoting off
for TSV); line numbers stay exact because empty and non-UTF-8 lines are removed
from a block before parsing and rows with the wrong column count are reported by
pyarrow's invalid-row handler with their physical line.
"""

from __future__ import annotations

import gzip
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from keras_ctr_compress.data.errors import BadRows, DataError, located

CATEGORICAL, NUMERIC, ID = "categorical", "numeric", "id"
KINDS = (CATEGORICAL, NUMERIC, ID)
DEFAULT_BLOCK_BYTES = 8 << 20
DEFAULT_CHUNK_ROWS = 1 << 16

# What pyarrow's string -> float64 cast accepts (RE2 syntax), so that the slow path
# agrees with the fast one; nan / inf are accepted here and mapped to missing later.
_NUMBER_RE = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[iI][nN][fF]([iI][nN][iI][tT][yY])?|[nN][aA][nN])$"
_LABELS01 = ("0", "1", "0.0", "1.0")


@dataclass(frozen=True)
class Column:
    """A raw input column and how it becomes ids (``categorical``, ``numeric`` or ``id``)."""

    name: str
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class Chunk:
    """One block of raw rows.

    Attributes:
        columns: column name -> values (see the module docstring for the dtypes).
        labels: int8 ``(n,)`` in {0, 1}.
        source: the file (or dataset) the rows came from, for messages.
        lines: int64 ``(n,)`` line (1-based; Parquet: row) of each row in ``source``.
        rows: int64 ``(n,)`` global row index across all files of the dataset,
            counting malformed rows too; the seeded split hashes it.
        part: ``"train"`` / ``"valid"`` / ``"test"`` when the source's files define
            the split, else ``None``.
        extra: per-row side arrays (the synthetic generator's true probability).
    """

    columns: dict[str, np.ndarray]
    labels: np.ndarray
    source: str
    lines: np.ndarray
    rows: np.ndarray
    part: str | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def first_line(self) -> int:
        """Line of the chunk's first row (0 for an empty chunk)."""
        return int(self.lines[0]) if len(self) else 0

    def select(self, index) -> Chunk:
        """The rows picked by a boolean mask, an index array or a slice."""
        return Chunk(
            columns={k: v[index] for k, v in self.columns.items()},
            labels=self.labels[index], source=self.source, lines=self.lines[index],
            rows=self.rows[index], part=self.part, extra={k: v[index] for k, v in self.extra.items()},
        )


class Source:
    """Base of all readers: ``chunks()`` re-reads the data from the start each call.

    Subclasses set ``name``, ``columns`` (list of :class:`Column`), ``presplit``
    (whether chunks carry ``part``) and implement ``_chunks(bad)``.
    """

    name: str = "data"
    columns: list[Column]
    presplit: bool = False

    def __init__(self, *, skip_bad_rows: int = 0, limit: int | None = None):
        if skip_bad_rows < 0:
            raise ValueError(f"skip_bad_rows must be >= 0, got {skip_bad_rows}")
        if limit is not None and limit <= 0:
            raise ValueError(f"limit must be a positive row count, got {limit}")
        self.skip_bad_rows = int(skip_bad_rows)
        self.limit = limit
        self.info: dict = {}
        self.last_bad = BadRows(self.skip_bad_rows)

    def chunks(self) -> Iterator[Chunk]:
        """Streams the rows; after a complete pass ``last_bad.count`` is the number of
        malformed rows skipped."""
        self.last_bad = BadRows(self.skip_bad_rows)
        inner = self._chunks(self.last_bad)
        try:
            left = self.limit
            for chunk in inner:
                if left is not None and len(chunk) >= left:
                    yield chunk.select(slice(0, left))
                    return
                if left is not None:
                    left -= len(chunk)
                if len(chunk):
                    yield chunk
        finally:
            inner.close()  # closes the file now, even when the limit stopped us early

    def _chunks(self, bad: BadRows) -> Iterator[Chunk]:
        raise NotImplementedError

    def column_names(self, kind: str | None = None) -> list[str]:
        return [c.name for c in self.columns if kind is None or c.kind == kind]


# --------------------------------------------------------------------------- blocks


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_first_line(path: Path) -> bytes:
    """The first line of ``path`` (without its newline), for format detection."""
    with _open_binary(path) as fh:
        return fh.readline(1 << 20).rstrip(b"\r\n")


def iter_blocks(path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES, skip_lines: int = 0
                ) -> Iterator[tuple[bytes, int]]:
    """Yields ``(block, first_line)``: whole lines of ``path`` (each block ends with
    a newline; a last line without one gets one), never more than about
    ``block_bytes`` plus one line in memory. ``skip_lines`` leading lines (a header)
    are consumed first; line numbers are 1-based and count them."""
    with _open_binary(path) as fh:
        line = 1
        for _ in range(skip_lines):
            if not fh.readline():
                return
            line += 1
        carry = b""
        while True:
            data = fh.read(block_bytes)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n")
            if cut < 0:  # a line longer than a block: keep reading
                carry = data
                continue
            block, carry = data[: cut + 1], data[cut + 1:]
            yield block, line
            line += block.count(b"\n")
        if carry:
            yield carry + b"\n", line


def _line_bounds(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and newline offsets of every line of a block (vectorised)."""
    buf = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return starts, ends


def _utf8_bad_lines(block: bytes, starts: np.ndarray) -> list[int]:
    """Indices of lines holding bytes that are not UTF-8 (normally none: one fast
    C-level decode of the whole block decides)."""
    try:
        block.decode("utf-8")
        return []
    except UnicodeDecodeError:
        pass
    bad, pos = [], 0
    while True:
        try:
            block[pos:].decode("utf-8")
            return bad
        except UnicodeDecodeError as e:
            k = int(np.searchsorted(starts, pos + e.start, side="right") - 1)
            bad.append(k)
            pos = int(starts[k + 1]) if k + 1 < len(starts) else len(block)
            if pos >= len(block):
                return bad


def prescan_block(block: bytes, first_line: int, source: str, what_row: str
                  ) -> tuple[bytes, np.ndarray, list[tuple[int, str]]]:
    """Removes empty lines and lines that are not UTF-8 from a block.

    Returns the cleaned block, the line number of each line kept, and the
    ``(line, message)`` of each line removed.
    """
    starts, ends = _line_bounds(block)
    lens = ends - starts
    buf = np.frombuffer(block, dtype=np.uint8)
    empty = (lens == 0) | ((lens == 1) & (buf[starts] == 13))
    drop = empty.copy()
    problems = [(first_line + int(k), located(source, first_line + int(k), f"empty line (expected {what_row})"))
                for k in np.flatnonzero(empty)]
    for k in _utf8_bad_lines(block, starts):
        if not drop[k]:
            drop[k] = True
            problems.append((first_line + k, located(source, first_line + k, "bytes that are not valid UTF-8 (expected UTF-8 text)")))
    lines = first_line + np.arange(len(starts), dtype=np.int64)
    if not drop.any():
        return block, lines, problems
    keep = np.flatnonzero(~drop)
    cleaned = b"".join(block[starts[k]: ends[k] + 1] for k in keep)
    return cleaned, lines[keep], problems


def report_bad(bad: BadRows, problems: list[tuple[int, str]]) -> set[int]:
    """Feeds a block's problems to the budget in line order (one per line); returns
    the lines to drop."""
    seen: set[int] = set()
    for line, message in sorted(problems, key=lambda p: p[0]):
        if line not in seen:
            seen.add(line)
            bad.add(message)
    return seen


def _number_mask(col: pa.Array) -> np.ndarray:
    """True where a string column holds a number or is empty (missing)."""
    ok = pc.or_(pc.match_substring_regex(col, _NUMBER_RE), pc.equal(col, ""))
    return np.asarray(ok.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def to_float(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric pyarrow column as float64 with NaN for null, nan and +-inf."""
    x = np.array(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)  # writable copy
    x[~np.isfinite(x)] = np.nan
    return x


def labels_01(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Labels as float64 0.0 / 1.0, NaN where the value is not 0 or 1 (or null).
    Text labels must be exactly 0, 1, 0.0 or 1.0; numeric and boolean ones 0 or 1."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        ok = pc.is_in(col, value_set=pa.array(_LABELS01)).fill_null(False)
        return np.where(np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool),
                        to_float(pc.if_else(ok, col, None)), np.nan)
    try:
        x = to_float(col)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.full(len(col), np.nan)
    x[(x != 0) & (x != 1)] = np.nan
    return x


def to_str(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A pyarrow column as an object array of ``str`` with ``""`` for null."""
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.string())
    return col.fill_null("").to_numpy(zero_copy_only=False).astype(object)


# --------------------------------------------------------------------------- delimited


@dataclass(frozen=True)
class TextFormat:
    """Layout of one delimited file: delimiter, header, column names in file order."""

    delimiter: str
    header: bool
    names: tuple[str, ...]
    quoted: bool = True


class DelimitedSource(Source):
    """Delimited text (Criteo TSV, Kaggle-style CSV, schema CSV) read block by block.

    Args:
        files: ``(path, part)`` pairs read in order; ``part`` is ``"train"`` /
            ``"valid"`` / ``"test"`` when the files are the split, else ``None``.
        layout: a :class:`TextFormat` or a function path -> TextFormat (Criteo
            detects TSV vs CSV-with-header per file).
        label: the label column's name.
        columns: the used input columns (others in the file are ignored).
        block_bytes: bytes read per block (about the memory held per chunk).
    """

    def __init__(self, files: Sequence[tuple[Path, str | None]], layout: TextFormat | Callable[[Path], TextFormat],
                 label: str, columns: Sequence[Column], *, name: str = "csv",
                 block_bytes: int = DEFAULT_BLOCK_BYTES, **kw):
        super().__init__(**kw)
        self.files = [(Path(p), part) for p, part in files]
        self._layout = layout
        self.label = label
        self.columns = list(columns)
        self.name = name
        self.block_bytes = int(block_bytes)
        self.presplit = any(part is not None for _, part in self.files)

    def layout_of(self, path: Path) -> TextFormat:
        return self._layout(path) if callable(self._layout) else self._layout

    def _chunks(self, bad: BadRows) -> Iterator[Chunk]:
        offset = 0
        for path, part in self.files:
            fmt = self.layout_of(path)  # validates the header, if any
            first_data = 2 if fmt.header else 1
            last = first_data
            for block, first in iter_blocks(path, self.block_bytes, skip_lines=1 if fmt.header else 0):
                chunk = self._parse_block(block, first, path, fmt, bad)
                chunk.rows = offset + (chunk.lines - first_data)
                chunk.part = part
                last = first + block.count(b"\n")
                yield chunk
            offset += last - first_data

    def _expected_row(self, fmt: TextFormat) -> str:
        return f"{len(fmt.names)} {'tab' if fmt.delimiter == chr(9) else repr(fmt.delimiter)}-separated columns"

    def _read(self, block: bytes, fmt: TextFormat, numeric_as: pa.DataType, invalid: list):
        used = {c.name for c in self.columns} | {self.label}
        types = {c.name: (pa.string() if c.kind == CATEGORICAL else numeric_as) for c in self.columns}
        types[self.label] = pa.string()

        def handler(row):
            invalid.append((row.number, row.actual_columns))
            return "skip"

        return pacsv.read_csv(
            io.BytesIO(block),
            read_options=pacsv.ReadOptions(column_names=list(fmt.names), use_threads=False,
                                           block_size=max(1 << 20, len(block) + 1)),
            parse_options=pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char='"' if fmt.quoted else False,
                                             ignore_empty_lines=False, invalid_row_handler=handler),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=[n for n in fmt.names if n in used],
                                                 null_values=[""], strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False),
        )

    def _empty_chunk(self, src: str) -> Chunk:
        cols = {c.name: np.empty(0, dtype=object if c.kind == CATEGORICAL else np.float64) for c in self.columns}
        none = np.empty(0, dtype=np.int64)
        return Chunk(cols, np.empty(0, dtype=np.int8), src, none, none.copy())

    def _parse_block(self, block: bytes, first: int, path: Path, fmt: TextFormat, bad: BadRows) -> Chunk:
        src = str(path)
        expected = self._expected_row(fmt)
        block, lines, problems = prescan_block(block, first, src, f"a row of {expected}")
        if not block:  # every line of the block was empty or not UTF-8 (pyarrow refuses an empty input)
            report_bad(bad, problems)
            return self._empty_chunk(src)
        invalid: list[tuple[int, int]] = []
        numeric_names = [c.name for c in self.columns if c.kind != CATEGORICAL]
        try:
            table = self._read(block, fmt, pa.float64(), invalid)
            numeric_strings = False
        except pa.ArrowInvalid:
            # A numeric column holds a non-number somewhere: re-read those columns as
            # text to find which rows (the fast path has no row numbers).
            invalid.clear()
            table = self._read(block, fmt, pa.string(), invalid)
            numeric_strings = True
        if any(num is None for num, _ in invalid):  # never seen with use_threads=False
            raise DataError(located(src, first, f"rows with the wrong number of columns (expected {expected})"))
        wrong = np.array([num - 1 for num, _ in invalid], dtype=np.int64)
        for (num, ncols) in invalid:
            line = int(lines[num - 1])
            problems.append((line, located(src, line, f"{ncols} columns (expected {expected})")))
        row_lines = np.delete(lines, wrong) if len(wrong) else lines
        if table.num_rows != len(row_lines):  # a parser surprise must not shift lines silently
            raise DataError(located(src, first, f"could not align {table.num_rows} parsed rows with {len(row_lines)} lines"))
        keep = np.ones(table.num_rows, dtype=bool)
        label_col = table.column(self.label)
        labf = labels_01(label_col)
        label_ok = ~np.isnan(labf)
        for k in np.flatnonzero(~label_ok):
            problems.append((int(row_lines[k]), located(src, int(row_lines[k]), f"label {label_col[int(k)].as_py()!r} (expected 0 or 1)")))
        keep &= label_ok
        if numeric_strings:
            for name in numeric_names:
                col = table.column(name)
                ok = _number_mask(col)
                for k in np.flatnonzero(~ok):
                    problems.append((int(row_lines[k]), located(src, int(row_lines[k]), f"column {name} = {col[int(k)].as_py()!r} is not a number (expected a number, or empty for missing)")))
                keep &= ok
        report_bad(bad, problems)
        if not keep.all():
            table = table.filter(pa.array(keep))
            row_lines = row_lines[keep]
        cols: dict[str, np.ndarray] = {}
        for c in self.columns:
            col = table.column(c.name)
            if c.kind == CATEGORICAL:
                cols[c.name] = to_str(col)
            else:
                cols[c.name] = to_float(pc.if_else(pc.equal(col, ""), None, col) if numeric_strings else col)
        return Chunk(cols, labf[keep].astype(np.int8), src, row_lines, row_lines.copy())


# --------------------------------------------------------------------------- criteo

CRITEO_NUMERIC = tuple(f"I{k}" for k in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{k}" for k in range(1, 27))
CRITEO_COLUMNS = [Column(n, NUMERIC) for n in CRITEO_NUMERIC] + [Column(n, CATEGORICAL) for n in CRITEO_CATEGORICAL]
_CRITEO_TSV = TextFormat("\t", False, ("label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL), quoted=False)


def criteo_layout(path: Path) -> TextFormat:
    """TSV without header (the DAC / Kaggle ``train.txt`` layout), or a CSV whose
    header is ``[Id,]Label,I1..I13,C1..C26`` (any case) as in the Kaggle CSV copies.
    Either way the columns get our names (``label``, ``I1``.., ``C1``..), so a
    vocabulary fitted on one layout encodes the other."""
    first = read_first_line(path).decode("utf-8", errors="replace")
    if "," in first and "\t" not in first:
        lowered = [n.strip().strip('"').lower() for n in first.split(",")]
        ours = [n.lower() for n in _CRITEO_TSV.names]
        if lowered == ours:
            return TextFormat(",", True, _CRITEO_TSV.names, quoted=True)
        if lowered == ["id", *ours]:
            return TextFormat(",", True, ("Id", *_CRITEO_TSV.names), quoted=True)
        raise DataError(located(path, 1, f"header {first[:120]!r} (expected [Id,]Label,I1..I13,C1..C26, or headerless tab-separated rows)"))
    return _CRITEO_TSV


class CriteoSource(DelimitedSource):
    """Raw Criteo DAC rows: label, I1-I13 (integers, may be empty), C1-C26 (hashed
    strings, may be empty); the layout is detected per file (see :func:`criteo_layout`)."""

    def __init__(self, files: Sequence[tuple[Path, str | None]], *, name: str = "criteo", **kw):
        super().__init__(files, criteo_layout, "label", CRITEO_COLUMNS, name=name, **kw)


# --------------------------------------------------------------------------- schema files


@dataclass(frozen=True)
class TableSchema:
    """What a ``csv:`` / ``parquet:`` schema JSON says (see :func:`load_schema`)."""

    label: str
    columns: tuple[Column, ...]
    delimiter: str = ","
    header: bool = True
    names: tuple[str, ...] | None = None
    #: vocabulary threshold for this data (None: the dataset default, 1)
    min_count: int | None = None


def load_schema(path: str | Path) -> TableSchema:
    """Reads a schema JSON::

        {"label": "clicked", "categorical": ["site", "app"], "numeric": ["price"],
         "id": ["user_idx"], "delimiter": ",", "header": true, "min_count": 5,
         "columns": ["clicked", "site", ...]}   # file column order; needed when header is false

    Only ``label`` and at least one feature list are required. ``id`` columns hold
    already-encoded non-negative integers (vocabulary = max id + 1). ``min_count``:
    categories seen fewer times in the training rows map to the OOV id (default 1;
    a spec's ``min_count=`` option overrides it).
    """
    import json

    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: schema file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: schema is not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: schema must be a JSON object, got {type(raw).__name__}")
    allowed = {"label", "categorical", "numeric", "id", "delimiter", "header", "columns", "min_count"}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown schema keys {sorted(unknown)} (expected {sorted(allowed)})")
    label = raw.get("label")
    if not isinstance(label, str) or not label:
        raise ValueError(f"{path}: schema needs \"label\": the label column's name, got {label!r}")
    cols: list[Column] = []
    for kind in KINDS:
        names = raw.get(kind, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{path}: schema {kind!r} must be a list of column names, got {names!r}")
        cols += [Column(n, kind) for n in names]
    if not cols:
        raise ValueError(f"{path}: schema lists no feature columns (expected categorical, numeric or id lists)")
    dup = [n for n, k in Counter([c.name for c in cols] + [label]).items() if k > 1]
    if dup:
        raise ValueError(f"{path}: columns used twice in the schema: {dup}")
    delimiter = raw.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"{path}: schema delimiter must be one character, got {delimiter!r}")
    header = raw.get("header", True)
    if not isinstance(header, bool):
        raise ValueError(f"{path}: schema header must be true or false, got {header!r}")
    names = raw.get("columns")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: schema columns must be a list of names, got {names!r}")
        missing = [c.name for c in cols if c.name not in names] + ([label] if label not in names else [])
        if missing:
            raise ValueError(f"{path}: schema uses columns not in its \"columns\" list: {missing}")
        names = tuple(names)
    elif not header:
        raise ValueError(f"{path}: a schema with \"header\": false needs \"columns\" (the file's column names in order)")
    min_count = raw.get("min_count")
    if min_count is not None and (isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1):
        raise ValueError(f"{path}: schema min_count must be an integer >= 1, got {min_count!r}")
    return TableSchema(label, tuple(cols), delimiter, header, names, min_count)


class CSVSource(DelimitedSource):
    """Delimited text described by a :class:`TableSchema`."""

    def __init__(self, files: Sequence[tuple[Path, str | None]], schema: TableSchema, **kw):
        self.schema = schema
        super().__init__(files, self._layout_for, schema.label, schema.columns, name="csv", **kw)

    def _layout_for(self, path: Path) -> TextFormat:
        s = self.schema
        if not s.header:
            return TextFormat(s.delimiter, False, s.names or (), quoted=True)
        first = read_first_line(path).decode("utf-8", errors="replace")
        if not first.strip():
            raise DataError(located(path, 1, f"empty file or empty header line (expected a {s.delimiter!r}-separated "
                                             "header with the schema's columns)"))
        names = tuple(n.strip().strip('"') for n in first.split(s.delimiter))
        needed = [c.name for c in s.columns] + [s.label]
        missing = [n for n in needed if n not in names]
        if missing:
            raise DataError(located(path, 1, f"header lacks columns {missing} (expected the schema's columns in a {s.delimiter!r}-separated header)"))
        return TextFormat(s.delimiter, True, names, quoted=True)


class ParquetSource(Source):
    """Parquet files read with ``pyarrow.parquet.ParquetFile.iter_batches`` (only the
    schema's columns). Messages name ``FILE:row N`` (1-based row within the file)."""

    def __init__(self, files: Sequence[tuple[Path, str | None]], schema: TableSchema, *,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, **kw):
        super().__init__(**kw)
        self.files = [(Path(p), part) for p, part in files]
        self.schema = schema
        self.columns = list(schema.columns)
        self.label = schema.label
        self.name = "parquet"
        self.chunk_rows = int(chunk_rows)
        self.presplit = any(part is not None for _, part in self.files)

    def _chunks(self, bad: BadRows) -> Iterator[Chunk]:
        offset = 0
        for path, part in self.files:
            needed = [c.name for c in self.columns] + [self.label]
            start = 0
            for batch in self._batches(path, needed):
                chunk = self._convert(batch, path, start, bad)
                chunk.rows = offset + chunk.lines - 1
                chunk.part = part
                start += batch.num_rows
                yield chunk
            offset += start

    def _batches(self, path: Path, needed: list[str]) -> Iterator[pa.RecordBatch]:
        """The file's record batches of the ``needed`` columns (subclasses read other
        formats or through other libraries and share the row checks of :meth:`_convert`)."""
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(located(path, 0, f"not a readable Parquet file ({str(e).splitlines()[0][:160]})")) from None
        check_columns(path, pf.schema_arrow.names, needed, "Parquet file")
        yield from pf.iter_batches(batch_size=self.chunk_rows, columns=needed)

    def _convert(self, batch: pa.RecordBatch, path: Path, start: int, bad: BadRows) -> Chunk:
        src = str(path)
        n = batch.num_rows
        lines = start + 1 + np.arange(n, dtype=np.int64)
        problems: list[tuple[int, str]] = []
        keep = np.ones(n, dtype=bool)

        def flag(mask: np.ndarray, what: Callable[[int], str]) -> None:
            for k in np.flatnonzero(mask):
                problems.append((int(lines[k]), located(src, f"row {int(lines[k])}", what(int(k)))))

        lab = batch.column(self.label)
        labf = labels_01(lab)
        label_ok = ~np.isnan(labf)
        flag(~label_ok, lambda k: f"label {lab[k].as_py()!r} (expected 0 or 1)")
        keep &= label_ok
        cols: dict[str, np.ndarray] = {}
        for c in self.columns:
            col = batch.column(c.name)
            if c.kind == CATEGORICAL:
                cols[c.name] = to_str(col)
            elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                ok = _number_mask(col)
                flag(~ok, lambda k, col=col, c=c: f"column {c.name} = {col[k].as_py()!r} is not a number (expected a number, or null for missing)")
                keep &= ok
                cols[c.name] = to_float(pc.if_else(_valid_numbers(col), col, None))
            else:
                try:
                    cols[c.name] = to_float(col)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise DataError(located(src, f"row {start + 1}", f"column {c.name} has type {col.type} (expected numbers)")) from None
        report_bad(bad, problems)
        labels = np.nan_to_num(labf).astype(np.int8)
        chunk = Chunk(cols, labels, src, lines, lines.copy())
        return chunk if keep.all() else chunk.select(keep)


def check_columns(path: Path, names, needed: list[str], what: str) -> None:
    """Raises a located :class:`DataError` when the file lacks schema columns."""
    have = set(names)
    missing = [n for n in needed if n not in have]
    if missing:
        raise DataError(located(path, 0, f"{what} lacks columns {missing} (expected the schema's columns; "
                                         f"it has {sorted(have)[:20]})"))


class ArrowSource(ParquetSource):
    """Arrow IPC files (Feather v2, ``.arrow`` / ``.feather``) read batch by batch with
    ``pyarrow.ipc``; the same row checks and messages as :class:`ParquetSource`."""

    def __init__(self, files: Sequence[tuple[Path, str | None]], schema: TableSchema, **kw):
        super().__init__(files, schema, **kw)
        self.name = "arrow"

    def _batches(self, path: Path, needed: list[str]) -> Iterator[pa.RecordBatch]:
        import pyarrow.ipc as ipc

        try:
            reader = ipc.open_file(pa.memory_map(str(path), "r"))
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(located(path, 0, f"not a readable Arrow IPC (Feather v2) file ({str(e).splitlines()[0][:160]})")) from None
        check_columns(path, reader.schema.names, needed, "Arrow file")
        for k in range(reader.num_record_batches):
            batch = reader.get_batch(k).select(needed)
            for s in range(0, batch.num_rows, self.chunk_rows):
                yield batch.slice(s, self.chunk_rows)


def _valid_numbers(col: pa.Array) -> pa.Array:
    """Boolean pyarrow mask of the non-empty numeric strings (safe to cast)."""
    return pc.and_(pc.match_substring_regex(col, _NUMBER_RE), pc.not_equal(col, "")).fill_null(False)


# --------------------------------------------------------------------------- libFM

_LIBFM_LABELS = {"1": 1, "+1": 1, "1.0": 1, "+1.0": 1, "0": 0, "0.0": 0, "-1": 0, "-1.0": 0}


class LibFMSource(Source):
    """libFM rows ``label featid:1 featid:1 ...`` (label 1 / -1 or 1 / 0).

    Fields: by default field ``j`` is the ``j``-th token, so every row must have the
    same number of tokens (taken from the most common count in the first block).
    With ``offsets`` (the first global feature id of each field, ascending) a token's
    field is the offset interval its id falls in, token order does not matter, a
    field may be absent (missing) but not repeated. The tokens (global feature ids
    as strings) become each field's categorical values. Values other than 1 are
    rejected: the models here take one-hot ids only.
    """

    def __init__(self, files: Sequence[tuple[Path, str | None]], *, names: Sequence[str] | None = None,
                 offsets: Sequence[int] | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 name: str = "libfm", **kw):
        super().__init__(**kw)
        self.files = [(Path(p), part) for p, part in files]
        self.names = list(names) if names else None
        self.offsets = np.asarray(offsets, dtype=np.int64) if offsets is not None else None
        if self.offsets is not None and (len(self.offsets) < 1 or np.any(np.diff(self.offsets) <= 0) or self.offsets[0] < 0):
            raise ValueError(f"libFM offsets must be ascending non-negative feature ids, got {list(self.offsets)}")
        if self.offsets is not None and self.names and len(self.names) != len(self.offsets):
            raise ValueError(f"libFM: {len(self.names)} names for {len(self.offsets)} offsets")
        self.block_bytes = int(block_bytes)
        self.name = name
        self.presplit = any(part is not None for _, part in self.files)
        self.num_tokens: int | None = len(self.offsets) if self.offsets is not None else (len(self.names) if self.names else None)
        if self.num_tokens is None:
            self.num_tokens = self._detect_tokens()
        if not self.names:
            self.names = [f"f{j}" for j in range(self.num_tokens)]
        if len(self.names) != self.num_tokens:
            raise ValueError(f"libFM: {len(self.names)} field names for rows of {self.num_tokens} feature tokens")
        self.columns = [Column(n, CATEGORICAL) for n in self.names]

    def _detect_tokens(self) -> int:
        for path, _ in self.files:
            for block, _first in iter_blocks(path, min(self.block_bytes, 1 << 20)):
                counts = Counter(len(line.split()) - 1 for line in block.decode("utf-8", errors="replace").splitlines() if line.strip())
                if counts:
                    return counts.most_common(1)[0][0]
                break
        raise DataError(f"{self.files[0][0] if self.files else 'libfm'}: no libFM rows found (expected lines 'label featid:1 ...')")

    def _chunks(self, bad: BadRows) -> Iterator[Chunk]:
        offset = 0
        for path, part in self.files:
            last = 1
            for block, first in iter_blocks(path, self.block_bytes):
                chunk = self._parse_block(block, first, str(path), bad)
                chunk.rows = offset + chunk.lines - 1
                chunk.part = part
                last = first + block.count(b"\n")
                yield chunk
            offset += last - 1

    def _parse_block(self, block: bytes, first: int, src: str, bad: BadRows) -> Chunk:
        expect = (f"label then {self.num_tokens} featid:1 tokens" if self.offsets is None
                  else "label then featid:1 tokens, at most one per field")
        block, lines, problems = prescan_block(block, first, src, f"a libFM row ({expect})")
        rows = [line.split() for line in block.decode("utf-8").split("\n")[:-1]]
        counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        if self.offsets is None:
            ok = counts == self.num_tokens + 1
            for k in np.flatnonzero(~ok):
                problems.append((int(lines[k]), located(src, int(lines[k]), f"{counts[k] - 1} feature tokens (expected {expect})")))
        else:
            ok = counts >= 1
        good = np.flatnonzero(ok)
        labels_raw = np.array([rows[k][0] for k in good], dtype=object)
        label_of = np.array([_LIBFM_LABELS.get(t, -1) for t in labels_raw], dtype=np.int8)
        for j in np.flatnonzero(label_of < 0):
            line = int(lines[good[j]])
            problems.append((line, located(src, line, f"label {labels_raw[j]!r} (expected 1, 0 or -1)")))
        feats = [t for k in good for t in rows[k][1:]]
        owner = np.repeat(np.arange(len(good)), counts[good] - 1)
        fid_text, valid = _split_feature_tokens(feats)
        for i in np.flatnonzero(~valid):
            line = int(lines[good[owner[i]]])
            problems.append((line, located(src, line, f"token {feats[i]!r} is not featid:1 (expected a non-negative integer feature id with value 1)")))
        row_bad = np.zeros(len(good), dtype=bool)
        row_bad[label_of < 0] = True
        row_bad[owner[~valid]] = True
        if self.offsets is None:
            table = fid_text.reshape(len(good), self.num_tokens) if len(good) else np.empty((0, self.num_tokens), dtype=object)
        else:
            table = self._place_by_offsets(fid_text, valid, owner, len(good), lines[good], src, problems, row_bad)
        report_bad(bad, problems)
        keep = ~row_bad
        cols = {name: table[keep, j].astype(object) for j, name in enumerate(self.names)}
        row_lines = lines[good][keep]
        return Chunk(cols, label_of[keep], src, row_lines, row_lines.copy())

    def _place_by_offsets(self, fid_text, valid, owner, n, row_lines, src, problems, row_bad) -> np.ndarray:
        nf = len(self.offsets)
        table = np.full((n, nf), "", dtype=object)
        fid = np.where(valid, fid_text, "-1").astype(np.int64)
        fld = np.searchsorted(self.offsets, fid, side="right") - 1
        below = valid & (fld < 0)
        for i in np.flatnonzero(below):
            problems.append((int(row_lines[owner[i]]), located(src, int(row_lines[owner[i]]), f"feature id {fid[i]} is below the first field offset {self.offsets[0]} (expected ids >= it)")))
            row_bad[owner[i]] = True
        use = valid & (fld >= 0)
        slot = owner[use] * nf + fld[use]
        dup_slots = np.flatnonzero(np.bincount(slot, minlength=n * nf) > 1)
        for s in dup_slots:
            r = int(s // nf)
            problems.append((int(row_lines[r]), located(src, int(row_lines[r]), f"two features of field {self.names[int(s % nf)]} (expected at most one per field)")))
            row_bad[r] = True
        table.reshape(-1)[slot] = fid_text[use]
        return table


def _split_feature_tokens(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``"123:1"`` tokens -> (feature id text as object array, valid mask)."""
    if not tokens:
        return np.empty(0, dtype=object), np.empty(0, dtype=bool)
    arr = np.array(tokens, dtype=str)
    parts = np.char.partition(arr, ":")
    fid, sep, val = parts[:, 0], parts[:, 1], parts[:, 2]
    uniq_val, inv = np.unique(val, return_inverse=True)
    val_ok = np.array([_is_one(v) for v in uniq_val], dtype=bool)[inv]
    valid = (sep == ":") & np.char.isdigit(fid) & val_ok
    # Canonical id text (no leading zeros) so that "007" and "7" are one feature.
    canon = np.char.lstrip(fid, "0")
    canon = np.where((canon == "") & valid, "0", canon)
    return canon.astype(object), valid


def _is_one(text: str) -> bool:
    try:
        return float(text) == 1.0
    except ValueError:
        return False


# --------------------------------------------------------------------------- in memory


class ArraySource(Source):
    """Rows already in memory (rebuilt Frappe, MovieLens joins, tests), served in chunks.

    Args:
        columns: input columns; ``data`` holds one array per column name.
        labels: int labels in {0, 1}.
        parts: optional int8 split codes per row (0 train, 1 valid, 2 test).
        lines: optional line number of each row in ``source`` (default row + 1).
    """

    def __init__(self, name: str, columns: Sequence[Column], data: dict[str, np.ndarray], labels: np.ndarray,
                 *, source: str | None = None, lines: np.ndarray | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, **kw):
        super().__init__(**kw)
        self.name = name
        self.columns = list(columns)
        n = len(labels)
        for c in self.columns:
            if c.name not in data or len(data[c.name]) != n:
                raise ValueError(f"{name}: column {c.name!r} missing or not {n} rows long")
        self.data = data
        self.labels = np.asarray(labels, dtype=np.int8)
        self.source = source or name
        self.lines = np.arange(1, n + 1, dtype=np.int64) if lines is None else np.asarray(lines, dtype=np.int64)
        self.chunk_rows = int(chunk_rows)

    def _chunks(self, bad: BadRows) -> Iterator[Chunk]:
        n = len(self.labels)
        for s in range(0, n, self.chunk_rows):
            e = min(n, s + self.chunk_rows)
            yield Chunk({k: self.data[k][s:e] for k in self.column_names()}, self.labels[s:e],
                        self.source, self.lines[s:e], np.arange(s, e, dtype=np.int64))


def concat_chunks(chunks: Iterable[Chunk]) -> Chunk | None:
    """All chunks as one (for small data and tests); ``None`` if there are none."""
    chunks = list(chunks)
    if not chunks:
        return None
    first = chunks[0]
    return Chunk(
        columns={k: np.concatenate([c.columns[k] for c in chunks]) for k in first.columns},
        labels=np.concatenate([c.labels for c in chunks]), source=first.source,
        lines=np.concatenate([c.lines for c in chunks]), rows=np.concatenate([c.rows for c in chunks]),
        part=first.part if all(c.part == first.part for c in chunks) else None,
        extra={k: np.concatenate([c.extra[k] for c in chunks]) for k in first.extra},
    )
