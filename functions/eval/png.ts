// SVG -> PNG with resvg (@resvg/resvg-js: Rust resvg, prebuilt per platform, no network). Text needs
// a font: the system's (DejaVu Sans on Debian: fonts-dejavu-core) is loaded; with none, resvg
// draws no text, so the caller is told.

import { Resvg } from "@resvg/resvg-js";

export function svgToPng(svg: string): Uint8Array {
  const r = new Resvg(svg, {
    background: "#ffffff",
    fitTo: { mode: "zoom", value: 2 },
    font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" },
  });
  return r.render().asPng();
}
