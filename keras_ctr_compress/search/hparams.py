"""A :class:`~keras_ctr_compress.search.space.SearchSpace` as keras-tuner hyperparameters.

One hyperparameter per free plan entry, each a ``Choice`` whose values are listed in
an order that means something to a Gaussian process (keras-tuner embeds a choice at
its list index, ``(index + 0.5) / len``):

- ``tables.<field>``: one token per table option (``fp32``, ``quant4row``,
  ``quant2table``, ``rowwise<k>`` (preset ``k`` of the space), ``lowrank<rank>``,
  ``pruned``), sorted from the largest to the smallest exported file (the cost model
  prices each option alone), so that neighbouring values are neighbouring sizes;
- ``dense.<layer>.units``: kept units, all first, then fewer;
- ``dense.<layer>.rank``: ``"full"`` first, then ranks from high to low;
- ``pairs``: pair sparsities, largest file first (the closed-form FM sum over all
  pairs can be smaller than an explicit list of most of them);
- ``drq``: a ``Boolean``.

Entries the space fixes, and entries with a single choice, get no hyperparameter:
:meth:`Encoding.plan` fills them in from the space.

Example::

    enc = Encoding(space, cost_model(model))
    hp = enc.hyperparameters()            # keras_tuner.HyperParameters
    plan = enc.plan(hp.values)            # the defaults: the fp32 plan (+ fixed entries)
    enc.values(plan) == hp.values         # True: the mapping goes both ways
"""

from __future__ import annotations

from collections.abc import Mapping

import keras_tuner as kt

from keras_ctr_compress.search.plan import Plan, TablePlan
from keras_ctr_compress.search.space import SearchSpace, TableChoices

FULL = "full"


def table_tokens(c: TableChoices) -> dict[str, dict]:
    """Every option of one table as ``{token: TablePlan JSON}`` (unordered)."""
    out: dict[str, dict] = {}
    for method in c.methods:
        if method == "quant":
            for bits in c.bits:
                for g in c.granularities:
                    out[f"quant{bits}{g}"] = {"method": "quant", "bits": bits, "granularity": g}
        elif method == "rowwise":
            for k, preset in enumerate(c.rowwise):
                out[f"rowwise{k}"] = {"method": "rowwise", **preset}
        elif method == "lowrank":
            for r in c.ranks:
                out[f"lowrank{r}"] = {"method": "lowrank", "rank": r}
        else:
            out[method] = {"method": method}
    return out


