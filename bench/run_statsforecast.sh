#!/usr/bin/env bash
# Installs statsforecast into a venv (PyPI) and runs the peer side of the forecast benchmark.
# Usage: [ORIGINS=24] bench/run_statsforecast.sh [SUITE.json] [OUT.json]
set -euo pipefail
suite=${1:-../shared/datasets/suite.json}
out=${2:-out/statsforecast.json}
venv=${VENV:-.venv-statsforecast}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q statsforecast
mkdir -p "$(dirname "$out")"
"$venv/bin/python" "$(dirname "$0")/statsforecast_peer.py" "$suite" "$out" --origins "${ORIGINS:-24}"
