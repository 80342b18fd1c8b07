#!/usr/bin/env python3
"""Forecast accuracy per model at the lead horizon, suite medians, from a suite.json
written by `prescale replay --suite ... --out DIR`. Usage: accuracy_table.py DIR/suite.json"""
import json
import statistics
import sys

suite = json.load(open(sys.argv[1]))
models = {}
for t in suite["traces"]:
    for m in t["forecast"]:
        models.setdefault(m["model"], []).append(m)


def med(rows, key):
    v = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(v) if v else float("nan")


print("| model | traces | median MASE | median scaled pinball (q=0.9) | median coverage | mean share selected |")
print("|---|---|---|---|---|---|")
for name, rows in models.items():
    share = [r["selected_share"] for r in rows if r.get("selected_share") is not None]
    share_s = f"{sum(share) / len(share):.2f}" if share else "-"
    print(f"| {name} | {len(rows)} | {med(rows, 'mase'):.3f} | {med(rows, 'scaled_pinball'):.4f} | {med(rows, 'coverage'):.3f} | {share_s} |")
