// The compact terminal tables: scores in percent, a row per depth (niah) or task (ruler), a column
// per length, "-" where no trial ran; then the tokens and times the run cost.

import { formatLength } from "./grid.ts";
import type { Grid, Totals } from "./summary.ts";

export function gridTable<R extends string | number>(
  g: Grid<R>,
  corner: string,
  label: (r: R) => string,
): string {
  const head = [corner, ...g.lengths.map(formatLength)];
  const rows = g.rows.map((r) => [
    label(r),
    ...g.lengths.map((len) => {
      const v = g.at(r, len);
      return v === undefined ? "-" : String(Math.round(v * 100));
    }),
  ]);
  const mean = [
    "mean",
    ...g.lengths.map((len) => {
      const vs = g.rows.map((r) => g.at(r, len)).filter((v): v is number => v !== undefined);
      return vs.length
        ? String(Math.round((100 * vs.reduce((a, b) => a + b, 0)) / vs.length))
        : "-";
    }),
  ];
  const all = [head, ...rows, mean];
  const widths = head.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(head), ...rows.map(line), line(mean)].join("\n");
}

export function totalsText(t: Totals): string {
  const share = t.promptTokens ? ((100 * t.cachedTokens) / t.promptTokens).toFixed(1) : "0.0";
  const lines = [
    `${t.trials} trials, mean score ${(t.score * 100).toFixed(1)}%`,
    `prompt tokens ${t.promptTokens}, cached ${t.cachedTokens} (${share}%)`,
  ];
  for (const x of t.times) {
    const ttft = x.ttftMs === null ? "-" : `${(x.ttftMs / 1000).toFixed(2)} s`;
    lines.push(
      `  ${formatLength(x.length).padStart(6)}: ${x.trials} trials, time to first token ${ttft}, total ${(x.totalMs / 1000).toFixed(2)} s (mean)`,
    );
  }
  return lines.join("\n");
}
