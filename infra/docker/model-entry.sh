#!/bin/sh
# Container entry of the model function: fetch the weights once per instance, then serve the model
# role only (the edge runs elsewhere and signs every request).
#
# It serves on the CUDA runtime or not at all: ULTRALONG_RUNTIME defaults to `cuda`, so a GPU
# instance whose addon, driver or device is missing refuses to start with one line naming what is
# missing, instead of serving 8B on a CPU. Set ULTRALONG_RUNTIME=auto to allow a CPU fallback.
set -eu
: "${ULTRALONG_MODEL_URI:?ULTRALONG_MODEL_URI must name the model directory in S3}"
: "${ULTRALONG_STORE:?ULTRALONG_STORE must name the snapshot store}"
MODEL_DIR=${MODEL_DIR:-/models/current}
mkdir -p "$MODEL_DIR"
aws s3 sync --only-show-errors "$ULTRALONG_MODEL_URI" "$MODEL_DIR"
# The deploy sizes the GPU for ULTRALONG_MAX_CONTEXT positions of ULTRALONG_KV_DTYPE KV
# (infra/deploy/gpu.ts); serve reserves exactly that.
exec node /app/functions/cli/bin.js serve --role model --model "$MODEL_DIR" \
  --port "${PORT:-8080}" --store "$ULTRALONG_STORE" --runtime "${ULTRALONG_RUNTIME:-cuda}" \
  --kv-dtype "${ULTRALONG_KV_DTYPE:-bf16}" --max-positions "${ULTRALONG_MAX_CONTEXT:-131072}"
