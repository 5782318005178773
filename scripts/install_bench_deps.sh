#!/usr/bin/env bash
# Bench-only dependency: torchdyn 1.0.6 for side-by-side timings in scripts/bench/bench.py.
# Installed with --no-deps into .bench-site/ (git-ignored) so it can never change torch or
# drag in torchvision (which fails to import beside the CPU torch here); scripts/bench/common.py adds the
# folder to sys.path when it exists. These are the modules torchdyn's import actually needs.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -q --disable-pip-version-check --no-deps --target .bench-site \
  torchdyn==1.0.6 torchcde==0.2.5 torchsde==0.2.6 trampoline==0.1.2 attrs \
  pytorch-lightning lightning-utilities torchmetrics
.venv/bin/python -c "import sys; sys.path.insert(0, '.bench-site'); from torchdyn.core import NeuralODE; print('torchdyn ready')"