class Encoding:
    """Maps keras-tuner hyperparameter values to plans and back (module docstring).

    Args:
        space: the (possibly narrowed) search space.
        cost: a :class:`~keras_ctr_compress.search.cost.CostModel` of the model, used
            only to order each table's tokens by size.
    """

    def __init__(self, space: SearchSpace, cost):
        self.space = space
        self.tables: dict[str, dict[str, dict]] = {}
        for name, c in space.tables.items():
            if f"tables.{name}" in space.fixed:
                continue
            tokens = table_tokens(c)
            if len(tokens) > 1:
                self.tables[name] = _order_by_bytes(tokens, name, space, cost)
        self.units: dict[str, list[int]] = {}
        self.ranks: dict[str, list[str]] = {}
        for name, d in space.dense.items():
            if f"dense.{name}" in space.fixed:
                continue
            units = sorted({d.units if u is None else u for u in d.kept_units}, reverse=True)
            if len(units) > 1:
                self.units[name] = units
            ranks = [FULL] * (None in d.ranks) + [str(r) for r in sorted((r for r in d.ranks if r is not None),
                                                                         reverse=True)]
            if len(ranks) > 1:
                self.ranks[name] = ranks
        self.sparsities: list[float] = []
        if space.pairs is not None and "pairs" not in space.fixed and len(space.pairs.sparsities) > 1:
            self.sparsities = _order_sparsities(sorted(float(s) for s in space.pairs.sparsities), space, cost)
        self.drq_free = "drq" not in space.fixed and len(space.drq) > 1
        #: hyperparameter names, in :meth:`hyperparameters` order
        self.names: list[str] = [hp.name for hp in self.hyperparameters().space]

    # ------------------------------------------------------------------ keras-tuner

    def hyperparameters(self) -> kt.HyperParameters:
        """The keras-tuner search space (defaults: the unchanged model where it is a choice)."""
        hp = kt.HyperParameters()
        for name, tokens in self.tables.items():
            hp.Choice(f"tables.{name}", list(tokens), ordered=False, default=_default_token(tokens))
        for name, units in self.units.items():
            hp.Choice(f"dense.{name}.units", units)
        for name, ranks in self.ranks.items():
            hp.Choice(f"dense.{name}.rank", ranks, ordered=False)
        if self.sparsities:
            hp.Choice("pairs", self.sparsities, ordered=False, default=min(self.sparsities))
        if self.drq_free:
            hp.Boolean("drq", default=bool(self.space.drq[0]))
        return hp

    # ------------------------------------------------------------------ mapping

    def plan(self, values: Mapping[str, object], *, finetune: Mapping | None = None) -> Plan:
        """The plan of hyperparameter ``values`` (missing names take their defaults;
        keras-tuner's own ``tuner/...`` entries are ignored).

        Raises:
            ValueError: a value outside the encoding, or a plan the model refuses
                (e.g. a rank above the pruned width: ``plan entry dense.<layer>: ...``).
        """
        tables: dict = {}
        for name, tokens in self.tables.items():
            token = values.get(f"tables.{name}", _default_token(tokens))
            if token not in tokens:
                raise ValueError(f"hyperparameter tables.{name}: unknown value {token!r}")
            if tokens[token]["method"] != "fp32":
                tables[name] = dict(tokens[token])
        for name, c in self.space.tables.items():  # single-option tables
            if name not in self.tables and f"tables.{name}" not in self.space.fixed:
                only = next(iter(table_tokens(c).values()))
                if only["method"] != "fp32":
                    tables[name] = only
        dense: dict = {}
        for name, d in self.space.dense.items():
            if f"dense.{name}" in self.space.fixed:
                continue
            units = int(values.get(f"dense.{name}.units", self.units.get(name, [_only_units(d)])[0]))
            rank = str(values.get(f"dense.{name}.rank", self.ranks.get(name, [_only_rank(d)])[0]))
            entry = {}
            if units != d.units:
                entry["units"] = units
            if rank != FULL:
                entry["rank"] = int(rank)
            if entry:
                dense[name] = entry
        pairs = None
        if self.space.pairs is not None and "pairs" not in self.space.fixed:
            s = float(values.get("pairs", min(self.sparsities) if self.sparsities else self.space.pairs.sparsities[0]))
            pairs = {"sparsity": s} if s > 0 else None
        drq = bool(values.get("drq", self.space.drq[0])) if "drq" not in self.space.fixed else False
        space = self.space
        if finetune is not None:
            space = _with_finetune(space, finetune)
        return space.compose(tables, dense, pairs, drq)

    def values(self, plan: Plan) -> dict[str, object]:
        """The hyperparameter values of ``plan`` (the inverse of :meth:`plan`).

        Raises:
            ValueError: the plan uses an option the encoding does not have.
        """
        out: dict[str, object] = {}
        for name, tokens in self.tables.items():
            want = plan.table(name).to_dict()
            match = [t for t, d in tokens.items() if TablePlan.from_dict(d).to_dict() == want]
            if not match:
                raise ValueError(f"plan entry tables.{name}: {want} is not an option of the search space")
            out[f"tables.{name}"] = match[0]
        for name in self.units:
            d = plan.dense_layer(name)
            out[f"dense.{name}.units"] = self.space.dense[name].units if d.units is None else d.units
        for name in self.ranks:
            r = plan.dense_layer(name).rank
            out[f"dense.{name}.rank"] = FULL if r is None else str(r)
        if self.sparsities:
            out["pairs"] = 0.0 if plan.pairs is None else float(plan.pairs.sparsity)
        if self.drq_free:
            out["drq"] = plan.drq
        for k, v in out.items():
            hp_values = self.choices(k)
            if v not in hp_values:
                raise ValueError(f"plan entry {k.rsplit('.', 1)[0] if k.startswith('dense.') else k}: "
                                 f"{v!r} is not among the search space's {hp_values}")
        return out

    def choices(self, name: str) -> list:
        """The values of hyperparameter ``name``, from the largest plan to the smallest
        (``drq``: ``[False, True]``)."""
        if name.startswith("tables."):
            return list(self.tables[name[7:]])
        if name.endswith(".units"):
            return self.units[name[6:-6]]
        if name.endswith(".rank"):
            return self.ranks[name[6:-5]]
        if name == "pairs":
            return self.sparsities
        if name == "drq" and self.drq_free:
            return [False, True]
        raise KeyError(f"no hyperparameter {name!r} (names: {', '.join(self.names)})")

    def neighbours(self, values: Mapping[str, object]) -> list[dict[str, object]]:
        """Values that differ from ``values`` in one hyperparameter by one step of its
        order (the next larger or smaller option): the local moves of the acquisition."""
        out = []
        for name in self.names:
            choices = self.choices(name)
            k = choices.index(values[name]) if name in values else 0
            for j in (k - 1, k + 1):
                if 0 <= j < len(choices):
                    out.append({**values, name: choices[j]})
        return out

    def perturb(self, values: Mapping[str, object], rng, entries: int) -> dict[str, object]:
        """``values`` with ``entries`` distinct hyperparameters (of those with a choice)
        set to another of their options, drawn uniformly: a move of any length along
        each entry's order (one table from int2 to fp32, a layer from rank 4 to full)."""
        names = [n for n in self.names if len(self.choices(n)) > 1]
        out = dict(values)
        for name in rng.sample(names, min(entries, len(names))):
            others = [c for c in self.choices(name) if c != values.get(name)]
            out[name] = rng.choice(others)
        return out


