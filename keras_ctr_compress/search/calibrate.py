"""Fits the cost model's structure constants on probe exports (a developer tool).

Run after a TensorFlow / LiteRT / Keras upgrade::

    python -m keras_ctr_compress.search.calibrate --write

It builds small reference models (DeepFM, DeepFwFM, FM, FwFM with fields of
different name lengths, FMs of widths 5 and 8 for the unpacking slices, an FM with a
40,000-row field for int32 remaps) with random non-zero weights (like trained ones:
the converter drops all-zero biases and merges equal buffers), applies 96 probe
plans (:func:`~keras_ctr_compress.search.apply_plan` without fine-tuning), exports
them and measures, per probe, the structure bytes (file minus analytic weights)
relative to the model's fp32 export. Every probe is one linear equation in the
unknown per-component constants (:func:`~keras_ctr_compress.search.cost.structure_components`
gives its left side). What is known is taken out first: the names' lengths (each
tensor name carries the model, field and layer scope; their occurrences are counted
in the file) and 20 bytes per new operator kind; one more unknown prices a new
shared constant. Which operator kinds and constants a component brings is read from
the probes (those present in every probe that holds it). Least squares over all
probes gives the constants and the residuals, printed per probe; ``--write`` stores
them in ``_litert_costs.py``. About 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import pprint
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_ctr_compress.search.plan import DensePlan, PairPlan, Plan, TablePlan

T = TablePlan
#: reference fields: name lengths 3 to 13, one table of >= 1024 weights (DRQ gathers it)
FIELDS = [("user", 40), ("item_id", 300), ("ctx", 12), ("weekday", 60), ("cat_long_name", 25)]
DIM = 6
MLP = (32, 64)  # dnn_0 30 x 32 (< 1024: DRQ leaves it), dnn_1 32 x 64 (quantised, 64 channels)
TIERS = ("fp16", "int8", "int4", "int2")
#: Bytes of one operator-code entry (``OperatorCode`` table: soffset, int8 and int32
#: builtin codes, version, and its slot in the vector; vtables are shared).
OPCODE_BYTES = 20.0


@dataclass
class Probe:
    model: str
    name: str
    plan: Plan


def _deep_probes(model: str) -> list[Probe]:
    P = []  # noqa: N806

    def add(name, **kw):
        P.append(Probe(model, name, Plan(**kw)))

    add("base")
    for bits in (8, 4, 2):
        for gran in ("row", "table"):
            add(f"q{bits}{gran}", tables={"user": T("quant", bits=bits, granularity=gran)})
    add("q8row_x2", tables={"user": T("quant", bits=8), "ctx": T("quant", bits=8)})
    add("q4row_long", tables={"cat_long_name": T("quant", bits=4)})
    add("q2table_x3", tables={f: T("quant", bits=2, granularity="table") for f in ("user", "ctx", "item_id")})
    for tier in TIERS:
        add(f"rw1_{tier}", tables={"weekday": T("rowwise", tiers=(tier,), fractions=(1.0,))})
        add(f"rw1p_{tier}", tables={"weekday": T("rowwise", tiers=(tier, "pruned"), fractions=(0.6, 0.4))})
    for i, a in enumerate(TIERS):
        for b in TIERS[i + 1:]:
            add(f"rw2_{a}_{b}", tables={"weekday": T("rowwise", tiers=(a, b), fractions=(0.5, 0.5))})
    add("rw2b_int4_int2", tables={"user": T("rowwise", tiers=("int4", "int2"), fractions=(0.3, 0.7))})
    add("rw2b_int8_int4", tables={"ctx": T("rowwise", tiers=("int8", "int4"), fractions=(0.25, 0.75))})
    for k, (field, tiers, fractions) in enumerate([  # the space's presets, and mixes of them
            ("user", ("int8", "int4"), (0.3, 0.7)), ("weekday", ("int8", "int4", "int2"), (0.1, 0.4, 0.5)),
            ("item_id", ("int4", "int2", "pruned"), (0.2, 0.5, 0.3)),
            ("weekday", ("fp16", "int8", "int4", "int2", "pruned"), (0.05, 0.15, 0.3, 0.3, 0.2)),
            ("weekday", ("fp16", "int4", "int2"), (0.2, 0.3, 0.5)), ("user", ("fp16", "int8", "int2"), (0.2, 0.3, 0.5))]):
        add(f"rwpreset{k}", tables={field: T("rowwise", tiers=tiers, fractions=fractions)})
    add("rw_two", tables={"user": T("rowwise", tiers=("int8", "int4", "int2"), fractions=(0.1, 0.4, 0.5)),
                          "weekday": T("rowwise", tiers=("fp16", "int4", "int2"), fractions=(0.2, 0.3, 0.5))})
    add("rw5", tables={"weekday": T("rowwise", tiers=(*TIERS, "pruned"), fractions=(0.1, 0.2, 0.3, 0.2, 0.2))})
    add("rw3", tables={"user": T("rowwise", tiers=("int8", "int4", "int2"), fractions=(0.3, 0.3, 0.4))})
    add("rw3p_long", tables={"cat_long_name": T("rowwise", tiers=("fp16", "int4", "pruned"), fractions=(0.3, 0.5, 0.2))})
    add("lr1", tables={"user": T("lowrank", rank=2)})
    add("lr2", tables={"user": T("lowrank", rank=2), "weekday": T("lowrank", rank=3)})
    add("drop1", tables={"ctx": T("pruned")})
    add("drop2", tables={"ctx": T("pruned"), "cat_long_name": T("pruned")})
    add("lrd1", dense={"dnn_1": DensePlan(rank=4)})
    add("lrd2", dense={"dnn_0": DensePlan(rank=3), "dnn_1": DensePlan(rank=8)})
    add("lrd_fold", tables={"user": T("lowrank", rank=2)}, dense={"dnn_0": DensePlan(rank=3)})
    add("units", dense={"dnn_0": DensePlan(units=20), "dnn_1": DensePlan(units=50)})
    for n, kept in ((1, (("user", "ctx"),)), (3, (("user", "ctx"), ("user", "weekday"), ("ctx", "item_id"))),
                    (6, (("user", "ctx"), ("user", "weekday"), ("ctx", "item_id"), ("item_id", "weekday"),
                         ("weekday", "cat_long_name"), ("user", "cat_long_name")))):
        add(f"pairs{n}", pairs=PairPlan(kept=kept))
    add("drq", drq=True)
    add("units40", dense={"dnn_1": DensePlan(units=40)})
    add("units40_drq", dense={"dnn_1": DensePlan(units=40)}, drq=True)
    add("dropitem", tables={"item_id": T("pruned")})
    add("dropitem_drq", tables={"item_id": T("pruned")}, drq=True)
    add("mix", tables={"user": T("quant", bits=4), "item_id": T("rowwise", tiers=("int8", "int2", "pruned"),
                                                                      fractions=(0.2, 0.6, 0.2)),
                       "ctx": T("pruned"), "weekday": T("lowrank", rank=2)},
        dense={"dnn_0": DensePlan(units=24), "dnn_1": DensePlan(rank=6)}, pairs=PairPlan(sparsity=0.5))
    add("mix_drq", tables={"user": T("quant", bits=2, granularity="table"), "weekday": T("quant", bits=8)},
        dense={"dnn_1": DensePlan(units=48)}, drq=True)
    return P


def _shallow_probes(model: str) -> list[Probe]:
    return [
        Probe(model, "base", Plan()),
        Probe(model, "lr1", Plan(tables={"user": T("lowrank", rank=2)})),
        Probe(model, "lr2", Plan(tables={"user": T("lowrank", rank=2), "weekday": T("lowrank", rank=4)})),
        Probe(model, "q4row", Plan(tables={"ctx": T("quant", bits=4)})),
        Probe(model, "drop1", Plan(tables={"ctx": T("pruned")})),
        Probe(model, "pairs3", Plan(pairs=PairPlan(kept=(("user", "ctx"), ("user", "weekday"), ("ctx", "item_id"))))),
        Probe(model, "pairs1", Plan(pairs=PairPlan(kept=(("item_id", "cat_long_name"),)))),
    ]


def _dim_probes(model: str) -> list[Probe]:
    """Tables whose unpacked codes need (dim 5) or never need (dim 8) trimming."""
    return [
        Probe(model, "base", Plan()),
        Probe(model, "q8row", Plan(tables={"ctx": T("quant", bits=8)})),
        Probe(model, "q4row", Plan(tables={"ctx": T("quant", bits=4)})),
        Probe(model, "q4table", Plan(tables={"user": T("quant", bits=4, granularity="table")})),
        Probe(model, "q2row", Plan(tables={"ctx": T("quant", bits=2)})),
        Probe(model, "q2q4", Plan(tables={"ctx": T("quant", bits=2), "user": T("quant", bits=4)})),
        Probe(model, "rw3", Plan(tables={"weekday": T("rowwise", tiers=("int8", "int4", "int2"), fractions=(0.1, 0.4, 0.5))})),
        Probe(model, "rw1_int4", Plan(tables={"weekday": T("rowwise", tiers=("int4",), fractions=(1.0,))})),
    ]


def _remap32_probes() -> list[Probe]:
    return [
        Probe("fm_big", "base", Plan()),
        Probe("fm_big", "remap16", Plan(tables={"big": T("rowwise", tiers=("int8", "pruned"), fractions=(0.5, 0.5))})),
        Probe("fm_big", "remap32", Plan(tables={"big": T("rowwise", tiers=("int8", "pruned"), fractions=(0.9, 0.1))})),
    ]


def all_probes() -> list[Probe]:
    return (_deep_probes("deepfm") + _deep_probes("deepfwfm")[:1] + [
        p for p in _deep_probes("deepfwfm") if p.name in ("pairs1", "pairs3", "pairs6", "drop1", "q4row_long", "lr1", "drq", "q2table_x3")
    ] + _shallow_probes("fm") + _shallow_probes("fwfm") + _dim_probes("fm_d5") + _dim_probes("fm_d8")
            + _remap32_probes())


# ------------------------------------------------------------------------ measuring


def _dataset(fields, rows: int = 3000, seed: int = 0):
    from keras_ctr_compress.data.schema import CTRDataset, Field, Split

    rng = np.random.default_rng(seed)
    fs = [Field(n, v) for n, v in fields]

    def split(n):
        x = np.stack([rng.integers(0, f.vocab_size, n) for f in fs], axis=1).astype("int32")
        return Split(x, (rng.random(n) < 0.3).astype("float32"))

    return CTRDataset("calibration", fs, split(rows), split(rows // 4), split(rows // 4))


def _models():
    from keras_ctr_compress.models import build_model

    ds = _dataset(FIELDS)
    big = _dataset([("big", 40_000), ("small", 10)], rows=2000)
    models = {name: (build_model(name, ds.fields, embedding_dim=DIM, mlp=MLP, seed=0), ds)
              for name in ("deepfm", "deepfwfm", "fm", "fwfm")}
    fm_big = build_model("fm", big.fields, embedding_dim=4, seed=0)
    models["fm_big"] = (fm_big, big)
    for dim in (5, 8):
        models[f"fm_d{dim}"] = (build_model("fm", ds.fields, embedding_dim=dim, seed=0), ds)
    rng = np.random.default_rng(0)
    for model, _ in models.values():
        # Like a trained model, no weight is zero: the converter drops all-zero biases
        # and shares equal buffers, which would change the structure being measured.
        for w in model.weights:
            w.assign(rng.normal(0.0, 0.1, tuple(w.shape)).astype("float32"))
    return models


def _measure(res, path: Path) -> dict:
    from keras_ctr_compress.search.cost import file_facts, plan_weights

    facts = file_facts(path)
    facts["structure"] = facts["bytes"] - sum(plan_weights(res).parts.values())
    return facts


def _scope_pattern(field: str | None, layer: str | None):
    import re

    if field:
        return re.compile(r"/(?:emb|lin)_" + re.escape(field) + r"_\d+/")
    return re.compile(r"/" + re.escape(layer) + r"_\d+/") if layer else None


def _scoped_kinds(ops, field: str | None, layer: str | None) -> set[str]:
    pat = _scope_pattern(field, layer)
    return set() if pat is None else {kind for kind, outs in ops if any(pat.search(o) for o in outs)}


def run(workdir: str | Path | None = None, verbose: bool = True) -> dict:
    """Exports every probe and fits the table; returns it (with per-probe residuals)."""
    from keras_ctr_compress.export import export_litert
    from keras_ctr_compress.search.anatomy import anatomy, resolve
    from keras_ctr_compress.search.apply import apply_plan
    from keras_ctr_compress.search.cost import structure_components

    t0 = time.perf_counter()
    models = _models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        bases: dict[str, dict] = {}
        for probe in all_probes():
            model, ds = models[probe.model]
            res = resolve(anatomy(model), probe.plan)
            small, _ = apply_plan(model, probe.plan, ds, finetune=False)
            path = export_litert(small, folder / f"{probe.model}_{probe.name}.tflite",
                                 quantization="drq" if probe.plan.drq else None)
            m = _measure(res, path)
            if probe.name == "base":
                bases[probe.model] = m
            rows.append((probe, res, m, structure_components(res)))
            if verbose:
                print(f"  {probe.model:>8} {probe.name:<14} {m['bytes']:>8,} bytes  ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    return fit(rows, bases)


def fit(rows, bases) -> dict:
    """Least squares of the per-component constants (see the module docstring).

    ``rows``: ``(probe, resolved plan, file facts, components)`` per probe; ``bases``:
    the file facts of each reference model's fp32 export.
    """
    from keras_ctr_compress.search.cost import (
        constant_coincidences,
        constant_name_bytes,
        new_constants,
    )

    keys = sorted({c.key for _, _, _, comps in rows for c in comps})
    kinds = _component_kinds(rows, bases, keys)
    consts = _component_constants(rows, bases, keys)
    suffix, shared = _constant_names(rows, bases, consts)
    table = {"components": {k: {"consts": sorted(consts[k])} for k in keys},
             "const_suffix": suffix, "const_shared_name": shared}
    a = np.zeros((len(rows), len(keys) + 2))
    y = np.zeros(len(rows))
    tokens = np.zeros((len(rows), 3))
    for r, (probe, res, m, comps) in enumerate(rows):
        base, an = bases[probe.model], res.anatomy
        for c in comps:
            a[r, keys.index(c.key)] += c.count
        new_kinds = set().union(set(), *[kinds[c.key] for c in comps]) - base["kinds"]
        new = new_constants(comps, base["constants"], table)
        coincide = constant_coincidences(res)
        a[r, -2], a[r, -1] = len(new_kinds), len(new) + coincide
        # Names of the new shared constants are priced by their own rule: leave them
        # out of the scope counts.
        skip = {name for key in new for name in m["constants"].get(key, ())}
        d_model, d_field, d_layer = _scope_deltas(m["names"], base["names"], skip, an)
        names = (d_model * len(an.model_name) + sum(n * len(f) for f, n in d_field.items())
                 + sum(n * len(k) for k, n in d_layer.items())
                 + sum(constant_name_bytes(users, an.model_name, table) for users in new.values())
                 + coincide * (len(an.model_name) + suffix))
        y[r] = m["structure"] - base["structure"] - names
        tokens[r] = [d_model, sum(d_field.values()), sum(d_layer.values())]
    # An operator-code entry is a small fixed table (builtin code, version and the
    # vector slot): priced, not fitted (the fit cannot tell it from the components
    # that bring the new kinds, and drifts to nonsense values).
    y -= OPCODE_BYTES * a[:, -2]
    a[:, -2] = 0.0
    x, *_ = np.linalg.lstsq(a, y, rcond=None)
    tok, *_ = np.linalg.lstsq(a[:, :-2], tokens, rcond=None)
    residual = a @ x - y
    table.update({
        "versions": _versions(),
        "opcode_bytes": OPCODE_BYTES,
        "const_bytes": round(float(x[-1]), 2),
    })
    for i, k in enumerate(keys):
        table["components"][k].update({
            "bytes": round(float(x[i]), 2), "model": round(float(tok[i, 0]), 3),
            "field": round(float(tok[i, 1]), 3), "layer": round(float(tok[i, 2]), 3), "ops": sorted(kinds[k]),
        })
    table["fit"] = {f"{p.model}/{p.name}": round(float(e), 1) for (p, _, _, _), e in zip(rows, residual, strict=True)}
    return table


def _scope_deltas(names, base_names, skip: set[str], an) -> tuple[int, dict, dict]:
    """Change in the occurrences of the model, field and layer scopes in tensor names."""
    from keras_ctr_compress.search.cost import scope_counts

    layers = [d.name for d in an.dense]
    s = scope_counts([n for n in names if n not in skip], an.model_name, an.field_names, layers)
    b = scope_counts([n for n in base_names if n not in skip], an.model_name, an.field_names, layers)
    d_field = {f: s["field"][f] - b["field"][f] for f in s["field"]}
    d_layer = {k: s["layer"].get(k, 0) - b["layer"].get(k, 0) for k in set(s["layer"]) | set(b["layer"])}
    return s["model"] - b["model"], d_field, d_layer


def _component_kinds(rows, bases, keys) -> dict[str, set[str]]:
    """Operator kinds each component always brings: the kinds of the ops in its scope
    (field or layer) in EVERY probe holding it (components sharing a field, such as a
    rowwise table's parts, would otherwise lend each other their kinds); for unscoped
    components, the new kinds no scoped component explains."""
    kinds: dict[str, set[str] | None] = {k: None for k in keys}
    for probe, _, m, comps in rows:
        scoped_all: set[str] = set()
        found: dict[str, set[str]] = {}
        for c in comps:
            if c.key != "drop":  # removes ops; adds no operator kind
                found[c.key] = found.get(c.key, set()) | _scoped_kinds(m["ops"], c.field, c.layer)
                scoped_all |= found[c.key]
        for c in comps:
            if c.field is None and c.layer is None and c.key != "drop":
                found[c.key] = found.get(c.key, set()) | (m["kinds"] - bases[probe.model]["kinds"] - scoped_all)
        for key, ks in found.items():
            kinds[key] = ks if kinds[key] is None else kinds[key] & ks
    return {k: v or set() for k, v in kinds.items()}


def _component_constants(rows, bases, keys) -> dict[str, set[str]]:
    """Small constants each component needs: new (vs its model's fp32 file) in EVERY
    probe holding the component (values that depend on the data or the tier sizes
    differ between probes and drop out)."""
    out: dict[str, set[str] | None] = {k: None for k in keys}
    for probe, _, m, comps in rows:
        own = {k for c in comps for k in c.consts}  # instance constants (tier bounds) are not the kind's
        new = set(m["constants"]) - set(bases[probe.model]["constants"]) - own
        for c in comps:
            out[c.key] = new if out[c.key] is None else out[c.key] & new
    return {k: (v or set()) if k != "drop" else set() for k, v in out.items()}


def _constant_names(rows, bases, consts) -> tuple[float, float]:
    """Mean name length of a new constant used by one scope (beyond the model and
    scope names) and of one shared by several (``arith.constantN``)."""
    single, shared = [], []
    for probe, res, m, comps in rows:
        users: dict[str, set[str]] = {}
        for c in comps:
            for key in (consts[c.key] | set(c.consts)) - set(bases[probe.model]["constants"]):
                users.setdefault(key, set()).add(c.field or c.layer or "")
        for key, who in users.items():
            for name in m["constants"].get(key, ())[:1]:
                if len(who) == 1:
                    single.append(len(name) - len(res.anatomy.model_name) - len(next(iter(who))))
                else:
                    shared.append(len(name))
    return round(float(np.mean(single)), 2) if single else 17.0, round(float(np.mean(shared)), 2) if shared else 16.0


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write(table: dict, path: Path | None = None) -> Path:
    """Writes ``table`` as the ``_litert_costs`` module."""
    from keras_ctr_compress.utils import atomic_write_text

    path = path or Path(__file__).with_name("_litert_costs.py")
    body = pprint.pformat({k: v for k, v in table.items() if k != "fit"}, width=100, sort_dicts=True)
    atomic_write_text(path, (
        '"""Structure constants of the cost model, fitted by ``python -m '
        'keras_ctr_compress.search.calibrate --write``.\n\nGenerated file: do not edit by hand."""\n\n'
        f"TABLE = {body}\n"
    ))
    return path


def main(argv=None) -> None:
    from keras_ctr_compress.utils import quiet_tensorflow

    quiet_tensorflow()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store the fitted table in _litert_costs.py")
    parser.add_argument("--workdir", help="keep the probe exports here")
    args = parser.parse_args(argv)
    table = run(args.workdir)
    for probe, residual in table["fit"].items():
        print(f"  residual {residual:+7.1f} bytes  {probe}")
    worst = max(table["fit"].items(), key=lambda kv: abs(kv[1]))
    print(f"opcode entry: {table['opcode_bytes']} bytes; worst residual {worst[1]:+.1f} bytes at {worst[0]}")
    for key, spec in table["components"].items():
        print(f"  {key:<16} {spec['bytes']:>9.1f}  names model {spec['model']:+.1f} field {spec['field']:+.1f} "
              f"layer {spec['layer']:+.1f}  ops {','.join(spec['ops'])}")
    if args.write:
        print(f"wrote {write(table)}")


if __name__ == "__main__":
    main()
