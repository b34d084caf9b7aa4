"""The Pareto front of a search's trials over (validation AUC, bytes, latency).

A trial is on the front when no other trial is at least as good on all three
objectives (AUC higher or equal, bytes and latency lower or equal) and strictly
better on one. Trials equal on all three are all kept.

Example::

    front = pareto_front(trials)                      # trials: dicts with val_auc, bytes, latency_us
    save_front(front, "pareto.json", trials=trials)
    plot_front(trials, front, "pareto.png", max_bytes=100_000)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from keras_ctr_compress.utils import atomic_path, atomic_write_text

#: (key, direction) of each objective.
OBJECTIVES = (("val_auc", "max"), ("bytes", "min"), ("latency_us", "min"))


def _key(t: dict, objectives) -> tuple[float, ...]:
    """The trial's objectives as numbers to minimise (NaN latency counts as equal)."""
    out = []
    for k, d in objectives:
        v = float(t[k])
        v = 0.0 if math.isnan(v) else v
        out.append(-v if d == "max" else v)
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (both minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(trials: Sequence[dict], objectives=OBJECTIVES) -> list[dict]:
    """The non-dominated trials, smallest file first.

    Args:
        trials: dicts with at least the ``objectives`` keys (``val_auc``, ``bytes``,
            ``latency_us``).

    Example:

    >>> ts = [{"val_auc": .9, "bytes": 10, "latency_us": 5}, {"val_auc": .8, "bytes": 20, "latency_us": 5},
    ...       {"val_auc": .95, "bytes": 30, "latency_us": 4}]
    >>> [t["bytes"] for t in pareto_front(ts)]
    [10, 30]
    """
    keys = [_key(t, objectives) for t in trials]
    front = [t for i, t in enumerate(trials) if not any(dominates(keys[j], keys[i]) for j in range(len(trials)) if j != i)]
    return sorted(front, key=lambda t: (float(t["bytes"]), -float(t["val_auc"])))


def save_front(front: Sequence[dict], path: str | Path, **extra) -> Path:
    """Writes ``{"objectives", "front", **extra}`` as JSON (atomically)."""
    path = Path(path)
    body = {"objectives": [{"key": k, "direction": d} for k, d in OBJECTIVES], "front": list(front), **extra}
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")
    return path


def front_table(front: Sequence[dict], fp32_bytes: int | None = None) -> str:
    """A markdown table of the front (trial, val AUC, bytes, share of fp32, latency)."""
    lines = ["| trial | val AUC | .tflite bytes | vs fp32 | latency b1 (us, predicted) | plan |",
             "|---|---|---|---|---|---|"]
    for t in front:
        share = f"1/{fp32_bytes / t['bytes']:.1f}" if fp32_bytes else "-"
        lines.append(f"| {t.get('trial_id', '-')} | {t['val_auc']:.4f} | {int(t['bytes']):,} | {share} | "
                     f"{t['latency_us']:.1f} | {plan_summary(t.get('plan') or {})} |")
    return "\n".join(lines)


def plan_summary(plan: dict) -> str:
    """A short one-line description of a plan's JSON form."""
    parts = []
    tables = plan.get("tables", {})
    by_method: dict[str, list[str]] = {}
    for name, t in tables.items():
        m = t["method"]
        tag = {"quant": f"q{t.get('bits')}{(t.get('granularity') or 'row')[0]}", "lowrank": f"lr{t.get('rank')}",
               "rowwise": "rw"}.get(m, m)
        by_method.setdefault(tag, []).append(name)
    parts += [f"{tag}:{','.join(names)}" for tag, names in sorted(by_method.items())]
    for name, d in plan.get("dense", {}).items():
        bits = [f"u{d['units']}" if "units" in d else "", f"r{d['rank']}" if "rank" in d else ""]
        parts.append(f"{name}:{''.join(bits)}")
    if plan.get("pairs"):
        parts.append(f"pairs:{plan['pairs'].get('sparsity', 'kept')}")
    if plan.get("drq"):
        parts.append("drq")
    return " ".join(parts) or "fp32"


def plot_front(trials: Sequence[dict], front: Sequence[dict], path: str | Path, *, max_bytes: float | None = None,
               fp32_bytes: int | None = None, title: str = "search trials") -> Path:
    """AUC against bytes (log scale) of every trial, coloured by latency, the front
    joined by a line, the byte budget as a vertical line. Written atomically (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    xs = [float(t["bytes"]) for t in trials]
    ys = [float(t["val_auc"]) for t in trials]
    lat = [float(t["latency_us"]) for t in trials]
    sc = ax.scatter(xs, ys, c=lat, cmap="viridis", s=28, label="trial", zorder=2)
    if not all(math.isnan(v) for v in lat):
        fig.colorbar(sc, ax=ax, label="latency, batch 1 (us, predicted)")
    fx = [float(t["bytes"]) for t in front]
    fy = [float(t["val_auc"]) for t in front]
    ax.plot(fx, fy, "-o", color="tab:red", mfc="none", ms=10, lw=1.2, label="Pareto front", zorder=3)
    if max_bytes:
        ax.axvline(max_bytes, color="grey", ls="--", lw=1, label=f"budget {int(max_bytes):,} B")
    if fp32_bytes:
        ax.axvline(fp32_bytes, color="black", ls=":", lw=1, label=f"fp32 {fp32_bytes:,} B")
    ax.set_xscale("log")
    ax.set_xlabel(".tflite bytes (cost model)")
    ax.set_ylabel("validation AUC")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
