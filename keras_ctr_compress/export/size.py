"""Where the bytes of a .tflite file go: every constant tensor, grouped by category."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from keras_ctr_compress.export import _flatbuffer as fb

EMBEDDING_TABLES = "embedding_tables"
EMBEDDING_SCALES = "embedding_scales"
EMBEDDING_REMAP = "embedding_remap"
DENSE_WEIGHTS = "dense_weights"
OTHER = "other"

# Dtypes that, inside an embedding layer, hold per-row scales rather than codes: fp16
# scales are stored as their int16 bit pattern (GATHER has no fp16 kernel).
_SCALE_DTYPES = {"int16", "float16", "bfloat16"}
_TOKEN_SPLIT = re.compile(r"[/;:_.\-\s]+")
# "lin" is the reference models' first-order table of each field (an embedding of dim 1).
_EMBEDDING_TOKEN = re.compile(r"^(emb(ed|edding|eddings)?|lin)\d*$")
_DENSE_TOKENS = {"dense", "kernel", "bias", "lowrank", "rank", "fc", "mlp", "linear", "cross", "fullyconnected", "dnn"}


@dataclass(frozen=True)
class TensorBytes:
    """One tensor that owns constant data in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int
    category: str
    layer: str
    subgraph: int = 0
    index: int = 0
    #: True when an earlier listed tensor owns the same buffer (bytes not counted twice).
    shared: bool = False


Categorizer = Callable[[TensorBytes], str]


def _tokens(name: str) -> list[str]:
    return [t.lower() for t in _TOKEN_SPLIT.split(name) if t]


def _scopes(name: str) -> list[str]:
    """The name scopes of a converter tensor name, without the model scope (first) and
    the op name (last): ``m_1/emb_f0_1/GatherV2/ReadVariableOp`` -> ``[emb_f0_1, GatherV2]``.

    The model scope is dropped because it prefixes every tensor (a model called
    ``embedding_model`` must not make every tensor an embedding).
    """
    parts = [p for p in name.split(";")[0].split("/") if p]
    return parts[1:-1]


def guess_layer(name: str) -> str:
    """The Keras layer a converter tensor name comes from, best effort.

    Names look like ``functional_1/emb_field0_1/GatherV2/ReadVariableOp``: the
    second scope is the layer, with the ``_N`` suffix the export trace adds.
    Fused names (``a;b``) use their first part; constants without a scope
    (``arith.constant``) return ``""``.
    """
    scopes = _scopes(name)
    return re.sub(r"_\d+$", "", scopes[0]) if scopes else ""


def _layer_kind(name: str) -> str | None:
    """``"embedding"`` / ``"dense"`` from the innermost scope that says which, else None."""
    for scope in reversed(_scopes(name)):
        tokens = _tokens(scope)
        if any(_EMBEDDING_TOKEN.match(tok) or "embedding" in tok for tok in tokens):
            return "embedding"
        if any(tok in _DENSE_TOKENS or tok.startswith("dense") for tok in tokens):
            return "dense"
    return None


def default_category(t: TensorBytes) -> str:
    """Default grouping by layer-name substrings and dtype.

    * ``other``: int32 / int64 / bool constants of at most 64 bytes (slice bounds,
      shapes) wherever they are, and whatever no rule below claims.
    * ``embedding_remap``: in an embedding-like layer (a scope token ``emb*`` or
      containing ``embedding``), a tensor under a ``remap`` scope (the row -> tier
      position index of row-wise mixed precision).
    * ``embedding_scales``: in an embedding-like layer, an int16 / fp16 tensor of rank
      <= 1 (fp16 scales are stored as int16 bits) or a float tensor of rank <= 1.
    * ``embedding_tables``: any other tensor of an embedding-like layer (float tables,
      int8 / packed int4 / int2 codes, fp16 rows stored as int16 bits).
    * ``dense_weights``: tensors of layers whose scope says dense / kernel / bias /
      low-rank / mlp / cross, and float or int8 tensors of rank >= 2 elsewhere.
    """
    if t.dtype in ("int32", "int64", "bool") and t.bytes <= 64:
        return OTHER
    kind = _layer_kind(t.name)
    if kind == "embedding":
        if any("remap" in _tokens(scope) for scope in _scopes(t.name)):
            return EMBEDDING_REMAP
        if len(t.shape) <= 1 and (t.dtype in _SCALE_DTYPES or t.dtype.startswith("float")):
            return EMBEDDING_SCALES
        return EMBEDDING_TABLES
    if kind == "dense":
        return DENSE_WEIGHTS
    is_weight_dtype = t.dtype.startswith(("float", "bfloat")) or t.dtype in ("int8", "int4", "int2", "uint8")
    if is_weight_dtype and len(t.shape) >= 2:
        return DENSE_WEIGHTS
    return OTHER


