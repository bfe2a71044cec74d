#!/usr/bin/env bash
# The GPU check (issue 22): on one CUDA GPU, QLoRA and bf16 LoRA on SmolLM2-135M-Instruct with
# training/configs/gpu-qlora.yaml through `genrec train` (benchmarks/bench_gpu.py: trained tokens/s, peak GPU
# memory, steps, loss), and whether vLLM is installed for the OpenAI-compatible backend.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [bench_gpu.py options...]
#
# Writes OUT_DIR/gpu.json (default benchmarks/results/), OUT_DIR/nvidia-smi.txt and each variant's metrics.jsonl.
# Environment:
#   WHEELS=DIR   install DIR/*.whl (no index, no dependencies) into a private site-packages first: packages a
#                machine without a registry lacks (duckdb, bitsandbytes, ...)
#   PYTHON       the interpreter (default python3); GENREC_DATA_DIR, GENREC_HOME as for genrec
# Example (genrec installed, the default model and data in place):
#   benchmarks/gpu_check.sh benchmarks/results --max-steps 60
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results}
shift || true
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"

if [ -n "${WHEELS:-}" ]; then
    SITE=$(mktemp -d /tmp/genrec-site-XXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available" > "$OUT_DIR/nvidia-smi.txt"
head -n 12 "$OUT_DIR/nvidia-smi.txt"

WORK=$(mktemp -d /tmp/genrec-gpu-XXXX)
for arg in "$@"; do  # the run folders go where --work says, when it is given
    if [ "${prev:-}" = "--work" ]; then WORK=$arg; fi
    prev=$arg
done
"$PYTHON" benchmarks/bench_gpu.py --out "$OUT_DIR/gpu.json" --work "$WORK" "$@"
for run in "$WORK"/runs/*/; do
    cp "$run/metrics.jsonl" "$OUT_DIR/metrics-$(basename "$run").jsonl"
done
