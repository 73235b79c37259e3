#!/usr/bin/python3
"""Writes the golden fixtures the WASM runtime (and any runtime) is checked against.

For each case below: generate the model with `ultralong make-model` (deterministic: same options and
seed, same bytes), apply the case's config.json patch, draw the token ids (Python's random with the
case seed), run the independent float64 reference (llama_reference.py) over every position, and keep
a compact summary in test/fixtures/golden/<case>.bin:

    tokens   int32[T]       the input ids
    argmax   int32[T]       per position: index of the largest logit
    top1     float32[T]     per position: the largest logit
    top2     float32[T]     per position: the second largest (the argmax is only meaningful when
                            top1 - top2 exceeds the runtime's tolerance)
    last     float32[L, V]  the full logits of the last L positions

all little-endian, in that order. manifest.json lists the cases with the make-model options, the
config patch, T, L, V and the command lines that produced them. Regenerate with

    /usr/bin/python3 test/reference/make_goldens.py            # every case
    /usr/bin/python3 test/reference/make_goldens.py yarn-gqa8  # cases whose name contains this

(needs node_modules for the ultralong CLI, and PyTorch for the reference).
"""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "test", "fixtures", "golden")
LAST = 4

# GenerateOptions (core/model/generate.ts) per case; every case: 2 layers, hidden 128, ffn 256,
# vocab 512. Coverage: each rope type; GQA ratio 1, 4 and 8; head_dim 64 and 128; F32 and BF16
# weights; yarn factor 128 over an original context of 64, so positions run ~45x past it.
CASES = [
    {"name": "default-gqa1-hd64-f32", "options": {"rope": "default", "heads": 4, "kvHeads": 4, "headDim": 64,
     "dtype": "f32", "seed": 11}, "tokens": 256},
    {"name": "linear-gqa4-hd64-bf16", "options": {"rope": "linear", "heads": 8, "kvHeads": 2, "headDim": 64,
     "dtype": "bf16", "tieEmbeddings": True, "seed": 12}, "tokens": 512},
    {"name": "dynamic-gqa8-hd128-f32", "options": {"rope": "dynamic", "heads": 8, "kvHeads": 1, "headDim": 128,
     "dtype": "f32", "maxPos": 512, "seed": 13}, "tokens": 700},
    {"name": "llama3-gqa4-hd128-bf16", "options": {"rope": "llama3", "heads": 4, "kvHeads": 1, "headDim": 128,
     "dtype": "bf16", "shards": 2, "seed": 14}, "tokens": 1024},
    {"name": "yarn-gqa8-hd64-f32", "options": {"rope": "yarn", "heads": 8, "kvHeads": 1, "headDim": 64,
     "dtype": "f32", "seed": 15}, "tokens": 3000,
     "configPatch": {"max_position_embeddings": 8192, "rope_scaling": {"original_max_position_embeddings": 64}}},
    {"name": "yarn-gqa1-hd128-bf16", "options": {"rope": "yarn", "heads": 2, "kvHeads": 2, "headDim": 128,
     "dtype": "bf16", "seed": 16}, "tokens": 2000,
     "configPatch": {"max_position_embeddings": 8192, "rope_scaling": {"original_max_position_embeddings": 64}}},
]
COMMON = {"layers": 2, "hidden": 128, "ffn": 256, "vocab": 512}

FLAGS = {"layers": "--layers", "hidden": "--hidden", "heads": "--heads", "kvHeads": "--kv-heads",
         "headDim": "--head-dim", "ffn": "--ffn", "vocab": "--vocab", "rope": "--rope",
         "ropeFactor": "--rope-factor", "maxPos": "--max-pos", "dtype": "--dtype", "shards": "--shards",
         "seed": "--seed"}


def make_model_args(options, model_dir):
    args = ["node", "functions/cli/bin.js", "make-model", model_dir]
    for key, value in options.items():
        if key == "tieEmbeddings":
            if value:
                args.append("--tie-embeddings")
        else:
            args += [FLAGS[key], str(value)]
    return args


def patch_config(model_dir, patch):
    """Merge `patch` into config.json (one level deep for dicts such as rope_scaling)."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as fh:
        config = json.load(fh)
    for key, value in patch.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    with open(path, "w") as fh:
        json.dump(config, fh, indent=2)


def tokens_for(case, vocab):
    rng = random.Random(case["options"]["seed"])
    return [rng.randrange(vocab) for _ in range(case["tokens"])]


def run_case(case, work):
    options = {**COMMON, **case["options"]}
    model_dir = os.path.join(work, case["name"])
    make = make_model_args(options, model_dir)
    subprocess.run(make, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    if "configPatch" in case:
        patch_config(model_dir, case["configPatch"])
    tokens = tokens_for(case, options["vocab"])
    tokens_file = os.path.join(work, case["name"] + ".tokens")
    with open(tokens_file, "wb") as fh:
        fh.write(struct.pack(f"<{len(tokens)}i", *tokens))
    logits_file = os.path.join(work, case["name"] + ".logits")
    ref = ["/usr/bin/python3", "test/reference/llama_reference.py", model_dir,
           "--tokens-file", tokens_file, "--out", logits_file]
    subprocess.run(ref, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    V = options["vocab"]
    T = len(tokens)
    with open(logits_file, "rb") as fh:
        logits = torch.frombuffer(bytearray(fh.read()), dtype=torch.float32).reshape(T, V)
    top = torch.topk(logits, k=2, dim=1)
    with open(os.path.join(OUT, case["name"] + ".bin"), "wb") as fh:
        fh.write(struct.pack(f"<{T}i", *tokens))
        fh.write(top.indices[:, 0].to(torch.int32).numpy().tobytes())
        fh.write(top.values[:, 0].contiguous().numpy().tobytes())
        fh.write(top.values[:, 1].contiguous().numpy().tobytes())
        fh.write(logits[T - LAST:].contiguous().numpy().tobytes())
    return {
        "name": case["name"],
        "options": options,
        "configPatch": case.get("configPatch"),
        "tokens": T,
        "last": LAST,
        "vocab": V,
        "commands": [
            " ".join(make).replace(model_dir, "MODEL_DIR"),
            *(["patch MODEL_DIR/config.json with configPatch"] if "configPatch" in case else []),
            " ".join(ref).replace(model_dir, "MODEL_DIR").replace(tokens_file, "TOKENS").replace(logits_file, "LOGITS"),
        ],
    }


def main(argv):
    only = argv[1] if len(argv) > 1 else ""
    os.makedirs(OUT, exist_ok=True)
    manifest_path = os.path.join(OUT, "manifest.json")
    old = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as fh:
            old = {c["name"]: c for c in json.load(fh)["cases"]}
    work = tempfile.mkdtemp(prefix="goldens-")
    try:
        for case in CASES:
            if only in case["name"]:
                print(f"make_goldens: {case['name']}", file=sys.stderr)
                old[case["name"]] = run_case(case, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "generator": "test/reference/make_goldens.py (float64 reference: test/reference/llama_reference.py)",
        "layout": "per case <name>.bin: tokens i32[T], argmax i32[T], top1 f32[T], top2 f32[T], last f32[L, V]",
        "cases": [old[c["name"]] for c in CASES if c["name"] in old],
    }
    with open(manifest_path, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
