#!/usr/bin/env python3
"""Writes a synthetic trace sampled every second with a 10-minute cycle (6 hours, 21,600
rows): 100 + 40 sin(2 pi t / 600) + N(0, 5), seed 1. Used in BENCHMARKS.md (section 1,
refits while the history fills). Usage: bench/one_second_cycle.py OUT.csv"""
import math
import random
import sys

random.seed(1)
with open(sys.argv[1], "w") as f:
    f.write("timestamp,value\n")
    for i in range(21600):
        v = 100 + 40 * math.sin(2 * math.pi * i / 600) + random.gauss(0, 5)
        f.write(f"{1700000000 + i},{v:.3f}\n")
