#!/usr/bin/env bash
# Forecast accuracy and fit+forecast time, prescale vs statsforecast, in one run on the same
# windows (BENCHMARKS.md section 4). Run it on an otherwise idle machine: the Python side is
# single-threaded and a busy second core skews the ratio.
# Usage: bench/forecast_side_by_side.sh [SUITE.json] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:-../shared/datasets/suite.json}
out=${2:-out/forecast-bench}
[ -f "$suite" ] || { echo "suite $suite not found (the datasets are not part of the repository)"; exit 1; }
mkdir -p "$out"
cargo build --release --quiet
./target/release/prescale bench-forecast --suite "$suite" --origins "${ORIGINS:-24}" --out "$out/prescale.json" > "$out/prescale.log"
bash bench/run_statsforecast.sh "$suite" "$out/statsforecast.json" > "$out/statsforecast.log"
python3 bench/compare_forecast.py "$out/prescale.json" "$out/statsforecast.json" | tee "$out/compare.md"
