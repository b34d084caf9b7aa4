"""Low-rank compression of a trained CTR model: AFM (output-feature PCA) and weight SVD.

AFM (Yu et al., KDD 2024, arXiv 2405.18146) factorises a layer by the principal
subspace of its OUTPUTS on calibration data rather than by the SVD of its weights:

- Dense ``y = x K + b`` (Keras kernel ``K`` is ``in x out``): with the mean ``mu`` and
  covariance ``C`` of the pre-activation output over the calibration rows and the
  top-``k`` eigenvectors ``U_k`` of ``C``, the layer becomes
  ``A = Dense(k)`` (kernel ``K U_k``, bias ``U_k^T b``) followed by
  ``B = Dense(out, activation)`` (kernel ``U_k^T``, bias ``mu - U_k U_k^T mu``): one
  :class:`~keras_ctr_compress.layers.LowRankDense`. Its output is the projection of
  the centred output onto ``U_k``, the best rank-``k`` affine approximation of the
  layer's outputs on that data.
- Embedding table ``E`` of a field: ``mu`` and ``C`` of the looked-up vectors over the
  data (each row weighted by its frequency), ``codes = (E - mu) U_k``, reconstruction
  ``codes U_k^T + mu``: a :class:`~keras_ctr_compress.layers.LowRankEmbedding`.

``method="svd"`` is the baseline the paper beats: ``K ~ U_k S_k V_k^T`` split as
``u = U_k S_k^(1/2)``, ``v = S_k^(1/2) V_k^T`` (same bias); tables ``E ~ (U_k S_k) V_k^T``.

Choices the paper leaves open, as taken here:

- Statistics. For a Dense layer the calibration pass accumulates, in float64, the
  count, sum and sum of outer products of the layer's INPUT; the output mean and
  covariance follow exactly (``mu_y = mu_x K + b``, ``C_y = K^T C_x K``; the same
  ``S1``/``S2`` as accumulating ``y`` itself, without the float32 round-off of ``y``),
  and so does the exact calibration error of ANY linear replacement, the SVD
  baseline included. For a table the pass counts ids: ``mu``, ``C`` and errors are
  the frequency-weighted sums over the rows. ``table_weighting="uniform"`` is offered
  beside the paper's frequency weighting: it fits the subspace to every row once,
  which keeps rare ids better represented (they also get few fine-tuning updates);
  ``"sqrt"`` weights rows by the square root of their count, in between. Measured on
  Frappe (DeepFM, Dense rank 16, table rank 4, 3 seeds,
  ``benchmarks/results/frappe_deepfm_lowrank_weighting.json``), test AUC before / after
  fine-tuning: frequency 0.9673 / 0.9793, sqrt 0.9679 / 0.9797, uniform 0.9640 / 0.9798,
  weight SVD 0.9638 / 0.9798. Frequency weighting spends the rank on the most looked-up
  rows, which fine-tuning repairs anyway (they get the most updates).
- Dense layers: ``covariance_power`` fits the subspace of ``K^T C_x^p K`` (1: AFM, 0:
  the weight SVD's). Same record, Dense rank 4, before / after fine-tuning: AFM 0.9828 /
  0.9831, p = 0.5 (bench ``afmt``) 0.9831 / 0.9834, weight SVD 0.9824 / 0.9838. The
  tempered fit is the best compressed model without fine-tuning, but none of the three
  beats SVD's fine-tune there.
- Calibration size: whatever ``calibration_data`` holds (optionally capped by
  ``calibration_batches``); :func:`compress_low_rank` uses the first 65,536 training
  rows. Measured on Frappe (DeepFM 400-400-400, Dense rank 32, table rank 6): the
  test AUC before fine-tuning moved by less than 1e-4 between 1,024 and all 230,699
  training rows, so the default is generous.
- Stacked layers: ``order="independent"`` (default) calibrates every layer on the
  original model in one pass; ``order="sequential"`` compresses in graph order and
  calibrates each layer on the inputs produced by the already-compressed layers
  before it (one pass per stage), so that each subspace is fitted to the inputs the
  layer will really see. In the Frappe run above both gave the same test AUC (to
  1e-5): independent stays the default because it needs one pass.
- Ranks: per layer by name (``ranks``), or the smallest rank reaching an
  ``explained_variance`` share (AFM: of the output variance on the calibration
  data; SVD: of the squared singular values of the weights).
- The AFM middle bias ``U_k^T b`` is kept as its own bias (not folded into the
  output bias) so that the ``middle_activation="relu"`` variant stays literal.
- Folding (``fold_embeddings``) targets every Dense layer that reads the
  concatenated embeddings directly: the DNN's first layer, and in DCNv2 also the
  first cross layer's matmul, whose element-wise product with ``x0`` keeps using the
  reconstructed embeddings (folding is exact either way).
- Layers considered by default: every Dense layer except the first hidden layers
  (those with no Dense layer upstream, left dense as in the paper) and 1-unit output
  layers, plus every Embedding table of width >= 2 (the ``emb_*`` tables of the
  reference models; the 1-wide ``lin_*`` first-order tables cannot shrink).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import keras
import numpy as np

from keras_ctr_compress.compress.swap import ensure_functional, replace_layers
from keras_ctr_compress.data.schema import CTRDataset, Split
from keras_ctr_compress.layers.low_rank_dense import (
    LowRankDense,
    check_rank,
    dense_byte_cost,
    low_rank_dense_byte_cost,
)
from keras_ctr_compress.layers.low_rank_embedding import (
    LowRankEmbedding,
    embedding_byte_cost,
    low_rank_embedding_byte_cost,
)

METHODS = ("afm", "svd")
ORDERS = ("independent", "sequential")
TABLE_WEIGHTINGS = ("frequency", "sqrt", "uniform")
DENSE, EMBEDDING = "dense", "embedding"
#: rows of calibration data compared end to end (original vs compressed predictions)
CHECK_ROWS = 4096


# --------------------------------------------------------------------------- factors


@dataclass
class DenseFactors:
    """Weights of a :class:`LowRankDense` (``middle_bias`` None when unused)."""

    u: np.ndarray
    v: np.ndarray
    middle_bias: np.ndarray | None
    bias: np.ndarray

    def effective(self) -> tuple[np.ndarray, np.ndarray]:
        """The kernel and bias of the equivalent linear map (no middle activation)."""
        b = self.bias if self.middle_bias is None else self.bias + self.middle_bias @ self.v
        return self.u @ self.v, b


@dataclass
class EmbeddingFactors:
    """Weights of a :class:`LowRankEmbedding`."""

    codes: np.ndarray
    projection: np.ndarray
    mean: np.ndarray

    def table(self) -> np.ndarray:
        return self.codes @ self.projection + self.mean


def principal_subspace(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of ``cov``."""
    w, vecs = np.linalg.eigh(np.asarray(cov, np.float64))
    # eigh sorts ascending: the principal directions are the last columns.
    return np.clip(w[::-1], 0.0, None), vecs[:, ::-1]


