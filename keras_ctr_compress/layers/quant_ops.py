"""Shared maths of the quantised embedding layers: ranges, rounding, LSQ, packing, fp16 bits.

Notation follows ALPT (Li et al., AAAI 2023, arXiv 2212.05735) and
``shared/methods.md`` section 3: ``m`` bits, ``Qn = -2^(m-1)``, ``Qp = 2^(m-1) - 1``,
step size ``D > 0``, ``v = w / D``, ``Q(w) = D * round(clip(v, Qn, Qp))`` with the
deterministic round ``floor(v + 0.5)`` or the stochastic round ``floor(v + u)``,
``u ~ U[0, 1)``.

Two families of functions live here:

* NumPy functions (suffix ``_np``) used outside the graph: step-size calibration,
  quantisation of a trained table, packing of int4 / int2 codes, fp16 bit patterns.
* ``keras.ops`` functions used inside layers: the LSQ fake quantiser (straight-through
  estimator) and the unpacking of packed codes after a gather.

Packed layout (``shared/litert.md``): a row of ``d`` codes of ``b`` storage bits
(``b`` in 4, 2) is stored as ``w = ceil(d / k)`` int8 bytes, ``k = 8 / b``. Byte
``j`` holds the codes of dims ``j, j + w, ..., j + (k - 1) w`` (dims past ``d`` are
zero padding) as ``sum_{i < k-1} (c_i + 2^(b-1)) 2^(b i) + c_{k-1} 2^(b (k-1))``: the
top code keeps its sign, the lower ones are offset to be non-negative, so the byte
is a plain int8 and the model unpacks it with FLOOR, MUL and SUB only (LiteRT has no
builtin bitwise AND, and FLOOR_MOD is 10x slower).
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
from keras import ops

ROUNDINGS = ("stochastic", "deterministic")
GRANULARITIES = ("row", "table")
STEP_INITS = ("lsq", "mse")
MIN_BITS, MAX_BITS = 2, 8
# Smallest step size. Keeps v = w / D finite for all-zero rows; as an fp16 scale it is
# a subnormal with 4 significant bits, and such rows quantise to (near) zero anyway.
MIN_STEP = 2.0**-20
# Largest finite fp16: row scales ship as fp16.
MAX_STEP = 65504.0


def check_bits(bits, where: str = "") -> int:
    """Returns ``bits`` as an int after checking it is an integer in ``[2, 8]``."""
    prefix = f"{where}: " if where else ""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"{prefix}`bits` must be an integer in [{MIN_BITS}, {MAX_BITS}] (int8 containers hold "
            f"at most 8 bits; 1 bit has no positive level). Received: bits={bits!r}"
        )
    return int(bits)


def qrange(bits: int) -> tuple[int, int]:
    """``(Qn, Qp) = (-2^(bits-1), 2^(bits-1) - 1)``."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def storage_bits(bits: int) -> int:
    """Bits of the container a code of ``bits`` bits is stored in: 2, 4 or 8."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def packed_width(dim: int, bits: int) -> int:
    """Bytes per row of ``dim`` codes of ``bits`` bits in the packed layout."""
    return math.ceil(dim / (8 // storage_bits(bits)))


def code_bytes(rows: int, dim: int, bits: int) -> int:
    """Exported bytes of the codes of a ``rows x dim`` table at ``bits`` bits."""
    return rows * packed_width(dim, bits)


# --------------------------------------------------------------------------- NumPy


def round_np(v: np.ndarray, rounding: str, u: np.ndarray | None = None, rng=None) -> np.ndarray:
    """``floor(v + 0.5)`` (deterministic) or ``floor(v + u)`` with ``u ~ U[0, 1)``."""
    if rounding == "deterministic":
        return np.floor(v + 0.5)
    if u is None:
        u = (rng or np.random.default_rng()).random(np.shape(v))
    return np.floor(v + u)


def quantize_np(w, step, bits: int, rounding: str = "deterministic", u=None, rng=None) -> np.ndarray:
    """Integer codes ``clip(round(w / step), Qn, Qp)`` as int8 (``step`` broadcasts)."""
    qn, qp = qrange(bits)
    v = np.asarray(w, "float64") / np.asarray(step, "float64")
    return np.clip(round_np(v, rounding, u, rng), qn, qp).astype("int8")


def fp16_bits_np(x) -> np.ndarray:
    """The fp16 bit patterns of ``x`` as int16 (what ships for per-row scales)."""
    return np.asarray(x, "float32").astype("float16").view("int16")


def fp16_from_bits_np(bits) -> np.ndarray:
    """float32 values of int16 fp16 bit patterns."""
    return np.asarray(bits, "int16").view("float16").astype("float32")


def clamp_step_np(step) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(step, "float32"), nan=MIN_STEP), MIN_STEP, MAX_STEP)


def to_fp16_step_np(step) -> np.ndarray:
    """Step sizes rounded to the fp16 values that ship, never below fp16's smallest
    subnormal (a zero scale would lose the row)."""
    s16 = clamp_step_np(step).astype("float16")
    return np.maximum(s16, np.float16(2.0**-24)).astype("float32")


def init_step_np(w, bits: int, granularity: str = "row", method: str = "lsq") -> np.ndarray:
    """Calibrated step sizes for a float table ``w`` (``rows x dim``).

    * ``"lsq"``: LSQ's initialisation ``D0 = 2 mean|w| / sqrt(Qp)`` (Esser et al.,
      ICLR 2020), the one ALPT uses; per row or over the whole table.
    * ``"mse"``: the step minimising the squared quantisation error, searched on a
      grid of 64 fractions of the range-covering step (better for fixed steps at 2-4
      bits, where LSQ's initial step clips hard).

    Returns ``(rows,)`` for ``granularity="row"``, ``()`` for ``"table"``.
    """
    w = np.asarray(w, "float32")
    qn, qp = qrange(bits)
    axis = 1 if granularity == "row" else None
    if method == "lsq":
        step = 2.0 * np.mean(np.abs(w), axis=axis) / math.sqrt(qp)
        return clamp_step_np(step)
    if method != "mse":
        raise ValueError(f"`step_init` must be one of {STEP_INITS}. Received: {method!r}")
    full = np.maximum(np.max(w, axis=axis) / qp, np.min(w, axis=axis) / qn)
    full = clamp_step_np(full)
    best, best_err = full, np.full(np.shape(full), np.inf, "float64")
    for frac in np.linspace(1.0, 0.05, 64):
        cand = clamp_step_np(full * frac)
        d = cand[:, None] if granularity == "row" else cand
        err = np.sum((quantize_np(w, d, bits).astype("float32") * d - w) ** 2, axis=axis)
        better = err < best_err
        best = np.where(better, cand, best)
        best_err = np.where(better, err, best_err)
    return clamp_step_np(best)


def pack_codes_np(codes, bits: int) -> np.ndarray:
    """Packs int codes (``rows x dim``, values in ``[Qn, Qp]``) into int8 bytes.

    ``bits`` 5-8 are stored one code per byte; 3-4 as nibbles; 2 as crumbs (see the
    module docstring for the layout). Odd dims are zero padded.
    """
    codes = np.asarray(codes)
    sb = storage_bits(bits)
    if sb == 8:
        return codes.astype("int8")
    k, base, off = 8 // sb, 2**sb, 2 ** (sb - 1)
    rows, dim = codes.shape
    width = packed_width(dim, bits)
    padded = np.zeros((rows, k * width), "int32")
    padded[:, :dim] = codes
    parts = padded.reshape(rows, k, width)
    out = parts[:, k - 1] * base ** (k - 1)
    for i in range(k - 1):
        out = out + (parts[:, i] + off) * base**i
    return out.astype("int8")


def unpack_codes_np(packed, bits: int, dim: int) -> np.ndarray:
    """Inverse of :func:`pack_codes_np`: int32 codes ``rows x dim``."""
    packed = np.asarray(packed).astype("int32")
    sb = storage_bits(bits)
    if sb == 8:
        return packed[:, :dim]
    k, base, off = 8 // sb, 2**sb, 2 ** (sb - 1)
    top = np.floor_divide(packed, base ** (k - 1))
    rest = packed - top * base ** (k - 1)
    parts = []
    for i in range(k - 1):
        parts.append((rest // base**i) % base - off)
    parts.append(top)
    return np.concatenate(parts, axis=1)[:, :dim]


# --------------------------------------------------------------------------- keras.ops


def round_ops(v, rounding: str, seed=None):
    """Deterministic ``floor(v + 0.5)`` or stochastic ``floor(v + u)`` (``seed``: a
    ``keras.random.SeedGenerator`` or int)."""
    if rounding == "deterministic":
        return ops.floor(v + 0.5)
    return ops.floor(v + keras.random.uniform(ops.shape(v), seed=seed))


def lsq_grad_scale(num_ids, dim: int, bits: int):
    """ALPT's step-size gradient scale ``g = 1 / sqrt(B d Qp)``: ``B`` ids looked up in
    the batch, ``d`` the embedding dim (a float tensor when ``num_ids`` is one)."""
    _, qp = qrange(bits)
    return ops.rsqrt(ops.cast(num_ids, "float32") * float(dim * qp))


def scale_grad(x, g):
    """``x`` in the forward pass, ``g * dL/dx`` in the backward pass."""
    return x * g + ops.stop_gradient(x - x * g)


def fake_quant(w, step, bits: int, rounding: str = "deterministic", grad_scale=1.0, seed=None):
    """LSQ fake quantiser ``D * round(clip(w / D, Qn, Qp))`` with straight-through gradients.

    Gradients (Esser et al., LSQ; ALPT eq. for the step):
    ``dq/dw = 1`` inside ``[Qn D, Qp D]``, 0 outside; ``dq/dD = round(v) - v`` inside,
    ``Qn`` below and ``Qp`` above, times ``grad_scale``. ``step`` must broadcast
    against ``w`` and be positive.
    """
    qn, qp = qrange(bits)
    step = scale_grad(step, grad_scale)
    v = ops.clip(w / step, float(qn), float(qp))
    r = v + ops.stop_gradient(round_ops(v, rounding, seed) - v)
    return r * step


def unpack_codes(g, bits: int, dim: int):
    """Unpacks gathered packed bytes ``g`` (float, ``... x width``) to ``... x dim`` codes.

    Only FLOOR, MUL, SUB, CONCATENATION and a slice: all LiteRT builtins. Dividing by
    powers of two is an exact multiplication, so the codes are exact integers.
    """
    sb = storage_bits(bits)
    if sb == 8:
        return g
    k, base, off = 8 // sb, 2**sb, 2 ** (sb - 1)
    top_mult = float(base ** (k - 1))
    top = ops.floor(g * (1.0 / top_mult))
    rest = g - top * top_mult
    lows = []
    for i in range(k - 2, -1, -1):
        mult = float(base**i)
        t = ops.floor(rest * (1.0 / mult)) if i > 0 else rest
        lows.append(t - float(off))
        if i > 0:
            rest = rest - t * mult
    parts = [*reversed(lows), top]
    out = ops.concatenate(parts, axis=-1)
    if out.shape[-1] != dim:
        out = out[..., :dim]
    return out


def fp16_bits_to_float(bits_int16):
    """int16 fp16 bit patterns -> float32 (exports as BITCAST + CAST). The last axis
    must have a static size (``keras.ops.view`` checks it in Python)."""
    return ops.cast(ops.view(bits_int16, "float16"), "float32")


def fp16_scale_column(bits_int16):
    """Gathered int16 fp16 scale bits of shape ``s`` -> float32 ``s + (1,)``, ready to
    multiply rows of codes. The trailing axis is added first, which gives
    ``keras.ops.view`` the static last axis it needs when ``s`` is ``(batch,)``."""
    return fp16_bits_to_float(ops.expand_dims(bits_int16, -1))
