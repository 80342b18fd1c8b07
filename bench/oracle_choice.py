#!/usr/bin/env python3
"""Upper bound of a policy family on a suite: for each trace, the best of several suite runs
chosen with hindsight (each run one fixed setting of the family).

Usage: python3 bench/oracle_choice.py RUN_DIR [RUN_DIR ...]
Each RUN_DIR is the --out of `prescale replay --suite` (its suite.json is read). Prints, per
trace, how many runs beat the HPA on both unserved fraction and replica-hours (the suite's
"win"), the cheapest such run, and the cheapest run whose unserved fraction is at most the
HPA's; then the number of traces some run wins and the median of those cheapest costs.
"""
import json
import os
import statistics
import sys


def wins(p, h):
    u, hu = p["unserved_fraction"], h["unserved_fraction"]
    return (u < hu or (u == 0 and hu == 0)) and p["replica_hours"] < h["replica_hours"]


def main(dirs):
    runs = {os.path.basename(d.rstrip("/")): json.load(open(os.path.join(d, "suite.json"))) for d in dirs}
    first = next(iter(runs.values()))
    won, matched = 0, []
    for k, t in enumerate(first["traces"]):
        h = t["hpa"]
        cand = [(r["traces"][k]["predictive"], name) for name, r in runs.items()]
        assert all(r["traces"][k]["trace"] == t["trace"] for r in runs.values())
        dom = sorted((p["cost_vs_oracle"], n) for p, n in cand if wins(p, h))
        ok = sorted((p["cost_vs_oracle"], n) for p, n in cand if p["unserved_fraction"] <= h["unserved_fraction"])
        won += bool(dom)
        cost = ok[0][0] if ok else float("inf")
        matched.append(cost)
        best = f"{dom[0][0]:.3f} ({dom[0][1]})" if dom else "-"
        need = f"{cost:.3f}" if ok else "none"
        print(f"{t['trace'][:44]:44} hpa {h['cost_vs_oracle']:.3f} wins {len(dom):2d}  cheapest win {best:22}  as reliable as hpa from {need}")
    print(f"traces won by some run: {won}/{len(matched)}")
    print(f"median over traces of the cheapest cost at most as unserved as the hpa: {statistics.median(matched):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