def afm_dense_factors(kernel, bias, out_mean, out_cov, rank: int, *, balance: bool = True) -> DenseFactors:
    """AFM factors of ``y = x K + b`` from the output mean and covariance.

    ``A``: kernel ``K U_k``, bias ``U_k^T b``; ``B``: kernel ``U_k^T``, bias
    ``mu - U_k U_k^T mu``. At full rank the pair equals the layer exactly.

    ``balance`` (default) rescales middle unit ``j`` by ``d_j = ||B_j|| / ||A_j||``
    to the power 1/2: ``A_j d_j``, its middle bias times ``d_j``, ``B_j / d_j``. The map
    is the same (also through a ReLU in the middle, ``d_j > 0``), but both factors
    get the same column / row norms, as the SVD baseline's square-root split does.
    Why: with ``B = U_k^T`` orthonormal all the scale sits in ``A``, and fine-tuning
    with Adam (whose steps do not scale with the weights) then moves ``B`` far more
    than ``A`` relative to their size. Measured on Frappe (DeepFM 400-400-400, rank 4,
    2 seeds): unbalanced AFM fine-tuned to 0.9834 / 0.9836 test AUC, the balanced
    SVD pair to 0.9839 / 0.9841 from a lower starting point.
    """
    kernel = np.asarray(kernel, np.float64)
    bias = np.zeros(kernel.shape[1]) if bias is None else np.asarray(bias, np.float64)
    mu = np.asarray(out_mean, np.float64)
    _, vecs = principal_subspace(out_cov)
    uk = vecs[:, :rank]
    u, v, middle = kernel @ uk, uk.T.copy(), uk.T @ bias
    if balance:
        a_norm, b_norm = np.linalg.norm(u, axis=0), np.linalg.norm(v, axis=1)
        d = np.where(a_norm > 0, np.sqrt(b_norm / np.where(a_norm > 0, a_norm, 1.0)), 1.0)
        u, middle, v = u * d, middle * d, v / d[:, None]
    return DenseFactors(u=u, v=v, middle_bias=middle, bias=mu - uk @ (uk.T @ mu))


def svd_dense_factors(kernel, bias, rank: int) -> DenseFactors:
    """Weight-SVD factors: ``K ~ U_k S_k V_k^T``, ``u = U_k S_k^(1/2)``, ``v = S_k^(1/2) V_k^T``.

    The square root split gives both factors the same scale (better conditioned
    for fine-tuning than putting ``S_k`` on one side).
    """
    kernel = np.asarray(kernel, np.float64)
    bias = np.zeros(kernel.shape[1]) if bias is None else np.asarray(bias, np.float64)
    left, s, right = np.linalg.svd(kernel, full_matrices=False)
    root = np.sqrt(s[:rank])
    return DenseFactors(u=left[:, :rank] * root, v=root[:, None] * right[:rank], middle_bias=None, bias=bias)


def afm_embedding_factors(table, mean, cov, rank: int) -> EmbeddingFactors:
    """AFM factors of a table: ``codes = (E - mu) U_k``, ``projection = U_k^T``, ``mean = mu``."""
    table = np.asarray(table, np.float64)
    mu = np.asarray(mean, np.float64)
    _, vecs = principal_subspace(cov)
    uk = vecs[:, :rank]
    return EmbeddingFactors(codes=(table - mu) @ uk, projection=uk.T, mean=mu)


def svd_embedding_factors(table, rank: int) -> EmbeddingFactors:
    """Weight-SVD factors of a table: ``codes = U_k S_k``, ``projection = V_k^T``, no mean."""
    table = np.asarray(table, np.float64)
    left, s, right = np.linalg.svd(table, full_matrices=False)
    return EmbeddingFactors(
        codes=left[:, :rank] * s[:rank], projection=right[:rank], mean=np.zeros(table.shape[1])
    )


# ------------------------------------------------------------------------ statistics


class DenseInputStats:
    """Float64 count, sum and sum of outer products of a Dense layer's input rows."""

    def __init__(self, width: int):
        self.n = 0
        self.s1 = np.zeros(width)
        self.s2 = np.zeros((width, width))

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.s1.shape[0])
        self.n += x.shape[0]
        self.s1 += x.sum(axis=0)
        self.s2 += x.T @ x

    def input_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the input."""
        mu = self.s1 / self.n
        cov = self.s2 / self.n - np.outer(mu, mu)
        return mu, 0.5 * (cov + cov.T)

    def output_moments(self, kernel, bias, power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the pre-activation output ``x K + b``.

        ``power`` != 1 replaces the input covariance ``C_x`` by its matrix power
        ``C_x^power`` (``power`` 0: the identity, so the output "covariance" is
        ``K^T K``, whose principal subspace is the weight SVD's)."""
        kernel = np.asarray(kernel, np.float64)
        mu_x, cov_x = self.input_moments()
        if power != 1.0:
            w, vecs = np.linalg.eigh(cov_x)
            cov_x = (vecs * np.clip(w, 0.0, None) ** power) @ vecs.T
        mu = mu_x @ kernel + (0.0 if bias is None else np.asarray(bias, np.float64))
        cov = kernel.T @ cov_x @ kernel
        return mu, 0.5 * (cov + cov.T)

    def error(self, kernel, bias, approx_kernel, approx_bias) -> tuple[float, float]:
        """Mean squared error per row (summed over outputs) of ``x K' + b'`` against
        ``x K + b`` on the calibration rows, and the output's total variance."""
        kernel = np.asarray(kernel, np.float64)
        bias = np.zeros(kernel.shape[1]) if bias is None else np.asarray(bias, np.float64)
        mu_x, cov_x = self.input_moments()
        d = kernel - approx_kernel
        db = bias - approx_bias
        # E||x D + db||^2 = tr(D^T C_x D) + ||mu_x D + db||^2
        err = float(np.sum(d * (cov_x @ d)) + np.sum((mu_x @ d + db) ** 2))
        total = float(np.sum(kernel * (cov_x @ kernel)))
        return max(err, 0.0), total


