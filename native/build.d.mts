/** Builds the native core (see build.mjs): emscripten module, CUDA compile check, addon. */
export function build(opts: { root: string }): Promise<void>;
