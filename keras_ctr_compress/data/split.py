"""Deterministic 8:1:1 train / valid / test assignment, row by row.

Each row's part is a function of (its global row index, the seed) only: a SplitMix64
hash of the index mixed with the seed, read as a uniform number in [0, 1). So the
same row lands in the same part whether a source is read in one piece, chunk by
chunk, or only partly (``limit=``), and changing the seed reshuffles everything.
"""

from __future__ import annotations

import numpy as np

SPLIT_NAMES = ("train", "valid", "test")
TRAIN, VALID, TEST = 0, 1, 2
FRACTIONS = (0.8, 0.1, 0.1)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014) on a uint64 array: a cheap,
    well-mixed bijection of 64-bit integers (vectorised; wraps modulo 2**64)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_uniform(x: np.ndarray) -> np.ndarray:
    """SplitMix64 of ``x`` as float64 uniforms in [0, 1) (top 53 bits)."""
    return (splitmix64(x) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _seed_key(seed: int) -> np.uint64:
    # Mixing the seed through the hash first keeps nearby seeds unrelated.
    return splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]


def split_codes(rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """Part of each global row index: int8 codes 0 = train, 1 = valid, 2 = test (8:1:1)."""
    with np.errstate(over="ignore"):
        u = hash_uniform(np.asarray(rows, dtype=np.uint64) ^ _seed_key(seed))
    codes = np.full(u.shape, TRAIN, dtype=np.int8)
    codes[u >= FRACTIONS[0]] = VALID
    codes[u >= FRACTIONS[0] + FRACTIONS[1]] = TEST
    return codes


def part_code(part: str) -> int:
    """``"train"`` / ``"valid"`` / ``"test"`` -> 0 / 1 / 2 (clear error otherwise)."""
    try:
        return SPLIT_NAMES.index(part)
    except ValueError:
        raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {part!r}") from None
