"""Validation AUC of the lpt rows by method, table learning rate and seed, from
``kcc bench`` records; prints the markdown grid of the README.

    python grid.py RECORD.json[:RATE] ...

A record's rows carry their rate (``extra.table_learning_rate``); ``:RATE`` names it for
records that predate that field. Only the alpt / lpt-sr / lpt-dr rows at 4 and 2 bits
are read; the chosen rate is the best mean over seeds 0 and 1.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def rows(spec: str):
    path, _, rate = spec.partition(":")
    for row in json.load(open(path))["results"]:
        method = row["method"]
        if not method.startswith(("alpt-", "lpt-")) or method.endswith("-8"):
            continue
        extra = row.get("extra") or {}
        lr = extra.get("table_learning_rate", float(rate) if rate else None)
        yield method, lr, row["seed"], extra["best_val_auc"], row["test_auc"]


def main(specs: list[str]) -> None:
    grid: dict[str, dict[float, dict[int, tuple[float, float]]]] = defaultdict(lambda: defaultdict(dict))
    for spec in specs:
        for method, lr, seed, val, test in rows(spec):
            old = grid[method][lr].get(seed)
            if old is not None and old[0] != val:
                raise SystemExit(f"{spec}: {method} rate {lr} seed {seed} differs from another record's")
            grid[method][lr][seed] = (val, test)
    print("| method | rate | val s0 | val s1 | mean s0-1 | val s2 | test mean (seeds run) |")
    print("|---|---|---|---|---|---|---|")
    for method in sorted(grid, key=lambda m: (-int(m.rsplit("-", 1)[1]), m)):
        by_rate = grid[method]
        means = {lr: sum(s[k][0] for k in (0, 1)) / 2 for lr, s in by_rate.items() if {0, 1} <= set(s)}
        best = max(means, key=means.get) if means else None
        for lr in sorted(by_rate):
            s = by_rate[lr]
            cells = [f"{s[k][0]:.5f}" if k in s else "" for k in (0, 1, 2)]
            mean = f"{means[lr]:.5f}" if lr in means else ""
            mark = " **best**" if lr == best else ""
            test = sum(v[1] for v in s.values()) / len(s)
            print(f"| {method} | {lr}{mark} | {cells[0]} | {cells[1]} | {mean} | {cells[2]} | {test:.4f} ({len(s)}) |")


if __name__ == "__main__":
    main(sys.argv[1:])
