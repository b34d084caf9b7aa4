"""The search space of a trained model: which choices each plan entry may take.

:func:`search_space` reads the model (its fields, Dense layers and pair layer, see
:mod:`~keras_ctr_compress.search.anatomy`) and lists, per entry, the choices that
make sense: table methods with their bit widths, step granularities, row-tier
presets and the low-rank ranks that save bytes; per Dense layer the ranks that save
bytes (or full) and kept-unit counts; pair sparsities; DRQ on or off. Users narrow
it with :meth:`SearchSpace.fix` (one entry takes one value) and
:meth:`SearchSpace.restrict` (fewer choices); both return a new space. The space is
plain data: :meth:`SearchSpace.to_dict` / :meth:`SearchSpace.from_dict` round-trip
through JSON, and :meth:`SearchSpace.sample` draws valid plans from it.

Example::

    space = search_space(model)
    space = space.restrict("tables.*", methods=["fp32", "quant", "pruned"], bits=[8, 4])
    space = space.fix("dense.dnn_0", {"units": 16}).fix("drq", True)
    plan = space.sample(np.random.default_rng(0))   # a valid Plan
    space.check(plan)                               # ValueError if outside the space
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field

import keras
import numpy as np

from keras_ctr_compress.search.anatomy import (
    EXPORT_BROKEN_TIER_ROWS,
    FIELDS,
    Anatomy,
    anatomy,
    rowwise_tier_sizes,
)
from keras_ctr_compress.search.plan import (
    GRANULARITIES,
    QUANT_BITS,
    TABLE_METHODS,
    DensePlan,
    PairPlan,
    Plan,
    TablePlan,
)

#: Default row-tier presets of ``rowwise`` (fixed fractions: exact bytes before training).
ROWWISE_PRESETS: tuple[dict, ...] = (
    {"tiers": ["int8", "int4"], "fractions": [0.3, 0.7]},
    {"tiers": ["int8", "int4", "int2"], "fractions": [0.1, 0.4, 0.5]},
    {"tiers": ["int4", "int2", "pruned"], "fractions": [0.2, 0.5, 0.3]},
    {"tiers": ["fp16", "int8", "int4", "int2", "pruned"], "fractions": [0.05, 0.15, 0.3, 0.3, 0.2]},
)
#: Default kept-unit shares of a prunable Dense layer.
UNIT_SHARES = (0.25, 0.5, 0.75)
#: Default pair sparsities (0: all pairs, the closed form).
PAIR_SPARSITIES = (0.0, 0.25, 0.5, 0.75)


@dataclass
class TableChoices:
    """Choices of one field's table (``tables.<field>``)."""

    field: str
    rows: int
    dim: int
    methods: list[str]
    bits: list[int]
    granularities: list[str]
    rowwise: list[dict]
    ranks: list[int]


@dataclass
class DenseChoices:
    """Choices of one Dense layer (``dense.<layer>``); None means full rank / all units."""

    layer: str
    in_dim: int
    units: int
    source: str
    ranks: list[int | None]
    kept_units: list[int | None]


@dataclass
class PairChoices:
    """Choices of the pair layer (``pairs``)."""

    layer: str
    mode: str
    sparsities: list[float]


