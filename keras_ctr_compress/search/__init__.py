"""keras_ctr_compress.search: plans, the search space, the cost model, applying plans.

- :class:`Plan` (``plan.py``): the versioned JSON description of a compressed model;
  :func:`validate` checks one against a trained model.
- :func:`search_space` (``space.py``): the choices per entry, derived from the model,
  narrowed with :meth:`SearchSpace.fix` / :meth:`SearchSpace.restrict`.
- :func:`plan_bytes` / :class:`CostModel` (``cost.py``): the exported file's bytes
  from the plan alone.
- :func:`apply_plan` / :func:`export_plan` (``apply.py``): the compressed model, its
  fine-tuning and its parity-checked LiteRT file.
"""

from keras_ctr_compress.search.anatomy import Anatomy, anatomy, resolve, rowwise_tier_sizes
from keras_ctr_compress.search.apply import apply_plan, export_plan, pair_scores
from keras_ctr_compress.search.cost import CostModel, cost_model, plan_bytes
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
    "CostModel",
    "DensePlan",
    "FinetuneOptions",
    "PairPlan",
    "Plan",
    "SearchSpace",
    "TablePlan",
    "anatomy",
    "apply_plan",
    "cost_model",
    "export_plan",
    "pair_scores",
    "plan_bytes",
    "resolve",
    "rowwise_tier_sizes",
    "search_space",
    "validate",
]
