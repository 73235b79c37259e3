#!/usr/bin/python3
"""Independent float64 PyTorch reference for RoPE initialisation (every rope type Llama accepts).

Written from the formulas (RoFormer, NTK-aware "dynamic" scaling, Llama 3.1's frequency bands,
YaRN's "NTK-by-parts" ramp and temperature), following the semantics of Hugging Face transformers'
modeling_rope_utils: default, linear, dynamic, llama3, yarn. It does not import transformers.

    /usr/bin/python3 test/reference/rope_reference.py OUT_DIR

writes one JSON fixture per case into OUT_DIR (test/fixtures/rope/ is the committed copy). As a
module, `rope_init(config, seq_len=None)` is used by llama_reference.py.
"""

import json
import math
import os
import sys

import torch

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# config.json -> rope settings (the subset of transformers' standardisation that Llama uses)
# ---------------------------------------------------------------------------------------------


def rope_settings(config):
    """Returns (rope dict with 'rope_type', base, rotary dim) from a config.json dict.

    transformers 4 writes `rope_scaling` + top-level `rope_theta`; transformers 5 writes
    `rope_parameters` with `rope_theta` inside. The older key `type` stands for `rope_type`.
    """
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = dict(rope)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope["rope_type"] = rope_type
    base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    dim = int(head_dim * partial)
    if rope_type in ("llama3", "yarn"):
        if "original_max_position_embeddings" in config:
            rope["original_max_position_embeddings"] = config["original_max_position_embeddings"]
        rope.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
    return rope, float(base), dim


def _pair_exponents(dim):
    # 2i / dim for i = 0 .. dim/2 - 1, in float64
    return torch.arange(0, dim, 2, dtype=F64) / dim


