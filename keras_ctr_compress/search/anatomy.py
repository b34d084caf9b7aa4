"""What a plan can touch in a model, and what the model looks like once a plan is applied.

:func:`anatomy` reads a trained reference model (``ids`` -> ``SplitFields`` -> per
field ``emb_<field>`` (+ ``lin_<field>``) -> ``emb_concat`` -> ``dnn_k`` / ``pairs``)
into plain data: fields with their table shapes, Dense layers with their input
widths and where their input comes from, the pair layer. :func:`resolve` combines it
with a :class:`~keras_ctr_compress.search.plan.Plan` into the shapes the compressed
model will have (fields kept, Dense input widths after pruning and folding, tier
sizes, pair counts) and raises the model-dependent validation errors. The cost model
and :func:`~keras_ctr_compress.search.apply_plan` both read this one description, so
what is charged is what is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from keras_ctr_compress.compress.field_importance import field_lookups, model_field_names
from keras_ctr_compress.compress.pruning import prunable_neuron_layers
from keras_ctr_compress.compress.swap import ensure_functional
from keras_ctr_compress.compress.user_model import as_reference_model
from keras_ctr_compress.layers import FieldPairInteraction
from keras_ctr_compress.search.plan import Plan, TablePlan, _fail

FIELDS = "fields"  # DenseInfo.source of a layer reading the concatenated embeddings
#: A stored row tier of this size (in a table of several tiers) fails to export:
#: ``RowwiseQuantEmbedding`` clips tier positions to ``[0, rows - 1]``, and the TF
#: converter rewrites an int32 clip to ``[0, 6]`` as RELU6, which has no int32 builtin.
EXPORT_BROKEN_TIER_ROWS = 7


@dataclass(frozen=True)
class FieldInfo:
    """One input column: its name, position and lookup tables."""

    name: str
    index: int
    rows: int
    dim: int
    emb: str
    lin: str | None


@dataclass(frozen=True)
class DenseInfo:
    """One Dense layer: shapes, and whether it reads the embeddings or another Dense."""

    name: str
    in_dim: int
    units: int
    use_bias: bool
    activation: str
    #: :data:`FIELDS` (reads the embedding concatenation) or the Dense layer it reads
    source: str
    #: its neurons can be removed physically (outputs go only to Dense layers)
    prunable: bool


@dataclass(frozen=True)
class Anatomy:
    """The parts of a reference model a plan can change (plain, JSON-able data)."""

    model_name: str
    fields: tuple[FieldInfo, ...]
    dense: tuple[DenseInfo, ...]
    pair_layer: str | None
    pair_mode: str | None
    #: explicit pairs the pair layer already has (None: all pairs, closed form)
    pair_list: tuple[tuple[int, int], ...] | None
    has_linear: bool

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> FieldInfo:
        return next(f for f in self.fields if f.name == name)

    def dense_layer(self, name: str) -> DenseInfo:
        return next(d for d in self.dense if d.name == name)

    @property
    def min_fields(self) -> int:
        """Fields that must stay: 2 with a pair layer or a first-order sum (an Add of
        one input does not build), else 1."""
        return 2 if self.pair_layer or self.has_linear else 1


def _producer(tensor) -> keras.layers.Layer:
    return tensor._keras_history.operation


def _source_layer(layer) -> keras.layers.Layer:
    """The layer feeding ``layer``, looking through Dropout / Activation."""
    p = _producer(layer.input)
    while isinstance(p, (keras.layers.Dropout, keras.layers.Activation)):
        p = _producer(p.input)
    return p


def _unsupported(model: keras.Model, what: str) -> ValueError:
    return ValueError(
        f"model {model.name!r}: {what}; plans apply to the reference layout (ids -> SplitFields -> "
        "emb_<field> / lin_<field> Embedding tables -> emb_concat -> dnn_k Dense layers and / or a "
        "FieldPairInteraction), built by keras_ctr_compress.models.build_model and not yet compressed, "
        "or a user model of that shape: one integer input per field read by Embedding tables, a "
        "Concatenate and Dense layers (Dropout / Activation between them)"
    )


def anatomy(model: keras.Model) -> Anatomy:
    """Reads the plan-relevant structure of a trained reference model.

    Example::

        an = anatomy(build_model("deepfm", ds.fields, mlp=(32, 32), embedding_dim=6))
        [f.name for f in an.fields], [(d.name, d.in_dim, d.units) for d in an.dense]
        # ['c0', ...], [('dnn_0', 30, 32), ('dnn_1', 32, 32), ('dnn_out', 32, 1)]

    A user-built functional model (one integer input per field, Embedding tables,
    Concatenate / Dense towers) is read through
    :func:`~keras_ctr_compress.compress.as_reference_model` (columns in its input order;
    adapt it yourself with ``fields=`` to fix another order).

    Raises:
        ValueError: the model does not have the reference layout (e.g. DCNv2's cross
            network, or layers that are already compressed).
    """
    ensure_functional(model)
    model = as_reference_model(model)  # the same model when it is a reference model
    try:
        lookups = field_lookups(model)
        names = model_field_names(model)
    except ValueError as e:
        raise _unsupported(model, str(e)) from None
    fields, emb_layers = [], {}
    for j, (name, layers) in enumerate(zip(names, lookups, strict=True)):
        by_name = {layer.name: layer for layer in layers}
        emb, lin = by_name.get(f"emb_{name}"), by_name.get(f"lin_{name}")
        extra = sorted(set(by_name) - {f"emb_{name}", f"lin_{name}"})
        if emb is None or extra:
            raise _unsupported(model, f"column {j} is read by {sorted(by_name)}, expected emb_{name} (+ lin_{name})")
        for layer in (emb, lin):
            if layer is not None and type(layer) is not keras.layers.Embedding:
                raise _unsupported(model, f"layer {layer.name!r} is a {type(layer).__name__}, not a plain Embedding")
        fields.append(FieldInfo(name, j, int(emb.input_dim), int(emb.output_dim), emb.name,
                                None if lin is None else lin.name))
        emb_layers[emb.name] = j
    pairs = [layer for layer in model.layers if isinstance(layer, FieldPairInteraction)]
    if len(pairs) > 1:
        raise _unsupported(model, f"it has {len(pairs)} FieldPairInteraction layers")
    pair = pairs[0] if pairs else None
    return Anatomy(
        model_name=model.name,
        fields=tuple(fields),
        dense=tuple(_dense_infos(model, emb_layers)),
        pair_layer=None if pair is None else pair.name,
        pair_mode=None if pair is None else pair.mode,
        pair_list=None if pair is None or pair.pairs is None else tuple(pair.pairs),
        has_linear=any(f.lin for f in fields),
    )


def _dense_infos(model: keras.Model, emb_layers: dict[str, int]) -> list[DenseInfo]:
    prunable = {layer.name for layer in prunable_neuron_layers(model)}
    out = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.layers.InputLayer):
            continue
        if not isinstance(layer, keras.layers.Dense):
            if type(layer).__name__ in ("LowRankDense",):
                raise _unsupported(model, f"layer {layer.name!r} is already a LowRankDense")
            continue
        src = _source_layer(layer)
        if isinstance(src, keras.layers.Dense):
            source = src.name
        elif isinstance(src, keras.layers.Concatenate) and _is_field_concat(src, emb_layers):
            source = FIELDS
        else:
            raise _unsupported(model, f"Dense layer {layer.name!r} reads {src.name!r} ({type(src).__name__})")
        out.append(DenseInfo(layer.name, int(layer.kernel.shape[0]), int(layer.units), bool(layer.use_bias),
                             keras.activations.serialize(layer.activation), source, layer.name in prunable))
    return out


def _is_field_concat(concat, emb_layers: dict[str, int]) -> bool:
    """A Concatenate of every field's ``emb_`` output, in column order."""
    parts = [_producer(t).name for t in keras.tree.flatten(concat.input)]
    return [emb_layers.get(p) for p in parts] == list(range(len(emb_layers)))


