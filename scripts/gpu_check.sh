#!/usr/bin/env bash
# The GPU check in one command (docs/engine.md): parity with transformers on the device, time to first token
# with one 1024² image, decode tokens/s at batch 1 and 32 beside the bandwidth ceiling, and 64 concurrent
# image requests; the 12B shape with random weights in bfloat16. Results: gpu_check.json (or --json PATH).
#
#   scripts/gpu_check.sh                          # on the first CUDA device
#   scripts/gpu_check.sh --device cuda:1 --json /tmp/h100.json
#   scripts/gpu_check.sh --device cpu --preset tiny --parity-preset tiny --batches 1,4 --tokens 4 \
#       --requests 4 --image-side 256 --request-image-side 64 --kv-cache-memory 1     # what the tests run
#
# Exit status 1 when parity fails. Later flags override the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m pixtral.gpu_check --device cuda --preset 12b "$@"
