"""Exact bytes of a plan's exported .tflite, computed from the plan before anything is built.

A LiteRT file is its constant buffers (the weights) plus structure: the flatbuffer
tables of every tensor (name, shape, type, quantisation parameters), operator,
operator code, the signature and metadata. The cost model adds the two:

``bytes(plan) = base_structure(model) + weights(plan) + sum of structure deltas(plan)``

- ``weights(plan)``: analytic, from the plan and the model's shapes: float32 tables
  and Dense kernels, packed codes and fp16 scales of ``quant`` tables, tier
  sub-tables and remaps of ``rowwise`` tables (tier sizes follow from the fixed
  fractions), low-rank codes / projections / factor pairs (with the projections
  folded into the first Dense layer, as :func:`~keras_ctr_compress.search.apply_plan`
  builds it), the pair layer's index vectors and weights, and with ``drq`` one byte
  per element for every float tensor of at least 1024 elements (the converter's rule).
- ``base_structure(model)``: the one per-model term, MEASURED once: the fp32 export of
  the trained model (a file the search needs anyway for its budget) minus its
  analytic weights.
- structure deltas: what each plan component adds or removes beside weights (a
  quantised table's unpacking ops and their tensors, a removed field's lookups, a
  low-rank pair's second FULLY_CONNECTED, DRQ's per-channel scales and DEQUANTIZE
  ops, ...), in three parts:

  1. a constant per component kind at zero name length, plus the bytes of the tensor
     names it adds: ``n_model * len(model) + n_field * len(field) + n_layer *
     len(layer)`` (every tensor name carries its model and layer scope);
  2. 20 bytes per operator kind the model did not use yet (one ``OperatorCode``
     entry per kind, whatever the number of ops);
  3. the small constants it needs (the int4 / int2 unpacking scalars, a tiered
     table's bounds): the converter stores equal constants ONCE, so a second int4
     table adds none, and a constant the fp32 model already has costs nothing. Each
     new one costs a fitted constant (tensor + buffer entries, about 67 bytes) plus
     its name (its one user's scope, or ``arith.constantN`` when shared).

  The constants live in :mod:`keras_ctr_compress.search._litert_costs`, fitted by
  least squares on 96 probe exports of small reference models (DeepFM, DeepFwFM,
  FM, FwFM; widths 5, 6 and 8; every component kind alone and mixed; residuals of
  the fit within 60 bytes): :mod:`keras_ctr_compress.search.calibrate`, to rerun
  after a TensorFlow / LiteRT / Keras upgrade.

Accuracy, measured on random plans drawn from :func:`~keras_ctr_compress.search.search_space`
(exported file vs prediction): the tests' 5-field DeepFM (20-55 kB files, structure a
third or more of each) max 0.27 % / mean 0.10 % over 20 plans, its DeepFwFM max
0.40 % / mean 0.19 %; an 8-field width-8 DeepFM (40-150 kB) max 0.16 %; a 6-field
width-5 DeepFwFM max 0.50 %. Tiny models are the hard case: on real models the
weights dominate. What is left: string padding (0-3 bytes per tensor name), name
suffix digits (``mul_12`` vs ``mul_9``), a few bytes of interaction between
components, and constants that happen to equal others.

Example::

    cost = CostModel(model)               # exports the fp32 model once
    cost.plan_bytes(plan)                  # pure arithmetic from here on
    cost.breakdown(plan)["weights"]       # by part: tables, scales, remaps, dense, ...
"""

from __future__ import annotations

import re
import struct
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_ctr_compress.export.litert import DRQ_MIN_ELEMENTS
from keras_ctr_compress.layers import quant_ops as q
from keras_ctr_compress.layers.quantized_embedding import quantized_embedding_byte_cost
from keras_ctr_compress.layers.rowwise_quant_embedding import PRUNED, rowwise_byte_cost
from keras_ctr_compress.search import _litert_costs
from keras_ctr_compress.search.anatomy import Anatomy, Resolved, anatomy, resolve
from keras_ctr_compress.search.plan import Plan

#: int16 remaps hold positions up to this many stored rows (``RowwiseQuantEmbedding``).
INT16_REMAP_ROWS = 32768


# ----------------------------------------------------------------------------- weights


