#!/usr/bin/env bash
# Run once on a machine with a GPU (e.g. the lent device): CUDA training steps for vanilla,
# Galërkin and conv fields, timed against the CPU, with equal NFE. Paste the table into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python scripts/gpu_check.py "$@"