# ------------------------------------------------------------------------- resolving


def rowwise_tier_sizes(rows: int, fractions) -> list[int]:
    """Rows per tier of a ``RowwiseQuantEmbedding`` with fixed ``fractions``.

    The layer's own rule (``_tiers_for_fractions``): rows sorted by priority fill
    the tiers at ``round(cumsum(fractions) * rows)``, the OOV row goes first and is
    forced into the first tier. The counts never depend on the data, which is why
    a plan fixes fractions: its bytes are known before anything is trained.

    >>> rowwise_tier_sizes(10, (0.0, 0.5, 0.5))
    [1, 4, 5]
    """
    bounds = np.round(np.cumsum(np.asarray(fractions, "float64")) * rows).astype("int64")
    bounds[-1] = rows
    sizes, start = [], 0
    for stop in bounds:
        sizes.append(int(max(0, stop - start)))
        start = max(start, int(stop))
    first = next(k for k, n in enumerate(sizes) if n > 0)  # where the OOV row (sorted first) lands
    sizes[first] -= 1
    sizes[0] += 1
    return sizes


@dataclass(frozen=True)
class ResolvedTable:
    """A kept field under the plan."""

    field: FieldInfo
    plan: TablePlan
    #: rows per tier (``rowwise``)
    tier_sizes: tuple[int, ...] | None = None

    @property
    def width(self) -> int:
        """Width of this field's slice of the concatenation the first Dense reads
        after folding (the code width of a low-rank table)."""
        return self.plan.rank if self.plan.method == "lowrank" else self.field.dim