class EmbeddingIdStats:
    """How often each id of a table was looked up in the calibration data."""

    def __init__(self, rows: int, name: str):
        self.counts = np.zeros(rows, np.int64)
        self.name = name

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def update(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids).reshape(-1).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.counts.shape[0]):
            raise ValueError(
                f"table {self.name!r}: calibration ids must be in [0, {self.counts.shape[0]}), "
                f"got values in [{ids.min()}, {ids.max()}]"
            )
        self.counts += np.bincount(ids, minlength=self.counts.shape[0])

    def row_weights(self, weighting: str = "frequency") -> np.ndarray:
        """Each row's weight in the table's statistics (sums to 1): ``"frequency"``
        (its share of the calibration lookups, AFM's definition), ``"sqrt"`` (the
        square root of its count, normalised: between the two) or ``"uniform"``."""
        if weighting == "uniform":
            return np.full(len(self.counts), 1.0 / len(self.counts))
        w = self.counts.astype(np.float64) if weighting == "frequency" else np.sqrt(self.counts)
        return w / w.sum()

    def output_moments(self, table, weighting: str = "frequency") -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the table's rows under :meth:`row_weights`."""
        table = np.asarray(table, np.float64)
        w = self.row_weights(weighting)
        mu = w @ table
        centred = table - mu
        cov = centred.T @ (centred * w[:, None])
        return mu, 0.5 * (cov + cov.T)

    def error(self, table, approx_table) -> tuple[float, float]:
        """Frequency-weighted mean squared error per lookup, and total variance."""
        table = np.asarray(table, np.float64)
        w = self.row_weights("frequency")
        err = float(w @ np.sum((table - approx_table) ** 2, axis=1))
        mu = w @ table
        total = float(w @ np.sum((table - mu) ** 2, axis=1))
        return err, total


# -------------------------------------------------------------------------- the graph


def _model_nodes(model: keras.Model) -> list:
    # Keras keeps the functional graph in private attributes only; everything that
    # reads them is in these few helpers. A built Sequential model wraps a functional one.
    graph = getattr(model, "_functional", None) or model
    return [n for nodes in graph._nodes_by_depth.values() for n in nodes if not n.is_input]


def _nodes_by_layer(model: keras.Model) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in _model_nodes(model):
        out.setdefault(node.operation.name, []).append(node)
    return out


def _producer(tensor) -> keras.layers.Layer:
    """The layer whose output ``tensor`` is."""
    return tensor._keras_history.operation


def _parents(model: keras.Model) -> dict[str, set[str]]:
    parents: dict[str, set[str]] = {}
    for node in _model_nodes(model):
        parents.setdefault(node.operation.name, set()).update(p.operation.name for p in node.parent_nodes)
    return parents


def _ancestors(parents: Mapping[str, set[str]], name: str) -> set[str]:
    seen: set[str] = set()
    stack = list(parents.get(name, ()))
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(parents.get(p, ()))
    return seen


def _is_dense(layer) -> bool:
    return isinstance(layer, keras.layers.Dense)


def _is_table(layer) -> bool:
    return isinstance(layer, keras.layers.Embedding)


def default_targets(model: keras.Model) -> list[str]:
    """The layers :func:`low_rank` considers by default (see the module docstring)."""
    ensure_functional(model)
    parents = _parents(model)
    nodes = _nodes_by_layer(model)
    dense_like = {layer.name for layer in model.layers if _is_dense(layer) or isinstance(layer, LowRankDense)}
    out = []
    for layer in model.layers:
        if len(nodes.get(layer.name, ())) != 1:
            continue  # shared (or unused) layers cannot be swapped one call at a time
        if _is_dense(layer) and layer.units > 1 and _ancestors(parents, layer.name) & dense_like:
            out.append(layer.name)
        elif _is_table(layer) and layer.output_dim >= 2:
            out.append(layer.name)
    return out


def uniform_ranks(
    model: keras.Model, *, dense: int | None = None, embedding: int | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, int]:
    """One rank for every Dense layer and one for every table among ``layers``
    (default: :func:`default_targets`), capped at each layer's ``min(in, out)``.

    Example: ``low_rank(model, x, ranks=uniform_ranks(model, dense=64, embedding=2))``.
    """
    names = default_targets(model) if layers is None else list(layers)
    out = {}
    for name in names:
        layer = model.get_layer(name)
        if _is_dense(layer) and dense is not None:
            out[name] = min(dense, layer.units, int(layer.kernel.shape[0]))
        elif _is_table(layer) and embedding is not None:
            out[name] = min(embedding, layer.output_dim, layer.input_dim)
    return out


# ------------------------------------------------------------------------ calibration


def iter_batches(data, batch_size: int, max_batches: int | None = None) -> Iterator:
    """Model inputs from ``data``: a ``Split``, an array-like of rows (sliced into
    batches), or an iterable of batches (e.g. a ``tf.data.Dataset``) whose elements
    are the input or ``(input, label[, weight])`` tuples."""
    if isinstance(data, Split):
        data = data.x
    if max_batches is not None and max_batches <= 0:
        raise ValueError(f"calibration_batches must be positive, got {max_batches}")
    if isinstance(data, Mapping) and all(hasattr(v, "shape") for v in data.values()):
        # A multi-input model's inputs by name (a user-built model): slice every array.
        n = len(next(iter(data.values()))) if data else 0
        batches: Iterable = ({k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size))
    elif hasattr(data, "shape") and hasattr(data, "__getitem__"):
        batches = (data[i : i + batch_size] for i in range(0, len(data), batch_size))
    else:
        batches = data
    for k, batch in enumerate(batches):
        if max_batches is not None and k >= max_batches:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if isinstance(batch, dict):
            yield {key: np.asarray(v) for key, v in batch.items()}
        else:
            yield np.asarray(batch)


