#!/usr/bin/env bash
# The GPU check of the native core (issue 7): builds ul_check against the CUDA kernels, then runs
# native/scripts/gpu_check.py, which prints one JSON object: every CUDA kernel against the C++
# reference (max error), engine logits against the float64 PyTorch reference on tiny models, and
# benchmarks beside PyTorch on the same GPU (attention vs SDPA flash, GEMM vs torch.matmul, prefill).
#
#   native/scripts/gpu-check.sh             on a GPU machine (nvcc, python3 with torch); < 8 min on H200
#   native/scripts/gpu-check.sh --dry-run   anywhere with g++ and python3 + torch: the same script end
#                                           to end on the C++ reference kernels with tiny shapes
#
# Environment: PYTHON (default: python3 with torch; /usr/bin/python3 on Debian), CUDA_ARCH (sm_90),
# UL_CHECK_BUILD (build directory, default native/build/gpu-check[-dry]).
set -euo pipefail
cd "$(dirname "$0")/../.."

DRY=0
BUILD_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --build-only) BUILD_ONLY=1 ;;  # CUDA build and link of ul_check, no run (works without a GPU)
    *) echo "usage: $0 [--dry-run | --build-only]" >&2; exit 2 ;;
  esac
done

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch" >/dev/null 2>&1; then echo "$p"; return; fi
  done
  echo "gpu-check: no python3 with torch found (set PYTHON)" >&2
  exit 1
}
if [[ $BUILD_ONLY == 0 ]]; then PY=$(pick_python); fi

HOST_SRC=(native/src/engine.cpp native/src/safetensors.cpp native/src/ref/ref_backend.cpp native/programs/ul_check.cpp)
FLAGS=(-std=c++17 -O2 -Inative/include -Inative/src)
if [[ $DRY == 1 ]]; then
  BUILD=${UL_CHECK_BUILD:-native/build/gpu-check-dry}
  mkdir -p "$BUILD"
  if [[ ! -x "$BUILD/ul_check" ]] || [[ -n "$(find native/src native/include native/programs -newer "$BUILD/ul_check" -print -quit)" ]]; then
    echo "gpu-check: building ul_check with the reference kernels only (dry run)" >&2
    ${CXX:-g++} "${FLAGS[@]}" "${HOST_SRC[@]}" native/src/cuda_stub.cpp -o "$BUILD/ul_check"
  fi
  exec "$PY" native/scripts/gpu_check.py --bin "$BUILD/ul_check" --work "$BUILD" --dry-run
fi

BUILD=${UL_CHECK_BUILD:-native/build/gpu-check}
ARCH=${CUDA_ARCH:-sm_90}
mkdir -p "$BUILD"
echo "gpu-check: compiling the CUDA kernels for $ARCH" >&2
pids=()
for cu in native/src/cuda/*.cu; do
  nvcc -std=c++17 -O3 -arch="$ARCH" -Inative/include -Inative/src -c "$cu" -o "$BUILD/$(basename "${cu%.cu}").o" &
  pids+=($!)
done
for f in "${HOST_SRC[@]}"; do
  ${CXX:-g++} "${FLAGS[@]}" -c "$f" -o "$BUILD/host_$(basename "${f%.cpp}").o" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
nvcc -o "$BUILD/ul_check" "$BUILD"/*.o -ldl
if [[ $BUILD_ONLY == 1 ]]; then echo "gpu-check: built $BUILD/ul_check" >&2; exit 0; fi
exec "$PY" native/scripts/gpu_check.py --bin "$BUILD/ul_check" --work "$BUILD"
