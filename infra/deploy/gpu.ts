// Which GPU instance serves which context. The model function runs one engine per GPU (the task
// asks for one GPU), so an instance type serves a context when ONE of its GPUs holds UltraLong-8B's
// weights, that many positions of KV in the chosen dtype and the reserve (core/model/capacity.ts).
// docs/deploy.md's table is contextTable()'s output; a test keeps the two equal.

import { LimitError } from "../../core/errors.ts";
import {
  CUDA_KV_DTYPES,
  type CudaKvDtypeName,
  longestContext,
  memoryFor,
  planArithmetic,
} from "../../core/model/capacity.ts";
import { ULTRALONG_8B } from "../../core/model/ultralong-8b.ts";

/**
 * GPU instance types the model function runs on. gpuMemoryMiB is the device total that CUDA and
 * nvidia-smi report (what an engine can allocate from), not the marketing figure: an "H200 141 GB"
 * shows 143771 MiB (140.4 GiB), an "H100 80 GB HBM3" 81559 MiB, an "L40S 48 GB" 46068 MiB (public
 * nvidia-smi output of those cards). approxUsdPerHour is a rough us-east-1 on-demand Linux price,
 * not checked against the current price list: it only orders the types, cheapest first.
 */
export const GPU_TYPES = {
  "g6e.xlarge": { gpus: 1, gpu: "L40S 48 GB", gpuMemoryMiB: 46068, approxUsdPerHour: 1.9 },
  "g6e.12xlarge": { gpus: 4, gpu: "L40S 48 GB", gpuMemoryMiB: 46068, approxUsdPerHour: 10.5 },
  "p5.48xlarge": { gpus: 8, gpu: "H100 80 GB", gpuMemoryMiB: 81559, approxUsdPerHour: 55 },
  "p5en.48xlarge": { gpus: 8, gpu: "H200 141 GB", gpuMemoryMiB: 143771, approxUsdPerHour: 63 },
} as const;
export type GpuType = keyof typeof GPU_TYPES;

export function gpuMemoryBytes(type: GpuType): number {
  return GPU_TYPES[type].gpuMemoryMiB * 2 ** 20;
}

const group = (n: number) => n.toLocaleString("en-US");

function describeType(type: GpuType): string {
  const t = GPU_TYPES[type];
  return `${type} (${t.gpus}x ${t.gpu})`;
}

/** Positions of context one GPU of `type` holds beside UltraLong-8B in `kvDtype`. */
export function gpuContext(type: GpuType, kvDtype: CudaKvDtypeName): number {
  return longestContext(ULTRALONG_8B, CUDA_KV_DTYPES[kvDtype], gpuMemoryBytes(type));
}

/** Refuses, with the arithmetic, a context that one GPU of `type` cannot hold. */
export function checkGpuHolds(type: GpuType, kvDtype: CudaKvDtypeName, context: number): void {
  const plan = memoryFor(ULTRALONG_8B, CUDA_KV_DTYPES[kvDtype], context);
  if (plan.total <= gpuMemoryBytes(type)) return;
  throw new LimitError(
    `--gpu-type ${describeType(type)} cannot hold --max-context ${group(context)} in ${kvDtype}: ` +
      `${planArithmetic(plan, gpuMemoryBytes(type))}; it holds at most ` +
      `${group(gpuContext(type, kvDtype))} positions in ${kvDtype}`,
  );
}

/**
 * The cheapest listed type whose one GPU holds `context` positions in `kvDtype`; refuses with the
 * arithmetic on the type with the most GPU memory when none does.
 */
export function chooseGpuType(kvDtype: CudaKvDtypeName, context: number): GpuType {
  const types = Object.keys(GPU_TYPES) as GpuType[];
  const byPrice = [...types].sort(
    (a, b) => GPU_TYPES[a].approxUsdPerHour - GPU_TYPES[b].approxUsdPerHour,
  );
  const fits = byPrice.find((t) => gpuContext(t, kvDtype) >= context);
  if (fits) return fits;
  const largest = [...types].sort((a, b) => gpuMemoryBytes(b) - gpuMemoryBytes(a))[0]!;
  const plan = memoryFor(ULTRALONG_8B, CUDA_KV_DTYPES[kvDtype], context);
  const other = kvDtype === "bf16" ? "fp8" : null;
  const hint =
    other && gpuContext(largest, other) >= context ? `; --kv-dtype ${other} holds it` : "";
  throw new LimitError(
    `--max-context ${group(context)} in ${kvDtype} fits on no listed GPU: ` +
      `${planArithmetic(plan, gpuMemoryBytes(largest))} on ${describeType(largest)}, ` +
      `the largest, which holds at most ${group(gpuContext(largest, kvDtype))} positions` +
      `${hint}`,
  );
}

/** docs/deploy.md's table: each type, its GPU, its price and the context it serves per KV dtype. */
export function contextTable(): string {
  const rows = (Object.keys(GPU_TYPES) as GpuType[]).map((type) => {
    const t = GPU_TYPES[type];
    const mem = `${t.gpuMemoryMiB} MiB`;
    return `| ${type} | ${t.gpus}x ${t.gpu} (${mem}) | $${t.approxUsdPerHour} | ${group(gpuContext(type, "bf16"))} | ${group(gpuContext(type, "fp8"))} |`;
  });
  return [
    "| type | GPUs (CUDA-reported memory each) | about per hour | longest context, bf16 KV | longest context, fp8 KV |",
    "| --- | --- | --- | --- | --- |",
    ...rows,
  ].join("\n");
}