@dataclass
class _Weights:
    """Analytic weight bytes by part, and the float tensors DRQ turns to int8."""

    parts: dict[str, int]
    #: ``(kind, channels, field, layer)`` per DRQ-quantised tensor (kind "fc" / "gather")
    drq: list[tuple[str, int, str | None, str | None]]

    def add(self, part: str, n: int) -> None:
        self.parts[part] = self.parts.get(part, 0) + int(n)

    def floats(self, part: str, elements: int, drq: bool, kind: str, channels: int = 0,
               field: str | None = None, layer: str | None = None) -> None:
        """A float32 constant; with DRQ and >= 1024 elements it ships as int8."""
        if drq and elements >= DRQ_MIN_ELEMENTS:
            self.add(part, elements)
            self.drq.append((kind, channels, field, layer))
        else:
            self.add(part, 4 * elements)


def plan_weights(res: Resolved, drq: bool | None = None) -> _Weights:
    """Analytic bytes of every constant buffer of the exported plan, by part.

    Parts: ``tables`` (float rows, codes, fp16 rows), ``scales``, ``remaps``,
    ``linear`` (first-order tables), ``dense`` (kernels and biases), ``pairs``.
    """
    drq = res.plan.drq if drq is None else drq
    w = _Weights({}, [])
    for t in res.tables:
        _table_weights(w, t, res, drq)
    for d in res.dense:
        name = d.info.name
        bias = 4 * d.units if d.info.use_bias else 0
        if d.rank is None:
            w.floats("dense", d.in_dim * d.units, drq, "fc", d.units, layer=name)
        else:  # AFM pair: u with its middle bias, then v with the output bias
            w.floats("dense", d.in_dim * d.rank, drq, "fc", d.rank, layer=name)
            w.floats("dense", d.rank * d.units, drq, "fc", d.units, layer=name)
            bias = 4 * d.units + 4 * d.rank
        w.add("dense", bias)
    _pair_weights(w, res)
    return w


def _table_weights(w: _Weights, t, res: Resolved, drq: bool) -> None:
    f, p = t.field, t.plan
    if f.lin is not None:
        w.floats("linear", f.rows, drq, "gather", field=f.name)
    if p.method == "fp32":
        w.floats("tables", f.rows * f.dim, drq, "gather", field=f.name)
    elif p.method == "quant":
        cost = quantized_embedding_byte_cost(f.rows, f.dim, p.bits, p.granularity)
        w.add("tables", cost["codes"])
        w.add("scales", cost["scales"])
    elif p.method == "rowwise":
        cost = rowwise_byte_cost(list(t.tier_sizes), p.tiers, f.dim)
        w.add("tables", cost["codes"] + cost["weights"])
        w.add("scales", cost["scales"])
        w.add("remaps", cost["remap"])
    elif p.method == "lowrank":
        w.floats("tables", f.rows * p.rank, drq, "gather", field=f.name)
        # The reconstruction (codes @ projection + mean: one FULLY_CONNECTED) stays:
        # the pair layer reads it; only the first Dense layer reads the codes.
        w.floats("tables", p.rank * f.dim, drq, "fc", f.dim, field=f.name)
        w.add("tables", 4 * f.dim)


def _pair_weights(w: _Weights, res: Resolved) -> None:
    an = res.anatomy
    if an.pair_layer is None:
        return
    if res.pair_count is None:
        if an.pair_mode == "fwfm":  # r folded with the off-diagonal mask into one F x F constant
            w.add("pairs", 4 * len(res.tables) ** 2)
        return
    n = res.pair_count
    if n >= 2:  # left / right field indices (one pair is a slice, no index vector)
        w.add("pairs", 8 * n)
    if an.pair_mode == "fwfm":
        w.add("pairs", 4 * n)


# -------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Component:
    """One structural component of a plan (see the module docstring).

    ``count`` multiplies the calibrated constant (channels for ``drq_fc_channel``);
    ``field`` / ``layer`` name the scope whose name length its tensor names carry.
    """

    key: str
    count: int = 1
    field: str | None = None
    layer: str | None = None
    #: small constants of this instance only (``dtype|shape|hex`` keys, e.g. tier bounds)
    consts: tuple[str, ...] = ()


