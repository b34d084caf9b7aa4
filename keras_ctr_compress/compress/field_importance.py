"""SHARK field importance (first-order Taylor permutation score) and iterative field pruning.

SHARK (Zhang et al., CIKM 2023, arXiv 2308.09395) approximates the permutation
importance of field ``f`` to first order: permuting a field replaces the sample's
looked-up embedding ``e_f`` by another sample's, whose expectation is the mean
``mean_e_f``, so the loss changes by about ``<dL/de_f, mean_e_f - e_f>``:

    s_f = mean over samples of | < dL/de_f , mean_e_f - e_f > |

All per-sample gradients come from ONE batched backward pass taken with respect to
the lookup OUTPUTS (batch x dim per field), not the tables: the sum of per-sample
losses has the per-sample gradient of sample ``i`` in row ``i`` (rows do not interact
in a CTR model at inference). :func:`field_importance` also offers the exact
permutation importance (AUC drop when field ``f``'s column is shuffled), the
embedding-norm ranking and a random ranking as baselines.

:func:`prune_fields` repeats: score, drop the lowest fields, fine-tune, until a field
count, a byte budget or an AUC tolerance is reached. A field-pruned model has no
table, no input column and no first-layer weights for the dropped fields: its ``ids``
input has ``F'`` columns, the kept fields in their original order, and
:func:`select_fields` drops the same columns from the data.

Choices the paper leaves open, as taken here:

- ``e_f`` is everything the model looks up for field ``f``: its embedding (``emb_f``)
  and its first-order weight (``lin_f``), concatenated, so that the score
  approximates the effect of permuting the whole field (``include_linear=False``
  scores the embedding alone).
- Scores use the validation split (``split="valid"``), as the exact permutation
  importance does; the mean ``mean_e_f`` is taken over the same rows.
- The norm baseline ranks fields by the mean L2 norm of their looked-up embedding
  vectors over the data (frequency weighted), not by the table's norm.
- Byte budgets count the Keras model's float32 weights (4 bytes each), which is
  what the plain ``.tflite`` file stores for them.
- Fine-tuning after each round uses :func:`keras_ctr_compress.compress.finetune`
  (early stopping on exact validation AUC; never worse than the incoming weights).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import keras
import numpy as np

from keras_ctr_compress.compress.finetune import finetune
from keras_ctr_compress.compress.pruning import copy_model, rebuild_model
from keras_ctr_compress.compress.swap import ensure_functional
from keras_ctr_compress.data.schema import CTRDataset, Split
from keras_ctr_compress.layers.field_pair_interaction import FieldPairInteraction
from keras_ctr_compress.layers.split_fields import SplitFields
from keras_ctr_compress.utils import variable_bytes

METHODS = ("taylor", "permutation", "norm", "random")
SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------- model anatomy


def field_lookups(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """For each input column, the layers that read it (its lookups: ``emb_f``, ``lin_f``).

    Found through the model's :class:`~keras_ctr_compress.layers.SplitFields` layer,
    whatever the lookup layers' classes.

    Raises:
        ValueError: the model has no (or more than one) SplitFields layer, or a
            column nobody reads.
    """
    ensure_functional(model)
    splits = [layer for layer in model.layers if isinstance(layer, SplitFields)]
    if len(splits) != 1:
        raise ValueError(
            f"model {model.name!r} must have exactly one SplitFields layer feeding one lookup per "
            f"field (the reference models' layout); found {len(splits)}"
        )
    cols = {id(t): j for j, t in enumerate(splits[0].output)}
    out: list[list[keras.layers.Layer]] = [[] for _ in cols]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer is splits[0]:
            continue
        for t in keras.tree.flatten(layer.input):
            if id(t) in cols:
                out[cols[id(t)]].append(layer)
    empty = [j for j, lookups in enumerate(out) if not lookups]
    if empty:
        raise ValueError(f"model {model.name!r}: input columns {empty} feed no layer")
    return out


def model_field_names(model: keras.Model) -> list[str]:
    """The field names a model was built for, read from its lookup layers' names.

    ``emb_<field>`` (else ``lin_<field>``, else the first lookup's name) per input
    column, in column order: a field-pruned model thus names its kept fields, and
    preprocessing can drop the other columns. Names are the layer-safe forms
    (``builder.safe_name``).
    """
    names = []
    for lookups in field_lookups(model):
        layer_names = [layer.name for layer in lookups]
        for prefix in ("emb_", "lin_"):
            hit = next((n for n in layer_names if n.startswith(prefix)), None)
            if hit:
                names.append(hit[len(prefix):])
                break
        else:
            names.append(layer_names[0])
    return names


def has_pair_layer(model: keras.Model) -> bool:
    return any(isinstance(layer, FieldPairInteraction) for layer in model.layers)


def model_bytes(model: keras.Model) -> int:
    """Bytes of the model's weights stored as float32 (4 per weight; integer weights by dtype)."""
    return variable_bytes(model.weights)


# --------------------------------------------------------------------------- data helpers


def select_fields(data, kept_indices: Sequence[int]):
    """Keeps only the columns ``kept_indices`` (in that order) of an id matrix,
    a :class:`Split` or a :class:`CTRDataset` (fields and all three splits).

    What a field-pruned model's preprocessing does: its ``ids`` input has exactly
    these columns.

    Raises:
        ValueError: no column kept, duplicates, or an index out of range.
    """
    if isinstance(data, CTRDataset):
        kept = _check_kept(kept_indices, data.num_fields)
        return replace(
            data, fields=[data.fields[i] for i in kept], train=select_fields(data.train, kept),
            valid=select_fields(data.valid, kept), test=select_fields(data.test, kept),
            info={**data.info, "kept_field_indices": kept},
        )
    if isinstance(data, Split):
        return Split(select_fields(data.x, kept_indices), data.y)
    x = np.asarray(data)
    if x.ndim != 2:
        raise ValueError(f"expected an id matrix (rows, fields); got shape {x.shape}")
    return x[:, _check_kept(kept_indices, x.shape[1])]


def _check_kept(kept_indices: Sequence[int], num_fields: int) -> list[int]:
    kept = [int(i) for i in kept_indices]
    if not kept:
        raise ValueError("cannot prune every field: keep at least one column")
    if len(set(kept)) != len(kept):
        raise ValueError(f"kept field indices contain duplicates: {kept}")
    bad = [i for i in kept if not 0 <= i < num_fields]
    if bad:
        raise ValueError(f"kept field indices {bad} out of range for {num_fields} fields")
    return kept


def _rows(data, split: str, max_rows: int | None, *, need_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y)`` of a CTRDataset split, a Split, an ``(x, y)`` pair or a bare id matrix."""
    if isinstance(data, CTRDataset):
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
        data = getattr(data, split)
    if isinstance(data, Split):
        x, y = data.x, data.y
    elif isinstance(data, tuple) and len(data) == 2:
        x, y = data
    else:
        x, y = data, None
    x = np.asarray(x)
    if need_labels and y is None:
        raise ValueError("this importance method needs labels: pass a CTRDataset, a Split or (x, y)")
    if max_rows is not None:
        x = x[:max_rows]
        y = None if y is None else np.asarray(y)[:max_rows]
    if len(x) == 0:
        raise ValueError("no rows to score field importance on")
    return x.astype("int32"), None if y is None else np.asarray(y, "float32").reshape(-1)


def _predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    parts = [
        keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False)).reshape(-1)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts).astype("float64")


# --------------------------------------------------------------------------- importance


def taylor_importance(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 4096,
    include_linear: bool = True,
) -> np.ndarray:
    """SHARK's first-order permutation score of every field, shape ``(F,)``.

    ``s_f = mean_i | <dL_i/de_if, mean_e_f - e_if> |`` with ``L_i`` the sample's
    binary cross-entropy and ``e_if`` its lookup outputs for field ``f``. One forward
    pass gives the means; one batched backward pass per batch, with respect to the
    lookup outputs (the model's head is rebuilt with them as inputs), gives every
    per-sample gradient. Uses the TensorFlow backend's ``GradientTape``.
    """
    import tensorflow as tf

    lookups = field_lookups(model)
    if not include_linear:
        lookups = [[la for la in f if la.output.shape[-1] > 1] or f for f in lookups]
    owners = [f for f, layers in enumerate(lookups) for _ in layers]
    outs = [layer.output for layers in lookups for layer in layers]
    lookup_model = keras.Model(model.input, outs)
    # The lookups' outputs become inputs of the rest of the model (layers shared).
    head = keras.Model([model.input, *outs], model.output)

    def lookup(xb):
        return [tf.convert_to_tensor(e) for e in keras.tree.flatten(lookup_model(xb, training=False))]

    sums = None
    for i in range(0, len(x), batch_size):
        es = lookup(x[i : i + batch_size])
        part = [tf.reduce_sum(e, axis=0) for e in es]
        sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
    means = [s / len(x) for s in sums]

    total = np.zeros(len(lookups), "float64")
    for i in range(0, len(x), batch_size):
        xb = tf.constant(x[i : i + batch_size])
        yb = tf.constant(y[i : i + batch_size].reshape(-1, 1))
        es = lookup(xb)
        with tf.GradientTape() as tape:
            tape.watch(es)
            p = head([xb, *es], training=False)
            # Sum, not mean: row i's gradient is then exactly dL_i/de_i.
            loss = tf.reduce_sum(keras.losses.binary_crossentropy(yb, p))
        grads = tape.gradient(loss, es)
        dots = np.zeros((xb.shape[0], len(lookups)), "float64")
        for f, g, e, mu in zip(owners, grads, es, means, strict=True):
            g = tf.zeros_like(e) if g is None else g  # a lookup the output ignores
            dots[:, f] += keras.ops.convert_to_numpy(tf.reduce_sum(g * (mu - e), axis=-1))
        total += np.abs(dots).sum(axis=0)
    return total / len(x)


def permutation_importance(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_repeats: int = 1,
    seed: int = 0,
    batch_size: int = 4096,
) -> np.ndarray:
    """Exact permutation importance: the AUC drop when field ``f``'s column is shuffled.

    ``base AUC - AUC(column f permuted across rows)``, averaged over ``n_repeats``
    permutations; shape ``(F,)``.
    """
    from keras_ctr_compress.models.training import auc_logloss

    if n_repeats < 1:
        raise ValueError(f"`n_repeats` must be >= 1. Received: {n_repeats!r}")
    rng = np.random.default_rng(seed)
    base = auc_logloss(y, _predict(model, x, batch_size), where="importance data")[0]
    out = np.zeros(x.shape[1], "float64")
    for f in range(x.shape[1]):
        for _ in range(n_repeats):
            xp = x.copy()
            xp[:, f] = rng.permutation(xp[:, f])
            out[f] += base - auc_logloss(y, _predict(model, xp, batch_size), where="importance data")[0]
    return out / n_repeats


def norm_importance(model: keras.Model, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Mean L2 norm of each field's looked-up embedding over the rows (baseline ranking)."""
    lookups = field_lookups(model)
    chosen = [[la for la in f if la.output.shape[-1] > 1] or f for f in lookups]
    owners = [f for f, layers in enumerate(chosen) for _ in layers]
    sub = keras.Model(model.input, [layer.output for layers in chosen for layer in layers])
    sq = np.zeros((len(x), len(chosen)), "float64")
    for i in range(0, len(x), batch_size):
        for f, e in zip(owners, keras.tree.flatten(sub(x[i : i + batch_size], training=False)), strict=True):
            e = keras.ops.convert_to_numpy(e).astype("float64")
            sq[i : i + len(e), f] += np.sum(e.reshape(len(e), -1) ** 2, axis=-1)
    return np.sqrt(sq).mean(axis=0)


def field_importance(
    model: keras.Model,
    data,
    method: str = "taylor",
    *,
    split: str = "valid",
    max_rows: int | None = None,
    batch_size: int = 4096,
    seed: int = 0,
    n_repeats: int = 1,
    include_linear: bool = True,
) -> np.ndarray:
    """Importance score of every input field (higher: more important), shape ``(F,)``.

    References:
        - Zhang et al., "SHARK: A Lightweight Model Compression Approach for
          Large-scale Recommender Systems", CIKM 2023 (arXiv 2308.09395).
        - Breiman, "Random Forests", Machine Learning 2001 (permutation importance).

    Example:

    >>> scores = field_importance(model, dataset, "taylor")  # doctest: +SKIP
    >>> [dataset.fields[f].name for f in np.argsort(scores)[:3]]  # the 3 least useful  # doctest: +SKIP

    Args:
        model: a trained model with the reference layout (``ids`` -> SplitFields ->
            per-field lookups).
        data: a :class:`CTRDataset` (its ``split`` is used), a :class:`Split`, an
            ``(x, y)`` pair, or (``norm`` / ``random`` only) a bare id matrix.
        method: ``"taylor"`` (SHARK), ``"permutation"`` (exact AUC drop), ``"norm"``
            (mean embedding norm) or ``"random"``.
        split: which split of a CTRDataset to score on.
        max_rows: use only the first rows (None: all).
        batch_size: rows per forward / backward pass.
        seed: seeds the permutations and the random ranking.
        n_repeats: permutations per field (``permutation``).
        include_linear: Taylor: count the first-order lookup as part of ``e_f``.

    Raises:
        ValueError: unknown method or split, no rows, missing labels.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: {method!r}")
    lookups = field_lookups(model)
    x, y = _rows(data, split, max_rows, need_labels=method in ("taylor", "permutation"))
    if x.shape[1] != len(lookups):
        raise ValueError(f"data has {x.shape[1]} columns but model {model.name!r} has {len(lookups)} fields")
    if method == "taylor":
        return taylor_importance(model, x, y, batch_size=batch_size, include_linear=include_linear)
    if method == "permutation":
        return permutation_importance(model, x, y, n_repeats=n_repeats, seed=seed, batch_size=batch_size)
    if method == "norm":
        return norm_importance(model, x, batch_size=batch_size)
    return np.random.default_rng(seed).random(len(lookups))


# --------------------------------------------------------------------------- field pruning


def drop_fields(model: keras.Model, kept_indices: Sequence[int]) -> keras.Model:
    """A copy of ``model`` computing only the fields ``kept_indices`` (sorted).

    Its ``ids`` input has ``len(kept_indices)`` columns; the dropped fields' lookup
    tables, their rows of the first DNN layer and their pairs (and rows / columns
    of FwFM's ``R``) are gone. On the kept columns it computes exactly what
    ``model`` computes when the dropped fields' lookups output zeros.

    Raises:
        ValueError: no field kept, or a field-pair model left with fewer than 2 fields.
    """
    num_fields = len(field_lookups(model))
    kept = sorted(_check_kept(kept_indices, num_fields))
    if len(kept) < 2 and has_pair_layer(model):
        raise ValueError(f"model {model.name!r} has a field-pair layer: keep at least 2 fields, got {len(kept)}")
    return rebuild_model(model, kept_fields=kept)


@dataclass
class FieldPruningReport:
    """What :func:`prune_fields` did.

    Attributes:
        method: the importance method.
        fields: the original field names (model input order).
        kept_indices: original column indices of the kept fields (the pruned model's
            ``ids`` columns, in order); :func:`select_fields` applies them to data.
        kept_fields: their names.
        base_val_auc, base_bytes: the incoming model's validation AUC and weight bytes.
        rounds: per round ``{"round", "scores" {name: score}, "dropped" [names],
            "val_auc", "bytes", "accepted", "finetune"}`` (a round rejected by the AUC
            tolerance is listed with ``accepted=False`` and undone).
        val_auc, bytes: the returned model's.
        seconds: wall time.
    """

    method: str
    fields: list[str]
    kept_indices: list[int]
    kept_fields: list[str]
    base_val_auc: float
    base_bytes: int
    val_auc: float
    bytes: int
    rounds: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_criteria(n_fields, max_bytes, max_auc_drop, num_fields: int, min_fields: int) -> str:
    given = [k for k, v in (("n_fields", n_fields), ("max_bytes", max_bytes), ("max_auc_drop", max_auc_drop))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of n_fields, max_bytes, max_auc_drop; got {given or 'none'}")
    if n_fields is not None:
        if isinstance(n_fields, bool) or not isinstance(n_fields, int) or not min_fields <= n_fields < num_fields:
            raise ValueError(
                f"`n_fields` must be an integer in [{min_fields}, {num_fields - 1}] (the model has "
                f"{num_fields} fields). Received: {n_fields!r}"
            )
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ValueError(f"`max_bytes` must be a positive integer. Received: {max_bytes!r}")
    if max_auc_drop is not None and (
        isinstance(max_auc_drop, bool) or not isinstance(max_auc_drop, (int, float)) or max_auc_drop < 0
    ):
        raise ValueError(f"`max_auc_drop` must be a number >= 0. Received: {max_auc_drop!r}")
    return given[0]


def _field_bytes(model: keras.Model) -> np.ndarray:
    """Approximate bytes each field costs: its lookup weights plus its rows of the
    Dense layers that read the concatenated embeddings (refined by measuring)."""
    lookups = field_lookups(model)
    out = np.zeros(len(lookups), "float64")
    first_units = sum(
        layer.units for layer in model.layers
        if isinstance(layer, keras.layers.Dense) and any(
            isinstance(p, keras.layers.Concatenate) for p in _producers(model, layer)
        )
    )
    for f, layers in enumerate(lookups):
        for layer in layers:
            out[f] += sum(int(np.prod(w.shape)) * 4 for w in layer.weights)
            width = layer.output.shape[-1]
            if width and width > 1:
                out[f] += width * first_units * 4
    return out


def _producers(model: keras.Model, layer) -> list:
    producer = {id(t): la for la in model.layers for t in keras.tree.flatten(la.output)}
    return [producer[id(t)] for t in keras.tree.flatten(layer.input) if id(t) in producer]


def prune_fields(
    model: keras.Model,
    data: CTRDataset,
    *,
    n_fields: int | None = None,
    max_bytes: int | None = None,
    max_auc_drop: float | None = None,
    method: str = "taylor",
    rounds: int | None = None,
    fields_per_round: int | None = None,
    finetune_epochs: int = 1,
    finetune_learning_rate: float = 1e-3,
    batch_size: int = 1024,
    score_split: str = "valid",
    max_rows: int | None = None,
    seed: int = 0,
    verbose: int = 0,
) -> tuple[keras.Model, FieldPruningReport]:
    """SHARK's iterative field pruning: score, drop the lowest fields, fine-tune, repeat.

    Exactly one stopping criterion:

    - ``n_fields``: keep this many fields; the drops are spread over ``rounds``
      rounds (default 2).
    - ``max_bytes``: drop the lowest-scoring fields until the model's float32 weights
      fit in ``max_bytes``; each round drops what the estimate says is needed,
      spread over the rounds left (default ``rounds``: 3, continuing while over budget).
    - ``max_auc_drop``: drop ``fields_per_round`` (default 1) fields per round while
      the fine-tuned validation AUC stays within ``max_auc_drop`` of the incoming
      model's; the round that breaks the tolerance is undone and pruning stops
      (``rounds`` caps the rounds; default: until 1 or 2 fields remain).

    The incoming model is not modified.

    Example:

    >>> small, report = prune_fields(model, ds, n_fields=7, rounds=2)  # doctest: +SKIP
    >>> test_x = select_fields(ds.test.x, report.kept_indices)  # doctest: +SKIP

    Args:
        model: a trained model with the reference layout.
        data: the dataset the model was trained on (all its fields).
        method: the importance method scored each round (see :func:`field_importance`).
        rounds: number of rounds (see above).
        fields_per_round: fields dropped per round under ``max_auc_drop`` (or the
            cap per round for the other criteria).
        finetune_epochs: fine-tuning epochs after each round (0: none).
        finetune_learning_rate, batch_size: fine-tuning settings.
        score_split, max_rows: rows the importance is scored on.
        seed: seeds scoring (permutations, random) and fine-tuning.

    Returns:
        ``(pruned model, FieldPruningReport)``.

    Raises:
        ValueError: not exactly one criterion, ``n_fields`` outside ``[1 (2 with a
            field-pair layer), F - 1]``, a budget that would need every field pruned,
            unknown method, bad rounds.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: {method!r}")
    num_fields = len(field_lookups(model))
    if data.num_fields != num_fields:
        raise ValueError(f"data has {data.num_fields} fields but model {model.name!r} has {num_fields}")
    min_fields = 2 if has_pair_layer(model) else 1
    criterion = _check_criteria(n_fields, max_bytes, max_auc_drop, num_fields, min_fields)
    for name, value in (("rounds", rounds), ("fields_per_round", fields_per_round)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be an integer >= 1. Received: {value!r}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ValueError(f"`finetune_epochs` must be an integer >= 0. Received: {finetune_epochs!r}")

    from keras_ctr_compress.models.training import evaluate

    names = [f.name for f in data.fields]
    base_auc = evaluate(model, data.valid, where="validation split")["auc"]
    base_bytes = model_bytes(model)
    if criterion == "max_bytes":
        _check_budget_reachable(model, max_bytes, min_fields)
    max_rounds = rounds or {"n_fields": 2, "max_bytes": 3}.get(criterion, num_fields)
    current, kept, current_auc = copy_model(model), list(range(num_fields)), base_auc
    report = FieldPruningReport(method, names, kept, names, base_auc, base_bytes, base_auc, base_bytes)

    r = 0
    while len(kept) > min_fields:
        # A byte budget keeps going past `rounds` while it is not met (estimates are rough).
        left = max(1, max_rounds - r)
        if criterion == "n_fields":
            if len(kept) <= n_fields:
                break
            n_drop = math.ceil((len(kept) - n_fields) / left)
        elif criterion == "max_bytes":
            if model_bytes(current) <= max_bytes:
                break
            n_drop = None  # decided from the scores below
        else:
            if r >= max_rounds:
                break
            n_drop = fields_per_round or 1
        sub = select_fields(data, kept)  # the columns the current model reads
        scores = field_importance(current, sub, method, split=score_split, max_rows=max_rows, seed=seed + r)
        order = [int(i) for i in np.argsort(scores, kind="stable")]
        if n_drop is None:
            n_drop = _drops_for_budget(current, order, max_bytes, min_fields, left)
        if fields_per_round is not None:
            n_drop = min(n_drop, fields_per_round)
        n_drop = min(n_drop, len(kept) - min_fields)
        drop_pos = sorted(order[:n_drop])
        keep_pos = [p for p in range(len(kept)) if p not in drop_pos]
        candidate = drop_fields(current, keep_pos)
        new_kept = [kept[p] for p in keep_pos]
        sub_new = select_fields(data, new_kept)
        tuned = None
        if finetune_epochs:
            tuned = finetune(candidate, sub_new.train, sub_new.valid, epochs=finetune_epochs,
                             learning_rate=finetune_learning_rate, batch_size=batch_size, seed=seed, verbose=verbose)
        auc = evaluate(candidate, sub_new.valid, where="validation split")["auc"]
        accepted = criterion != "max_auc_drop" or base_auc - auc <= max_auc_drop
        report.rounds.append({
            "round": r + 1,
            "scores": {names[kept[p]]: float(scores[p]) for p in range(len(kept))},
            "dropped": [names[kept[p]] for p in drop_pos],
            "val_auc": auc,
            "bytes": model_bytes(candidate),
            "accepted": accepted,
            "finetune": None if tuned is None else {k: tuned[k] for k in ("initial_val_auc", "best_val_auc",
                                                                           "best_epoch", "epochs")},
        })
        if not accepted:
            break
        current, kept, current_auc = candidate, new_kept, auc
        r += 1

    report.kept_indices = kept
    report.kept_fields = [names[i] for i in kept]
    report.val_auc = current_auc
    report.bytes = model_bytes(current)
    report.seconds = time.perf_counter() - t0
    return current, report


def _check_budget_reachable(model: keras.Model, max_bytes: int, min_fields: int) -> None:
    per_field = _field_bytes(model)
    smallest_left = np.sort(per_field)[:min_fields].sum()
    floor = model_bytes(model) - per_field.sum() + smallest_left
    if floor > max_bytes:
        raise ValueError(
            f"max_bytes={max_bytes:,} is out of reach: even with only {min_fields} field(s) left the "
            f"model needs about {int(floor):,} bytes (meeting it would mean pruning every field)"
        )


def _drops_for_budget(model: keras.Model, order: list[int], max_bytes: int, min_fields: int, rounds_left: int) -> int:
    """How many of the lowest-scoring fields to drop this round to approach ``max_bytes``."""
    per_field = _field_bytes(model)
    excess = model_bytes(model) - max_bytes
    needed, saved = 0, 0.0
    for p in order[: len(order) - min_fields]:
        if saved >= excess:
            break
        saved += per_field[p]
        needed += 1
    return max(1, math.ceil(needed / rounds_left))


__all__ = [
    "METHODS",
    "FieldPruningReport",
    "drop_fields",
    "field_importance",
    "field_lookups",
    "model_bytes",
    "model_field_names",
    "norm_importance",
    "permutation_importance",
    "prune_fields",
    "select_fields",
    "taylor_importance",
]
