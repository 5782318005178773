#!/usr/bin/env bash
# Run once on a machine with a GPU (e.g. the lent device): CUDA training steps for vanilla,
# Galërkin and conv fields, timed against the CPU, with equal NFE; dopri5 on both devices; trainer.cuda_graph
# against eager training. Paste the tables into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python scripts/gpu_check.py "$@"
