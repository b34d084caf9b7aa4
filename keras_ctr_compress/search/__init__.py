"""keras_ctr_compress.search: plans, the search space, the cost model, applying plans.

- :class:`Plan` (``plan.py``): the versioned JSON description of a compressed model;
  :func:`validate` checks one against a trained model.
- :func:`search_space` (``space.py``): the choices per entry, derived from the model,
  narrowed with :meth:`SearchSpace.fix` / :meth:`SearchSpace.restrict`.
- :func:`plan_bytes` / :class:`CostModel` (``cost.py``): the exported file's bytes
  from the plan alone.
- :func:`apply_plan` / :func:`export_plan` (``apply.py``): the compressed model, its
  fine-tuning and its parity-checked LiteRT file.
- :func:`search` / :class:`SearchResult` (``driver.py``): the budgeted keras-tuner search
  (``tuner.py``: budget-aware oracles; ``budget.py``; ``latency.py``: the calibrated
  latency model; ``hparams.py``: plans as hyperparameters; ``pareto.py``).
"""

from keras_ctr_compress.search.anatomy import Anatomy, anatomy, resolve, rowwise_tier_sizes
from keras_ctr_compress.search.apply import apply_plan, export_plan, pair_scores
from keras_ctr_compress.search.budget import Budget
from keras_ctr_compress.search.cost import CostModel, cost_model, plan_bytes
from keras_ctr_compress.search.driver import SearchResult, search
from keras_ctr_compress.search.hparams import Encoding
from keras_ctr_compress.search.latency import LatencyModel, calibrate_latency
from keras_ctr_compress.search.pareto import pareto_front
from keras_ctr_compress.search.plan import (
    PLAN_VERSION,
    DensePlan,
    FinetuneOptions,
    PairPlan,
    Plan,
    TablePlan,
    validate,
)
from keras_ctr_compress.search.space import SearchSpace, search_space

__all__ = [
    "PLAN_VERSION",
    "Anatomy",
    "Budget",
    "CostModel",
    "DensePlan",
    "Encoding",
    "FinetuneOptions",
    "LatencyModel",
    "PairPlan",
    "Plan",
    "SearchResult",
    "SearchSpace",
    "TablePlan",
    "anatomy",
    "apply_plan",
    "calibrate_latency",
    "cost_model",
    "export_plan",
    "pair_scores",
    "pareto_front",
    "plan_bytes",
    "resolve",
    "rowwise_tier_sizes",
    "search",
    "search_space",
    "validate",
]
