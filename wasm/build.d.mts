export const WASM_FILE: string;
export function build(opts: { root: string }): Promise<void>;
export function ensureBuilt(opts: { root: string }): Promise<void>;
