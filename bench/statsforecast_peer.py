#!/usr/bin/env python3
"""statsforecast side of the forecast comparison (BENCHMARKS.md section 4).

Protocol (mirrored exactly by `prescale bench-forecast`): for every trace of a suite file,
the rows are the series; lead H = ceil((cadence + startup) / cadence); training window
W = 7 days of rows; K origins evenly spaced in [max(score_from_row, W), rows - H]; at each
origin every model is fitted on the W rows before it and forecasts H steps; the error at
step H is scored. MASE = mean |error| / mean |y[t] - y[t-1]| over rows >= score_from_row.
Season length m = one day of rows (when it divides evenly and fits twice in W).

Usage: python3 statsforecast_peer.py SUITE.json OUT.json [--origins K]
Installs nothing itself; run it in a venv with `pip install statsforecast` (see
bench/run_statsforecast.sh).
"""
import argparse
import csv
import json
import math
import os
import time

import numpy as np
from statsforecast.models import MSTL, AutoETS, SeasonalNaive


def protocol(n, cadence, startup, score_from, k):
    h = math.ceil((cadence + startup) / cadence)
    w = int(7 * 86400 // cadence)
    lo, hi = max(score_from, w), n - h
    if hi <= lo or k < 2:
        return h, w, []
    return h, w, [lo + (hi - lo) * i // (k - 1) for i in range(k)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("suite")
    ap.add_argument("out")
    ap.add_argument("--origins", type=int, default=8)
    a = ap.parse_args()
    suite = json.load(open(a.suite))
    base = os.path.dirname(os.path.abspath(a.suite))
    rows = []
    for t in suite["traces"]:
        with open(os.path.join(base, t["trace"])) as f:
            r = list(csv.reader(f))[1:]
        ts = np.array([int(x[0]) for x in r])
        y = np.array([float(x[1]) for x in r])
        cadence = int(np.median(np.diff(ts)))
        h, w, origins = protocol(len(y), cadence, t["startup_s"], t["score_from_row"], a.origins)
        tail = y[t["score_from_row"]:]
        scale = float(np.mean(np.abs(np.diff(tail))))
        m = 86400 // cadence if 86400 % cadence == 0 and 2 * (86400 // cadence) <= w else None
        models = {
            "sf_seasonal_naive": lambda: SeasonalNaive(season_length=m or 1),
            "sf_auto_ets": lambda: AutoETS(season_length=1, model="ZZN"),
        }
        if m:
            models["sf_mstl"] = lambda: MSTL(season_length=[m], trend_forecaster=AutoETS(model="ZZN"))
        for name, make in models.items():
            errs, secs = [], []
            for o in origins:
                train = y[o - w:o]
                t0 = time.perf_counter()
                model = make()
                model.fit(train)
                pred = model.predict(h=h)["mean"]
                secs.append(time.perf_counter() - t0)
                errs.append(abs(y[o + h - 1] - float(pred[h - 1])))
            rows.append({
                "trace": t["trace"], "model": name, "origins": len(origins), "lead_steps": h,
                "mase": (float(np.mean(errs)) / scale) if errs and scale > 0 else None,
                "fit_predict_seconds_per_series": float(np.sum(secs)),
                "fit_predict_ms_mean": 1000 * float(np.mean(secs)) if secs else None,
            })
            print(f"{t['trace']:45s} {name:18s} mase={rows[-1]['mase']} t={rows[-1]['fit_predict_seconds_per_series']:.2f}s", flush=True)
    json.dump({"rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
