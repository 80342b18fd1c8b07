#!/usr/bin/env python3
"""Side-by-side of `prescale bench-forecast` and `bench/statsforecast_peer.py` outputs:
suite medians of MASE at the lead horizon and of fit+forecast time per series.
Usage: compare_forecast.py PRESCALE.json STATSFORECAST.json"""
import json
import statistics
import sys

rows = json.load(open(sys.argv[1]))["rows"] + json.load(open(sys.argv[2]))["rows"]
models = {}
for r in rows:
    models.setdefault(r["model"], []).append(r)


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else float("nan")


print("| model | traces | median MASE at lead horizon | median fit+forecast per series (s) | median per origin (ms) |")
print("|---|---|---|---|---|")
for name, rs in models.items():
    print(f"| {name} | {len(rs)} | {med([r['mase'] for r in rs]):.3f} | "
          f"{med([r['fit_predict_seconds_per_series'] for r in rs]):.3f} | "
          f"{med([r['fit_predict_ms_mean'] for r in rs]):.1f} |")
