// Wrangler's Data rule (wrangler.toml) imports a .bin file as an ArrayBuffer; our esbuild bundle
// (infra/deploy/bundle.ts) inlines it as a Uint8Array. The entry accepts either.
declare module "*.bin" {
  const bytes: ArrayBuffer | Uint8Array;
  export default bytes;
}
