#!/usr/bin/python3
"""Property checks of llama_reference.py that need tensor surgery; test/reference.test.ts runs it.

    /usr/bin/python3 test/reference/reference_checks.py WORK_DIR

prints one JSON object of measured differences (the test asserts on them):
  gqa_vs_expanded   GQA model vs the same model with K/V heads duplicated to one per query head
                    (repeat_kv semantics: query head h reads kv head h // n_rep): should be ~0
  gqa_vs_tiled      ... duplicated in the wrong (tiled) order: must be large
  prefix_default    logits of tokens[:k] inside a longer run vs a run on tokens[:k] (causality)
  prefix_yarn       the same with yarn rope (frequencies do not depend on the length)
  prefix_dynamic    the same with dynamic rope past max_position_embeddings: must differ
  module_vs_cli     forward() as a module vs the CLI's float32 file
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_reference as ref  # noqa: E402
import write_tiny_model as wtm  # noqa: E402


def write_model(out_dir, *extra):
    wtm.main([out_dir, *extra])


def max_diff(a, b):
    return float((a - b).abs().max())


def expanded_copy(src, dst, tiled):
    """Rewrite `src` with num_key_value_heads = num_attention_heads, duplicating K/V heads."""
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    n_rep = H // KV
    w = ref.load_weights(src)
    out = []
    for name, t in w.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            heads = t.view(KV, D, -1)
            heads = heads.repeat(n_rep, 1, 1) if tiled else heads.repeat_interleave(n_rep, dim=0)
            t = heads.reshape(H * D, -1)
        out.append((name, t.to(torch.float32)))
    wtm.write_safetensors(os.path.join(dst, "model.safetensors"), out, "F32")
    cfg["num_key_value_heads"] = H
    with open(os.path.join(dst, "config.json"), "w") as fh:
        json.dump(cfg, fh)


def main(argv):
    work = argv[1]
    tokens = [(i * 37 + 11) % 256 for i in range(48)]
    result = {}

    gqa = os.path.join(work, "gqa")
    write_model(gqa, "--heads", "4", "--kv-heads", "2", "--seed", "3")
    base = ref.forward(gqa, tokens)
    expanded_copy(gqa, os.path.join(work, "gqa-expanded"), tiled=False)
    expanded_copy(gqa, os.path.join(work, "gqa-tiled"), tiled=True)
    result["gqa_vs_expanded"] = max_diff(base, ref.forward(os.path.join(work, "gqa-expanded"), tokens))
    result["gqa_vs_tiled"] = max_diff(base, ref.forward(os.path.join(work, "gqa-tiled"), tokens))

    for rope, extra in (("default", []), ("yarn", ["--rope", "yarn", "--rope-factor", "8",
                                                    "--original-max-pos", "16"]),
                        ("dynamic", ["--rope", "dynamic", "--rope-factor", "4", "--max-pos", "16"])):
        d = os.path.join(work, f"prefix-{rope}")
        write_model(d, "--seed", "5", *extra)
        model = ref.LlamaReference(d)
        full = model.forward(tokens)
        part = model.forward(tokens[:24])
        result[f"prefix_{rope}"] = max_diff(full[:24], part)

    out = os.path.join(work, "cli.bin")
    if ref.main([gqa, "--tokens", ",".join(map(str, tokens)), "--last", "5", "--out", out]) != 0:
        raise SystemExit("llama_reference.main failed")
    with open(out, "rb") as fh:
        cli = torch.frombuffer(bytearray(fh.read()), dtype=torch.float32).view(5, -1)
    result["module_vs_cli"] = max_diff(base[-5:].to(torch.float32), cli)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
