#!/usr/bin/env bash
# Creates .venv with every pinned dependency. Idempotent: a second run only checks.
# Usage: scripts/setup.sh [--with-redis]   (--with-redis also installs Debian's redis-server, for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--with-redis" ]] && ! command -v redis-server >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

stamp=.venv/.dalston-installed
if [[ ! -f $stamp || requirements.lock -nt $stamp || pyproject.toml -nt $stamp ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
    # silero-vad's metadata pulls torch; we only need its ONNX file, run on onnxruntime.
    .venv/bin/pip install -q --disable-pip-version-check --no-deps silero-vad==6.2.3
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    touch $stamp
fi
