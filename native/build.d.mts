/** Builds the native core (see build.mjs): emscripten module, CUDA compile check, addon. */
export function build(opts: { root: string }): Promise<void>;
/** Links the N-API addon (with the CUDA objects and cudart when withCuda). */
export function buildAddon(opts: { root: string; withCuda: boolean; out?: string }): Promise<void>;
/** Compiles every CUDA source for sm_90 and sm_80 into native/build/cuda (skips up-to-date objects). */
export function buildCudaObjects(opts: { root: string }): Promise<void>;
export const CUDA_ARCHS: string[];
