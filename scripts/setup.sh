#!/usr/bin/env bash
# Creates .venv with every pinned dependency. Idempotent: a second run only checks.
# Usage: scripts/setup.sh [--for-tests]   (--for-tests also installs Debian's redis-server, chromium,
#                                          chromium-driver, flite and espeak-ng, which the end-to-end and browser tests use, and
#                                          the pinned `torch` extra from requirements-torch.lock)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--for-tests" ]]; then
    missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
    command -v flite >/dev/null || missing+=(flite)   # synthetic speech: vocabulary, channel, endpointing tests
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)  # Spanish speech: language per utterance test
    command -v openssl >/dev/null || missing+=(openssl)  # the TLS tests make their certificate with it
    if (( ${#missing[@]} )); then
        if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
        echo "setup: installing ${missing[*]} with apt-get" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

stamp=.venv/.dalston-installed
if [[ ! -f $stamp || requirements.lock -nt $stamp || pyproject.toml -nt $stamp ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    touch $stamp
fi

# The tests also cover the `torch` extra (vad.backend = "torch"): about 20 s and 750 MB more, so only for tests.
torch_stamp=.venv/.dalston-torch-installed
if [[ "${1:-}" == "--for-tests" ]] && [[ ! -f $torch_stamp || requirements-torch.lock -nt $torch_stamp ]]; then
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-torch.lock
    touch $torch_stamp
fi
