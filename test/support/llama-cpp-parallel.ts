// llama.cpp with many sequences on one context (node-llama-cpp's `sequences: N`), for
// `npm run bench -- batching`: every sequence holds the same document, and a question is asked on
// one sequence by erasing what follows the document and evaluating the question greedily.
// Concurrent evaluations on different sequences are decoded together: node-llama-cpp gathers the
// tokens every sequence has queued into one llama_decode batch per cycle, which is llama.cpp's
// continuous batching. Sequences share no KV (kv_unified is off in node-llama-cpp 3.21, and it
// exposes no llama_memory_seq_cp), so the document is prefilled once, on sequence 0, and its state
// is saved to a file and loaded into every other sequence (llama_state_seq_save/load_file, what
// llama-server's slot save/restore does): llama.cpp's cheapest way here to give N sequences one
// document. Both costs are timed apart from the questions.

import type { Llama, LlamaContext, LlamaModel, Token } from "node-llama-cpp";
import type { Answer } from "./batching-load.ts";

export interface ParallelLlama {
  context: LlamaContext;
  /** Time to prefill the document on sequence 0. */
  documentPrefillMs: number;
  /** Time to save sequence 0's state and load it into every other sequence. */
  documentCopyMs: number;
  /**
   * Question `prompt` on sequence `seq` after the document: greedy (or `sampling`), at most `maxTokens` tokens,
   * ending early at an end-of-generation token as our server does. Never throws. `ids` are the
   * generated token ids; the caller makes the Answer's pieces from them.
   */
  ask(
    seq: number,
    prompt: number[],
    maxTokens: number,
    sampling?: { temperature: number; seed?: number },
  ): Promise<Answer & { ids: number[] }>;
  close(): Promise<void>;
}

export async function openParallelLlama(
  llama: Llama,
  opts: {
    ggufPath: string;
    sequences: number;
    threads: number;
    document: number[];
    /** Positions each sequence needs: document, question and answer. */
    contextSize: number;
    /** Where sequence 0's state is saved for the others to load. */
    stateFile: string;
  },
): Promise<ParallelLlama> {
  const model: LlamaModel = await llama.loadModel({ modelPath: opts.ggufPath, gpuLayers: 0 });
  const context = await model.createContext({
    contextSize: opts.contextSize,
    sequences: opts.sequences,
    threads: opts.threads,
  });
  const seqs = Array.from({ length: opts.sequences }, () => context.getSequence());
  const doc = opts.document as Token[];
  const t0 = performance.now();
  await seqs[0].evaluateWithoutGeneratingNewTokens(doc);
  const t1 = performance.now();
  await seqs[0].saveStateToFile(opts.stateFile);
  for (const s of seqs.slice(1)) await s.loadStateFromFile(opts.stateFile, { acceptRisk: true });
  const t2 = performance.now();
  return {
    context,
    documentPrefillMs: t1 - t0,
    documentCopyMs: t2 - t1,
    async ask(seq, prompt, maxTokens, sampling = { temperature: 0 }) {
      const s = seqs[seq];
      const answer = {
        startMs: performance.now(),
        tokenMs: [] as number[],
        pieces: [] as string[],
        error: null as string | null,
        retries: 0,
        ids: [] as number[],
      };
      try {
        if (s.nextTokenIndex > doc.length)
          await s.eraseContextTokenRanges([{ start: doc.length, end: s.nextTokenIndex }]);
        for await (const t of s.evaluate(prompt as Token[], sampling)) {
          answer.tokenMs.push(performance.now());
          answer.ids.push(t);
          if (answer.ids.length >= maxTokens) break;
        }
      } catch (err) {
        answer.error = (err as Error).message;
      }
      return answer;
    },
    async close() {
      await context.dispose();
      await model.dispose();
    },
  };
}
