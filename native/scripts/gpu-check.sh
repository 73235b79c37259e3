#!/usr/bin/env bash
# The GPU check of the native core: builds ul_check against the CUDA kernels, then runs
# native/scripts/gpu_check.py, which runs each stage under its own time limit and prints one JSON
# line per stage as it ends (also appended to OUT/gpu-check.jsonl), then a summary line. Stages:
# build, kernels, prefill, chunked, decode, kv-roundtrip, fp8, kv-export, paged, attention-fa2,
# bench-attention, bench-gemm, bench-prefill, bench-paged-decode, tiered (docs/native.md says what
# each proves). The stage limits add up to 740 s on one H200.
#
#   native/scripts/gpu-check.sh [--out DIR] [--stage NAME]...  GPU machine: nvcc, python3 with torch
#   native/scripts/gpu-check.sh --dry-run [--out DIR]           anywhere with g++ and python3 + torch:
#                                                               every stage on the C++ reference kernels
#   native/scripts/gpu-check.sh --build-only [--dry-run]         the build alone (no python, no GPU)
#
# Environment: PYTHON (default: the first python3 with torch; /usr/bin/python3 on Debian), CUDA_ARCH
# (sm_90), UL_CHECK_BUILD (build folder, default native/build/gpu-check[-dry]), UL_CUBLASLT_PATH (a
# cuBLASLt file to try first), UL_GPU_CHECK_BUDGETS ("stage=seconds,..." overrides stage limits).
set -euo pipefail

usage() { echo "usage: $0 [--dry-run] [--out DIR] [--stage NAME]... | --build-only [--dry-run]" >&2; exit 2; }
DRY=0
BUILD_ONLY=0
PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --build-only) BUILD_ONLY=1 ;;  # CUDA build and link of ul_check, no run (works without a GPU)
    --out) [[ $# -ge 2 ]] || usage; PASS+=("$1" "$(realpath -m "$2")"); shift ;;  # before the cd below
    --stage) [[ $# -ge 2 ]] || usage; PASS+=("$1" "$2"); shift ;;
    *) usage ;;
  esac
  shift
done
cd "$(dirname "$0")/../.."

HOST_SRC=(native/src/engine.cpp native/src/safetensors.cpp native/src/ref/ref_backend.cpp native/src/library_search.cpp
          native/programs/ul_check.cpp)
FLAGS=(-std=c++17 -O2 -Inative/include -Inative/src)
if [[ $DRY == 1 ]]; then BUILD=${UL_CHECK_BUILD:-native/build/gpu-check-dry}; else BUILD=${UL_CHECK_BUILD:-native/build/gpu-check}; fi

# An output is stale when any native source or header is newer (headers are shared by every file).
stale() { [[ ! -e "$1" ]] || [[ -n "$(find native/src native/include native/programs -newer "$1" -print -quit)" ]]; }

build() {
  mkdir -p "$BUILD"
  if [[ $DRY == 1 ]]; then
    if stale "$BUILD/ul_check"; then
      echo "gpu-check: building ul_check with the reference kernels only (dry run)" >&2
      ${CXX:-g++} "${FLAGS[@]}" "${HOST_SRC[@]}" native/src/cuda_stub.cpp -ldl -o "$BUILD/ul_check"
    fi
    return
  fi
  local arch=${CUDA_ARCH:-sm_90} pids=() p
  echo "gpu-check: compiling the CUDA kernels for $arch" >&2
  for cu in native/src/cuda/*.cu; do
    local obj="$BUILD/$(basename "${cu%.cu}").o"
    if stale "$obj"; then nvcc -std=c++17 -O3 -arch="$arch" -Inative/include -Inative/src -c "$cu" -o "$obj" & pids+=($!); fi
  done
  for f in "${HOST_SRC[@]}"; do
    local obj="$BUILD/host_$(basename "${f%.cpp}").o"
    if stale "$obj"; then ${CXX:-g++} "${FLAGS[@]}" -c "$f" -o "$obj" & pids+=($!); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done
  nvcc -o "$BUILD/ul_check" "$BUILD"/*.o -ldl
}

if [[ $BUILD_ONLY == 1 ]]; then
  build
  echo "gpu-check: built $BUILD/ul_check" >&2
  exit 0
fi

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch" >/dev/null 2>&1; then echo "$p"; return; fi
  done
  echo "gpu-check: no python3 with torch found (set PYTHON)" >&2
  exit 1
}
PY=$(pick_python)
# The site-packages of that python: where PyTorch's pip wheels keep libcublasLt (nvidia/*/lib), for
# the engine's cuBLASLt search (library_search.h), which runs without Python.
UL_PYTHON_SITE=$("$PY" -c 'import site; print(":".join(site.getsitepackages() + [site.getusersitepackages()]))')${UL_PYTHON_SITE:+:$UL_PYTHON_SITE}
export UL_PYTHON_SITE PYTHONUNBUFFERED=1
DRY_FLAG=()
[[ $DRY == 1 ]] && DRY_FLAG=(--dry-run)
exec "$PY" native/scripts/gpu_check.py --bin "$BUILD/ul_check" --work "$BUILD" "${DRY_FLAG[@]}" "${PASS[@]}"
