#!/usr/bin/env bash
# The GPU device check (~10 minutes on one GPU): from a checkout with its dependencies and ../shared/paper-data.
#   benchmarks/gpu_check.sh            the full check
#   benchmarks/gpu_check.sh --quick    tiny sizes (runs on a CPU too)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m ftgen bench gpu --out "${OUT:-runs/bench-gpu}" "$@"