def structure_components(res: Resolved, drq: bool | None = None) -> list[Component]:
    """The structural components of the exported plan, relative to the fp32 model."""
    drq = res.plan.drq if drq is None else drq
    out: list[Component] = []
    for t in res.tables:
        out += _table_components(t, res.fold)
    out += [Component("drop", field=name) for name in res.pruned]
    if res.fold:
        out.append(Component("fold_site"))
    out += [Component("lowrank_dense", layer=d.info.name) for d in res.dense if d.rank is not None]
    an = res.anatomy
    if res.pair_count is not None and an.pair_list is None:
        out.append(Component(f"pairs_{an.pair_mode}" + ("_1" if res.pair_count == 1 else "")))
    if drq:
        for kind, channels, f, layer in plan_weights(res, drq=True).drq:
            out.append(Component(f"drq_{kind}", field=f, layer=layer))
            if kind == "fc":
                out.append(Component("drq_fc_channel", channels))
    return out


def _table_components(t, fold: bool) -> list[Component]:
    p, name = t.plan, t.field.name
    if p.method == "fp32":
        return []
    if p.method == "quant":
        return [Component(f"quant{p.bits}{p.granularity}", field=name), *_unpack_slice(name, t.field.dim, p.bits)]
    if p.method == "lowrank":
        return [Component("lowrank" if fold else "lowrank_nofold", field=name)]
    stored = [(tier, n) for tier, n in zip(p.tiers, t.tier_sizes, strict=True) if tier != PRUNED and n > 0]
    remap = rowwise_byte_cost(list(t.tier_sizes), p.tiers, t.field.dim)["remap"] > 0
    kept = sum(n for _, n in stored)
    bounds = _tier_bounds([n for _, n in stored]) if remap or len(stored) > 1 else ()
    out = [Component("remap16" if kept <= INT16_REMAP_ROWS else "remap32", field=name)] if remap else []
    for tier, _ in stored:
        if tier.startswith("int"):
            out += _unpack_slice(name, t.field.dim, int(tier[3:]))
    if len(stored) == 1:
        return out + [Component(f"rw1_{stored[0][0]}", field=name, consts=bounds)]
    out.append(Component(f"rwfirst_{stored[0][0]}", field=name, consts=bounds))
    return out + [Component(f"rwlater_{tier}", field=name) for tier, _ in stored[1:]]


def _unpack_slice(name: str, dim: int, bits: int) -> list[Component]:
    """The STRIDED_SLICE that trims unpacked codes to ``dim`` (``unpack_codes``) where the
    packed bytes hold more codes than the row has (int4 rows of odd width, int2 rows of
    a width not divisible by 4), with its begin / end / stride vectors."""
    per_byte = 8 // q.storage_bits(bits)
    if per_byte == 1 or q.packed_width(dim, bits) * per_byte == dim:
        return []
    vectors = [(0, 0), (0, dim), (1, 1)]
    return [Component("unpack_slice", field=name,
                      consts=tuple(f"int32|2|{struct.pack('<ii', *v).hex()}" for v in vectors))]


def _tier_bounds(sizes: list[int]) -> tuple[str, ...]:
    """The int32 scalars a tiered lookup holds: per stored sub-table of ``n`` rows at
    ``offset``, its size (the GATHER's index check), and with several tiers
    ``n - 1`` (position clip), the offset and ``offset + n`` (tier mask)."""
    values: set[int] = set()
    offset = 0
    for n in sizes:
        values |= {n} if len(sizes) == 1 else {n, n - 1, offset, offset + n}
        offset += n
    return tuple(f"int32||{struct.pack('<i', v).hex()}" for v in sorted(values))


def _component_bytes(c: Component, model_name: str, table: dict) -> float:
    spec = table["components"].get(c.key)
    if spec is None:
        raise KeyError(f"cost model: no calibrated structure for component {c.key!r}; rerun "
                       "keras_ctr_compress.search.calibrate")
    names = (spec["model"] * len(model_name) + spec["field"] * len(c.field or "")
             + spec["layer"] * len(c.layer or ""))
    return c.count * (spec["bytes"] + names)


def new_op_kinds(components: Iterable[Component], base_ops: Iterable[str], table: dict) -> set[str]:
    """Operator kinds the components use that the fp32 model does not (each adds an
    operator-code entry to the file)."""
    kinds: set[str] = set()
    for c in components:
        kinds.update(table["components"].get(c.key, {}).get("ops", ()))
    return kinds - set(base_ops)


