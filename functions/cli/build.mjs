// The CLI's build: esbuild bundles the TypeScript sources (functions/cli/main.ts and every module it
// loads, lazily loaded commands as their own chunks) into plain ESM under dist/cli/, so `ultralong`
// starts without a TypeScript loader. The sources stay the single truth: the manifest lists every
// source the bundle was made from with its mtime, size and SHA-256, and bin.js runs the bundle only
// while all of them still match (a stat per file: 1-3 ms for the ~120 of them; a file whose mtime
// alone differs, as after a copy that drops mtimes, is hashed instead); otherwise it rebuilds.
// node_modules are not bundled (they resolve from the checkout at run time).
//
// dist/cli/
//   manifest.json   { entry, built, inputs: { "<path from root>": [mtimeMs, size, sha256] } }
//   <id>/           one build's files (main.mjs, file-tokenizer-thread.mjs, chunk-*.mjs), id = hash
//                   of their content. A build never changes a folder in place: a server started
//                   from an older build still finds its lazily loaded chunks. Folders not current
//                   and older than a day are removed by the next build.
//
// What a bundle changes and how it is put back:
//   - `import.meta.url` in a source is that source's own URL (computed from the chunk's, so the
//     checkout can move): `new URL("../build/ultralong.wasm", import.meta.url)` finds the same file.
//   - `import(new URL("./x.ts", import.meta.url).href)` (a module hidden from the workerd bundles,
//     wasm/src/runtime.ts) becomes `import("./x.ts")`: a lazy chunk here.
//   - A worker whose code is TypeScript starts, in the sources, from a plain-JS wrapper that
//     registers tsx (WORKERS below); in the bundle its URL names the built entry instead.
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** Entry points: name in the build folder -> source. */
const ENTRIES = {
  main: "functions/cli/main.ts",
  "file-tokenizer-thread": "functions/node/file-tokenizer-thread.ts",
};

/** Worker wrappers of the sources (register tsx, import the TS) -> the entry that replaces them. */
const WORKERS = {
  "functions/node/file-tokenizer-worker.mjs": "file-tokenizer-thread",
};

const DAY_MS = 24 * 3600 * 1000;

const sha256Hex = (bytes) => createHash("sha256").update(bytes).digest("hex");

/** The default output folder. */
export function cliOutDir(root) {
  return join(root, "dist/cli");
}

/**
 * The built entry's file URL if the build in `out` was made from the sources as they are now, else
 * null (no build, or a source changed, appeared in a new place or went away since).
 */
export function currentBuild(root, out = cliOutDir(root)) {
  let manifest;
  try {
    manifest = JSON.parse(readFileSync(join(out, "manifest.json"), "utf8"));
  } catch {
    return null;
  }
  for (const [path, [mtimeMs, size, sha256]] of Object.entries(manifest.inputs)) {
    const file = join(root, path);
    const st = statSync(file, { throwIfNoEntry: false });
    if (!st || st.size !== size) return null;
    if (st.mtimeMs !== mtimeMs && (!sha256 || sha256Hex(readFileSync(file)) !== sha256))
      return null;
  }
  const entry = join(out, manifest.entry);
  return existsSync(entry) ? pathToFileURL(entry).href : null;
}

