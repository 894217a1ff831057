#!/usr/bin/env bash
# Sets everything up (venv, pinned packages, redis-server) and runs ruff and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --for-tests
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