def _default_token(tokens: Mapping[str, dict]) -> str:
    """``fp32`` (the table unchanged) where it is an option, else the first (largest)."""
    return "fp32" if "fp32" in tokens else next(iter(tokens))


def _only_units(d) -> int:
    return d.units if d.kept_units[0] is None else d.kept_units[0]


def _only_rank(d) -> str:
    return FULL if d.ranks[0] is None else str(d.ranks[0])


def _with_finetune(space: SearchSpace, finetune: Mapping) -> SearchSpace:
    import copy

    new = copy.copy(space)
    new.finetune = {**space.finetune, **dict(finetune)}
    return new


def _bytes_alone(space: SearchSpace, cost, *, table: tuple[str, dict] | None = None,
                 sparsity: float | None = None) -> int | None:
    """Bytes of the default plan with only one table entry (``(field, entry)``) or the
    pair sparsity changed; None where the model refuses that change alone."""
    tables = dict([table]) if table is not None else {}
    pairs = {"sparsity": sparsity} if sparsity else None
    try:
        return cost.plan_bytes(space.compose(tables, {}, pairs, False, apply_fixed=False))
    except ValueError:
        return None


def _largest_first(nbytes: int | None) -> float:
    """Sort key: larger files first, refused options last."""
    return float("inf") if nbytes is None else -nbytes


def _order_sparsities(values: list[float], space: SearchSpace, cost) -> list[float]:
    """Pair sparsities sorted by the bytes of the default plan with only them changed
    (largest first; ties keep the lower sparsity first)."""
    return sorted(values, key=lambda s: (_largest_first(_bytes_alone(space, cost, sparsity=s)), s))


def _order_by_bytes(tokens: dict[str, dict], name: str, space: SearchSpace, cost) -> dict[str, dict]:
    """``tokens`` sorted by the bytes of the default plan with only this table changed
    (largest first; a token the model refuses alone goes last)."""
    return dict(sorted(tokens.items(), key=lambda item: _largest_first(_bytes_alone(space, cost, table=(name, item[1])))))


def negligible_entries(encoding: Encoding, cost, threshold_bytes: float) -> list[str]:
    """Table and pair hyperparameters whose options change the exported file by less
    than ``threshold_bytes`` (each option priced alone on the unchanged model).

    Such an entry cannot help a plan meet a byte budget, yet each is one more dimension
    the Bayesian model must learn from a handful of trials (a 9-row table offers 16
    options spanning ~1.7 KB of a 106 KB budget).
    """
    space = encoding.space
    out = []
    for name in encoding.names:
        if name.startswith("tables."):
            field = name[len("tables."):]
            sizes = [_bytes_alone(space, cost, table=(field, encoding.tables[field][t])) for t in encoding.choices(name)]
        elif name == "pairs":
            sizes = [_bytes_alone(space, cost, sparsity=s) for s in encoding.choices(name)]
        else:
            continue
        sizes = [b for b in sizes if b is not None]
        if sizes and max(sizes) - min(sizes) < threshold_bytes:
            out.append(name)
    return out