@dataclass(frozen=True)
class ResolvedDense:
    """A Dense layer after the plan: input width, kept units, rank, folding."""

    info: DenseInfo
    in_dim: int
    units: int
    rank: int | None
    #: reads the low-rank codes instead of the embeddings (projections folded in)
    folded: bool = False


@dataclass(frozen=True)
class Resolved:
    """A plan made concrete on a model (see :func:`resolve`)."""

    anatomy: Anatomy
    plan: Plan
    tables: tuple[ResolvedTable, ...]
    dense: tuple[ResolvedDense, ...]
    #: pairs the pair layer computes explicitly (None: closed form over all pairs)
    pair_count: int | None
    #: the explicit pairs by original field index, when the plan lists them
    kept_pairs: tuple[tuple[int, int], ...] | None = None
    pruned: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kept_indices(self) -> list[int]:
        return [t.field.index for t in self.tables]

    @property
    def fold(self) -> bool:
        return any(d.folded for d in self.dense)


def resolve(an: Anatomy, plan: Plan) -> Resolved:
    """The shapes of ``plan`` applied to the model of ``an``; raises on any mismatch.

    Raises:
        ValueError: ``plan entry <entry>: <what>`` (see :func:`~keras_ctr_compress.search.validate`).
    """
    names = an.field_names
    for name in plan.tables:
        if name not in names:
            raise _fail(f"tables.{name}", f"model {an.model_name!r} has no field {name!r} (fields: {', '.join(names)})")
    dense_names = [d.name for d in an.dense]
    for name in plan.dense:
        if name not in dense_names:
            raise _fail(f"dense.{name}", f"model {an.model_name!r} has no Dense layer {name!r} "
                                         f"(Dense layers: {', '.join(dense_names) or 'none'})")
    tables = tuple(_resolve_table(f, plan.table(f.name)) for f in an.fields if plan.table(f.name).method != "pruned")
    pruned = tuple(f.name for f in an.fields if plan.table(f.name).method == "pruned")
    if not tables:
        raise _fail("tables", f"every field is pruned; keep at least {an.min_fields}")
    if len(tables) < an.min_fields:
        raise _fail("tables", f"{len(pruned)} of {len(names)} fields pruned leaves {len(tables)}; model "
                              f"{an.model_name!r} needs at least {an.min_fields} (pair layer / first-order sum)")
    dense = _resolve_dense(an, plan, tables)
    pair_count, kept_pairs = _resolve_pairs(an, plan, tables)
    return Resolved(an, plan, tables, dense, pair_count, kept_pairs, pruned)