/** The rewrites above, for one source file's text. */
function rewriteSource(root, outDir, file, text) {
  const here = dirname(file);
  const selfUrl = JSON.stringify(relative(outDir, file).split("\\").join("/"));
  const KEEP = "\0chunk-url\0"; // import.meta.url of the chunk itself, kept through the last step
  let out = text.replace(
    /import\(\s*new URL\(\s*(["'])(\.{1,2}\/[^"']+\.ts)\1\s*,\s*import\.meta\.url\s*\)\.href\s*\)/g,
    (_, q, rel) => `import(${q}${rel}${q})`,
  );
  out = out.replace(
    /new URL\(\s*(["'])(\.{1,2}\/[^"']+)\1\s*,\s*import\.meta\.url\s*\)/g,
    (whole, _q, rel) => {
      const worker = WORKERS[relative(root, resolve(here, rel)).split("\\").join("/")];
      if (worker) return `new URL("./${worker}.mjs", ${KEEP})`;
      if (rel.endsWith(".ts")) {
        throw new Error(
          `${relative(root, file)}: ${whole} names TypeScript the bundle cannot run; import it, or list it in functions/cli/build.mjs WORKERS`,
        );
      }
      return whole;
    },
  );
  if (/import\.meta\.(dirname|filename)/.test(out)) {
    throw new Error(`${relative(root, file)}: use import.meta.url (the bundle rewrites only that)`);
  }
  out = out.replaceAll("import.meta.url", `new URL(${selfUrl}, import.meta.url).href`);
  return out.replaceAll(KEEP, "import.meta.url");
}

/**
 * Bundles the CLI into `out` unless the current build is up to date. Returns what it did, for the
 * build log. Needs esbuild (a dev dependency, and tsx's, so a production install has it too).
 */
export async function build({ root, out = cliOutDir(root) }) {
  if (currentBuild(root, out)) return { upToDate: true };
  const esbuild = await import("esbuild");
  const started = Date.now();
  const pending = join(out, "pending"); // the depth of a build folder: relative URLs are the same
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: Object.fromEntries(
      Object.entries(ENTRIES).map(([name, src]) => [name, join(root, src)]),
    ),
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    packages: "external",
    outdir: pending,
    outExtension: { ".js": ".mjs" },
    sourcemap: "linked",
    metafile: true,
    write: false,
    logLevel: "silent",
    plugins: [
      {
        name: "ultralong-source-urls",
        setup(b) {
          b.onLoad({ filter: /\.(ts|mjs|js)$/ }, (args) => {
            if (args.path.includes(`${join("node_modules", "")}`)) return undefined;
            const text = readFileSync(args.path, "utf8");
            return {
              contents: rewriteSource(root, pending, args.path, text),
              loader: args.path.endsWith(".ts") ? "ts" : "js",
            };
          });
        },
      },
    ],
  });
  const hash = createHash("sha256");
  for (const f of result.outputFiles) hash.update(relative(pending, f.path)).update(f.contents);
  const id = hash.digest("hex").slice(0, 16);
  const dir = join(out, id);
  if (!existsSync(dir)) {
    const tmp = join(out, `${id}.tmp-${process.pid}`);
    for (const f of result.outputFiles) {
      const target = join(tmp, relative(pending, f.path));
      mkdirSync(dirname(target), { recursive: true });
      writeFileSync(target, f.contents);
    }
    try {
      renameSync(tmp, dir);
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      if (!existsSync(dir)) throw err; // else a concurrent build wrote the same files
    }
  }
  // A source edited while esbuild read it may be in the bundle in either version: record it as
  // never matching (no mtime, no hash), so the next start builds again.
  const inputs = {};
  const self = relative(root, fileURLToPath(import.meta.url));
  for (const path of [...Object.keys(result.metafile.inputs), self]) {
    const st = statSync(join(root, path));
    const edited = st.mtimeMs >= started - 1;
    const bytes = readFileSync(join(root, path));
    inputs[path] = edited ? [-1, st.size, null] : [st.mtimeMs, st.size, sha256Hex(bytes)];
  }
  const manifest = { entry: `${id}/main.mjs`, built: new Date(started).toISOString(), inputs };
  const tmpManifest = join(out, `manifest.json.tmp-${process.pid}`);
  writeFileSync(tmpManifest, `${JSON.stringify(manifest, null, 1)}\n`);
  renameSync(tmpManifest, join(out, "manifest.json"));
  for (const name of readdirSync(out)) {
    const path = join(out, name);
    if (name === id || name === "manifest.json") continue;
    if (Date.now() - statSync(path).mtimeMs > DAY_MS)
      rmSync(path, { recursive: true, force: true });
  }
  return { upToDate: false, id, inputs: Object.keys(inputs).length, ms: Date.now() - started };
}
