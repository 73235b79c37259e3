// `ultralong plan --context 4M [--kv-dtype fp8] [--gpus 8] ...`: where a context's KV would live
// (GPU, pinned host memory, snapshot store) on a given machine and what its prefill and decode cost,
// or a refusal that shows the arithmetic (core/model/placement.ts). It plans; the engine's tiers and
// context parallelism that would run such a plan are issue 18's GPU work (docs/long-context.md).

import { readFile } from "node:fs/promises";
import { InvalidInputError } from "../../../core/errors.ts";
import { CUDA_KV_DTYPES } from "../../../core/model/capacity.ts";
import { parseConfig } from "../../../core/model/config.ts";
import type { LlamaShape } from "../../../core/model/llama-tensors.ts";
import {
  DATASHEET_RATES,
  fmtTokens,
  type Placement,
  parseRates,
  placeContext,
  type Rates,
} from "../../../core/model/placement.ts";
import { parseByteSize, parseTokenCount } from "../../../core/model/quantities.ts";
import { ULTRALONG_8B } from "../../../core/model/ultralong-8b.ts";
import { type Command, intOption, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong plan --context N [--model DIR|CONFIG.json] [--kv-dtype bf16|fp8] [--gpus N]
                      [--gpu-memory SIZE] [--host-memory SIZE] [--store] [--rates FILE|h200] [--json]

Plans where N tokens of KV live on a machine and what the prefill and one decode token cost: each GPU
holds the weights (bf16) and context / gpus positions of KV (context parallelism splits the
sequence), what a GPU cannot hold goes to pinned host memory, and with --store what the host cannot
hold to the snapshot store; a GPU with a host part also holds two staging buffers of one layer's
host part each. Refuses, showing the arithmetic, when it does not fit.

options:
  --context N        tokens of context: 1M, 2M, 4M, 131072 (K and M are 1024 and 1024^2)
  --model P          a model directory or its config.json (default: UltraLong-8B's shape)
  --kv-dtype D       bf16 (default) | fp8
  --gpus N           GPUs of one node (default 1)
  --gpu-memory SIZE  each GPU's memory (default 143771MiB, an H200 as nvidia-smi reports it)
  --host-memory SIZE host memory the node can pin for KV (default 0; an 8-GPU H200 node has ~2T)
  --store            a snapshot store backs the host tier (the third tier)
  --rates R          measured rates for times: a JSON file with gemmTflops, attentionTflops,
                     hbmGBps, hostLinkGBps (what the GPU check's rates line holds), or 'h200' for the
                     datasheet peaks (labelled as not measured); without it, FLOPs and bytes only
  --json             one JSON object instead of text
`;

const H200_MEMORY = 143771 * 2 ** 20;

async function shapeOf(path: string | undefined): Promise<LlamaShape> {
  if (path === undefined) return ULTRALONG_8B;
  const file = path.endsWith(".json") ? path : `${path.replace(/\/$/, "")}/config.json`;
  const text = await readFile(file, "utf8").catch((err) => {
    throw new InvalidInputError(`--model: cannot read ${file}: ${(err as Error).message}`);
  });
  return parseConfig(text, file);
}

async function ratesOf(spec: string | undefined): Promise<Rates | undefined> {
  if (spec === undefined) return undefined;
  const preset = DATASHEET_RATES[spec.toLowerCase()];
  if (preset) return preset;
  const text = await readFile(spec, "utf8").catch((err) => {
    throw new InvalidInputError(`--rates: cannot read ${spec}: ${(err as Error).message}`);
  });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new InvalidInputError(`--rates: ${spec} is not JSON`);
  }
  return parseRates(json, spec);
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
const seconds = (s: number) => (s >= 120 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(2)} s`);
const pflop = (f: number) => `${(f / 1e15).toFixed(1)} PFLOP`;

function describe(p: Placement, context: number, gpus: number, dtype: string): string {
  const t = p.tiers;
  const lines = [
    `${fmtTokens(context)} tokens of ${dtype} KV = ${gib(context * p.kvBytesPerToken)} (${(p.kvBytesPerToken / 1024).toFixed(0)} KiB per token) on ${gpus} GPU${gpus > 1 ? "s" : ""}`,
    `per GPU: weights ${gib(p.perGpu.weights)} + scratch ${gib(p.perGpu.scratch)} + KV ${gib(p.perGpu.kvBytes)} (${fmtTokens(p.perGpu.kvTokens)} tokens)${p.perGpu.stagingBytes > 0 ? ` + staging 2 x ${gib(p.perGpu.stagingBytes / 2)}` : ""} = ${gib(p.perGpu.total)}`,
    `tiers:   GPU ${fmtTokens(t.gpu.tokens)} tokens (${gib(t.gpu.bytes)}), host ${fmtTokens(t.host.tokens)} (${gib(t.host.bytes)}), store ${fmtTokens(t.store.tokens)} (${gib(t.store.bytes)})`,
    `prefill: ${pflop(p.prefill.gemmFlops)} projections + ${pflop(p.prefill.attentionFlops)} attention; host -> each GPU ${gib(p.prefill.hostToGpuBytesPerGpu)}`,
    `decode:  per token each GPU reads ${gib(p.decode.hbmBytesPerGpu)} from HBM and ${gib(p.decode.hostBytesPerGpu)} over the host link${p.decode.storeBytesPerGpu > 0 ? ` (${gib(p.decode.storeBytesPerGpu)} of it from the snapshot store)` : ""}`,
  ];
  if (p.rates && p.prefill.seconds && p.decode.secondsPerToken !== undefined) {
    const s = p.prefill.seconds;
    lines.push(
      `times (${p.rates.source}): prefill ${seconds(s.total)} (compute ${seconds(s.compute)}, host copies ${seconds(s.copies)}${s.copies > s.compute ? ": copies dominate" : ", hidden behind compute"}); decode ${(p.decode.secondsPerToken * 1000).toFixed(1)} ms per token${p.decode.storeBytesPerGpu > 0 ? ", plus the store's fetch time (not modelled)" : ""}`,
    );
  } else {
    lines.push("times:   need --rates (measured by a GPU check, or 'h200' for datasheet peaks)");
  }
  return `${lines.join("\n")}\n`;
}

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values } = parseCommandArgs(
      argv,
      {
        context: { type: "string" },
        model: { type: "string" },
        "kv-dtype": { type: "string" },
        gpus: { type: "string" },
        "gpu-memory": { type: "string" },
        "host-memory": { type: "string" },
        store: { type: "boolean" },
        rates: { type: "string" },
        json: { type: "boolean" },
      },
      { allowPositionals: false },
    );
    if (values.context === undefined) throw new InvalidInputError("--context is required");
    const context = parseTokenCount("--context", values.context);
    const kvName = values["kv-dtype"] ?? "bf16";
    const kvDtype = CUDA_KV_DTYPES[kvName as keyof typeof CUDA_KV_DTYPES];
    if (!kvDtype) {
      throw new InvalidInputError(
        `--kv-dtype must be bf16 or fp8 (the CUDA runtime's KV dtypes), got '${kvName}'`,
      );
    }
    const gpus = intOption("gpus", values.gpus) ?? 1;
    const gpuMemoryBytes =
      values["gpu-memory"] === undefined
        ? H200_MEMORY
        : parseByteSize("--gpu-memory", values["gpu-memory"]);
    const hostMemoryBytes =
      values["host-memory"] === undefined
        ? 0
        : parseByteSize("--host-memory", values["host-memory"]);
    const shape = await shapeOf(values.model);
    const rates = await ratesOf(values.rates);
    const placement = placeContext({
      shape,
      context,
      kvDtype,
      gpus,
      gpuMemoryBytes,
      hostMemoryBytes,
      store: values.store === true,
      rates,
    });
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ context, kvDtype, gpus, ...placement })}\n`);
    } else {
      io.stdout.write(describe(placement, context, gpus, kvName));
    }
    return 0;
  },
};
