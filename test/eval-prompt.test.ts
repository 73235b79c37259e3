// core/eval without a server: prompts at exact token counts with real tokenizers (the retrieval
// fixture's byte-level one and Llama 3.1's), the claim that piece ids laid end to end are the
// whole text's ids, needle placement, the flags' grammar, trial order, scoring and the pictures.
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { fillerStream } from "../core/eval/filler.ts";
import { formatLength, parseDepths, parseLengths } from "../core/eval/grid.ts";
import { HayStream, PieceTokens } from "../core/eval/haystack.ts";
import { orderTrials, planTrials, seededRng } from "../core/eval/plan.ts";
import { buildPrompt, type PromptParts } from "../core/eval/prompt.ts";
import { scoreOutput } from "../core/eval/score.ts";
import { depthGrid } from "../core/eval/summary.ts";
import { heatmapSvg } from "../core/eval/svg.ts";
import { suiteTasks, TASKS } from "../core/eval/tasks.ts";
import { llama31TokenizerFiles } from "../core/node/make-model.ts";
import { DirectoryModelFiles } from "../core/node/model-files.ts";
import { Tokenizer } from "../core/tokenizer/index.ts";
import { loadTokenizer } from "../core/tokenizer/load.ts";

const FIXTURE = join(import.meta.dirname, "fixtures/retrieval-model");
let bytes: Tokenizer;
let llama: Tokenizer;
beforeAll(async () => {
  bytes = await loadTokenizer(new DirectoryModelFiles(FIXTURE));
  const f = await llama31TokenizerFiles();
  const text = new TextDecoder();
  llama = Tokenizer.fromJson(text.decode(f.tokenizer), text.decode(f.tokenizerConfig));
}, 60_000);

async function prompt(tok: Tokenizer, length: number, depth: number, exact = true) {
  const pieces = new PieceTokens(async (t) => [...tok.encode(t)]);
  const it = fillerStream(seededRng(0, "hay|0"));
  const hay = new HayStream(() => pieces.unit(it.next().value as string[]));
  const [task] = suiteTasks("niah");
  const t = task.make(seededRng(0, "t"), depth);
  const parts: PromptParts = {
    bos: [tok.bosTokenId ?? 0],
    intro: await pieces.unit([]),
    needles: [{ unit: await pieces.unit([t.needles[0].text]), depth }],
    question: await pieces.unit([t.question]),
  };
  await hay.ensure(length + 1);
  return { built: buildPrompt(parts, hay.units, hay.offsets, length, exact), t };
}

describe("prompts", () => {
  it("byte-level fixture tokenizer: one token per byte, the Llama 3 pre-tokenizer, BOS and EOS", () => {
    expect([...bytes.encode("The pass key is: 73914.")]).toEqual([
      ...new TextEncoder().encode("The pass key is: 73914."),
    ]);
    expect(bytes.vocabSize).toBe(264);
    expect(bytes.tokenId("<|begin_of_text|>")).toBe(256);
    expect(bytes.eosTokenIds).toContain(257);
  });

  for (const [name, tok] of [
    ["byte-level", () => bytes],
    ["Llama 3.1", () => llama],
  ] as const) {
    it(`${name}: exact lengths; piece ids laid end to end equal the whole text's ids`, async () => {
      for (const length of [200, 333, 512, 1000]) {
        for (const depth of [0, 0.37, 1]) {
          const { built, t } = await prompt(tok(), length, depth);
          expect(built.ids).toHaveLength(length);
          // The needle sits where needle_at says, whole.
          const needle = [...tok().encode(t.needles[0].text)];
          expect(built.ids.slice(built.needleAt[0], built.needleAt[0] + needle.length)).toEqual(
            needle,
          );
          // Text mode (chat): whole units only, the same ids as encoding the text at once.
          const text = (await prompt(tok(), length, depth, false)).built;
          expect(text.ids.length).toBeLessThanOrEqual(length);
          expect(text.ids.slice(1)).toEqual([...tok().encode(text.text)]);
        }
      }
    });
  }

  it("the needle's depth moves it through the haystack, between sentences", async () => {
    const at = [];
    for (const d of [0, 0.25, 0.5, 0.75, 1]) {
      const { built } = await prompt(bytes, 1000, d);
      at.push(built.needleAt[0]);
      // a sentence ended just before it (or it opens the haystack after BOS)
      if (built.needleAt[0] > 1)
        expect(bytes.decode(built.ids.slice(built.needleAt[0] - 1, built.needleAt[0]))).toBe(".");
    }
    expect(at[0]).toBe(1);
    for (let i = 1; i < at.length; i++) expect(at[i]).toBeGreaterThan(at[i - 1]);
    expect(at[4]).toBeGreaterThan(1000 - 120); // just before the question
  });

  it("refuses a length that cannot hold the needle and the question", async () => {
    await expect(prompt(bytes, 50, 0)).rejects.toThrow(/a 50-token prompt cannot hold this task/);
  });
});