# ------------------------------------------------------------------------------ model


class CostModel:
    """Exported bytes of any plan on one trained model (see the module docstring).

    Args:
        model: the trained fp32 reference model.
        reference: its fp32 ``.tflite`` export (builtins only, as
            :func:`~keras_ctr_compress.export.export_litert` writes it); exported
            here into a temporary folder when None.
        table: calibration constants (default :data:`_litert_costs.TABLE`).
    """

    def __init__(self, model: keras.Model, reference: str | Path | None = None, table: dict | None = None):
        self.anatomy: Anatomy = anatomy(model)
        self.table = table or _litert_costs.TABLE
        if reference is None:
            with tempfile.TemporaryDirectory() as tmp:
                self._measure(model, Path(tmp) / "fp32.tflite", export=True)
        else:
            self._measure(model, Path(reference), export=False)

    def _measure(self, model: keras.Model, path: Path, *, export: bool) -> None:
        from keras_ctr_compress.export import export_litert

        if export:
            export_litert(model, path)
        facts = file_facts(path)
        self.reference_bytes = facts["bytes"]
        self.base_ops = frozenset(facts["kinds"])
        self.base_constants = frozenset(facts["constants"])
        base = resolve(self.anatomy, Plan())
        self.base_structure = self.reference_bytes - sum(plan_weights(base, drq=False).parts.values())

    def breakdown(self, plan: Plan) -> dict:
        """``{"total", "weights" {part: bytes}, "structure", "components" [...]}``.

        Raises:
            ValueError: the plan does not fit the model (as :func:`validate`).
        """
        res = resolve(self.anatomy, plan)
        weights = plan_weights(res)
        comps = structure_components(res)
        model_name = self.anatomy.model_name
        delta = sum(_component_bytes(c, model_name, self.table) for c in comps)
        opcodes = len(new_op_kinds(comps, self.base_ops, self.table)) * self.table["opcode_bytes"]
        consts = new_constants(comps, self.base_constants, self.table)
        const_bytes = sum(self.table["const_bytes"] + constant_name_bytes(users, model_name, self.table)
                          for users in consts.values())
        # Equal int32 scalars the converter merges or splits when fields go.
        const_bytes += constant_coincidences(res) * (
            self.table["const_bytes"] + len(model_name) + self.table["const_suffix"])
        structure = self.base_structure + delta + opcodes + const_bytes
        total = int(round(structure + sum(weights.parts.values())))
        return {
            "total": total,
            "weights": dict(sorted(weights.parts.items())),
            "structure": int(round(structure)),
            "base_structure": self.base_structure,
            "components": [{"key": c.key, "count": c.count, "field": c.field, "layer": c.layer,
                            "bytes": round(_component_bytes(c, model_name, self.table), 1)} for c in comps],
            "new_op_kinds": sorted(new_op_kinds(comps, self.base_ops, self.table)),
            "new_constants": len(consts),
        }

    def plan_bytes(self, plan: Plan) -> int:
        """Bytes of the ``.tflite`` that ``export_plan(apply_plan(model, plan, ...))`` writes."""
        return self.breakdown(plan)["total"]


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cost_model(model: keras.Model, reference: str | Path | None = None) -> CostModel:
    """The :class:`CostModel` of ``model``, built once per model object and cached."""
    cached = _CACHE.get(model)
    if cached is None or reference is not None:
        cached = CostModel(model, reference)
        _CACHE[model] = cached
    return cached


def cached_cost_model(model: keras.Model) -> CostModel | None:
    """The cached :class:`CostModel` of ``model`` if one was built in this process."""
    return _CACHE.get(model)


def plan_bytes(model: keras.Model, plan: Plan, *, reference: str | Path | None = None) -> int:
    """Exact bytes of the ``.tflite`` the plan exports to, before anything is built.

    The first call per model exports its fp32 file once (or reads ``reference``)
    to measure the model's own structure; every call after that is arithmetic
    (microseconds), so a search can price thousands of candidate plans.

    Example::

        plan_bytes(model, Plan(tables={"c0": TablePlan("quant", bits=4)}, drq=True))
    """
    return cost_model(model, reference).plan_bytes(plan)


