// The shared Runtime invariants (test/support/runtime-suite.ts) on "native-wasm": the native host
// engine with the C++ reference kernels, compiled by emscripten (needs emcc).
import { beforeAll, describe } from "vitest";
import { build } from "../native/build.mjs";
import { nativeWasmRuntimeFactory } from "../native/ts/wasm-runtime.ts";
import { runtimeInvariantSuite, SUITE_MODELS } from "./support/runtime-suite.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const root = new URL("..", import.meta.url).pathname;

describe.skipIf(!tool("emcc", haveEmcc(), "the native-wasm invariant suite"))("native-wasm", () => {
  beforeAll(() => build({ root }));
  runtimeInvariantSuite("native-wasm", nativeWasmRuntimeFactory, { kvDtypes: ["f32"] });
  // bf16 KV on one model: the conversion paths are shared, a second model adds time, not coverage.
  runtimeInvariantSuite("native-wasm", nativeWasmRuntimeFactory, {
    models: [SUITE_MODELS[0]],
    kvDtypes: ["bf16"],
  });
  // fp8 KV (64-position block scales) on the same model: the block-scale paths of kv_store,
  // attention and KV export/import (aligned copies at 0, requantised pieces at 37).
  runtimeInvariantSuite("native-wasm", nativeWasmRuntimeFactory, {
    models: [SUITE_MODELS[0]],
    kvDtypes: ["fp8-e4m3"],
  });
});
