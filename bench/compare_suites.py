"""Per-trace comparison of two `prescale replay --suite` runs: the mean change of the
predictive policy's unserved fraction (percentage points) and cost vs oracle, its wins, and
its median cost.

    python3 bench/compare_suites.py BASE_DIR OTHER_DIR [OTHER_DIR ...]
"""
import json
import statistics as st
import sys


def load(d):
    with open(f"{d}/suite.json") as f:
        return json.load(f)["traces"]


def main():
    base = load(sys.argv[1])
    for d in sys.argv[2:]:
        other = load(d)
        du = [b["predictive"]["unserved_fraction"] - a["predictive"]["unserved_fraction"]
              for a, b in zip(base, other)]
        dc = [b["predictive"]["cost_vs_oracle"] - a["predictive"]["cost_vs_oracle"]
              for a, b in zip(base, other)]
        wins = sum(1 for t in other
                   if t["predictive"]["unserved_fraction"] <= t["hpa"]["unserved_fraction"]
                   and t["predictive"]["replica_hours"] < t["hpa"]["replica_hours"])
        cost = st.median(t["predictive"]["cost_vs_oracle"] for t in other)
        print(f"{d}: wins {wins}/{len(other)}, mean unserved change {100 * st.mean(du):+.3f} "
              f"points, mean cost change {st.mean(dc):+.4f}, median cost {cost:.3f}")


if __name__ == "__main__":
    main()
