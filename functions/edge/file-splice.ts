// A chat message's file part from the file's stored ids, with the ids tokenizing the message in place
// would give (test/file-parts.test.ts checks the equality), re-encoding only a few hundred
// characters at each edge of the part instead of the file.
//
// How. The template is rendered with the file as lead + MARKER + trail (its leading and trailing
// whitespace, so a template's `trim` acts on them as on the text, and a marker for the rest, the
// "core"). In each run of rendered text between control tokens, a marker is replaced by ids:
//
//  - Head. Llama 3's pre-tokenizer (core/tokenizer/pretokenize.ts) is a left-to-right scan whose
//    next piece depends only on the text from where it stands. The scan of the run (text before
//    the file, then the core) and the file's own scan (lead, then the core) both reach the core;
//    at the first position of the core where both put a piece boundary they coincide from there
//    on. The text up to that point is encoded; the file's ids from that point are reused.
//  - Tail. Pieces the upload's streaming encoder made final before the trailing whitespace began
//    did not depend on anything after the core (FileEdges.tailFrom), so they hold whatever
//    follows the file here. The text from there to the core's end is encoded with what follows.
//  Only boundaries that no later text can move count (stableLimit). When no common boundary is
//  found near the head (a file that opens with a very long word), the part is the file's text.
//
// Requires a tokenizer whose added tokens are all special (matching off in user text): true of
// Llama 3; edgeTextSplices() says whether a tokenizer qualifies.
import { pretokenEnd, stableLimit } from "../../core/tokenizer/pretokenize.ts";
import type { FileEdges } from "./file-encoding.ts";
import type { EdgeText } from "./text.ts";
import { joinParts } from "./typed-parts.ts";

export interface SplicedFile {
  ids: Int32Array;
  edges: FileEdges;
}

/** Marker k in rendered text: noncharacters, which no template or request text carries here. */
export const MARK_OPEN = "\ufdd0";
const MARK_CLOSE = "\ufdd1";
const MARKS = /\ufdd0(\d+)\ufdd1/g;

export function fileMarker(k: number): string {
  return `${MARK_OPEN}${k}${MARK_CLOSE}`;
}

/** Ids of the file's head decoded to search for the common boundary: first try, then last. */
const HEAD_IDS = [256, 4096];

/** Piece boundaries of text[from, end) that no text after `end` can move (`from` included). */
function boundaries(text: string, from: number, exact: boolean): Set<number> {
  const limit = exact ? text.length : stableLimit(text, text.length);
  const out = new Set<number>([from]);
  for (let i = from; i < text.length; ) {
    const e = pretokenEnd(text, i, text.length);
    if (e > limit) break;
    out.add(e);
    i = e;
  }
  return out;
}

/** Number of leading ids whose bytes are exactly the UTF-8 of `prefix`, or -1. */
function idsCovering(text: EdgeText, ids: Int32Array, prefix: string): number {
  const want = new TextEncoder().encode(prefix).length;
  let bytes = 0;
  let k = 0;
  while (bytes < want && k < ids.length) bytes += text.tokenByteLength(ids[k++]);
  return bytes === want ? k : -1;
}

/** Counts what splicing re-encodes, so tests and metrics can see that a file part is not. */
export interface SpliceStats {
  /** Characters of file text encoded at part edges (or whole, when a head has no common boundary). */
  fileChars: number;
}

/**
 * Encodes one run of rendered text, replacing each marker by its file's ids. `pending` is text not
 * yet encoded that starts at a piece boundary of the run.
 */
export function fileSplicer(
  text: EdgeText,
  files: SplicedFile[],
  stats: SpliceStats,
): (run: string) => ArrayLike<number> {
  return (run) => {
    if (!run.includes(MARK_OPEN)) return text.encode(run);
    // Runs of ids, joined once: the middle of a file is millions of ids, copied as one block.
    const out: ArrayLike<number>[] = [];
    let pending = "";
    let at = 0;
    for (const m of run.matchAll(MARKS)) {
      const f = files[Number(m[1])];
      // Request text with the marker character turns splicing off (file-service.ts); a template
      // that carries it is a bug to fix there.
      if (!f) throw new Error(`file splice: marker ${m[1]} names no file`);
      const before = pending + run.slice(at, m.index);
      at = m.index! + m[0].length;
      const { lead, trail, tailFrom } = f.edges;
      const head = resync(text, f.ids, f.edges, before);
      if (!head) {
        const all = text.decode(f.ids);
        const core = all.slice(lead.length, all.length - trail.length);
        stats.fileChars += core.length;
        pending = before + core;
        continue;
      }
      out.push(text.encode(before + head.text));
      stats.fileChars += head.text.length;
      const tail = Math.max(tailFrom, head.ids);
      out.push(f.ids.subarray(head.ids, tail));
      const rest = text.decode(f.ids.subarray(tail));
      pending = rest.slice(0, rest.length - trail.length);
      stats.fileChars += pending.length;
    }
    out.push(text.encode(pending + run.slice(at)));
    return joinParts(out, (n) => new Int32Array(n));
  };
}

/**
 * The first position of the file's core where the run's scan (`before`, then the core) and the
 * file's scan both have a boundary: the core's text up to it and the count of the file's ids
 * before it. null if there is none in the file's first HEAD_IDS ids.
 */
function resync(
  text: EdgeText,
  ids: Int32Array,
  edges: FileEdges,
  before: string,
): { text: string; ids: number } | null {
  const coreEnd = edges.chars - edges.trail.length;
  const lead = edges.lead.length;
  for (const n of HEAD_IDS) {
    const whole = n >= ids.length;
    let head = text.decode(ids.subarray(0, Math.min(n, ids.length)));
    // A cut inside a character decodes as U+FFFD: drop the last character, whatever it is.
    if (!whole) head = head.slice(0, /[\udc00-\udfff]$/.test(head) ? -2 : -1);
    if (head.length > lead) {
      const own = boundaries(head, 0, whole);
      // Only the core: what follows it in this run need not be the file's trailing whitespace.
      const joined = before + head.slice(lead, coreEnd);
      // `before` starts at a boundary of the run; its own pieces are scanned again here.
      for (const p of boundaries(joined, 0, false)) {
        if (p < before.length || !own.has(p - before.length + lead)) continue;
        const x = p - before.length;
        const k = idsCovering(text, ids, head.slice(0, lead + x));
        if (k >= 0) return { text: head.slice(lead, lead + x), ids: k };
      }
    }
    if (whole) break;
  }
  return null;
}
