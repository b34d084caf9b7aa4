"""The Plan: one JSON description of a compressed model (design.md, "The Plan").

A plan names, for a trained reference model (``ids`` -> ``SplitFields`` -> per field
``emb_<field>`` / ``lin_<field>`` -> ``pairs`` and / or ``dnn_k`` -> ``ctr``):

- per field (embedding table ``emb_<field>``) a method: ``fp32`` (left as it is),
  ``quant`` (uniform ``bits`` = 8 / 4 / 2 codes, one step per ``row`` or per
  ``table``), ``rowwise`` (SHARK tiers with fixed row ``fractions``), ``lowrank``
  (AFM codes of width ``rank``) or ``pruned`` (the field is dropped: its column,
  tables and first-layer weights go);
- per Dense layer a ``rank`` (AFM low-rank pair; None: full) and kept ``units``
  (structured pruning; None: all);
- for the FM / FwFM pair layer a ``sparsity`` (share of pairs removed, the least
  important by data) or an explicit ``kept`` list of field-name pairs;
- global options: dynamic-range quantisation of whatever stays float (``drq``) and
  the fine-tuning recipe.

Entries left out mean "unchanged". The JSON form is versioned (``version``); a file
from another version is refused with a clear error rather than misread.

Example::

    plan = Plan(
        tables={"c0": TablePlan("quant", bits=4), "c3": TablePlan("pruned"),
                "c4": TablePlan("lowrank", rank=2)},
        dense={"dnn_1": DensePlan(rank=4), "dnn_0": DensePlan(units=16)},
        pairs=PairPlan(sparsity=0.5), drq=True,
    )
    plan.save("plan.json")
    validate(Plan.load("plan.json"), model)   # ValueError naming the bad entry

Model-independent checks (types, allowed values) run when a plan is built or read;
:func:`validate` adds the checks that need the model (field and layer names, ranks
against layer shapes after pruning, how many fields may go).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras

from keras_ctr_compress.utils import atomic_write_text

#: The plan format this library reads and writes.
PLAN_VERSION = 1
PLAN_FORMAT = "keras-ctr-compress-plan"

TABLE_METHODS = ("fp32", "quant", "rowwise", "lowrank", "pruned")
QUANT_BITS = (8, 4, 2)
GRANULARITIES = ("row", "table")
#: Row-wise tiers, most to least precise (a plan lists a sub-sequence of these).
ROWWISE_TIERS = ("fp16", "int8", "int4", "int2", "pruned")
#: How ``quant`` tables are fine-tuned (``compress.METHOD_PRESETS`` names).
QUANT_TRAININGS = ("qat", "lpt-dr", "lpt-sr", "alpt")

_TABLE_KEYS = {"method", "bits", "granularity", "tiers", "fractions", "rank"}
_DENSE_KEYS = {"rank", "units"}
_PAIR_KEYS = {"sparsity", "kept"}
_FINETUNE_KEYS = {"epochs", "learning_rate", "batch_size", "patience", "quant_training", "table_learning_rate",
                  "lr_decays"}
_PLAN_KEYS = {"format", "version", "model", "tables", "dense", "pairs", "drq", "finetune"}


def _fail(entry: str, what: str) -> ValueError:
    """The one-line error every check raises: ``plan entry <entry>: <what>``."""
    return ValueError(f"plan entry {entry}: {what}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_keys(entry: str, d, allowed: set[str]) -> None:
    if not isinstance(d, Mapping):
        raise _fail(entry, f"expected a JSON object, got {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _fail(entry, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


# ----------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class TablePlan:
    """What happens to one field's embedding table ``emb_<field>``.

    Attributes:
        method: ``fp32``, ``quant``, ``rowwise``, ``lowrank`` or ``pruned``.
        bits: ``quant``: 8, 4 or 2.
        granularity: ``quant``: ``"row"`` (fp16 step per row, 2 bytes a row) or
            ``"table"`` (one float32 step).
        tiers: ``rowwise``: tiers from :data:`ROWWISE_TIERS`, most precise first.
        fractions: ``rowwise``: share of the rows per tier (sums to 1). Fixed shares
            make the exported bytes known before training (a byte budget would not).
        rank: ``lowrank``: code width, ``1 <= rank < min(rows, dim)``.

    Example: ``TablePlan("quant", bits=4)``, ``TablePlan("rowwise", tiers=("int8",
    "int4"), fractions=(0.2, 0.8))``, ``TablePlan("lowrank", rank=2)``.
    """

    method: str = "fp32"
    bits: int | None = None
    granularity: str | None = None
    tiers: tuple[str, ...] | None = None
    fractions: tuple[float, ...] | None = None
    rank: int | None = None
    #: where errors point (``tables.<field>``); not part of the plan's value
    entry: str = field(default="TablePlan", compare=False, repr=False)

    def __post_init__(self):
        e, m = self.entry, self.method
        if m not in TABLE_METHODS:
            raise _fail(e, f"unknown method {m!r} (choose {', '.join(TABLE_METHODS)})")
        given = {k for k in ("bits", "granularity", "tiers", "fractions", "rank") if getattr(self, k) is not None}
        allowed = {"quant": {"bits", "granularity"}, "rowwise": {"tiers", "fractions"},
                   "lowrank": {"rank"}}.get(m, set())
        if given - allowed:
            raise _fail(e, f"{sorted(given - allowed)[0]!r} does not apply to method {m!r}")
        if m == "quant":
            self._check_quant()
        elif m == "rowwise":
            self._check_rowwise()
        elif m == "lowrank" and (not _is_int(self.rank) or self.rank < 1):
            raise _fail(e, f"method 'lowrank' needs an integer rank >= 1, got rank={self.rank!r}")

    def _check_quant(self) -> None:
        if self.bits is None or not _is_int(self.bits) or int(self.bits) not in QUANT_BITS:
            raise _fail(self.entry, f"bits={self.bits!r} is not allowed for method 'quant' (choose 8, 4 or 2)")
        object.__setattr__(self, "bits", int(self.bits))
        if self.granularity is None:
            object.__setattr__(self, "granularity", "row")
        if self.granularity not in GRANULARITIES:
            raise _fail(self.entry, f"granularity={self.granularity!r} is not allowed (choose 'row' or 'table')")

    def _check_rowwise(self) -> None:
        e = self.entry
        tiers, fractions = self.tiers, self.fractions
        if isinstance(tiers, str) or not isinstance(tiers, Sequence) or not tiers:
            raise _fail(e, f"method 'rowwise' needs a list of tiers from {list(ROWWISE_TIERS)}, got {tiers!r}")
        tiers = tuple(tiers)
        bad = [t for t in tiers if t not in ROWWISE_TIERS]
        if bad:
            raise _fail(e, f"unknown tier {bad[0]!r} (choose from {', '.join(ROWWISE_TIERS)})")
        order = [ROWWISE_TIERS.index(t) for t in tiers]
        if order != sorted(set(order)):
            raise _fail(e, f"tiers {list(tiers)} must go from most to least precise without repeats "
                           f"(order {', '.join(ROWWISE_TIERS)})")
        if tiers[0] == "pruned":
            raise _fail(e, "tiers need a stored tier before 'pruned'")
        if isinstance(fractions, str) or not isinstance(fractions, Sequence) or len(fractions) != len(tiers):
            raise _fail(e, f"fractions must list one share per tier ({len(tiers)}), got {fractions!r}")
        if not all(_is_number(f) and f >= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise _fail(e, f"fractions must be non-negative numbers summing to 1, got {list(fractions)}")
        object.__setattr__(self, "tiers", tiers)
        object.__setattr__(self, "fractions", tuple(float(f) for f in fractions))

    def to_dict(self) -> dict:
        d: dict = {"method": self.method}
        for k in ("bits", "granularity", "rank"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.tiers is not None:
            d["tiers"], d["fractions"] = list(self.tiers), list(self.fractions)
        return d

    @classmethod
    def from_dict(cls, d, entry: str = "TablePlan") -> TablePlan:
        _check_keys(entry, d, _TABLE_KEYS)
        if "method" not in d:
            raise _fail(entry, "missing 'method'")
        kw = {k: d[k] for k in d}
        for k in ("tiers", "fractions"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw, entry=entry)


@dataclass(frozen=True)
class DensePlan:
    """What happens to one Dense layer.

    Attributes:
        rank: AFM low-rank pair of this rank (None: full). Must be below
            ``min(in, out)`` of the layer after pruning.
        units: neurons kept (None: all); the others are removed with the next
            layer's kernel rows (structured pruning).
    """

    rank: int | None = None
    units: int | None = None
    entry: str = field(default="DensePlan", compare=False, repr=False)

    def __post_init__(self):
        for k in ("rank", "units"):
            v = getattr(self, k)
            if v is not None and (not _is_int(v) or v < 1):
                raise _fail(self.entry, f"{k} must be an integer >= 1 or null (full), got {k}={v!r}")
            if v is not None:
                object.__setattr__(self, k, int(v))

    @property
    def is_identity(self) -> bool:
        return self.rank is None and self.units is None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("rank", "units") if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, d, entry: str = "DensePlan") -> DensePlan:
        _check_keys(entry, d, _DENSE_KEYS)
        return cls(**dict(d), entry=entry)


@dataclass(frozen=True)
class PairPlan:
    """Which field pairs the FM / FwFM layer keeps.

    Exactly one of:
        sparsity: share of the pairs among the kept fields to remove, in ``[0, 1)``;
            ``round((1 - sparsity) * pairs)`` pairs stay (at least 1), chosen by
            their mean ``|r_fg <v_f, v_g>|`` on the training data.
        kept: explicit pairs of field names, e.g. ``(("c0", "c1"), ("c1", "c4"))``.
    """

    sparsity: float | None = None
    kept: tuple[tuple[str, str], ...] | None = None
    entry: str = field(default="pairs", compare=False, repr=False)

    def __post_init__(self):
        e = self.entry
        if (self.sparsity is None) == (self.kept is None):
            raise _fail(e, "give exactly one of 'sparsity' and 'kept'")
        if self.sparsity is not None:
            if not _is_number(self.sparsity) or not 0.0 <= self.sparsity < 1.0:
                raise _fail(e, f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
            object.__setattr__(self, "sparsity", float(self.sparsity))
            return
        if isinstance(self.kept, str) or not isinstance(self.kept, Sequence) or not self.kept:
            raise _fail(e, f"kept must be a non-empty list of [field, field] pairs, got {self.kept!r}")
        pairs = []
        for p in self.kept:
            if isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2 or not all(isinstance(f, str) for f in p):
                raise _fail(e, f"each kept pair must be [field, field], got {p!r}")
            if p[0] == p[1]:
                raise _fail(e, f"pair {list(p)} pairs a field with itself")
            pairs.append((p[0], p[1]))
        if len({frozenset(p) for p in pairs}) != len(pairs):
            raise _fail(e, "kept lists a pair twice")
        object.__setattr__(self, "kept", tuple(pairs))

    def to_dict(self) -> dict:
        if self.sparsity is not None:
            return {"sparsity": self.sparsity}
        return {"kept": [list(p) for p in self.kept]}

    @classmethod
    def from_dict(cls, d, entry: str = "pairs") -> PairPlan:
        _check_keys(entry, d, _PAIR_KEYS)
        kw = dict(d)
        if isinstance(kw.get("kept"), list):
            kw["kept"] = tuple(tuple(p) if isinstance(p, list) else p for p in kw["kept"])
        return cls(**kw, entry=entry)


@dataclass(frozen=True)
class FinetuneOptions:
    """The fine-tuning recipe after the transforms (see ``compress.finetune``).

    Attributes:
        epochs: at most this many epochs (0: no fine-tuning), early stopping on
            exact validation AUC, never worse than the incoming weights.
        learning_rate: Adam's rate for the Keras-trained weights.
        batch_size, patience: as in ``compress.finetune``.
        quant_training: how ``quant`` tables train: ``qat`` (float shadow table,
            fake-quantised) or the ALPT family ``lpt-dr``, ``lpt-sr``, ``alpt``
            (int8-stored codes updated by their own row-wise optimizer).
        table_learning_rate: the ``lpt`` tables' own learning rate.
        lr_decays: on a validation plateau, restore the best weights and divide the
            learning rate by 10 this many times before stopping (``DecayOnPlateau``;
            0: plain early stopping).
    """

    epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 1024
    patience: int = 1
    quant_training: str = "qat"
    table_learning_rate: float = 1e-3
    lr_decays: int = 0

    def __post_init__(self):
        e = "finetune"
        for k in ("epochs", "patience", "lr_decays"):
            if not _is_int(getattr(self, k)) or getattr(self, k) < 0:
                raise _fail(e, f"{k} must be an integer >= 0, got {getattr(self, k)!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise _fail(e, f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        for k in ("learning_rate", "table_learning_rate"):
            if not _is_number(getattr(self, k)) or not getattr(self, k) > 0:
                raise _fail(e, f"{k} must be a positive number, got {getattr(self, k)!r}")
        if self.quant_training not in QUANT_TRAININGS:
            raise _fail(e, f"quant_training={self.quant_training!r} (choose {', '.join(QUANT_TRAININGS)})")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("epochs", "learning_rate", "batch_size", "patience",
                                              "quant_training", "table_learning_rate", "lr_decays")}

    @classmethod
    def from_dict(cls, d) -> FinetuneOptions:
        _check_keys("finetune", d, _FINETUNE_KEYS)
        return cls(**dict(d))


# -------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """A compressed model, described (see the module docstring).

    Attributes:
        tables: ``{field name: TablePlan}``; fields left out stay ``fp32``.
        dense: ``{Dense layer name: DensePlan}``; layers left out stay full.
        pairs: the pair layer's :class:`PairPlan` (None: all pairs).
        drq: LiteRT dynamic-range quantisation of every float weight that is left
            (Dense kernels, float tables of >= 1024 weights) at export.
        finetune: the fine-tuning recipe.
        model: name of the model the plan was made for (informational).
        version: the plan format version (:data:`PLAN_VERSION`).
    """

    tables: Mapping[str, TablePlan] = field(default_factory=dict)
    dense: Mapping[str, DensePlan] = field(default_factory=dict)
    pairs: PairPlan | None = None
    drq: bool = False
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    model: str | None = None
    version: int = PLAN_VERSION

    def __post_init__(self):
        if self.version != PLAN_VERSION:
            raise _fail("version", f"plan version {self.version!r} is not supported (this library reads "
                                   f"version {PLAN_VERSION})")
        if not isinstance(self.drq, bool):
            raise _fail("drq", f"must be true or false, got {self.drq!r}")
        tables = {}
        for name, t in dict(self.tables).items():
            t = t if isinstance(t, TablePlan) else TablePlan.from_dict(t, f"tables.{name}")
            tables[str(name)] = replace(t, entry=f"tables.{name}")
        dense = {}
        for name, d in dict(self.dense).items():
            d = d if isinstance(d, DensePlan) else DensePlan.from_dict(d, f"dense.{name}")
            dense[str(name)] = replace(d, entry=f"dense.{name}")
        pairs = self.pairs if self.pairs is None or isinstance(self.pairs, PairPlan) else PairPlan.from_dict(self.pairs)
        finetune = self.finetune if isinstance(self.finetune, FinetuneOptions) else FinetuneOptions.from_dict(self.finetune)
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "dense", dense)
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "finetune", finetune)

    # ----------------------------------------------------------------- queries

    def table(self, field_name: str) -> TablePlan:
        """The plan of ``field_name`` (``fp32`` when not listed)."""
        return self.tables.get(field_name) or TablePlan(entry=f"tables.{field_name}")

    def dense_layer(self, name: str) -> DensePlan:
        """The plan of Dense layer ``name`` (full when not listed)."""
        return self.dense.get(name) or DensePlan(entry=f"dense.{name}")

    def pruned_fields(self) -> list[str]:
        return [f for f, t in self.tables.items() if t.method == "pruned"]

    # ----------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        """The JSON form (entries that change nothing are left out)."""
        d: dict = {"format": PLAN_FORMAT, "version": self.version}
        if self.model is not None:
            d["model"] = self.model
        d["tables"] = {k: t.to_dict() for k, t in self.tables.items() if t.method != "fp32"}
        d["dense"] = {k: v.to_dict() for k, v in self.dense.items() if not v.is_identity}
        if self.pairs is not None:
            d["pairs"] = self.pairs.to_dict()
        d["drq"] = self.drq
        d["finetune"] = self.finetune.to_dict()
        return d

    @classmethod
    def from_dict(cls, d) -> Plan:
        """Reads the JSON form; raises ValueError naming the first bad entry."""
        _check_keys("(top level)", d, _PLAN_KEYS)
        if d.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise _fail("format", f"expected {PLAN_FORMAT!r}, got {d['format']!r}")
        if "version" not in d:
            raise _fail("version", "missing (a plan file must say which format version it is)")
        if d["version"] != PLAN_VERSION:
            raise _fail("version", f"plan version {d['version']!r} is not supported (this library reads "
                                   f"version {PLAN_VERSION})")
        for key in ("tables", "dense"):
            if not isinstance(d.get(key, {}), Mapping):
                raise _fail(key, f"expected a JSON object, got {d[key]!r}")
        return cls(
            tables={k: TablePlan.from_dict(v, f"tables.{k}") for k, v in d.get("tables", {}).items()},
            dense={k: DensePlan.from_dict(v, f"dense.{k}") for k, v in d.get("dense", {}).items()},
            pairs=None if d.get("pairs") is None else PairPlan.from_dict(d["pairs"]),
            drq=d.get("drq", False),
            finetune=FinetuneOptions.from_dict(d.get("finetune", {})),
            model=d.get("model"),
            version=d["version"],
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"plan: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        return cls.from_dict(d)

    def save(self, path: str | Path) -> Path:
        """Writes the JSON form atomically (a temporary file renamed into place)."""
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such plan file") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a plan file (not UTF-8 text; a plan is JSON)") from None
        try:
            return cls.from_json(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------- validate


def validate(plan: Plan, model: keras.Model) -> Plan:
    """Checks ``plan`` against the trained ``model``; returns it unchanged.

    Checks, each failing with one line naming the entry: the plan version; fields and
    layers exist; a ``lowrank`` rank below ``min(rows, dim)``; a Dense rank below
    ``min(in, out)`` of the layer after pruning (fields dropped, units kept before
    it); kept units within the layer and only on layers whose neurons can go; at
    least one field kept (two where the model has a pair layer or a first-order
    sum); pairs only on a model with a pair layer and only between kept fields;
    ``rowwise`` fractions that leave no stored tier of exactly 7 rows (such a tier
    does not export, see ``anatomy.EXPORT_BROKEN_TIER_ROWS``).

    Raises:
        ValueError: ``plan entry <entry>: <what is wrong>``.
    """
    from keras_ctr_compress.search.anatomy import anatomy, resolve

    if not isinstance(plan, Plan):
        raise TypeError(f"expected a Plan, got {type(plan).__name__}")
    if plan.version != PLAN_VERSION:
        raise _fail("version", f"plan version {plan.version!r} is not supported (this library reads "
                               f"version {PLAN_VERSION})")
    resolve(anatomy(model), plan)  # raises on every model-dependent problem
    return plan
