#!/usr/bin/env bash
# The engine's CUDA paths on a GPU machine in one command, the figures printed and written to
# files. Not yet run on a GPU; estimated at 5-7 minutes on one H100 (the budget is 8).
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]   # from anywhere; OUT_DIR defaults to $OUT, else
#                                              # ./gpu_check_out
#     bash benchmarks/gpu_check.sh --cpu [OUT_DIR]   # a dry run of every stage on the CPU, tiny
#
# Needs no network and no MLflow server: a Python (PYTHON, default python3) with CUDA torch,
# torchvision, click, numpy, pillow and pyyaml installed (`pip install -e .` gives them), and
# for the compiled stage a C compiler (gcc) for Triton/Inductor. nvidia-smi is used if present.
#
# Stages, the uncompiled ones first; a stage that fails prints one line and the next one runs:
#   1 device        torch, the device and its compute capability
#   2 throughput    benchmarks/throughput.py: the project's loop against the source study's
#   3 fit           benchmarks/gpu_fit_check.py: each model twice and once resumed, with the
#                   default (fastest) kernels: are curves and resumed weights the same?
#   4 fit-determ    the same with --deterministic: on CUDA these must say True
#   5 compile       benchmarks/compile_speedup.py: eager against compiled (CUDA graphs)
# Each stage's output goes to OUT_DIR/<stage>.txt, everything to OUT_DIR/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

DEVICE=cuda
# Throughput: 100 training batches per pass rather than a whole epoch (the reference loop's
# PIL workers make a 45,000-image pass take many seconds); the valid split for inference.
THROUGHPUT=(--train-images 12800 --infer-images 5000)
FIT=(--epochs 2)
COMPILE=(--models mlp,mlpmixer,resnet18 --train-images 12800 --infer-images 5000)
if [[ "${1:-}" == "--cpu" ]]; then
    shift
    DEVICE=cpu
    THROUGHPUT=(--quick --models mlp --repeats 1 --train-images 256 --infer-images 256)
    FIT=(--epochs 2 --models mlp --train-size 256)
    COMPILE=(--models mlp --repeats 1 --train-images 256 --infer-images 256)
fi
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
FAILED=()

stage() {  # NAME COMMAND...: run, print and keep its output; a failure is a line, not the end
    local name=$1 status
    shift
    echo "== $name"
    "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
    status=${PIPESTATUS[0]}
    if ((status != 0)); then
        echo "!! stage $name failed (exit status $status); see $OUT_DIR/$name.txt"
        FAILED+=("$name")
    fi
}

device_info() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi
    "$PYTHON" - "$DEVICE" <<'PY'
import sys

import torch

device = torch.device(sys.argv[1])
print("torch", torch.__version__, "CUDA", torch.version.cuda)
if device.type == "cuda":
    print(torch.cuda.get_device_name(device), "capability", torch.cuda.get_device_capability(device))
PY
}

{
    echo "gpu_check on $DEVICE, $(date -u +%FT%TZ), figures in $OUT_DIR"
    stage device device_info
    stage throughput "$PYTHON" benchmarks/throughput.py --device "$DEVICE" "${THROUGHPUT[@]}"
    stage fit "$PYTHON" benchmarks/gpu_fit_check.py --device "$DEVICE" "${FIT[@]}"
    stage fit-deterministic "$PYTHON" benchmarks/gpu_fit_check.py --device "$DEVICE" "${FIT[@]}" \
        --deterministic
    stage compile "$PYTHON" benchmarks/compile_speedup.py --device "$DEVICE" "${COMPILE[@]}"
    echo "gpu_check done in ${SECONDS} s; failed stages: ${FAILED[*]:-none}"
} 2>&1 | tee "$OUT_DIR/gpu_check.log"
