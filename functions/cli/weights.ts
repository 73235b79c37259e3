// `--weights` on `ultralong generate` and `ultralong serve`: the element type the runtime holds
// weights in. The wasm runtime holds f32, bf16 or int8 (per-32 scales); the native runtimes hold
// one format each and refuse another, naming it. What it costs, measured against the float64
// reference (docs/wasm-runtime.md "Numerics"): bf16 from an F32 checkpoint, logits within 1e-2
// relative (3.4e-3 measured); int8, within 2e-2 (7e-3 measured); half and a quarter of f32's bytes.
import type { RuntimeOptions } from "../../core/engine/registry.ts";
import { InvalidInputError } from "../../core/errors.ts";

type WeightFormat = NonNullable<RuntimeOptions["weightFormat"]>;

export const WEIGHTS_HELP =
  "f32|bf16|int8 (bf16 from an F32 checkpoint: ~3e-3 relative logit error, int8: ~7e-3)";

/** undefined (the runtime's default: the checkpoint's dtype) when the flag is absent. */
export function weightsOption(value: string | undefined): WeightFormat | undefined {
  if (value === undefined) return undefined;
  if (value === "f32" || value === "bf16" || value === "int8") return value;
  throw new InvalidInputError(`--weights must be f32, bf16 or int8, got '${value}'`);
}
