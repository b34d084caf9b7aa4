"""Latency of a plan's exported file, predicted before anything is built.

The search must keep plans over a latency budget out of its trials, so it needs the
latency of a plan *before* the plan is applied, exported and timed (an export alone
takes seconds). :class:`LatencyModel` predicts the median batch-1 ``invoke()`` time
in the LiteRT interpreter (``num_threads=1``, XNNPACK, as
:func:`~keras_ctr_compress.export.measure_latency` times it) from a few counts of
what the plan exports (:func:`latency_features`): lookups, quantised and packed
tables, fully-connected ops and their multiply-adds (float and DRQ apart), explicit
field pairs. The weights are fitted by non-negative least squares to files of this
model measured on this machine (:func:`calibrate_latency`): a handful of random
plans of the space, applied without fine-tuning (weights do not change the time),
exported and timed interleaved in one process.

How far prediction is from measurement is part of the model: ``loo_errors`` are the
leave-one-out relative errors on the calibration files (each file predicted by a fit
on the others), and the search reports the measured time of its exported best plan
next to the prediction.

Example::

    lat = calibrate_latency(model, dataset, search_space(model), plans=10)
    lat.predict(plan)              # microseconds, batch 1
    lat.summary()["loo_median_abs_rel_error"]
    lat.save("latency_model.json"); LatencyModel.load("latency_model.json", model)
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np

from keras_ctr_compress.data.schema import CTRDataset, Split
from keras_ctr_compress.search.anatomy import Anatomy, Resolved, anatomy, resolve
from keras_ctr_compress.search.plan import Plan
from keras_ctr_compress.utils import atomic_write_text

FORMAT = "keras-ctr-compress-latency-model"
VERSION = 1
#: DRQ quantises float weights of at least this many elements (the converter's rule).
DRQ_MIN_ELEMENTS = 1024
FEATURES = ("base", "lookups", "dequant_tables", "packed_tables", "lowrank_tables", "fc_ops",
            "kmacs_float", "kmacs_drq", "pairs")
#: Training rows the calibration plans are applied with (weights do not matter here).
CALIBRATION_ROWS = 2048


def latency_features(res: Resolved) -> np.ndarray:
    """The counts a plan's batch-1 time is modelled on, in :data:`FEATURES` order.

    - ``lookups``: GATHERs of kept tables (embedding + first-order);
    - ``dequant_tables``: quantised tables plus stored row tiers (scale gathers, casts);
    - ``packed_tables``: int4 / int2 tables and tiers (the unpacking arithmetic);
    - ``lowrank_tables``: low-rank tables (codes + the reconstruction the pair layer reads);
    - ``fc_ops``: FULLY_CONNECTED ops (a low-rank layer is two);
    - ``kmacs_float`` / ``kmacs_drq``: thousands of multiply-adds of float and of
      DRQ (int8-weight) fully-connected ops;
    - ``pairs``: field pairs computed explicitly (0 for the closed-form FM sum).
    """
    lookups = sum(1 + (t.field.lin is not None) for t in res.tables)
    dequant = packed = lowrank = 0
    for t in res.tables:
        p = t.plan
        if p.method == "quant":
            dequant += 1
            packed += p.bits < 8
        elif p.method == "rowwise":
            stored = [tier for tier, n in zip(p.tiers, t.tier_sizes, strict=True) if tier != "pruned" and n > 0]
            dequant += len(stored)
            packed += sum(tier in ("int4", "int2") for tier in stored)
        elif p.method == "lowrank":
            lowrank += 1
    fc_ops, macs = lowrank, {False: 0.0, True: 0.0}
    for t in res.tables:
        if t.plan.method == "lowrank":
            macs[False] += t.plan.rank * t.field.dim
    for d in res.dense:
        shapes = [(d.in_dim, d.units)] if d.rank is None else [(d.in_dim, d.rank), (d.rank, d.units)]
        for i, o in shapes:
            fc_ops += 1
            macs[bool(res.plan.drq and i * o >= DRQ_MIN_ELEMENTS)] += i * o
    pairs = 0 if res.pair_count is None else res.pair_count
    return np.array([1.0, lookups, dequant, packed, lowrank, fc_ops, macs[False] / 1e3, macs[True] / 1e3, pairs],
                    dtype="float64")


def fit_nonnegative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares weights ``w`` (``x @ w ~ y``), rows weighted by
    ``1 / y`` so that the fit minimises *relative* error (small models count as
    much as big ones)."""
    from scipy.optimize import nnls

    scale = 1.0 / np.maximum(y, 1e-9)
    w, _ = nnls(x * scale[:, None], y * scale)
    return w


