import { describe, expect, it } from "vitest";
import { createRng } from "../core/engine/sampling.ts";
import { StopStringMatcher } from "../core/engine/stop.ts";

/** Feeds pieces; returns everything emitted and the stop found, as a client would see them. */
function feed(
  stops: string[],
  pieces: string[],
): { text: string; stop?: string; emitted: string[] } {
  const m = new StopStringMatcher(stops);
  const emitted: string[] = [];
  for (const piece of pieces) {
    const r = m.push(piece);
    emitted.push(r.text);
    if (r.stop !== undefined) return { text: emitted.join(""), stop: r.stop, emitted };
  }
  emitted.push(m.flush());
  return { text: emitted.join(""), emitted };
}

describe("StopStringMatcher", () => {
  it("passes text through when there are no stop strings", () => {
    expect(feed([], ["a", "b"]).emitted).toEqual(["a", "b", ""]);
  });

  it("stops at a stop string split across pieces and emits none of it", () => {
    const r = feed(["STOP"], ["hello S", "TO", "P and more"]);
    expect(r.text).toBe("hello ");
    expect(r.stop).toBe("STOP");
    expect(r.emitted).toEqual(["hello ", "", ""]);
  });

  it("holds back a possible start and releases it when it turns out not to be one", () => {
    const r = feed(["abc"], ["xa", "b", "d"]);
    expect(r.emitted).toEqual(["x", "", "abd", ""]);
    expect(r.stop).toBeUndefined();
  });

  it("releases held text at the end of the generation", () => {
    const r = feed(["</answer>"], ["42 </ans"]);
    expect(r.emitted).toEqual(["42 ", "</ans"]);
  });

  it("picks the earliest of several stop strings", () => {
    expect(feed(["world", "lo"], ["hello world"]).stop).toBe("lo");
    expect(feed(["\n\n", "."], ["end.\n\nmore"])).toMatchObject({ text: "end", stop: "." });
  });

  it("handles a stop string that is a suffix-overlap of itself", () => {
    // "aab": after "aa" the held text must stay "aa" (not just "a"), or the stop is missed.
    const r = feed(["aab"], ["a", "a", "a", "b"]);
    expect(r.text).toBe("a");
    expect(r.stop).toBe("aab");
  });

  it("ignores empty stop strings", () => {
    expect(feed([""], ["abc"]).text).toBe("abc");
  });

  it("on random text cut at random places, emits exactly the text before the first stop", () => {
    const rng = createRng(99);
    const alphabet = "ab c\n";
    for (let trial = 0; trial < 300; trial++) {
      const text = Array.from({ length: 60 }, () => alphabet[Math.floor(rng() * 5)]).join("");
      const stops = Array.from({ length: 1 + Math.floor(rng() * 3) }, () =>
        Array.from(
          { length: 1 + Math.floor(rng() * 4) },
          () => alphabet[Math.floor(rng() * 5)],
        ).join(""),
      );
      const pieces: string[] = [];
      for (let i = 0; i < text.length; ) {
        const n = 1 + Math.floor(rng() * 5);
        pieces.push(text.slice(i, i + n));
        i += n;
      }
      const firsts = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
      const cut = firsts.length ? Math.min(...firsts) : text.length;
      const r = feed(stops, pieces);
      expect(r.text, JSON.stringify({ text, stops, pieces })).toBe(text.slice(0, cut));
      expect(r.stop !== undefined).toBe(firsts.length > 0);
      // Nothing emitted ever ends in a prefix that could still become a stop string.
      let shown = "";
      for (const piece of r.emitted.slice(0, -1)) {
        shown += piece;
        for (const s of stops) expect(shown.includes(s)).toBe(false);
      }
    }
  });
});
