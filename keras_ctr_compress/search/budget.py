"""Budgets: which plans a search may spend trials on, and the one scalar it maximises.

A :class:`Budget` caps the exported file's bytes (exact, from the cost model) and
its predicted batch-1 latency (from the calibrated latency model). A hard budget
(the default) is a constraint: plans over it are never tried, and the score is
the validation AUC itself. A soft budget lets plans over it run and subtracts a
penalty proportional to how far over they are:

    score = val_auc - penalty * (max(0, bytes / max_bytes - 1) + max(0, latency / max_latency - 1))

:class:`Feasibility` prices hyperparameter values (cached, microseconds each) and
:func:`smallest_plan` finds the smallest plan of a space, so that an impossible
budget fails with a clear error before anything is trained.

Example::

    budget = Budget(max_bytes=100_000, max_latency_us=40.0)
    feas = Feasibility(encoding, cost, latency_model, budget)
    feas.check(values).ok          # False for plans over the budget or refused by the model
    budget.score(0.97, 90_000, 35.0)   # 0.97
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keras_ctr_compress.search.hparams import Encoding

#: AUC subtracted per unit of relative excess under a soft budget.
SOFT_PENALTY = 0.1
#: Priced values :class:`Feasibility` keeps (~600 bytes each on frappe: 0.12 GB at most).
#: A Bayesian proposal prices ~2,000 new values on frappe's 18 hyperparameters.
CACHE_ENTRIES = 200_000
_MISSING = object()


@dataclass(frozen=True)
class Budget:
    """Byte and latency caps (None: no cap); ``soft`` turns them into a penalty."""

    max_bytes: int | None = None
    max_latency_us: float | None = None
    soft: bool = False
    penalty: float = SOFT_PENALTY

    def __post_init__(self):
        if self.max_bytes is not None and (not isinstance(self.max_bytes, (int, float)) or self.max_bytes <= 0):
            raise ValueError(f"max_bytes must be a positive number of bytes, got {self.max_bytes!r}")
        if self.max_latency_us is not None and (not isinstance(self.max_latency_us, (int, float))
                                                or not self.max_latency_us > 0):
            raise ValueError(f"max_latency_us must be a positive number of microseconds, got {self.max_latency_us!r}")
        if not (isinstance(self.penalty, (int, float)) and self.penalty >= 0 and math.isfinite(self.penalty)):
            raise ValueError(f"penalty must be a non-negative number, got {self.penalty!r}")

    def excess(self, nbytes: float, latency_us: float) -> float:
        """Relative excess over the caps (0 within them)."""
        out = 0.0
        if self.max_bytes is not None:
            out += max(0.0, nbytes / self.max_bytes - 1.0)
        if self.max_latency_us is not None:
            out += max(0.0, latency_us / self.max_latency_us - 1.0)
        return out

    def within(self, nbytes: float, latency_us: float) -> bool:
        return self.excess(nbytes, latency_us) == 0.0

    def score(self, val_auc: float, nbytes: float, latency_us: float) -> float:
        """The tuner's objective: validation AUC, minus the soft-budget penalty."""
        return float(val_auc) - (self.penalty * self.excess(nbytes, latency_us) if self.soft else 0.0)

    def describe(self) -> str:
        parts = []
        if self.max_bytes is not None:
            parts.append(f"<= {int(self.max_bytes):,} bytes")
        if self.max_latency_us is not None:
            parts.append(f"<= {self.max_latency_us:.1f} us (batch 1, predicted)")
        text = " and ".join(parts) or "no budget"
        return text + (f" (soft: penalty {self.penalty} AUC per unit over)" if self.soft and parts else "")

    def to_dict(self) -> dict:
        return {"max_bytes": self.max_bytes, "max_latency_us": self.max_latency_us, "soft": self.soft,
                "penalty": self.penalty}


@dataclass(frozen=True, slots=True)
class Priced:
    """One hyperparameter set, priced: whether it makes a valid plan, its bytes,
    latency and verdict. The plan itself is not kept (``Encoding.plan`` rebuilds it):
    a search prices thousands of values per proposal, and a plan costs kilobytes."""

    valid: bool
    nbytes: int | None
    latency_us: float | None
    ok: bool
    reason: str = ""


