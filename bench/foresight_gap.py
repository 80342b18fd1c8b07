"""Per trace of one `prescale replay --suite` run: the foresight bound's cost vs oracle and
unserved fraction, and the cost of predictive and HPA as a ratio to it, with their medians.

    python3 bench/foresight_gap.py SUITE_DIR
"""
import json
import statistics as st
import sys


def main(d):
    with open(f"{d}/suite.json") as f:
        rows = json.load(f)["traces"]
    pred, hpa = [], []
    print("trace | foresight cost | foresight unserved | pred/foresight | hpa/foresight")
    for r in rows:
        f = r["foresight"]["cost_vs_oracle"]
        pred.append(r["predictive"]["cost_vs_oracle"] / f)
        hpa.append(r["hpa"]["cost_vs_oracle"] / f)
        unserved = 100 * r["foresight"]["unserved_fraction"]
        print(f"{r['trace']} | {f:.3f} | {unserved:.2f}% | {pred[-1]:.3f} | {hpa[-1]:.3f}")
    costs = [r["foresight"]["cost_vs_oracle"] for r in rows]
    print(f"median foresight cost {st.median(costs):.3f} (range {min(costs):.3f}-{max(costs):.3f});"
          f" median ratio to foresight: predictive {st.median(pred):.3f}, hpa {st.median(hpa):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