#: Tensor names of weights (variables, folded FULLY_CONNECTED weights and biases).
_WEIGHT_NAME = re.compile(r"ReadVariableOp|MatMul|BiasAdd")
#: Constants at most this big can be shared between layers (unpacking scalars, slices).
SMALL_CONSTANT_BYTES = 64


def file_facts(path: str | Path) -> dict:
    """What the cost model reads from an exported file: its size, tensor names, operator
    kinds, operators (kind, output names) and small constants (``{key: names}``,
    key ``dtype|shape|hex``): the converter stores equal constants once."""
    from keras_ctr_compress.export import _flatbuffer as fb

    data, flat = fb.read_model(path)
    tensors = fb.tensors(flat)
    constants: dict[str, list[str]] = {}
    for t in tensors:
        if 0 < t.nbytes <= SMALL_CONSTANT_BYTES and not _WEIGHT_NAME.search(t.name):
            raw = fb.buffer_data(data, flat, t.buffer)
            key = f"{t.dtype}|{'x'.join(map(str, t.shape))}|{raw.hex()}"
            constants.setdefault(key, []).append(t.name)
    codes = fb.opcodes(flat)
    ops = []
    for s in range(flat.SubgraphsLength()):
        sg = flat.Subgraphs(s)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            outs = [(sg.Tensors(op.Outputs(k)).Name() or b"").decode("utf-8", "replace")
                    for k in range(op.OutputsLength())]
            ops.append((codes[op.OpcodeIndex()].name, outs))
    return {"bytes": len(data), "names": [t.name for t in tensors], "kinds": {c.name for c in codes},
            "ops": ops, "constants": constants}


def constant_coincidences(res: Resolved) -> int:
    """Int32 scalars gained (+) or lost (-) by equal values merging, beyond the components.

    The converter stores equal constants once, so counts shift when values meet:
    the pair layer's ``Reshape`` to ``(fields, dim)`` holds one scalar when the kept
    field count equals the width and two otherwise; a pruned field's row count (its
    lookups' index check) only leaves the file when no kept field has as many rows
    (the calibrated ``drop`` assumes it leaves).
    """
    an, n = res.anatomy, 0
    if an.pair_layer is not None:
        dims = {f.dim for f in an.fields}
        if len(dims) == 1:
            dim = dims.pop()
            n += int(len(an.fields) == dim) - int(len(res.tables) == dim)
    kept_rows = {t.field.rows for t in res.tables}
    dropped = [an.field(name).rows for name in res.pruned]
    for rows in set(dropped):
        n += dropped.count(rows) - (0 if rows in kept_rows else 1)
    return n


def new_constants(components: Iterable[Component], base_constants, table: dict) -> dict[str, set[str]]:
    """Shared constants (unpacking scalars, slice bounds) the components need that the
    fp32 model lacks, each with the scopes (fields / layers) using it: stored once,
    named after its one user's scope or ``arith.constantN`` when shared."""
    out: dict[str, set[str]] = {}
    for c in components:
        for key in (*table["components"].get(c.key, {}).get("consts", ()), *c.consts):
            if key not in base_constants:
                out.setdefault(key, set()).add(c.field or c.layer or "")
    return out


def constant_name_bytes(users: set[str], model_name: str, table: dict) -> float:
    """Expected name bytes of a new constant (see :func:`new_constants`)."""
    if len(users) == 1:
        return len(model_name) + len(next(iter(users))) + table["const_suffix"]
    return table["const_shared_name"]


def scope_counts(names: Iterable[str], model_name: str, fields: Iterable[str], layers: Iterable[str]) -> dict:
    """Occurrences of the model scope, each field's lookup scopes and each layer's
    scope in tensor names (what the name-length terms multiply)."""
    names = list(names)
    text = "\n".join(names)
    model = len(re.findall(r"(?:^|;|\n)" + re.escape(model_name) + r"_\d+/", text))
    field = {f: len(re.findall(r"/(?:emb|lin)_" + re.escape(f) + r"_\d+/", text)) for f in fields}
    layer = {a: len(re.findall(r"/" + re.escape(a) + r"_\d+/", text)) for a in layers}
    return {"model": model, "field": field, "layer": layer}
