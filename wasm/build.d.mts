export const WASM_FILE: string;
export const TEST_WASM_FILE: string;
export const RELAXED_WASM_FILE: string;
export const RELAXED_TEST_WASM_FILE: string;
export const INITIAL_PAGES: number;
export function build(opts: { root: string }): Promise<void>;
export function ensureBuilt(opts: { root: string }): Promise<void>;
