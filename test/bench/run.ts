// `npm run bench -- <name> [args]`: runs test/bench/<name>.ts, whose default export prints JSON with
// our figure, the peer's figure measured in the same run, and their ratio.
import { readdirSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { InvalidInputError } from "../../core/errors.ts";

const here = dirname(fileURLToPath(import.meta.url));
const available = readdirSync(here)
  .filter((f) => f.endsWith(".ts") && f !== "run.ts")
  .map((f) => f.slice(0, -3));
const [name, ...args] = process.argv.slice(2);
if (!name || !available.includes(name)) {
  console.error(`usage: npm run bench -- <${available.join("|")}> [args]`);
  process.exit(2);
}
const mod = (await import(`./${name}.ts`)) as { default: (args: string[]) => Promise<void> };
try {
  await mod.default(args);
} catch (err) {
  // A bad argument (a typed input error) is one line, not a stack trace.
  if (!(err instanceof InvalidInputError)) throw err;
  console.error(`npm run bench -- ${name}: ${err.message}`);
  process.exit(2);
}
