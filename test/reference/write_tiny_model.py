#!/usr/bin/python3
"""Writes a tiny Llama model directory in the exact Hugging Face layout, for testing the reference.

    /usr/bin/python3 test/reference/write_tiny_model.py OUT_DIR [--dtype f32|bf16|f16] [--shards N]
        [--layers 2] [--hidden 64] [--heads 4] [--kv-heads 2] [--head-dim D] [--ffn 128] [--vocab 256]
        [--rope default|linear|dynamic|llama3|yarn] [--rope-factor F] [--original-max-pos N]
        [--max-pos N] [--theta T] [--tie] [--zero-blocks] [--round-bf16] [--seed 0]

Weights are drawn from a seeded torch.Generator: embeddings N(0, 1), every Linear N(0, 1/fan_in)
so each projection keeps unit scale, norms 1 + N(0, 0.1). --round-bf16 rounds every value to the
bfloat16 grid first, so the F32, BF16 and F16 writings of one seed hold identical numbers (F16
holds every bf16 value of this size range). --zero-blocks zeroes every attention and MLP weight, so
the model is lm_head(rmsnorm(embedding)) and can be checked by hand.

This is a test helper for the reference; the project's own generator is `ultralong make-model`.
"""

import argparse
import json
import os
import struct
import sys

import torch

DTYPES = {"f32": (torch.float32, "F32"), "bf16": (torch.bfloat16, "BF16"), "f16": (torch.float16, "F16")}


def tensor_bytes(t):
    # numpy has no bfloat16: reinterpret the 2-byte patterns as int16.
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().tobytes()
    return t.contiguous().numpy().tobytes()


def write_safetensors(path, tensors, st_dtype):
    """tensors: ordered list of (name, tensor already in the file dtype)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors:
        b = tensor_bytes(t)
        header[name] = {"dtype": st_dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)  # data starts 8-byte aligned, as the spec recommends
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for b in blobs:
            fh.write(b)
    return offset


def rope_scaling(args):
    if args.rope == "default":
        return None
    if args.rope in ("linear", "dynamic"):
        return {"rope_type": args.rope, "factor": args.rope_factor}
    if args.rope == "llama3":
        return {"rope_type": "llama3", "factor": args.rope_factor, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": args.original_max_pos}
    return {"rope_type": "yarn", "factor": args.rope_factor, "original_max_position_embeddings": args.original_max_pos}


def build(args):
    g = torch.Generator().manual_seed(args.seed)
    E, F, H, KV, V = args.hidden, args.ffn, args.heads, args.kv_heads, args.vocab
    D = args.head_dim or E // H

    def normal(*shape, std=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    def linear(out_f, in_f):
        w = normal(out_f, in_f, std=in_f ** -0.5)
        return torch.zeros_like(w) if args.zero_blocks else w

    tensors = [("model.embed_tokens.weight", normal(V, E))]
    for i in range(args.layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", 1 + normal(E, std=0.1)),
            (p + "self_attn.q_proj.weight", linear(H * D, E)),
            (p + "self_attn.k_proj.weight", linear(KV * D, E)),
            (p + "self_attn.v_proj.weight", linear(KV * D, E)),
            (p + "self_attn.o_proj.weight", linear(E, H * D)),
            (p + "post_attention_layernorm.weight", 1 + normal(E, std=0.1)),
            (p + "mlp.gate_proj.weight", linear(F, E)),
            (p + "mlp.up_proj.weight", linear(F, E)),
            (p + "mlp.down_proj.weight", linear(E, F)),
        ]
    tensors.append(("model.norm.weight", 1 + normal(E, std=0.1)))
    if not args.tie:
        tensors.append(("lm_head.weight", normal(V, E, std=E ** -0.5)))
    if args.round_bf16:
        tensors = [(n, t.to(torch.bfloat16).to(torch.float64)) for n, t in tensors]

    max_pos = args.max_pos or (args.original_max_pos * int(args.rope_factor) if args.rope in ("yarn", "llama3")
                               else 2048)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": E,
        "intermediate_size": F,
        "num_hidden_layers": args.layers,
        "num_attention_heads": H,
        "num_key_value_heads": KV,
        "head_dim": D,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": args.theta,
        "rope_scaling": rope_scaling(args),
        "max_position_embeddings": max_pos,
        "vocab_size": V,
        "tie_word_embeddings": args.tie,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[args.dtype],
    }
    return config, tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description="write a tiny HF Llama model directory")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=None)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--rope", choices=["default", "linear", "dynamic", "llama3", "yarn"], default="default")
    ap.add_argument("--rope-factor", type=float, default=4.0)
    ap.add_argument("--original-max-pos", type=int, default=256)
    ap.add_argument("--max-pos", type=int, default=None)
    ap.add_argument("--theta", type=float, default=10000.0)
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--zero-blocks", action="store_true")
    ap.add_argument("--round-bf16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    config, tensors = build(args)
    torch_dtype, st_dtype = DTYPES[args.dtype]
    tensors = [(n, t.to(torch_dtype)) for n, t in tensors]
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")
    if args.shards <= 1:
        write_safetensors(os.path.join(args.out_dir, "model.safetensors"), tensors, st_dtype)
    else:
        n = args.shards
        per = -(-len(tensors) // n)
        weight_map, total = {}, 0
        for s in range(n):
            fname = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
            part = tensors[s * per:(s + 1) * per]
            total += write_safetensors(os.path.join(args.out_dir, fname), part, st_dtype)
            weight_map.update({name: fname for name, _ in part})
        with open(os.path.join(args.out_dir, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
            fh.write("\n")
    print(json.dumps({"out_dir": args.out_dir, "dtype": args.dtype, "shards": max(1, args.shards),
                      "tensors": len(tensors)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
