#!/usr/bin/env bash
# Issue 17's GPU checks as one command, for a session that is lent a GPU machine (the `device` tool):
#
#   run: bash scripts/gpu_checks.sh          (timeout_s 570; results come back under $OUT)
#
# That machine has its own torch (CUDA), Triton, pandas, rich and pytest-benchmark and no network, so
# dynbench runs from src/ without installing anything. It writes, under $OUT (at most 8 files):
#   device.txt        the GPU, torch and Triton versions
#   realization.txt   `pytest benchmarks/test_gpu_realization.py --benchmark-only -k cuda`: realized and
#                     theoretical speedup of every method at the issue's sizes, fp32/bf16, batch 1 and 32
#                     (acm_triton: ACM's Triton kernels, acm[kernel=triton])
#   gpu_tests.txt     the tests marked gpu: every method fitted on CUDA and its fit loaded on the CPU,
#                     the CUDA target, Transformer^-1's CUDA graphs
#   bench.txt, rows.csv   `bench run` of the issue's "done when" methods on digits at cuda and
#                     cuda[dtype=bf16] (plus acm[kernel=triton] and tinv[compiled=true]), its summary
#                     and every row; from an empty cache, so the backbone and the fits train on the GPU
#                     and the summary's fit times are the GPU's; with them the GPU's modeled twin
#                     (h100, h200 or a100 at fp32 and bf16, by the device's name), priced on the same fits
#   report.md         `bench report`'s index of those runs: its "Roofline model vs measured" section sets
#                     the datasheet model beside the GPU's clock (issue 17 item 6)
# Each step has its own time limit, so a slow one still leaves the others' files. On a machine without
# CUDA, HARDWARE=cpu MODELED=cpu-roofline runs the bench step on the CPU (a smoke test of this script)
# and the benchmark step skips its CUDA rows.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-checks}"
HARDWARE="${HARDWARE:-cuda,cuda[dtype=bf16]}"
METHODS="${METHODS:-dense,early_exit,layer_skip,mod,acm,acm[kernel=triton],tinv,tinv[compiled=true]}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DYNBENCH_CACHE="${DYNBENCH_CACHE:-/tmp/dynbench-cache}"
PY="${PYTHON:-python3}"

"$PY" - <<'EOF' 2>&1 | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton: not importable:", exc)
EOF

# The datasheet target that models this GPU (empty when none does), priced at fp32 and bf16.
MODELED="${MODELED:-$("$PY" -c "
import torch
from dynbench.hardware.modeled import twin_of
twin = twin_of(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
print(f'{twin},{twin}[dtype=bf16]' if twin else '')")}"

timeout 270 "$PY" -m pytest benchmarks/test_gpu_realization.py --benchmark-only -q -p no:randomly -p no:cacheprovider \
    -k cuda 2>&1 | tee "$OUT/realization.txt"

timeout 60 "$PY" -m pytest -q -p no:randomly -p no:cacheprovider -m gpu tests/contract/test_fit_device.py \
    tests/unit/hardware tests/unit/methods/test_transformer_inverse.py 2>&1 | tee "$OUT/gpu_tests.txt"

timeout 200 "$PY" -m dynbench.cli run --methods "$METHODS" --tasks digits --hardware "$HARDWARE${MODELED:+,$MODELED}" \
    --out /tmp/gpu-checks-R 2>&1 | tee "$OUT/bench.txt"
"$PY" -m dynbench.cli export /tmp/gpu-checks-R --out "$OUT/rows.csv" 2>&1 | tail -1
timeout 30 "$PY" -m dynbench.cli report /tmp/gpu-checks-R --out /tmp/gpu-checks-P 2>&1 | tail -1
cp /tmp/gpu-checks-P/index.md "$OUT/report.md" 2>/dev/null || echo "no report written"
