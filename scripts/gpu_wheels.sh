#!/usr/bin/env bash
# Fetch, on a machine with a package registry, the pure-Python wheels that a GPU machine without
# one lacks for scripts/gpu_check.sh: its image has torch, torchdiffeq, numpy, matplotlib,
# scikit-learn, tqdm and PyYAML but not Hydra. They land in .whl/ (git-ignored); carry that folder
# to the GPU machine, where gpu_check.sh installs them into /tmp/nodex-site without a network.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py=.venv/bin/python
pins=$(grep -E '^(hydra-core|omegaconf|antlr4-python3-runtime)==' constraints.txt)
"$py" -m pip download -q --disable-pip-version-check --no-deps -d .whl $pins
for sdist in .whl/*.tar.gz; do   # antlr4-python3-runtime 4.9.3 ships a source archive only: make it a wheel here
  [ -e "$sdist" ] || continue
  "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w .whl "$sdist" && rm "$sdist"
done
ls .whl
