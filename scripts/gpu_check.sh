#!/usr/bin/env bash
# Run once on a machine with a GPU (e.g. the lent device): CUDA training steps for vanilla,
# Galërkin and conv fields, timed against the CPU, with equal NFE; dopri5 on both devices;
# trainer.cuda_graph against eager training. Paste the tables into BENCHMARKS.md.
#
# Python: .venv when there is one; else the machine's python3 if it has torch and Hydra; else its
# python3 plus Hydra from .whl/ (a GPU image without a package registry: first run
# `bash scripts/gpu_wheels.sh` where pip works and carry .whl/ along); else scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
  py=.venv/bin/python
elif python3 -c "import torch, hydra, omegaconf" 2>/dev/null; then
  py=python3
elif [ -d .whl ] && python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --disable-pip-version-check --target /tmp/nodex-site .whl/*.whl
  export PYTHONPATH="/tmp/nodex-site${PYTHONPATH:+:$PYTHONPATH}"
  py=python3
else
  bash scripts/setup.sh
  py=.venv/bin/python
fi
echo "python: $py ($("$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
export PYTHONUNBUFFERED=1
"$py" scripts/bench/gpu_check.py "$@"
