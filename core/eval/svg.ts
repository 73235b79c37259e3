// The eval's pictures as SVG text: a needle-in-a-haystack heatmap (depth down, length across, score
// as colour, the score written in each cell) and grouped bars per RULER task. Plain SVG 1.1 with
// one font family (DejaVu Sans, then any sans-serif), so any viewer and resvg draw the same thing.

import { scoreColour, textColour } from "./colour.ts";
import { formatLength } from "./grid.ts";
import type { Grid } from "./summary.ts";

const FONT = `font-family="DejaVu Sans, Verdana, sans-serif"`;

function esc(s: string): string {
  return s
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

function text(x: number, y: number, s: string, attrs = ""): string {
  return `<text x="${x}" y="${y}" ${FONT} ${attrs}>${esc(s)}</text>`;
}

const pct = (v: number) => `${Math.round(v * 100)}`;

export interface PictureText {
  title: string;
  subtitle: string;
}

/** The opening of a w x h picture: white ground, title and subtitle. */
function frame(w: number, h: number, t: PictureText): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">`,
    `<rect width="${w}" height="${h}" fill="#ffffff"/>`,
    text(16, 28, t.title, `font-size="18" font-weight="bold" fill="#111"`),
    text(16, 50, t.subtitle, `font-size="13" fill="#444"`),
  ];
}

/** Depth x length heatmap; a cell with no trial is hatched grey. */
export function heatmapSvg(g: Grid<number>, t: PictureText): string {
  const cw = Math.max(56, Math.min(96, Math.floor(720 / Math.max(1, g.lengths.length))));
  const ch = g.rows.length > 16 ? 22 : 30;
  const left = 96;
  const top = 78;
  const w = Math.max(640, left + cw * g.lengths.length + 120);
  const h = top + ch * g.rows.length + 70;
  const out = frame(w, h, t);
  g.rows.forEach((depth, i) => {
    const y = top + i * ch;
    out.push(
      text(left - 10, y + ch / 2 + 5, `${depth}%`, `font-size="13" text-anchor="end" fill="#222"`),
    );
    g.lengths.forEach((len, j) => {
      const x = left + j * cw;
      const v = g.at(depth, len);
      if (v === undefined) {
        out.push(
          `<rect x="${x}" y="${y}" width="${cw}" height="${ch}" fill="#e5e5e5" stroke="#fff"/>`,
        );
        return;
      }
      out.push(
        `<rect x="${x}" y="${y}" width="${cw}" height="${ch}" fill="${scoreColour(v)}" stroke="#fff"/>`,
      );
      out.push(
        text(
          x + cw / 2,
          y + ch / 2 + 5,
          pct(v),
          `font-size="13" text-anchor="middle" fill="${textColour(v)}"`,
        ),
      );
    });
  });
  const gridBottom = top + ch * g.rows.length;
  g.lengths.forEach((len, j) => {
    out.push(
      text(
        left + j * cw + cw / 2,
        gridBottom + 20,
        formatLength(len),
        `font-size="13" text-anchor="middle" fill="#222"`,
      ),
    );
  });
  const midX = left + (cw * g.lengths.length) / 2;
  out.push(
    text(
      midX,
      gridBottom + 46,
      "context length (tokens)",
      `font-size="14" text-anchor="middle" fill="#222"`,
    ),
  );
  const midY = top + (ch * g.rows.length) / 2;
  out.push(
    text(
      22,
      midY,
      "needle depth",
      `font-size="14" text-anchor="middle" fill="#222" transform="rotate(-90 22 ${midY})"`,
    ),
  );
  // Legend: the colour scale, 100 at the top.
  const lx = left + cw * g.lengths.length + 28;
  const lh = Math.max(120, ch * g.rows.length);
  for (let k = 0; k < 20; k++) {
    const v = 1 - k / 19;
    out.push(
      `<rect x="${lx}" y="${top + (k * lh) / 20}" width="18" height="${lh / 20 + 0.5}" fill="${scoreColour(v)}"/>`,
    );
  }
  out.push(text(lx + 24, top + 10, "100%", `font-size="12" fill="#222"`));
  out.push(text(lx + 24, top + lh / 2 + 4, "50%", `font-size="12" fill="#222"`));
  out.push(text(lx + 24, top + lh, "0%", `font-size="12" fill="#222"`));
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}

/** Blues from light to dark, one per length. */
function lengthColour(i: number, n: number): string {
  const t = n <= 1 ? 1 : i / (n - 1);
  const c0 = [158, 202, 225];
  const c1 = [8, 48, 107];
  return `rgb(${c0.map((a, k) => Math.round(a + (c1[k] - a) * t)).join(",")})`;
}

/** Grouped bars: a group per task, a bar per length, score 0-100 up. */
export function barsSvg(g: Grid<string>, t: PictureText): string {
  const bw = Math.max(10, Math.min(28, Math.floor(90 / Math.max(1, g.lengths.length))));
  const gap = 22;
  const gw = bw * g.lengths.length + gap;
  const left = 64;
  const top = 96;
  const ph = 260;
  const w = Math.max(560, left + gw * g.rows.length + 24);
  const h = top + ph + 64;
  const out = frame(w, h, t);
  g.lengths.forEach((len, i) => {
    const x = 16 + i * 124;
    out.push(
      `<rect x="${x}" y="62" width="14" height="14" fill="${lengthColour(i, g.lengths.length)}"/>`,
    );
    out.push(text(x + 20, 74, `${formatLength(len)} tokens`, `font-size="12" fill="#222"`));
  });
  for (let v = 0; v <= 100; v += 25) {
    const y = top + ph - (v / 100) * ph;
    out.push(`<line x1="${left}" y1="${y}" x2="${w - 16}" y2="${y}" stroke="#ddd"/>`);
    out.push(text(left - 8, y + 4, `${v}%`, `font-size="12" text-anchor="end" fill="#222"`));
  }
  g.rows.forEach((task, i) => {
    const gx = left + gap / 2 + i * gw;
    g.lengths.forEach((len, j) => {
      const v = g.at(task, len);
      if (v === undefined) return;
      const bh = Math.max(1, v * ph);
      const x = gx + j * bw;
      out.push(
        `<rect x="${x}" y="${top + ph - bh}" width="${bw - 2}" height="${bh}" fill="${lengthColour(j, g.lengths.length)}"/>`,
        text(
          x + (bw - 2) / 2,
          top + ph - bh - 4,
          pct(v),
          `font-size="10" text-anchor="middle" fill="#222"`,
        ),
      );
    });
    out.push(
      text(
        gx + (bw * g.lengths.length) / 2,
        top + ph + 20,
        task,
        `font-size="13" text-anchor="middle" fill="#222"`,
      ),
    );
  });
  out.push(`<line x1="${left}" y1="${top + ph}" x2="${w - 16}" y2="${top + ph}" stroke="#444"/>`);
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}
