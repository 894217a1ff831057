#!/usr/bin/env bash
# Sets everything up, starts `dalston serve` on loopback and streams the bundled speech sample through it
# at real-time pace, printing the text live as it appears.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m dalston.demo "$@"