@dataclass
class SearchSpace:
    """Per-entry choices for plans of one model (see the module docstring).

    Attributes:
        model: the model's name.
        tables, dense: choices by field / Dense layer name.
        pairs: the pair layer's choices (None: the model has none).
        drq: allowed values of the plan's ``drq``.
        min_fields: fields that must stay (pruning more is never sampled).
        fixed: ``{entry: value}`` of fixed entries (JSON form of the plan entry).
        finetune: the fine-tuning options every sampled plan gets.
    """

    model: str
    tables: dict[str, TableChoices]
    dense: dict[str, DenseChoices]
    pairs: PairChoices | None
    drq: list[bool]
    min_fields: int
    fixed: dict[str, object] = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ narrowing

    def _entries(self, entry: str) -> list[tuple[str, object]]:
        """``(entry name, choices object)`` for ``entry`` (``tables.*`` / ``dense.*`` allowed)."""
        group, _, name = entry.partition(".")
        if entry in ("pairs", "drq") and not name:
            if entry == "pairs" and self.pairs is None:
                raise ValueError(f"space entry pairs: model {self.model!r} has no field-pair layer")
            return [(entry, self.pairs if entry == "pairs" else self)]
        items = {"tables": self.tables, "dense": self.dense}.get(group)
        if items is None or not name:
            raise ValueError(f"space entry {entry!r}: expected 'tables.<field>', 'dense.<layer>', "
                             "'tables.*', 'dense.*', 'pairs' or 'drq'")
        if name == "*":
            return [(f"{group}.{k}", v) for k, v in items.items()]
        if name not in items:
            what = "field" if group == "tables" else "Dense layer"
            raise ValueError(f"space entry {entry}: model {self.model!r} has no {what} {name!r} "
                             f"(choices: {', '.join(items)})")
        return [(entry, items[name])]

    def restrict(self, entry: str, **choices) -> SearchSpace:
        """A copy where ``entry`` keeps only the given choices.

        ``choices`` are attribute names of the entry's choices with the values to
        keep, which must already be allowed: ``restrict("tables.c0", methods=["quant"],
        bits=[4])``, ``restrict("dense.*", ranks=[None, 8])``,
        ``restrict("pairs", sparsities=[0.0, 0.5])``, ``restrict("drq", drq=[True])``.

        Raises:
            ValueError: unknown entry or attribute, or a value that is not allowed.
        """
        new = copy.deepcopy(self)
        for name, obj in new._entries(entry):
            for key, keep in choices.items():
                allowed = ["drq"] if name == "drq" else [k for k, v in vars(obj).items() if isinstance(v, list)]
                if key not in allowed:
                    raise ValueError(f"space entry {name}: no choice list {key!r} (choice lists: {', '.join(allowed)})")
                current = getattr(obj, key)
                keep = list(keep)
                bad = [v for v in keep if v not in current]
                if bad:
                    raise ValueError(f"space entry {name}: {key} {bad} not among the allowed {current}")
                if not keep:
                    raise ValueError(f"space entry {name}: {key} must keep at least one choice")
                setattr(obj, key, [v for v in current if v in keep])
        return new

    def fix(self, entry: str, value) -> SearchSpace:
        """A copy where ``entry`` always takes ``value``.

        ``value``: a :class:`TablePlan` / :class:`DensePlan` / :class:`PairPlan` or its
        JSON dict for ``tables.<field>`` / ``dense.<layer>`` / ``pairs`` (None: all
        pairs); a bool for ``drq``. It is checked against the model when plans are
        validated (ranks against shapes after pruning).
        """
        if entry.endswith(".*"):
            raise ValueError(f"space entry {entry!r}: fix one entry at a time")
        [(name, _)] = self._entries(entry)
        if name == "drq":
            if not isinstance(value, bool):
                raise ValueError(f"space entry drq: fix it to true or false, got {value!r}")
            stored: object = value
        elif name == "pairs":
            stored = None if value is None else (value if isinstance(value, PairPlan) else PairPlan.from_dict(value)).to_dict()
        elif name.startswith("tables."):
            stored = (value if isinstance(value, TablePlan) else TablePlan.from_dict(value, name)).to_dict()
        else:
            stored = (value if isinstance(value, DensePlan) else DensePlan.from_dict(value, name)).to_dict()
        new = copy.deepcopy(self)
        new.fixed[name] = stored
        return new

    # ------------------------------------------------------------------ plans

    def default_plan(self) -> Plan:
        """The unchanged model (every table fp32, every layer full), fixed entries applied."""
        return self._plan({}, {}, None, False)

    def compose(self, tables: dict, dense: dict, pairs, drq: bool, *, apply_fixed: bool = True) -> Plan:
        """The plan of the given entries (JSON forms), with the space's fixed entries
        and fine-tuning options (``apply_fixed=False``: the entries alone).

        Raises:
            ValueError: an entry is malformed (model-independent checks only).
        """
        if not apply_fixed:
            return Plan(tables=tables, dense=dense, pairs=pairs, drq=drq, finetune=self.finetune or {},
                        model=self.model)
        return self._plan(dict(tables), dict(dense), pairs, drq)

    def _plan(self, tables: dict, dense: dict, pairs, drq: bool) -> Plan:
        for key, value in self.fixed.items():
            group, _, name = key.partition(".")
            if group == "tables":
                tables[name] = value
            elif group == "dense":
                dense[name] = value
            elif key == "pairs":
                pairs = value
            else:
                drq = value
        return Plan(tables=tables, dense=dense, pairs=pairs, drq=drq, finetune=self.finetune or {},
                    model=self.model)

    def sample(self, rng: np.random.Generator, max_tries: int = 100) -> Plan:
        """A random valid plan of this space (uniform per entry; ranks that would
        not fit the pruned shapes are redrawn)."""
        for _ in range(max_tries):
            plan = self._draw(rng)
            if plan is not None:
                return plan
        raise ValueError(f"space of model {self.model!r}: no valid plan in {max_tries} draws; "
                         "the fixed entries or restrictions may contradict each other")

    def _draw(self, rng) -> Plan | None:
        tables: dict = {}
        pruned_left = len(self.tables) - self.min_fields - sum(
            1 for k, v in self.fixed.items() if k.startswith("tables.") and v.get("method") == "pruned")
        for name, c in self.tables.items():
            if f"tables.{name}" in self.fixed:
                continue
            methods = [m for m in c.methods if m != "pruned" or pruned_left > 0]
            method = methods[rng.integers(len(methods))]
            pruned_left -= method == "pruned"
            tables[name] = _draw_table(c, method, rng)
        kept = {n: c for n, c in self.tables.items()
                if (self.fixed.get(f"tables.{n}") or tables.get(n, {})).get("method") != "pruned"}
        units: dict[str, int] = {}
        dense: dict = {}
        for name, c in self.dense.items():
            fixed = self.fixed.get(f"dense.{name}")
            choice = dict(fixed) if fixed is not None else {}
            if fixed is None:
                u = c.kept_units[rng.integers(len(c.kept_units))]
                if u is not None:
                    choice["units"] = u
            units[name] = choice.get("units") or c.units
            in_dim = sum(t.dim for t in kept.values()) if c.source == FIELDS else units.get(c.source, 0)
            if fixed is None:
                ranks = [r for r in c.ranks if r is None or r < min(in_dim, units[name])]
                r = ranks[rng.integers(len(ranks))]
                if r is not None:
                    choice["rank"] = r
            dense[name] = choice
        pairs = None
        if self.pairs is not None and "pairs" not in self.fixed:
            s = self.pairs.sparsities[rng.integers(len(self.pairs.sparsities))]
            pairs = {"sparsity": float(s)} if s > 0 else None
        drq = bool(self.drq[rng.integers(len(self.drq))])
        try:
            return self._plan(tables, dense, pairs, drq)
        except ValueError:
            return None

    def check(self, plan: Plan) -> Plan:
        """Raises ValueError naming the first entry of ``plan`` outside this space."""
        for key, value in self.fixed.items():
            got = _entry_value(plan, key)
            if got != value:
                raise ValueError(f"plan entry {key}: {got} but the space fixes it to {value}")
        for name, c in self.tables.items():
            if f"tables.{name}" not in self.fixed:
                _check_table(plan.table(name), c)
        for name, c in self.dense.items():
            if f"dense.{name}" not in self.fixed:
                d = plan.dense_layer(name)
                if d.rank not in c.ranks:
                    raise ValueError(f"plan entry dense.{name}: rank {d.rank} not among {c.ranks}")
                if d.units not in c.kept_units:
                    raise ValueError(f"plan entry dense.{name}: units {d.units} not among {c.kept_units}")
        if self.pairs is not None and "pairs" not in self.fixed and plan.pairs is not None:
            if plan.pairs.sparsity is None or plan.pairs.sparsity not in self.pairs.sparsities:
                raise ValueError(f"plan entry pairs: {plan.pairs.to_dict()} not among sparsities {self.pairs.sparsities}")
        if plan.drq not in self.drq:
            raise ValueError(f"plan entry drq: {plan.drq} not among {self.drq}")
        pruned = len(plan.pruned_fields())
        if len(self.tables) - pruned < self.min_fields:
            raise ValueError(f"plan entry tables: {pruned} fields pruned; at most {len(self.tables) - self.min_fields}")
        return plan

    def size(self) -> int:
        """Number of plans the choices allow (before the pruning / rank constraints)."""
        n = 1
        for k, c in self.tables.items():
            if f"tables.{k}" not in self.fixed:
                n *= sum(_method_options(c, m) for m in c.methods)
        for k, c in self.dense.items():
            if f"dense.{k}" not in self.fixed:
                n *= len(c.ranks) * len(c.kept_units)
        if self.pairs is not None and "pairs" not in self.fixed:
            n *= len(self.pairs.sparsities)
        return n * (len(self.drq) if "drq" not in self.fixed else 1)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> SearchSpace:
        return cls(
            model=d["model"],
            tables={k: TableChoices(**v) for k, v in d["tables"].items()},
            dense={k: DenseChoices(**v) for k, v in d["dense"].items()},
            pairs=None if d.get("pairs") is None else PairChoices(**d["pairs"]),
            drq=list(d["drq"]),
            min_fields=int(d["min_fields"]),
            fixed=dict(d.get("fixed", {})),
            finetune=dict(d.get("finetune", {})),
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        return cls.from_dict(json.loads(text))


def _method_options(c: TableChoices, m: str) -> int:
    return {"quant": len(c.bits) * len(c.granularities), "rowwise": len(c.rowwise),
            "lowrank": len(c.ranks)}.get(m, 1)


def _draw_table(c: TableChoices, method: str, rng) -> dict:
    if method == "quant":
        return {"method": method, "bits": c.bits[rng.integers(len(c.bits))],
                "granularity": c.granularities[rng.integers(len(c.granularities))]}
    if method == "rowwise":
        return {"method": method, **copy.deepcopy(c.rowwise[rng.integers(len(c.rowwise))])}
    if method == "lowrank":
        return {"method": method, "rank": c.ranks[rng.integers(len(c.ranks))]}
    return {"method": method}


def _entry_value(plan: Plan, key: str):
    group, _, name = key.partition(".")
    if group == "tables":
        return plan.table(name).to_dict()
    if group == "dense":
        return plan.dense_layer(name).to_dict()
    if key == "pairs":
        return None if plan.pairs is None else plan.pairs.to_dict()
    return plan.drq


def _check_table(t: TablePlan, c: TableChoices) -> None:
    bad = None
    if t.method not in c.methods:
        bad = f"method {t.method!r} not among {c.methods}"
    elif t.method == "quant" and (t.bits not in c.bits or t.granularity not in c.granularities):
        bad = f"quant {t.bits} bits per {t.granularity} not among bits {c.bits} x {c.granularities}"
    elif t.method == "rowwise" and {"tiers": list(t.tiers), "fractions": list(t.fractions)} not in c.rowwise:
        bad = f"row tiers {list(t.tiers)} / {list(t.fractions)} not among the presets"
    elif t.method == "lowrank" and t.rank not in c.ranks:
        bad = f"rank {t.rank} not among {c.ranks}"
    if bad:
        raise ValueError(f"plan entry tables.{c.field}: {bad}")


# ------------------------------------------------------------------------- deriving


def _exportable(rows: int, preset: dict) -> bool:
    """False where the preset's tiers would hit the 7-row export bug (see
    :data:`~keras_ctr_compress.search.anatomy.EXPORT_BROKEN_TIER_ROWS`)."""
    sizes = rowwise_tier_sizes(rows, preset["fractions"])
    stored = [n for t, n in zip(preset["tiers"], sizes, strict=True) if t != "pruned" and n > 0]
    return len(stored) < 2 or EXPORT_BROKEN_TIER_ROWS not in stored


def profitable_table_ranks(rows: int, dim: int) -> list[int]:
    """Low-rank code widths that make the table smaller: ``rows k + k d + d < rows d``."""
    return [k for k in range(1, min(rows, dim)) if rows * k + k * dim + dim < rows * dim]


def profitable_dense_ranks(in_dim: int, units: int) -> list[int]:
    """Powers of two below ``min(in, out)`` whose AFM pair (``u``, ``v``, both biases)
    is smaller than the Dense layer: ``in r + r + r out < in out``."""
    out, r = [], 1
    while r < min(in_dim, units):
        if in_dim * r + r + r * units < in_dim * units:
            out.append(r)
        r *= 2
    return out


def search_space(model: keras.Model | Anatomy, *, finetune: dict | None = None) -> SearchSpace:
    """The default search space of a trained reference model.

    Tables: ``fp32``, ``quant`` (8 / 4 / 2 bits, row or table step), ``rowwise``
    (:data:`ROWWISE_PRESETS`), ``lowrank`` (the byte-saving ranks; the method is
    left out where none saves bytes) and ``pruned`` (up to all but
    ``min_fields`` fields). Dense layers: full or a byte-saving power-of-two rank;
    all units or :data:`UNIT_SHARES` of them where neurons can go. Pairs:
    :data:`PAIR_SPARSITIES`. DRQ on or off.

    Example::

        space = search_space(model)
        space.tables["c0"].methods   # ['fp32', 'quant', 'rowwise', 'lowrank', 'pruned']
        space.dense["dnn_1"].ranks   # [None, 1, 2, 4, 8]
    """
    an = model if isinstance(model, Anatomy) else anatomy(model)
    prunable = len(an.fields) > an.min_fields
    tables = {}
    for f in an.fields:
        ranks = profitable_table_ranks(f.rows, f.dim)
        methods = [m for m in TABLE_METHODS if (m != "lowrank" or ranks) and (m != "pruned" or prunable)]
        presets = [copy.deepcopy(p) for p in ROWWISE_PRESETS if _exportable(f.rows, p)]
        if not presets:
            methods.remove("rowwise")
        tables[f.name] = TableChoices(f.name, f.rows, f.dim, methods, list(QUANT_BITS), list(GRANULARITIES),
                                      presets, ranks)
    dense = {}
    for d in an.dense:
        kept = [None]
        if d.prunable:
            kept += sorted({max(1, int(math.floor(s * d.units))) for s in UNIT_SHARES} - {d.units})
        dense[d.name] = DenseChoices(d.name, d.in_dim, d.units, d.source,
                                     [None, *profitable_dense_ranks(d.in_dim, d.units)], kept)
    pairs = None if an.pair_layer is None else PairChoices(an.pair_layer, an.pair_mode, list(PAIR_SPARSITIES))
    return SearchSpace(an.model_name, tables, dense, pairs, [False, True], an.min_fields,
                       finetune=dict(finetune or {}))