@dataclass
class SizeReport:
    """Byte breakdown of one .tflite file.

    ``tensor_bytes`` counts each constant buffer once (tensors sharing a buffer are
    listed but not double counted); ``overhead_bytes`` is everything else in the file:
    graph structure, names, quantisation parameters, padding.
    """

    path: str
    total_file_bytes: int
    tensors: list[TensorBytes] = field(default_factory=list)
    tensor_bytes: int = 0

    @property
    def overhead_bytes(self) -> int:
        return self.total_file_bytes - self.tensor_bytes

    @property
    def by_category(self) -> dict[str, int]:
        """Bytes per category, largest first."""
        return _sum_by(self.tensors, lambda t: t.category)

    @property
    def by_layer(self) -> dict[str, int]:
        """Bytes per guessed layer name (``""`` for unscoped constants), largest first."""
        return _sum_by(self.tensors, lambda t: t.layer)

    def category_bytes(self, category: str) -> int:
        return self.by_category.get(category, 0)

    def to_dict(self) -> dict:
        """Plain JSON-ready form (what benchmark records store)."""
        return {
            "path": self.path,
            "total_file_bytes": self.total_file_bytes,
            "tensor_bytes": self.tensor_bytes,
            "overhead_bytes": self.overhead_bytes,
            "by_category": self.by_category,
            "by_layer": self.by_layer,
            "tensors": [{**asdict(t), "shape": list(t.shape)} for t in self.tensors],
        }

    def to_text(self, max_tensors: int | None = 30) -> str:
        """A plain-text table: per category, then the largest tensors."""
        total = max(self.total_file_bytes, 1)
        lines = [f"{Path(self.path).name}: {self.total_file_bytes:,} bytes", ""]
        lines.append(f"{'category':<20} {'bytes':>12} {'share':>7}")
        for cat, n in self.by_category.items():
            lines.append(f"{cat:<20} {n:>12,} {n / total:>7.1%}")
        lines.append(f"{'(overhead)':<20} {self.overhead_bytes:>12,} {self.overhead_bytes / total:>7.1%}")
        shown = sorted(self.tensors, key=lambda t: -t.bytes)
        if max_tensors is not None:
            shown = shown[:max_tensors]
        lines += ["", f"{'tensor':<56} {'dtype':<8} {'shape':<16} {'bytes':>12}  category"]
        for t in shown:
            name = t.name if len(t.name) <= 56 else "..." + t.name[-53:]
            shape = "x".join(str(d) for d in t.shape) or "scalar"
            lines.append(f"{name:<56} {t.dtype:<8} {shape:<16} {t.bytes:>12,}  {t.category}")
        if max_tensors is not None and len(self.tensors) > max_tensors:
            lines.append(f"... {len(self.tensors) - max_tensors} smaller tensors")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _sum_by(tensors: Iterable[TensorBytes], key: Callable[[TensorBytes], str]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for t in tensors:
        if not t.shared:
            sums[key(t)] = sums.get(key(t), 0) + t.bytes
    return dict(sorted(sums.items(), key=lambda kv: -kv[1]))


def size_breakdown(path: str | Path, categorize: Categorizer | None = None) -> SizeReport:
    """Lists every tensor of ``path`` that owns constant data, with its category.

    Example::

        report = size_breakdown("runs/m.tflite")
        report.by_category     # {"embedding_tables": 215280, "dense_weights": 1284004, ...}
        print(report.to_text(max_tensors=10))

    Args:
        path: a .tflite file.
        categorize: maps a :class:`TensorBytes` (category field still empty) to a
            category name; :func:`default_category` when None.
    """
    path = Path(path)
    _, model = fb.read_model(path)
    categorize = categorize or default_category
    seen: set[int] = set()
    report = SizeReport(str(path), path.stat().st_size)
    for ft in fb.tensors(model):
        if ft.nbytes == 0:
            continue
        shared = ft.buffer in seen
        seen.add(ft.buffer)
        t = TensorBytes(ft.name, ft.dtype, ft.shape, ft.nbytes, "", guess_layer(ft.name), ft.subgraph, ft.index, shared)
        t = TensorBytes(**{**asdict(t), "category": str(categorize(t))})
        report.tensors.append(t)
        if not shared:
            report.tensor_bytes += ft.nbytes
    return report


def artefact_bytes(tflite_path: str | Path, extra_files: Iterable[str | Path] = ()) -> dict:
    """Bytes of everything a device needs: the .tflite plus preprocessing files
    (vocabularies, schema) that map raw feature values to ids.

    Returns:
        ``{"tflite": n, "extra": {file name: n, ...}, "total": n}``.

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    files = [Path(tflite_path), *map(Path, extra_files)]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such file (needed for the artefact size)")
    extra = {str(f): f.stat().st_size for f in files[1:]}
    tflite = files[0].stat().st_size
    return {"tflite": tflite, "extra": extra, "total": tflite + sum(extra.values())}
