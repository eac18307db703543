#!/usr/bin/env bash
# The train-step figures on a GPU in under 5 minutes: masked vs dense (float32, bfloat16),
# K = 1..32 vmapped vs sequential ResNet-20s, achieved fraction of peak FLOP/s, and PyTorch as
# ShrinkBench when a CUDA PyTorch is installed; then, in under 4 more minutes, the measured
# latency of slimmed (channel-pruned) ResNet-20/56 and MobileNetV2 (224x224) against their
# theoretical speedup (benchmarks/slim_latency.py); then, in under 4 more minutes, a ResNet-50
# (224x224) train step in bfloat16 vs float32 compute on every GPU's data mesh
# (benchmarks/parallel.py); then SparseGPT's time per layer on GPT-2's shapes
# (benchmarks/sparsegpt.py, under 2 minutes). Needs a Python with sbjax and jax[cuda]:
#   PYTHON=/path/to/python benchmarks/gpu.sh [extra flags of benchmarks/gpu.py]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
backend=$("$python" -c 'import jax; print(jax.default_backend())')
if [ "$backend" = cpu ]; then
  echo "jax sees no accelerator (backend: cpu); install jax[cuda12] or set PYTHON" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv 2>/dev/null || true
# Let XLA take what it needs; do not preallocate 75% of the memory for 32 models at once.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}" timeout 290 "$python" benchmarks/gpu.py "$@"
timeout 230 "$python" benchmarks/slim_latency.py --as-is --mobilenet-side 224 --batch 128 --repeats 30
timeout 230 "$python" benchmarks/parallel.py --model resnet50 --batch 128 --steps 10 --rounds 3
# SparseGPT's time per layer on GPT-2's shapes (768x768, 768x3072, 3072x768), unstructured and 2:4
timeout 120 "$python" benchmarks/sparsegpt.py --repeats 5
