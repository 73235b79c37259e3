// Reads the checkpoint tensor by tensor and hands each shard its slice (plan.ts):
//   q_proj (heads*hd, H), k_proj / v_proj (kv_heads*hd, H)  -> rows of the shard's heads, fused
//                                                              into qkv (q rows, then k, then v)
//   o_proj (H, heads*hd)                                    -> the shard's head COLUMNS
//   gate_proj / up_proj (ffn, H)                            -> rows, fused into gu (gate, then up)
//   down_proj (H, ffn)                                      -> the shard's ffn COLUMNS
//   lm_head (vocab, H) (embed_tokens when tied)             -> the shard's vocab rows
//   norms                                                   -> every shard
// Returns the embedding table, which stays in JS memory (the main thread looks rows up).
import type { LoadedModel } from "../../core/model/weights.ts";
import type { ShardPlan } from "./plan.ts";
import type { WeightFormat } from "./shard.mjs";
import type { ShardSet } from "./shard-set.ts";

type Mat = Float32Array | Uint16Array;

function rows(m: Mat, cols: number, start: number, end: number): Mat {
  return m.slice(start * cols, end * cols);
}

function columns(m: Mat, cols: number, start: number, end: number): Mat {
  const n = m.length / cols;
  const w = end - start;
  const out = m instanceof Float32Array ? new Float32Array(n * w) : new Uint16Array(n * w);
  for (let r = 0; r < n; r++) out.set(m.subarray(r * cols + start, r * cols + end), r * w);
  return out;
}

export async function loadShardWeights(
  model: LoadedModel,
  plans: ShardPlan[],
  shards: ShardSet,
  format: WeightFormat,
): Promise<Mat> {
  const c = model.config;
  const H = c.hiddenSize;
  const hd = c.headDim;
  const g = c.numAttentionHeads / c.numKeyValueHeads;
  const as = format === "bf16" ? "bf16" : "f32";
  const read = (name: string): Promise<Mat> =>
    as === "bf16" ? model.weights.read(name, "bf16") : model.weights.read(name, "f32");
  const vector = (name: string) => model.weights.read(name, "f32");
  const each = (fn: (p: ShardPlan, s: number) => Promise<void>) => Promise.all(plans.map(fn));

  for (let l = 0; l < c.numHiddenLayers; l++) {
    const pre = `model.layers.${l}.`;
    const attnNorm = await vector(`${pre}input_layernorm.weight`);
    const ffnNorm = await vector(`${pre}post_attention_layernorm.weight`);
    await each(async (_p, s) => {
      await shards.setVector(s, "attnNorm", l, attnNorm.slice());
      await shards.setVector(s, "ffnNorm", l, ffnNorm.slice());
    });
    const q = await read(`${pre}self_attn.q_proj.weight`);
    const k = await read(`${pre}self_attn.k_proj.weight`);
    const v = await read(`${pre}self_attn.v_proj.weight`);
    await each(async (p, s) => {
      const kv0 = p.kvHeads.start * hd;
      const kv1 = p.kvHeads.end * hd;
      const nq = (kv1 - kv0) * g;
      await shards.setMatrix(s, "qkv", l, 0, rows(q, H, kv0 * g, kv1 * g));
      await shards.setMatrix(s, "qkv", l, nq, rows(k, H, kv0, kv1));
      await shards.setMatrix(s, "qkv", l, nq + kv1 - kv0, rows(v, H, kv0, kv1));
    });
    const o = await read(`${pre}self_attn.o_proj.weight`);
    await each((p, s) =>
      shards.setMatrix(
        s,
        "o",
        l,
        0,
        columns(o, c.numAttentionHeads * hd, p.kvHeads.start * g * hd, p.kvHeads.end * g * hd),
      ),
    );
    const gate = await read(`${pre}mlp.gate_proj.weight`);
    const up = await read(`${pre}mlp.up_proj.weight`);
    await each(async (p, s) => {
      await shards.setMatrix(s, "gu", l, 0, rows(gate, H, p.ffn.start, p.ffn.end));
      await shards.setMatrix(
        s,
        "gu",
        l,
        p.ffn.end - p.ffn.start,
        rows(up, H, p.ffn.start, p.ffn.end),
      );
    });
    const down = await read(`${pre}mlp.down_proj.weight`);
    await each((p, s) =>
      shards.setMatrix(s, "down", l, 0, columns(down, c.intermediateSize, p.ffn.start, p.ffn.end)),
    );
  }
  const norm = await vector("model.norm.weight");
  await each((_p, s) => shards.setVector(s, "finalNorm", 0, norm.slice()));
  const embed = await read("model.embed_tokens.weight");
  const lm = c.tieWordEmbeddings ? embed : await read("lm_head.weight");
  await each((p, s) => shards.setMatrix(s, "lm", 0, 0, rows(lm, H, p.vocab.start, p.vocab.end)));
  return embed;
}
