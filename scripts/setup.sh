#!/usr/bin/env bash
# Create .venv (if missing) and install nodex with its pinned dependencies.
# Usage: bash scripts/setup.sh [EXTRAS]   (EXTRAS default: dev = tests + offline data + joblib launcher)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[${extras}]"