describe("flags, order, score, pictures", () => {
  it("--lengths and --depths", () => {
    expect(parseLengths("1k,4k,512,1M,4k")).toEqual([512, 1024, 4096, 1 << 20]);
    expect(parseDepths("0:100:25")).toEqual([0, 25, 50, 75, 100]);
    expect(parseDepths("50,10")).toEqual([10, 50]);
    expect(() => parseLengths("0")).toThrow(/not a token count/);
    expect(() => parseDepths("0:120:10")).toThrow(/past 100/);
    expect(formatLength(131072)).toBe("128k");
    expect(formatLength(1 << 20)).toBe("1M");
  });

  it("one leader per shared haystack, longest prefix first", () => {
    const plans = planTrials(suiteTasks("niah"), [256, 512], [0, 50, 100], 2, 0);
    const { leaders, rest } = orderTrials(plans);
    expect(leaders.map((p) => p.group).sort()).toEqual(["hay 0|", "hay 1|"]);
    expect(leaders.every((p) => p.length === 512 && p.depth === 100)).toBe(true);
    expect(rest).toHaveLength(plans.length - 2);
    for (let i = 1; i < rest.length; i++)
      expect(rest[i].prefix).toBeLessThanOrEqual(rest[i - 1].prefix);
    // seeds: the same coordinates give the same needle; another seed another
    const again = planTrials(suiteTasks("niah"), [256, 512], [0, 50, 100], 2, 0);
    expect(again.map((p) => p.text.answers)).toEqual(plans.map((p) => p.text.answers));
    const other = planTrials(suiteTasks("niah"), [256, 512], [0, 50, 100], 2, 1);
    expect(other.map((p) => p.text.answers)).not.toEqual(plans.map((p) => p.text.answers));
  });

  it("every task makes answers its question asks for", () => {
    for (const task of TASKS) {
      const t = task.make(seededRng(3, task.name), 0.5);
      expect(t.answers.length, task.name).toBeGreaterThan(0);
      if (t.haystack) {
        const it = t.haystack.pieces();
        const used = Array.from({ length: 600 }, () => it.next().value as string);
        expect(t.haystack.answers(used).sort(), task.name).toEqual([...t.answers].sort());
      } else {
        for (const a of t.answers)
          expect(
            t.needles.some((n) => n.text.includes(a)),
            task.name,
          ).toBe(true);
      }
    }
  });

  it("string-match scoring", () => {
    expect(scoreOutput(" 73914", ["73914"])).toBe(1);
    expect(scoreOutput("7391", ["73914"])).toBe(0);
    expect(scoreOutput("A, b", ["a", "B", "c", "d"])).toBe(0.5);
  });

  it("the heatmap: a cell per (depth, length), the score written in it, grey where none ran", () => {
    const rec = (depth: number, length: number, score: number) => ({
      task: "passkey",
      length,
      depth,
      score,
      prompt_tokens: length,
      cached_tokens: 0,
      ttft_ms: 1,
      total_ms: 2,
    });
    const svg = heatmapSvg(depthGrid([rec(0, 256, 1), rec(100, 256, 0), rec(0, 512, 0.5)]), {
      title: "t",
      subtitle: "s",
    });
    expect(svg.match(/<rect [^>]*stroke="#fff"/g)).toHaveLength(4);
    expect(svg).toContain('fill="#1a9850"'); // 100: green
    expect(svg).toContain('fill="#d73027"'); // 0: red
    expect(svg).toContain('fill="#e5e5e5"'); // (100%, 512): no trial
    expect(svg).toMatch(/>100<\/text>/);
    expect(svg).toMatch(/>50<\/text>/);
  });
});