def _resolve_table(f: FieldInfo, t: TablePlan) -> ResolvedTable:
    if t.method == "lowrank":
        bound = min(f.rows, f.dim)
        if not 1 <= t.rank < bound:
            raise _fail(t.entry, f"rank={t.rank} must be in [1, {bound - 1}] (below min(rows, dim) = "
                                 f"min({f.rows}, {f.dim}) = {bound})")
    if t.method == "rowwise":
        sizes = rowwise_tier_sizes(f.rows, t.fractions)
        stored = [n for tier, n in zip(t.tiers, sizes, strict=True) if tier != "pruned" and n > 0]
        if len(stored) > 1 and EXPORT_BROKEN_TIER_ROWS in stored:
            raise _fail(t.entry, f"fractions {list(t.fractions)} give tiers of {sizes} rows; a row tier of exactly "
                                 f"{EXPORT_BROKEN_TIER_ROWS} rows does not export (RowwiseQuantEmbedding clips its "
                                 "positions to [0, 6], which the converter turns into an int32 RELU6 with no "
                                 "builtin kernel): change the fractions")
        return ResolvedTable(f, t, tuple(sizes))
    return ResolvedTable(f, t)


def _resolve_dense(an: Anatomy, plan: Plan, tables) -> tuple[ResolvedDense, ...]:
    units: dict[str, int] = {}
    for d in an.dense:
        p = plan.dense_layer(d.name)
        if p.units is not None:
            if not d.prunable:
                raise _fail(p.entry, f"units cannot be removed from {d.name!r} (its outputs do not feed only "
                                     "Dense layers)")
            if p.units > d.units:
                raise _fail(p.entry, f"units={p.units} exceeds the layer's {d.units} units")
        units[d.name] = d.units if p.units is None else p.units
    lowrank_tables = any(t.plan.method == "lowrank" for t in tables)
    emb_width = sum(t.field.dim for t in tables)
    code_width = sum(t.width for t in tables)
    out = []
    for d in an.dense:
        p = plan.dense_layer(d.name)
        in_dim = emb_width if d.source == FIELDS else units[d.source]
        if p.rank is not None:
            bound = min(in_dim, units[d.name])
            if not 1 <= p.rank < bound:
                raise _fail(p.entry, f"rank={p.rank} must be in [1, {bound - 1}]: below min(in, out) = "
                                     f"min({in_dim}, {units[d.name]}) = {bound} after pruning")
        # fold_embedding_projections skips a low-rank layer whose rank exceeds the code width.
        folded = d.source == FIELDS and lowrank_tables and not (p.rank is not None and p.rank > code_width)
        out.append(ResolvedDense(d, code_width if folded else in_dim, units[d.name], p.rank, folded))
    return tuple(out)


def _resolve_pairs(an: Anatomy, plan: Plan, tables) -> tuple[int | None, tuple | None]:
    pp = plan.pairs
    if an.pair_layer is None:
        if pp is not None:
            raise _fail("pairs", f"model {an.model_name!r} has no field-pair (FM / FwFM) layer")
        return None, None
    kept_idx = {t.field.index for t in tables}
    existing = an.pair_list if an.pair_list is not None else tuple(
        (i, j) for i in range(len(an.fields)) for j in range(i + 1, len(an.fields)))
    available = [(i, j) for i, j in existing if i in kept_idx and j in kept_idx]
    if pp is None or (pp.sparsity == 0.0 and an.pair_list is None):
        return (None if an.pair_list is None else len(available)), None
    if pp.sparsity is not None:
        if not available:
            raise _fail("pairs", "no pair is left among the kept fields")
        return max(1, int(round((1.0 - pp.sparsity) * len(available)))), None
    index = {f.name: f.index for f in an.fields}
    kept = []
    for a, b in pp.kept:
        for name in (a, b):
            if name not in index:
                raise _fail("pairs", f"kept pair {[a, b]} names unknown field {name!r} (fields: {', '.join(index)})")
            if index[name] not in kept_idx:
                raise _fail("pairs", f"kept pair {[a, b]} uses pruned field {name!r}")
        pair = tuple(sorted((index[a], index[b])))
        if pair not in existing:
            raise _fail("pairs", f"kept pair {[a, b]} is not computed by the model's pair layer")
        kept.append(pair)
    return len(kept), tuple(sorted(kept))
