#!/usr/bin/env bash
# Builds the contents of the model function's image in this checkout: every npm dependency, the
# AssemblyScript kernels, the emscripten module (native-wasm) and the N-API addon WITH the CUDA
# kernels (nvcc and cudart are enough: no GPU, no nvidia-smi), then drops the dev dependencies and
# checks the addon (infra/docker/check-addon.ts). Fails, naming the step, if any of it is missing.
#
# Run by infra/docker/model.Dockerfile's build stage and, in a fresh clone, by
# test/model-image.test.ts. Needs node 20+, npm, g++, nvcc (CUDA 12.8+/13), emcc (+ node-acorn for
# Debian/Ubuntu's emcc). The two build variables are the only ones native/build.mjs reads for the
# addon: UL_BUILD_ADDON=1 (build it though no GPU is visible) and UL_REQUIRE_ADDON=1 (fail unless
# it has the CUDA kernels).
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { echo "build-model-image: $*" >&2; }
for tool in node npm g++ nvcc emcc; do
  command -v "$tool" >/dev/null 2>&1 || { step "$tool is required and not on PATH"; exit 1; }
done

step "npm ci (dev dependencies too: the build needs asc)"
npm ci --no-audit --no-fund --ignore-scripts
step "build: AssemblyScript kernels, emscripten module, CUDA objects, CUDA addon"
UL_BUILD_ADDON=1 UL_REQUIRE_ADDON=1 REQUIRE_ALL=1 node infra/build.mjs
step "npm prune --omit=dev"
npm prune --omit=dev --no-audit --no-fund
# The test module (scalar references, bench loops) and the text listings are for the test suite.
rm -f wasm/build/ultralong-test.wasm wasm/build/ultralong-test-relaxed.wasm wasm/build/*.wat
for built in wasm/build/ultralong.wasm wasm/build/ultralong-relaxed.wasm native/build/wasm/ul_engine.wasm native/build/ul_addon.node; do
  [[ -s $built ]] || { step "$built is missing after the build"; exit 1; }
done
step "check: the addon loads and reaches the CUDA runtime"
node --import tsx infra/docker/check-addon.ts