class Feasibility:
    """Prices hyperparameter values and says whether a trial may be spent on them.

    Args:
        encoding: the hyperparameter <-> plan mapping.
        cost: the :class:`~keras_ctr_compress.search.cost.CostModel`.
        latency: a :class:`~keras_ctr_compress.search.latency.LatencyModel` (None:
            latency is not predicted and cannot be capped).
        budget: the caps (soft caps accept every valid plan).
    """

    def __init__(self, encoding: Encoding, cost, latency, budget: Budget):
        if budget.max_latency_us is not None and latency is None:
            raise ValueError("a latency budget needs a latency model (calibrate_latency)")
        self.encoding, self.cost, self.latency, self.budget = encoding, cost, latency, budget
        self._cache: dict[tuple, Priced] = {}
        self._names = tuple(encoding.names)
        self.checked = 0
        self.rejected = 0

    def _key(self, values) -> tuple:
        """The cache key: the values in the encoding's order (references to its option
        objects, ~200 bytes), then any other non-``tuner/`` entries, sorted."""
        key = tuple(values.get(n, _MISSING) for n in self._names)
        extra = [(k, v) for k, v in values.items() if k not in self._names and not k.startswith("tuner/")]
        return key + tuple(sorted(extra)) if extra else key

    def check(self, values) -> Priced:
        key = self._key(values)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._price(values)
            if len(self._cache) < CACHE_ENTRIES:
                self._cache[key] = hit
        self.checked += 1
        self.rejected += not hit.ok
        return hit

    def _price(self, values) -> Priced:
        try:
            plan = self.encoding.plan(values)
            nbytes = self.cost.plan_bytes(plan)
        except ValueError as e:
            return Priced(False, None, None, False, f"invalid: {e}")
        lat = self.latency.predict(plan) if self.latency is not None else float("nan")
        if self.budget.soft or self.budget.within(nbytes, 0.0 if lat != lat else lat):
            return Priced(True, nbytes, lat, True)
        return Priced(True, nbytes, lat, False, "over budget")


def smallest_plan(encoding: Encoding, price, *, passes: int = 4) -> tuple[dict, float]:
    """Hyperparameter values minimising ``price(values)`` (bytes or latency), and that
    minimum, by coordinate descent from the cheapest value of each hyperparameter.

    ``price`` returns ``inf`` for values the model refuses. Entries are visited from
    the one whose choices span the most to the least, so that field pruning, limited
    to all but a few fields, goes to the biggest tables first.
    """
    names = encoding.names
    choices = {n: encoding.choices(n) for n in names}
    base = {n: choices[n][0] for n in names}
    spans = {}
    for n in names:
        costs = [price({**base, n: v}) for v in choices[n]]
        finite = [c for c in costs if math.isfinite(c)]
        spans[n] = (max(finite) - min(finite)) if finite else 0.0
    order = sorted(names, key=lambda n: -spans[n])
    values = dict(base)
    best = price(values)
    for _ in range(passes):
        improved = False
        for n in order:
            for v in choices[n]:
                trial = {**values, n: v}
                c = price(trial)
                if c < best:
                    values, best, improved = trial, c, True
        if not improved:
            break
    return values, best


def check_possible(encoding: Encoding, cost, latency, budget: Budget, fp32_bytes: int) -> dict:
    """Raises a one-line ValueError when no plan of the space can meet the budget.

    Returns ``{"min_bytes", "min_bytes_plan", "min_latency_us"}`` (the smallest plan
    found by :func:`smallest_plan`; the latency minimum only with a latency model).
    """
    def nbytes(values):
        try:
            return float(cost.plan_bytes(encoding.plan(values)))
        except ValueError:
            return math.inf

    values, min_bytes = smallest_plan(encoding, nbytes)
    out = {"min_bytes": int(min_bytes), "min_bytes_plan": encoding.plan(values).to_dict(), "min_latency_us": None}
    if latency is not None:
        def lat(values):
            try:
                return latency.predict(encoding.plan(values))
            except ValueError:
                return math.inf

        out["min_latency_us"] = float(smallest_plan(encoding, lat)[1])
    if budget.soft:
        return out
    if budget.max_bytes is not None and min_bytes > budget.max_bytes:
        raise ValueError(
            f"budget max_bytes={int(budget.max_bytes):,} is below the smallest plan of the search space "
            f"({int(min_bytes):,} bytes, 1/{fp32_bytes / min_bytes:.1f} of the fp32 file's {fp32_bytes:,}): "
            "raise the budget or widen the space")
    if budget.max_latency_us is not None and latency is not None and out["min_latency_us"] > budget.max_latency_us:
        raise ValueError(
            f"budget max_latency_us={budget.max_latency_us:g} is below the fastest plan of the search space "
            f"({out['min_latency_us']:.1f} us predicted at batch 1 on this machine): raise the budget")
    return out