def rope_init(config, seq_len=None):
    """(inv_freq float64 tensor of dim/2, attention_scaling float) for a config.json dict."""
    rope, base, dim = rope_settings(config)
    kind = rope["rope_type"]
    max_pos = config.get("max_position_embeddings", 2048)

    if kind == "default":
        return torch.pow(torch.tensor(base, dtype=F64), -_pair_exponents(dim)), 1.0

    if kind == "linear":
        # Position interpolation: positions / factor, i.e. every frequency / factor.
        inv = torch.pow(torch.tensor(base, dtype=F64), -_pair_exponents(dim))
        return inv / rope["factor"], 1.0

    if kind == "dynamic":
        # NTK-aware base growth once the sequence exceeds the trained length.
        factor = rope["factor"]
        L = max_pos if seq_len is None else max(seq_len, max_pos)
        grown = base * ((factor * L / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return torch.pow(torch.tensor(grown, dtype=F64), -_pair_exponents(dim)), 1.0

    if kind == "llama3":
        inv = torch.pow(torch.tensor(base, dtype=F64), -_pair_exponents(dim))
        factor = rope["factor"]
        lo, hi = rope["low_freq_factor"], rope["high_freq_factor"]
        orig = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        # fraction of the way from "scale by factor" (long wavelengths) to "keep" (short ones)
        keep = ((orig / wavelen) - lo) / (hi - lo)
        keep = torch.where(wavelen > orig / lo, torch.zeros_like(keep), keep)
        keep = torch.where(wavelen < orig / hi, torch.ones_like(keep), keep)
        out = inv / factor * (1 - keep) + inv * keep
        return out, 1.0

    if kind == "yarn":
        factor = rope.get("factor")
        orig = rope["original_max_position_embeddings"]
        if factor is None:
            factor = max_pos / orig

        def temperature(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        att = rope.get("attention_factor")
        if att is None:
            m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")
            att = temperature(factor, m) / temperature(factor, m_all) if (m and m_all) else temperature(factor)

        fast = rope.get("beta_fast") or 32
        slow = rope.get("beta_slow") or 1

        # YaRN paper: r(d) = L / lambda_d rotations over the original context L. The pair index d
        # where r(d) = rotations solves lambda_d = 2 pi base^(2d/dim) = L / rotations.
        def index_for(rotations):
            return dim * math.log(orig / (2 * math.pi * rotations)) / (2 * math.log(base))

        lo, hi = index_for(fast), index_for(slow)
        if rope.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        d = torch.arange(dim // 2, dtype=F64)
        ramp = ((d - lo) / (hi - lo)).clamp(0, 1)  # 0: keep (extrapolate), 1: divide by factor
        theta = torch.pow(torch.tensor(base, dtype=F64), -_pair_exponents(dim))
        out = theta * (1 - ramp) + (theta / factor) * ramp
        return out, float(att)

    raise ValueError(f"rope type {kind!r} is not supported")


def cos_sin(inv_freq, attention_scaling, positions):
    """(len(positions), dim/2) cos and sin of position * inv_freq, times attention_scaling."""
    pos = torch.tensor(positions, dtype=F64)[:, None]
    ang = pos * inv_freq[None, :]
    return torch.cos(ang) * attention_scaling, torch.sin(ang) * attention_scaling


# ---------------------------------------------------------------------------------------------
# fixture cases
# ---------------------------------------------------------------------------------------------


def llama(head_dim=128, heads=32, theta=500000.0, max_pos=131072, **extra):
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": head_dim * heads,
        "intermediate_size": 4 * head_dim * heads,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 4 if heads >= 4 else heads,
        "vocab_size": 1024,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": theta,
        "max_position_embeddings": max_pos,
    }
    cfg.update(extra)
    return cfg


def ultralong(factor):
    return llama(
        max_pos=8192 * factor,
        rope_scaling={
            "rope_type": "yarn",
            "factor": float(factor),
            "original_max_position_embeddings": 8192,
        },
    )


CASES = [
    ("default_hd128_theta500k", "Llama 3 without scaling", llama(), None),
    ("default_hd64_theta10k", "Llama 2 style", llama(head_dim=64, heads=8, theta=10000.0, max_pos=4096), None),
    ("partial_rotary_half", "partial_rotary_factor 0.5 (half the channels rotate)",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=4096, partial_rotary_factor=0.5), None),
    ("linear_f4", "linear (position interpolation) factor 4, older `type` key",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=4096, rope_scaling={"type": "linear", "factor": 4.0}), None),
    ("dynamic_f2_init", "dynamic NTK factor 2 at init (seq_len unset = max_position_embeddings)",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=2048, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), None),
    ("dynamic_f2_below", "dynamic NTK factor 2, seq_len 1000 below max_position_embeddings 2048",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=2048, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 1000),
    ("dynamic_f2_above", "dynamic NTK factor 2, seq_len 10000 above max_position_embeddings 2048",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=2048, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 10000),
    ("llama3_31", "Llama 3.1: llama3 factor 8, low 1, high 4, original 8192",
     llama(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}), None),
    ("llama3_hd64", "llama3 factor 32 on head_dim 64, theta 10000, original 2048",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=65536,
           rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 8.0,
                         "original_max_position_embeddings": 2048}), None),
    ("yarn_ultralong_1m", "UltraLong 1M: yarn factor 128 over 8192, transformers defaults (beta_fast 32, beta_slow 1)",
     ultralong(128), None),
    ("yarn_ultralong_2m", "UltraLong 2M: yarn factor 256 over 8192, defaults", ultralong(256), None),
    ("yarn_ultralong_4m", "UltraLong 4M: yarn factor 512 over 8192, defaults", ultralong(512), None),
    ("yarn_ultralong_1m_llama3_keys",
     "UltraLong-style yarn carrying llama3's low/high_freq_factor (ignored by yarn)",
     llama(max_pos=1048576, rope_scaling={"rope_type": "yarn", "factor": 128.0, "original_max_position_embeddings": 8192,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0}), None),
    ("yarn_paper_alpha1_beta4", "yarn factor 128 with the paper's alpha 1 / beta 4 as beta_slow 1 / beta_fast 4",
     llama(max_pos=1048576, rope_scaling={"rope_type": "yarn", "factor": 128.0, "original_max_position_embeddings": 8192,
                                          "beta_fast": 4.0, "beta_slow": 1.0}), None),
    ("yarn_f512_no_truncate", "yarn factor 512, truncate false (fractional ramp ends)",
     llama(max_pos=4194304, rope_scaling={"rope_type": "yarn", "factor": 512.0, "original_max_position_embeddings": 8192,
                                          "truncate": False}), None),
    ("yarn_hd64_mscale_equal", "DeepSeek-style mscale = mscale_all_dim = 0.707 (attention scaling 1)",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=163840,
           rope_scaling={"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}), None),
    ("yarn_hd64_mscale_ratio", "mscale 1.0, mscale_all_dim 0.5 (ratio of two temperatures)",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=163840,
           rope_scaling={"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                         "mscale": 1.0, "mscale_all_dim": 0.5}), None),
    ("yarn_hd64_mscale_zero", "mscale_all_dim 0 counts as unset: temperature of factor alone",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=163840,
           rope_scaling={"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                         "mscale": 1.0, "mscale_all_dim": 0}), None),
    ("yarn_hd64_attention_factor", "explicit attention_factor 0.8 wins over mscale",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=32768,
           rope_scaling={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
                         "attention_factor": 0.8, "mscale": 1.0, "mscale_all_dim": 0.5}), None),
    ("yarn_no_original", "yarn factor 4 with no original_max_position_embeddings (max_position_embeddings used)",
     llama(head_dim=64, heads=8, theta=10000.0, max_pos=4096, rope_scaling={"rope_type": "yarn", "factor": 4.0}), None),
    ("yarn_v5_rope_parameters", "transformers 5 layout: rope_parameters with rope_theta inside, no top-level rope_theta",
     {k: v for k, v in llama(max_pos=1048576).items() if k != "rope_theta"} | {
         "rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 128.0,
                             "original_max_position_embeddings": 8192}}, None),
]

POSITIONS = [0, 1, 7, 8191, 8192, 131071, 1048575, 4194303]


def fixture(name, description, config, seq_len):
    inv, att = rope_init(config, seq_len)
    cos, sin = cos_sin(inv, att, POSITIONS)
    return {
        "name": name,
        "description": description,
        "generator": "test/reference/rope_reference.py (float64 PyTorch, independent of transformers)",
        "config": config,
        "seq_len": seq_len,
        "inv_freq": inv.tolist(),
        "attention_scaling": att,
        "positions": POSITIONS,
        "cos": cos.tolist(),
        "sin": sin.tolist(),
    }


def main(argv):
    if len(argv) != 2:
        print("usage: rope_reference.py OUT_DIR", file=sys.stderr)
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name, description, config, seq_len in CASES:
        with open(os.path.join(out_dir, f"{name}.json"), "w") as fh:
            json.dump(fixture(name, description, config, seq_len), fh, indent=1)
            fh.write("\n")
    print(f"wrote {len(CASES)} rope fixtures to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