def calibrate(
    model: keras.Model, names: Sequence[str], data, *, batch_size: int = 4096,
    max_batches: int | None = None,
) -> tuple[dict[str, DenseInputStats | EmbeddingIdStats], int]:
    """Streams ``data`` through ``model`` once and gathers the statistics of ``names``.

    A probe model (same inputs, the targets' inputs as outputs) runs in inference
    mode, so dropout is off. Returns the statistics by layer name and the number of
    calibration rows.
    """
    nodes = _nodes_by_layer(model)
    tensors, stats = [], {}
    for name in names:
        layer = model.get_layer(name)
        tensors.append(nodes[name][0].input_tensors[0])
        if _is_table(layer):
            stats[name] = EmbeddingIdStats(layer.input_dim, name)
        else:
            stats[name] = DenseInputStats(int(tensors[-1].shape[-1]))
    graph = getattr(model, "_functional", None) or model  # a Sequential model's graph
    probe = keras.Model(graph.input, tensors, name=f"{model.name}_probe")
    rows = 0
    for batch in iter_batches(data, batch_size, max_batches):
        rows += len(next(iter(batch.values())) if isinstance(batch, dict) else batch)
        outs = probe(batch, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for name, out in zip(names, outs, strict=True):
            stats[name].update(keras.ops.convert_to_numpy(out))
    if rows == 0:
        raise ValueError("calibration_data produced no rows")
    return stats, rows


# ----------------------------------------------------------------------------- report


@dataclass
class LayerReport:
    """What happened to one considered layer.

    ``rel_error`` is the squared error of the replacement's (pre-activation) outputs
    on the calibration rows divided by their total variance (AFM with frequency
    weighting: ``1 - explained_variance``); ``mse`` is that error per output element. With a middle
    activation both describe the factorisation before that activation.
    ``explained_variance`` is, for AFM, the share of the output variance its
    subspace keeps; for SVD ``1 - rel_error`` (an R^2: negative when the weight
    approximation shifts the outputs by more than their spread). Bytes are the
    analytic float32 bytes of the layer as exported.
    """

    name: str
    kind: str
    shape: tuple[int, int]
    status: str  # "compressed" or "kept"
    rank: int | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    explained_variance: float | None = None
    rel_error: float | None = None
    mse: float | None = None
    reason: str = ""


@dataclass
class LowRankReport:
    """Result of :func:`low_rank`: per-layer reports, folding, end-to-end check.

    ``bytes_before`` / ``bytes_after`` sum the considered layers and the folded
    layers (other layers are unchanged). A folded table's projection and mean are
    counted although the export drops them when nothing reads the reconstruction.
    """

    method: str
    order: str
    middle_activation: str | None
    calibration_rows: int
    layers: list[LayerReport] = field(default_factory=list)
    folded: list[dict] = field(default_factory=list)
    #: max / mean |p_compressed - p_original| on the first calibration rows
    prediction_max_abs_diff: float = math.nan
    prediction_mean_abs_diff: float = math.nan

    @property
    def compressed(self) -> list[str]:
        return [r.name for r in self.layers if r.status == "compressed"]

    @property
    def kept(self) -> list[str]:
        return [r.name for r in self.layers if r.status != "compressed"]

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers) + sum(f["bytes_before"] for f in self.folded)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers) + sum(f["bytes_after"] for f in self.folded)

    def layer(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r} in the report")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bytes_before"], d["bytes_after"] = self.bytes_before, self.bytes_after
        return d

    def to_text(self) -> str:
        lines = [
            f"low-rank ({self.method}, {self.order}, middle activation {self.middle_activation}) "
            f"on {self.calibration_rows:,} calibration rows",
            f"{'layer':<24} {'kind':<9} {'shape':<13} {'rank':>5} {'bytes before':>13} "
            f"{'after':>11} {'expl.var':>9} {'rel.err':>9}  note",
        ]
        for r in self.layers:
            ev = "" if r.explained_variance is None else f"{r.explained_variance:.4f}"
            err = "" if r.rel_error is None else f"{r.rel_error:.2e}"
            lines.append(
                f"{r.name:<24} {r.kind:<9} {r.shape[0]:>5}x{r.shape[1]:<7} {r.rank or '-':>5} "
                f"{r.bytes_before:>13,} {r.bytes_after:>11,} {ev:>9} {err:>9}  {r.status}"
                f"{': ' + r.reason if r.reason else ''}"
            )
        for f in self.folded:
            lines.append(
                f"folded projections of {f['tables']} tables into {f['layer']!r}: input "
                f"{f['input_before']} -> {f['input_after']}, bytes {f['bytes_before']:,} -> {f['bytes_after']:,}"
            )
        lines.append(
            f"total {self.bytes_before:,} -> {self.bytes_after:,} bytes; predictions differ by "
            f"max {self.prediction_max_abs_diff:.3g}, mean {self.prediction_mean_abs_diff:.3g}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# ---------------------------------------------------------------------- per-layer plan


def _rank_from_share(cum_share: np.ndarray, share: float) -> int:
    return int(min(np.searchsorted(cum_share, share - 1e-12) + 1, cum_share.shape[0]))


def _cum_share(values: np.ndarray) -> np.ndarray:
    total = float(values.sum())
    return np.cumsum(values) / total if total > 0 else np.ones_like(values)


@dataclass
class _Plan:
    report: LayerReport
    layer: keras.layers.Layer | None = None


def _rank_bound(layer) -> tuple[int, str]:
    """The largest rank of a Dense layer or table, and its formula for errors."""
    if _is_table(layer):
        n, d = layer.input_dim, layer.output_dim
        return min(n, d), f"min(rows, dim) = min({n}, {d})"
    n_in, n_out = (int(s) for s in layer.kernel.shape)
    return min(n_in, n_out), f"min(in, out) = min({n_in}, {n_out})"


def _pick_rank(name, bound, what, ranks, explained_variance, spectrum) -> int | None:
    if name in ranks:
        return check_rank(ranks[name], bound, layer=name, what=what)
    if explained_variance is None:
        return None
    return _rank_from_share(_cum_share(spectrum), explained_variance)


def _plan_dense(layer, stats: DenseInputStats, method, ranks, explained_variance, middle_activation,
                skip_unprofitable, covariance_power: float = 1.0) -> _Plan:
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(layer.bias).astype(np.float64) if layer.use_bias else None
    n_in, n_out = kernel.shape
    report = LayerReport(layer.name, DENSE, (n_in, n_out), "kept")
    report.bytes_before = report.bytes_after = sum(dense_byte_cost(n_in, n_out, use_bias=layer.use_bias).values())
    mu, cov = stats.output_moments(kernel, bias)
    eig, _ = principal_subspace(cov)
    spectrum = eig if method == "afm" else np.linalg.svd(kernel, compute_uv=False) ** 2
    rank = _pick_rank(layer.name, *_rank_bound(layer), ranks, explained_variance, spectrum)
    if rank is None:
        report.reason = "no rank requested"
        return _Plan(report)
    report.rank = rank
    cost = low_rank_dense_byte_cost(n_in, n_out, rank, use_bias=True, use_middle_bias=method == "afm")
    after = sum(cost.values())
    if skip_unprofitable and after >= report.bytes_before:
        report.reason = (f"rank {rank} saves no bytes ({after:,} >= {report.bytes_before:,}; "
                         f"needs rank < in*out/(in+out) = {n_in * n_out / (n_in + n_out):.1f})")
        return _Plan(report)
    if method == "afm":
        fit_cov = cov if covariance_power == 1.0 else stats.output_moments(kernel, bias, covariance_power)[1]
        factors = afm_dense_factors(kernel, bias, mu, fit_cov, rank)
    else:
        factors = svd_dense_factors(kernel, bias, rank)
    k_eff, b_eff = factors.effective()
    err, total = stats.error(kernel, bias, k_eff, b_eff)
    report.status, report.bytes_after = "compressed", after
    report.rel_error = err / total if total > 0 else 0.0
    report.mse = err / n_out
    exact_afm = method == "afm" and covariance_power == 1.0
    report.explained_variance = float(_cum_share(eig)[rank - 1]) if exact_afm else 1.0 - report.rel_error
    new = LowRankDense(
        n_out, rank, activation=layer.activation, middle_activation=middle_activation,
        use_bias=True, use_middle_bias=factors.middle_bias is not None,
        kernel_regularizer=layer.kernel_regularizer, bias_regularizer=layer.bias_regularizer,
        name=layer.name, dtype=layer.dtype_policy,
    )
    new.build((None, n_in))
    new.u.assign(factors.u.astype("float32"))
    new.v.assign(factors.v.astype("float32"))
    if factors.middle_bias is not None:
        new.middle_bias.assign(factors.middle_bias.astype("float32"))
    new.bias.assign(factors.bias.astype("float32"))
    return _Plan(report, new)


def _plan_table(layer, stats: EmbeddingIdStats, method, ranks, explained_variance, skip_unprofitable,
                table_weighting) -> _Plan:
    table = keras.ops.convert_to_numpy(layer.embeddings).astype(np.float64)
    n, d = table.shape
    report = LayerReport(layer.name, EMBEDDING, (n, d), "kept")
    report.bytes_before = report.bytes_after = sum(embedding_byte_cost(n, d).values())
    if getattr(layer, "mask_zero", False):
        report.reason = "mask_zero tables are not supported"
        return _Plan(report)
    mu, cov = stats.output_moments(table, table_weighting)
    eig, _ = principal_subspace(cov)
    spectrum = eig if method == "afm" else np.linalg.svd(table, compute_uv=False) ** 2
    rank = _pick_rank(layer.name, *_rank_bound(layer), ranks, explained_variance, spectrum)
    if rank is None:
        report.reason = "no rank requested"
        return _Plan(report)
    report.rank = rank
    after = sum(low_rank_embedding_byte_cost(n, d, rank).values())
    if skip_unprofitable and after >= report.bytes_before:
        report.reason = (f"rank {rank} saves no bytes ({after:,} >= {report.bytes_before:,}: "
                         "rows*k + k*d + d >= rows*d)")
        return _Plan(report)
    factors = afm_embedding_factors(table, mu, cov, rank) if method == "afm" else svd_embedding_factors(table, rank)
    err, total = stats.error(table, factors.table())
    report.status, report.bytes_after = "compressed", after
    report.rel_error = err / total if total > 0 else 0.0
    report.mse = err / d
    report.explained_variance = float(_cum_share(eig)[rank - 1]) if method == "afm" else 1.0 - report.rel_error
    new = LowRankEmbedding(n, d, rank, codes_regularizer=layer.embeddings_regularizer, name=layer.name,
                           dtype=layer.dtype_policy)
    new.build()
    new.codes.assign(factors.codes.astype("float32"))
    new.projection.assign(factors.projection.astype("float32"))
    new.mean.assign(factors.mean.astype("float32"))
    return _Plan(report, new)


# ------------------------------------------------------------------------------- main


def _check_args(model, method, order, ranks, explained_variance, layers, table_weighting,
                covariance_power: float = 1.0) -> list[str]:
    ensure_functional(model)
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: {method!r}")
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}. Received: {order!r}")
    if ranks is None and explained_variance is None:
        raise ValueError("give `ranks` (per layer name), `explained_variance`, or both")
    if table_weighting not in TABLE_WEIGHTINGS:
        raise ValueError(f"`table_weighting` must be one of {TABLE_WEIGHTINGS}. Received: {table_weighting!r}")
    if isinstance(covariance_power, bool) or not isinstance(covariance_power, numbers.Real) \
            or not 0.0 <= covariance_power <= 1.0:  # the comparison also rejects NaN
        raise ValueError(f"`covariance_power` must be a number in [0, 1]. Received: {covariance_power!r}")
    if method == "svd" and covariance_power != 1.0:
        raise ValueError(f"`covariance_power` ({covariance_power!r}) tempers AFM's statistics; "
                         "method='svd' factorises the weights and has none (leave it at 1)")
    if explained_variance is not None and not 0.0 < explained_variance <= 1.0:
        raise ValueError(f"`explained_variance` must be in (0, 1]. Received: {explained_variance!r}")
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(ranks or {}) - names) + sorted(set(layers or []) - names)
    if unknown:
        raise ValueError(f"model {model.name!r} has no layer(s) {unknown}")
    if layers is None:
        targets = default_targets(model)
        targets += [n for n in (ranks or {}) if n not in targets]
    else:
        targets = list(dict.fromkeys(layers))
        outside = sorted(set(ranks or {}) - set(targets))
        if outside:
            raise ValueError(f"`ranks` names layers {outside} that are not in `layers`")
    nodes = _nodes_by_layer(model)
    for name in targets:
        layer = model.get_layer(name)
        if len(nodes.get(name, ())) != 1:
            raise ValueError(
                f"layer {name!r} is called {len(nodes.get(name, ()))} times in the model; only layers "
                "called once can be factorised (pass `layers` without it)"
            )
        if not (_is_dense(layer) or _is_table(layer)):
            raise ValueError(
                f"layer {name!r} is a {type(layer).__name__}; low_rank compresses keras.layers.Dense "
                "and keras.layers.Embedding layers"
            )
        if name in (ranks or {}):  # fail before the calibration pass, not after it
            bound, what = _rank_bound(layer)
            check_rank(ranks[name], bound, layer=name, what=what)
    order_index = {layer.name: i for i, layer in enumerate(model.layers)}
    return sorted(targets, key=order_index.__getitem__)


