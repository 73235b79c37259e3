// After a run: the pictures (OUT/niah.svg + .png heatmap of the depth tasks, OUT/ruler.svg + .png
// bars per task) and the terminal tables with the token and time totals.

import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { formatLength } from "../../core/eval/grid.ts";
import { depthGrid, type Scored, taskGrid, totals } from "../../core/eval/summary.ts";
import { barsSvg, heatmapSvg } from "../../core/eval/svg.ts";
import { gridTable, totalsText } from "../../core/eval/table.ts";
import { TASKS } from "../../core/eval/tasks.ts";
import { svgToPng } from "./png.ts";

export interface ReportOptions {
  suite: "niah" | "ruler";
  out: string;
  model: string;
  png: boolean;
}

/** Writes the pictures; returns the text for stdout and the files written. */
export async function writeReport(
  records: readonly Scored[],
  o: ReportOptions,
): Promise<{ text: string; files: string[] }> {
  const files: string[] = [];
  const put = async (name: string, svg: string) => {
    await writeFile(join(o.out, `${name}.svg`), svg);
    files.push(join(o.out, `${name}.svg`));
    if (o.png) {
      await writeFile(join(o.out, `${name}.png`), svgToPng(svg));
      files.push(join(o.out, `${name}.png`));
    }
  };
  const parts: string[] = [];
  const withDepth = records.filter((r) => r.depth !== null);
  const taskNames = TASKS.map((t) => t.name).filter((n) => withDepth.some((r) => r.task === n));
  const lengths = [...new Set(records.map((r) => r.length))].sort((a, b) => a - b);
  const span = lengths.length
    ? `${formatLength(lengths[0])} to ${formatLength(lengths[lengths.length - 1])} tokens`
    : "";
  if (withDepth.length) {
    const g = depthGrid(withDepth);
    const mean = withDepth.reduce((a, r) => a + r.score, 0) / withDepth.length;
    await put(
      o.suite === "niah" ? "niah" : "ruler-depth",
      heatmapSvg(g, {
        title: `Needle in a haystack: ${o.model}`,
        subtitle: `${taskNames.join(", ")}; ${span}; mean ${(mean * 100).toFixed(1)}% found`,
      }),
    );
    parts.push(`score (%) by needle depth and length (${taskNames.join(", ")}):`);
    parts.push(gridTable(g, "depth", (d) => `${d}%`));
  }
  if (o.suite === "ruler") {
    const order = TASKS.map((t) => t.name);
    const g = taskGrid(records, order);
    await put(
      "ruler",
      barsSvg(g, {
        title: `RULER-style tasks: ${o.model}`,
        subtitle: `mean score per task and length; ${span}`,
      }),
    );
    parts.push("score (%) by task and length:");
    parts.push(gridTable(g, "task", (t) => t));
  }
  parts.push(totalsText(totals(records)));
  return { text: `${parts.join("\n\n")}\n`, files };
}