@dataclass
class LatencyModel:
    """Predicted batch-1 latency (microseconds) of plans of one model on this machine.

    Attributes:
        anatomy: the model's anatomy (to resolve plans).
        weights: one per :data:`FEATURES` entry (microseconds per unit).
        points: the calibration files: ``{"plan", "features", "measured_us",
            "predicted_us", "loo_us"}`` each.
        machine: the machine the times were measured on.
    """

    anatomy: Anatomy
    weights: np.ndarray
    points: list[dict] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    seconds: float = 0.0
    #: factor the calibrated weights are multiplied by (see :meth:`anchored`)
    scale: float = 1.0

    def anchored(self, measured_fp32_us: float) -> LatencyModel:
        """A copy re-anchored to the machine's speed now: all weights scaled so that the
        unchanged model's prediction equals ``measured_fp32_us``, the fp32 file timed
        just now. On a shared machine absolute times drift (4x between a calibration
        under load and a quiet hour, measured here); the model's *ratios* hold."""
        return self.rescaled(measured_fp32_us / self.predict(Plan()))

    def rescaled(self, factor: float) -> LatencyModel:
        """A copy whose predictions are ``factor`` times this one's (``scale`` keeps the product)."""
        return replace(self, weights=self.weights * factor, scale=self.scale * factor)

    def predict(self, plan: Plan) -> float:
        """Microseconds per batch-1 invoke of ``plan``'s exported file.

        Raises:
            ValueError: the plan does not fit the model.
        """
        return float(latency_features(resolve(self.anatomy, plan)) @ self.weights)

    def summary(self) -> dict:
        """Fit quality: leave-one-out relative errors on the calibration files."""
        rel = [abs(p["loo_us"] - p["measured_us"]) / p["measured_us"] for p in self.points]
        fit = [abs(p["predicted_us"] - p["measured_us"]) / p["measured_us"] for p in self.points]
        return {
            "source": "predicted (non-negative least squares on files measured in the LiteRT interpreter)",
            "batch_size": 1, "num_threads": 1, "files": len(self.points),
            "weights": dict(zip(FEATURES, (float(w) for w in self.weights), strict=True)),
            "loo_median_abs_rel_error": float(np.median(rel)) if rel else None,
            "loo_max_abs_rel_error": float(np.max(rel)) if rel else None,
            "fit_median_abs_rel_error": float(np.median(fit)) if fit else None,
            "calibration_seconds": self.seconds, "scale": self.scale,
        }

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": _fingerprint(self.anatomy),
                "features": list(FEATURES), "weights": [float(w) for w in self.weights],
                "points": self.points, "machine": self.machine, "seconds": self.seconds,
                "summary": self.summary()}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model: keras.Model | Anatomy) -> LatencyModel:
        """Reads a saved model; refuses one calibrated for a different model layout.

        Raises:
            FileNotFoundError, ValueError: missing file, bad JSON, other format or model.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such latency model file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if d.get("format") != FORMAT or d.get("version") != VERSION or list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"{path}: not a version-{VERSION} latency model of this library")
        an = model if isinstance(model, Anatomy) else anatomy(model)
        if d["model"] != _fingerprint(an):
            raise ValueError(f"{path}: calibrated for a different model layout ({d['model']['name']!r} with "
                             f"{len(d['model']['fields'])} fields); calibrate again for {an.model_name!r}")
        return cls(an, np.asarray(d["weights"], "float64"), d.get("points", []), d.get("machine", {}),
                   float(d.get("seconds", 0.0)))


def _fingerprint(an: Anatomy) -> dict:
    """What a latency model depends on: the layout, not the weights."""
    return {"name": an.model_name, "fields": [[f.name, f.rows, f.dim, f.lin is not None] for f in an.fields],
            "dense": [[d.name, d.in_dim, d.units] for d in an.dense], "pairs": an.pair_mode}


def calibration_plans(space, n: int, seed: int = 0, extra: list[Plan] | None = None) -> list[Plan]:
    """The unchanged model, ``extra`` plans, then random plans of ``space`` up to ``n``
    distinct plans (at least 4: the fit has 9 weights, most of them zero)."""
    rng = np.random.default_rng(seed)
    plans = [space.default_plan(), *(extra or [])]
    seen = {p.to_json(indent=None) for p in plans}
    for _ in range(50 * max(n, 4)):
        if len(plans) >= max(n, 4):
            break
        p = space.sample(rng)
        key = p.to_json(indent=None)
        if key not in seen:
            seen.add(key)
            plans.append(p)
    return plans


def calibrate_latency(
    model: keras.Model,
    data: CTRDataset,
    space,
    *,
    plans: int = 10,
    extra: list[Plan] | None = None,
    seed: int = 0,
    min_seconds: float = 0.3,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> LatencyModel:
    """Measures ``plans`` exported plans of ``space`` on this machine and fits a
    :class:`LatencyModel` (see the module docstring).

    Args:
        model: the trained reference model.
        data: its dataset (a few training rows calibrate the transforms; the
            validation rows are the timing inputs).
        space: the search space the plans come from.
        plans: how many files to measure (the unchanged model included).
        extra: plans to include (e.g. the smallest plan of the space).
        seed: which random plans.
        min_seconds: timed invoke seconds per file (interleaved, after warm-up).
        workdir: where the files go (a temporary folder when None).
    """
    from keras_ctr_compress.bench.record import machine_facts
    from keras_ctr_compress.export import export_litert, measure_latency
    from keras_ctr_compress.search.apply import apply_plan

    t0 = time.perf_counter()
    an = anatomy(model)
    chosen = calibration_plans(space, plans, seed, extra)
    small_data = replace(data, train=Split(data.train.x[:CALIBRATION_ROWS], data.train.y[:CALIBRATION_ROWS]))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths, columns, feats = {}, {}, []
        for k, plan in enumerate(chosen):
            if log:
                log(f"[latency] calibration file {k + 1}/{len(chosen)}")
            small, info = apply_plan(model, plan, small_data, finetune=False, seed=seed,
                                     calibration_rows=CALIBRATION_ROWS)
            path = Path(tmp) / f"plan{k}.tflite"
            export_litert(small, path, quantization="drq" if plan.drq else None)
            paths[f"plan{k}"], columns[f"plan{k}"] = path, info["kept_field_indices"]
            feats.append(latency_features(resolve(an, plan)))
            del small
            keras.backend.clear_session()
        lat = measure_latency(paths, data.valid.x, batch_sizes=(1,), min_seconds=min_seconds,
                              input_columns=columns, seed=seed)
    y = np.array([lat[f"plan{k}"][1]["median_us"] for k in range(len(chosen))])
    x = np.stack(feats)
    w = fit_nonnegative(x, y)
    points = []
    for k, plan in enumerate(chosen):
        keep = np.arange(len(chosen)) != k
        w_k = fit_nonnegative(x[keep], y[keep])
        points.append({"plan": plan.to_dict(), "features": x[k].tolist(), "measured_us": float(y[k]),
                       "predicted_us": float(x[k] @ w), "loo_us": float(x[k] @ w_k)})
    return LatencyModel(an, w, points, machine_facts(), time.perf_counter() - t0)