def _stages(model: keras.Model, targets: list[str], order: str) -> list[list[str]]:
    if order == "independent":
        return [targets]
    parents = _parents(model)
    remaining, stages = list(targets), []
    while remaining:
        stage = [t for t in remaining if not (_ancestors(parents, t) & set(remaining))]
        stages.append(stage)
        remaining = [t for t in remaining if t not in stage]
    return stages


def low_rank(
    model: keras.Model,
    calibration_data,
    *,
    ranks: Mapping[str, int] | None = None,
    explained_variance: float | None = None,
    method: str = "afm",
    middle_activation: str | None = None,
    layers: Sequence[str] | None = None,
    fold_embeddings: bool = False,
    order: str = "independent",
    calibration_batches: int | None = None,
    batch_size: int = 4096,
    skip_unprofitable: bool = True,
    table_weighting: str = "frequency",
    covariance_power: float = 1.0,
) -> tuple[keras.Model, LowRankReport]:
    """Low-rank compression of a trained functional model (AFM or weight SVD).

    The original model is left untouched: the result is a rebuilt model whose
    compressed layers are :class:`LowRankDense` / :class:`LowRankEmbedding` with the
    same names; every other layer keeps its weights.

    Example::

        small, report = low_rank(model, ds.train.x[:65536], ranks={"dnn_0": 32, "emb_c3": 4},
                                 method="afm", fold_embeddings=True)
        print(report.to_text())               # per layer: rank, bytes before / after, explained variance

    Args:
        model: a trained Keras functional model.
        calibration_data: model inputs: an id matrix ``(N, F)``, a ``Split``, or an
            iterable of batches (``tf.data.Dataset`` of ``x`` or ``(x, y)``).
        ranks: rank per layer name. Layers named here are compressed even outside
            the default set (with ``layers=None``).
        explained_variance: for considered layers without a rank in ``ranks``, the
            smallest rank whose share of variance reaches this value (AFM: output
            variance on the calibration data, also with ``covariance_power`` < 1,
            whose subspace then explains less; SVD: squared singular values).
        method: ``"afm"`` (output-feature PCA) or ``"svd"`` (weight SVD baseline).
        middle_activation: activation between the two Dense factors (``"relu"`` is
            AFM's "act" variant; it changes the outputs, so fine-tune afterwards).
        layers: names of the layers to consider; default :func:`default_targets`.
        fold_embeddings: after compressing, fold each low-rank table's projection
            into the Dense layers that read the concatenated embeddings (see
            :func:`fold_embedding_projections`).
        order: ``"independent"`` (one calibration pass on the original model) or
            ``"sequential"`` (each layer calibrated on the compressed layers' outputs).
        calibration_batches: at most this many batches of ``calibration_data``.
        batch_size: batch size when ``calibration_data`` is an array.
        skip_unprofitable: leave layers alone (and report them) where the rank saves
            no bytes; ``False`` compresses them anyway (e.g. to check exactness).
        table_weighting: AFM tables: ``"frequency"`` (the paper: statistics of the
            looked-up vectors, so frequent ids dominate the subspace), ``"uniform"``
            (every row once: a centred PCA of the table, kinder to rare ids) or
            ``"sqrt"`` (rows weighted by the square root of their lookup count).
            Errors are reported over the calibration lookups either way.
        covariance_power: AFM Dense layers: the subspace is the principal subspace of
            ``K^T C_x^p K`` (``C_x``: the calibration inputs' covariance). 1 (default)
            is AFM's output covariance; 0 gives the weight SVD's subspace; in between
            the data's dominant input directions count less. Errors are reported on the
            real outputs either way (explained variance then is ``1 - rel_error``).

    Returns:
        ``(new_model, report)`` (:class:`LowRankReport`).

    Raises:
        ValueError: bad options, unknown layers, or a rank outside ``[1, min(in, out)]``
            (naming the layer and the bound).
    """
    targets = _check_args(model, method, order, ranks, explained_variance, layers, table_weighting,
                          covariance_power)
    mid = keras.activations.get(middle_activation)
    mid_name = None if mid is keras.activations.linear else keras.activations.serialize(mid)
    report = LowRankReport(method, order, mid_name, 0)
    current = model
    for stage in _stages(model, targets, order):
        stats, report.calibration_rows = calibrate(
            current, stage, calibration_data, batch_size=batch_size, max_batches=calibration_batches
        )
        new_layers = {}
        for name in stage:
            layer = current.get_layer(name)
            if _is_dense(layer):
                plan = _plan_dense(layer, stats[name], method, ranks or {}, explained_variance,
                                   mid_name, skip_unprofitable, covariance_power)
            else:
                plan = _plan_table(layer, stats[name], method, ranks or {}, explained_variance,
                                   skip_unprofitable, table_weighting)
            report.layers.append(plan.report)
            if plan.layer is not None:
                new_layers[name] = plan.layer
        if new_layers:
            current, _ = replace_layers(current, lambda layer, new=new_layers: new.get(layer.name))
    if current is model:
        current, _ = replace_layers(model, lambda layer: None)
    if fold_embeddings:
        current, report.folded = fold_embedding_projections(current)
    report.prediction_max_abs_diff, report.prediction_mean_abs_diff = _prediction_diff(
        model, current, calibration_data, batch_size
    )
    return current, report


# ---------------------------------------------------------------------------- folding


@dataclass
class _FoldSite:
    concat: str
    parts: list[str]  # producer layer of each concatenated input, in order
    targets: list[str]  # Dense / LowRankDense layers reading the concatenation


def _fold_sites(model: keras.Model, only: Sequence[str] | None) -> list[_FoldSite]:
    """Concatenations of embedding outputs (at least one low-rank) read by Dense layers."""
    nodes = _nodes_by_layer(model)
    sites = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Concatenate) or len(nodes.get(layer.name, ())) != 1:
            continue
        node = nodes[layer.name][0]
        inputs = node.input_tensors
        producers = [_producer(t) for t in inputs]
        if (
            layer.axis not in (-1, 1)
            or any(len(t.shape) != 2 for t in inputs)
            or not all(isinstance(p, (keras.layers.Embedding, LowRankEmbedding)) for p in producers)
            or not any(isinstance(p, LowRankEmbedding) for p in producers)
            or any(len(nodes.get(p.name, ())) != 1 for p in producers)
        ):
            continue
        out = node.output_tensors[0]
        width = sum(p.rank if isinstance(p, LowRankEmbedding) else p.output_dim for p in producers)
        targets = [
            other.name for other in model.layers
            if isinstance(other, (keras.layers.Dense, LowRankDense))
            and len(nodes.get(other.name, ())) == 1
            and nodes[other.name][0].input_tensors[0] is out
            and (only is None or other.name in only)
            and not (isinstance(other, LowRankDense) and other.rank > width)
        ]
        if targets:
            sites.append(_FoldSite(layer.name, [p.name for p in producers], targets))
    return sites


def _part_maps(model: keras.Model, parts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per concatenated part: ``(P, mu)`` with ``vector = code @ P + mu`` (identity for a
    plain table, whose "code" is the vector itself)."""
    maps = []
    for name in parts:
        layer = model.get_layer(name)
        if isinstance(layer, LowRankEmbedding):
            p = keras.ops.convert_to_numpy(layer.projection).astype(np.float64)
            mu = keras.ops.convert_to_numpy(layer.mean).astype(np.float64)
        else:
            p, mu = np.eye(layer.output_dim), np.zeros(layer.output_dim)
        maps.append((p, mu))
    return maps


def _fold_first_factor(w: np.ndarray, maps) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``w`` (one block per part) mapped onto codes, and the constant term."""
    blocks, const, offset = [], np.zeros(w.shape[1]), 0
    for p, mu in maps:
        rows = w[offset : offset + p.shape[1]]
        offset += p.shape[1]
        blocks.append(p @ rows)
        const += mu @ rows
    return np.concatenate(blocks, axis=0), const


def fold_embedding_projections(
    model: keras.Model, layers: Sequence[str] | None = None
) -> tuple[keras.Model, list[dict]]:
    """Folds low-rank tables' projections into the Dense layers reading their concatenation.

    Where a ``Concatenate`` joins embedding outputs (at least one of them a
    :class:`LowRankEmbedding`) and Dense (or LowRankDense) layers read it directly,
    those layers are rebuilt to read the concatenated CODES instead: their kernel
    rows of field ``f`` become ``P_f K_f`` and their bias gains ``sum_f mu_f K_f`` (for
    a LowRankDense the first factor and a middle bias), which is exact. Everything
    else that reads the concatenation (FM / FwFM pairs, the cross network) keeps
    reading the reconstructed embeddings; one GATHER per table feeds both. When
    nothing reads the reconstruction any more, the projections drop out of the
    exported file.

    Args:
        model: a functional model holding :class:`LowRankEmbedding` tables.
        layers: restrict folding to these Dense layers (default: every eligible one).

    Returns:
        ``(new_model, folded)``: a rebuilt model (the input is untouched) and one dict
        per folded layer (``layer``, ``tables``, ``input_before``, ``input_after``,
        ``bytes_before``, ``bytes_after``).
    """
    ensure_functional(model)
    sites = _fold_sites(model, layers)
    if not sites:
        new, _ = replace_layers(model, lambda layer: None)
        return new, []
    site_of_target = {t: s for s in sites for t in s.targets}
    low_rank_parts = {p for s in sites for p in s.parts if isinstance(model.get_layer(p), LowRankEmbedding)}
    concat_names = {s.concat for s in sites}
    pending: list[tuple[keras.layers.Layer, keras.layers.Layer | None]] = []
    codes_of: dict[int, object] = {}
    parts_of: dict[int, list] = {}
    codes_concat: dict[str, object] = {}
    folded: list[dict] = []

    def clone(layer):
        config = layer.get_config()
        if layer.name in low_rank_parts:
            config["return_codes"] = True
        elif layer.name in site_of_target and isinstance(layer, LowRankDense):
            config["use_middle_bias"] = True
        new = layer.__class__.from_config(config)
        pending.append((layer, None if layer.name in site_of_target else new))
        return new

    def call(op, *args, **kwargs):
        if op.name in low_rank_parts:
            vectors, codes = op(*args, **kwargs)
            codes_of[id(vectors)] = codes
            return vectors
        out = op(*args, **kwargs) if op.name not in site_of_target else None
        if op.name in concat_names:
            parts_of[id(out)] = list(args[0])
            return out
        if out is not None:
            return out
        site = site_of_target[op.name]
        if site.concat not in codes_concat:
            codes = [codes_of.get(id(t), t) for t in parts_of[id(args[0])]]
            codes_concat[site.concat] = keras.layers.Concatenate(axis=-1, name=f"{site.concat}_codes")(codes)
        result = op(codes_concat[site.concat])
        _assign_folded(model.get_layer(op.name), op, _part_maps(model, site.parts))
        folded.append(_fold_record(model.get_layer(op.name), op, site))
        return result

    new_model = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for old, new in pending:
        if new is not None and old.weights:
            new.set_weights(old.get_weights())
    return new_model, folded


def _assign_folded(old, new, maps) -> None:
    if isinstance(old, LowRankDense):
        u = keras.ops.convert_to_numpy(old.u).astype(np.float64)
        u2, const = _fold_first_factor(u, maps)
        mb = np.zeros(old.rank) if old.middle_bias is None else keras.ops.convert_to_numpy(old.middle_bias)
        new.u.assign(u2.astype("float32"))
        new.v.assign(keras.ops.convert_to_numpy(old.v))
        new.middle_bias.assign((mb + const).astype("float32"))
        if old.bias is not None:
            new.bias.assign(keras.ops.convert_to_numpy(old.bias))
        return
    kernel = keras.ops.convert_to_numpy(old.kernel).astype(np.float64)
    k2, const = _fold_first_factor(kernel, maps)
    if not old.use_bias and np.any(const):
        raise ValueError(f"layer {old.name!r} has no bias to take the folded embedding means")
    new.kernel.assign(k2.astype("float32"))
    if old.use_bias:
        new.bias.assign((keras.ops.convert_to_numpy(old.bias) + const).astype("float32"))


def _layer_bytes(layer) -> int:
    if hasattr(layer, "byte_cost"):
        return sum(layer.byte_cost().values())
    return sum(int(np.prod(w.shape)) * 4 for w in layer.weights)


def _fold_record(old, new, site: _FoldSite) -> dict:
    return {
        "layer": old.name, "concat": site.concat, "tables": len(site.parts),
        "input_before": int(old.weights[0].shape[0]), "input_after": int(new.weights[0].shape[0]),
        "bytes_before": _layer_bytes(old), "bytes_after": _layer_bytes(new),
    }


# ------------------------------------------------------------------------------ checks


def _prediction_diff(a: keras.Model, b: keras.Model, data, batch_size: int) -> tuple[float, float]:
    """Max and mean |a(x) - b(x)| over the first :data:`CHECK_ROWS` calibration rows."""
    diffs, seen = [], 0
    for batch in iter_batches(data, min(batch_size, CHECK_ROWS)):
        pa, pb = (
            np.concatenate([np.asarray(keras.ops.convert_to_numpy(t), np.float64).reshape(-1)
                            for t in keras.tree.flatten(m(batch, training=False))])
            for m in (a, b)
        )
        diffs.append(np.abs(pa - pb))
        seen += len(diffs[-1])
        if seen >= CHECK_ROWS:
            break
    d = np.concatenate(diffs)
    return float(d.max()), float(d.mean())


# ------------------------------------------------------------------------ the recipe


def compress_low_rank(
    model: keras.Model,
    dataset: CTRDataset,
    *,
    method: str = "afm",
    ranks: Mapping[str, int] | None = None,
    dense_rank: int | None = None,
    embedding_rank: int | None = None,
    finetune: bool = False,
    fold_embeddings: bool = False,
    middle_activation: str | None = None,
    order: str = "independent",
    calibration_rows: int = 65_536,
    seed: int = 0,
    finetune_options: Mapping | None = None,
    table_weighting: str = "frequency",
    covariance_power: float = 1.0,
) -> tuple[keras.Model, dict]:
    """The whole low-rank recipe on a dataset: calibrate, factorise, optionally fine-tune.

    Calibration uses the first ``calibration_rows`` rows of the training split (the
    splits are shuffled once when the dataset is built, so this is a random sample).
    Ranks: ``ranks`` by layer name, plus ``dense_rank`` / ``embedding_rank`` for every
    default target not named there (:func:`uniform_ranks`).

    Example (a benchmark method)::

        model, info = compress_low_rank(ctx.fp32_model, ctx.dataset, method="afm",
                                        dense_rank=64, embedding_rank=2, finetune=True)

    Args:
        model: the trained model (left untouched).
        dataset: its dataset (``train`` for calibration and fine-tuning, ``valid``
            for early stopping).
        method, middle_activation, order, fold_embeddings, table_weighting,
            covariance_power: see
            :func:`low_rank`.
        finetune: fine-tune after compressing (:func:`~keras_ctr_compress.compress.finetune`).
        seed: seeds fine-tuning.
        finetune_options: further keyword arguments of ``finetune`` (``epochs``,
            ``learning_rate``, ``batch_size``, ``patience``, ``verbose``).

    Returns:
        ``(compressed_model, info)`` with ``info = {"plan", "report", "finetune",
        "train_seconds"}`` (JSON-ready; ``finetune`` is None without fine-tuning).
    """
    from keras_ctr_compress.compress.finetune import finetune as run_finetune

    all_ranks = {**uniform_ranks(model, dense=dense_rank, embedding=embedding_rank), **(ranks or {})}
    if not all_ranks:
        raise ValueError("give `ranks`, `dense_rank` or `embedding_rank`")
    from keras_ctr_compress.console import progress

    calibration = dataset.train.x[:calibration_rows]
    progress(f"[low-rank] {method}: calibrating {len(all_ranks)} layers on {len(calibration):,} training rows")
    new_model, report = low_rank(
        model, calibration, ranks=all_ranks, method=method, middle_activation=middle_activation,
        fold_embeddings=fold_embeddings, order=order, table_weighting=table_weighting,
        covariance_power=covariance_power,
    )
    progress(f"[low-rank] {len(report.compressed)} layers compressed, {report.bytes_before:,} -> "
             f"{report.bytes_after:,} bytes" + ("; fine-tuning" if finetune else ""))
    tuned = None
    if finetune:
        tuned = run_finetune(new_model, dataset.train, dataset.valid, seed=seed, **(finetune_options or {}))
    plan = {
        "method": method, "ranks": {r.name: r.rank for r in report.layers if r.status == "compressed"},
        "middle_activation": report.middle_activation, "order": order,
        "fold_embeddings": fold_embeddings, "calibration_rows": report.calibration_rows,
        "table_weighting": table_weighting,
        "covariance_power": covariance_power,
        "finetune": bool(finetune),
    }
    return new_model, {
        "plan": plan,
        "report": report.to_dict(),
        "finetune": tuned,
        "train_seconds": 0.0 if tuned is None else tuned["train_seconds"],
    }
