#!/usr/bin/env python3
"""Runs the GPU check of the native core and prints one JSON object (see gpu-check.sh).

Steps, each recorded in the JSON (a failing step is reported, the others still run):
  kernels   `ul_check kernels`: every op of the CUDA backend against the C++ reference kernels
  golden    engine logits (whole prefill, and prefill + one decode step) against the float64 PyTorch
            reference (test/reference/llama_reference.py) on tiny generated models
  bench     attention vs torch SDPA (flash backend), causal bf16, 32/8 heads, d 128, at 16K/64K/128K;
            GEMM vs torch.matmul on the Llama-3.1-8B projection shapes; prefill tokens/s of an
            8B-shaped random-weight model at 32K and 128K
With --dry-run every step runs on the C++ reference backend with tiny shapes and torch on the CPU,
so the whole pipeline (build, programs, parsing, JSON) is exercised on a machine with no GPU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "test", "reference"))
from llama_reference import forward as reference_forward  # noqa: E402
from rope_reference import rope_init  # noqa: E402
from write_tiny_model import main as write_tiny_model  # noqa: E402

# Normalised error bounds (max |ours - reference| / max |reference|) for engine logits: the
# reference backend computes in f32 (only f32 rounding); CUDA keeps bf16 activations and KV, whose
# 2^-9 relative rounding through two layers and the lm_head stays well under 3%.
LOGITS_TOL = {"reference": 1e-4, "cuda": 3e-2}
TARGETS = {
    "attention_vs_sdpa_ratio": 1.0,
    "gemm_vs_torch_ratio": 0.85,
    "prefill_128k_seconds": 15.0,
}


def run(cmd, timeout):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} {cmd[1]} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout), time.time() - t0


def step(results, name, fn):
    try:
        results[name] = fn()
    except Exception as e:  # a failed step is data for the report, not the end of the check
        results[name] = {"error": f"{type(e).__name__}: {e}"}


# ---- golden logits -------------------------------------------------------------------------------

GOLDEN_CASES = [
    # name, write_tiny_model.py flags, tokens, prefix (decode after prefill)
    ("yarn_hd128_gqa2", ["--dtype", "bf16", "--layers", "2", "--hidden", "512", "--heads", "4", "--kv-heads", "2",
                         "--head-dim", "128", "--ffn", "768", "--vocab", "512", "--rope", "yarn", "--rope-factor", "8",
                         "--original-max-pos", "64", "--seed", "1"], 100, 0),
    ("yarn_hd128_decode", None, 100, 99),
    ("llama3_hd16_tied_f32", ["--dtype", "f32", "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                              "--ffn", "128", "--vocab", "256", "--rope", "llama3", "--rope-factor", "8",
                              "--original-max-pos", "32", "--tie", "--seed", "2"], 37, 20),
]


def write_engine_config(model_dir, path):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rotary_dim = int(head_dim * cfg.get("partial_rotary_factor", 1.0))
    inv_freq, scaling = rope_init(cfg)
    assert len(inv_freq) == rotary_dim // 2
    lines = [
        f"hidden_size {cfg['hidden_size']}",
        f"intermediate_size {cfg['intermediate_size']}",
        f"num_layers {cfg['num_hidden_layers']}",
        f"num_heads {heads}",
        f"num_kv_heads {cfg.get('num_key_value_heads', heads)}",
        f"head_dim {head_dim}",
        f"vocab_size {cfg['vocab_size']}",
        f"tie_word_embeddings {1 if cfg.get('tie_word_embeddings') else 0}",
        f"rms_norm_eps {cfg['rms_norm_eps']!r}",
        f"rotary_dim {rotary_dim}",
        f"attention_scaling {float(scaling)!r}",
        "inv_freq " + " ".join(repr(float(x)) for x in inv_freq.tolist()),
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def golden(bin_path, work, backend):
    out = []
    model_dir = None
    for name, flags, n_tokens, prefix in GOLDEN_CASES:
        if flags is not None:
            model_dir = os.path.join(work, name)
            if not os.path.exists(os.path.join(model_dir, "config.json")):
                with open(os.devnull, "w") as quiet:
                    saved, sys.stdout = sys.stdout, quiet
                    try:
                        write_tiny_model([model_dir, *flags])
                    finally:
                        sys.stdout = saved
        with open(os.path.join(model_dir, "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        g = torch.Generator().manual_seed(len(name))
        tokens = torch.randint(0, vocab, (n_tokens,), generator=g, dtype=torch.int32)
        tok_file = os.path.join(work, f"{name}.tokens")
        cfg_file = os.path.join(work, f"{name}.cfg")
        logits_file = os.path.join(work, f"{name}.logits")
        with open(tok_file, "wb") as f:
            f.write(tokens.numpy().tobytes())
        write_engine_config(model_dir, cfg_file)
        want = reference_forward(model_dir, tokens.tolist(), last=1)[0].to(torch.float64)
        cmd = [bin_path, "logits", "--config", cfg_file, "--model", model_dir, "--tokens", tok_file,
               "--out", logits_file, "--backend", backend]
        if prefix:
            cmd += ["--prefix", str(prefix)]
        run(cmd, 120)
        with open(logits_file, "rb") as f:
            got = torch.frombuffer(bytearray(f.read()), dtype=torch.float32).to(torch.float64)
        err = (got - want).abs().max().item()
        ref = want.abs().max().item()
        tol = LOGITS_TOL[backend]
        out.append({
            "case": name, "tokens": n_tokens, "decode_after_prefix": prefix or None,
            "max_abs_err": err, "max_abs_ref": ref, "normalized_err": err / ref, "tolerance": tol,
            "same_argmax": int(got.argmax()) == int(want.argmax()), "ok": err / ref <= tol,
        })
    return out


# ---- PyTorch peers on the same device --------------------------------------------------------------

def timed(fn, device, iters):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def torch_attention(seq_len, device):
    H, KVH, D = 32, 8, 128
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(1, H, seq_len, D, device=device, dtype=dt)
    k = torch.randn(1, KVH, seq_len, D, device=device, dtype=dt)
    v = torch.randn(1, KVH, seq_len, D, device=device, dtype=dt)
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    how = "sdpa_flash"
    if device == "cuda" and sdpa is not None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def fn():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                try:
                    return sdpa(q, k, v, is_causal=True, enable_gqa=True)
                except (RuntimeError, TypeError):
                    return sdpa(q, k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1), is_causal=True)
    else:  # CPU dry run (Debian's torch 1.13 has no SDPA): plain masked softmax attention
        how = "torch_math_cpu"
        ke, ve = k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1)
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()

        def fn():
            s = (q @ ke.transpose(-1, -2)) / D**0.5
            return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ ve
    s = timed(fn, device, 2 if seq_len > 32768 else 3)
    return {"seconds": s, "tflops": 4.0 * seq_len * seq_len * D * H / 2 / s / 1e12, "peer": how}


def torch_gemm(m, k, n, device):
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(m, k, device=device, dtype=dt)
    w = torch.randn(n, k, device=device, dtype=dt) * 0.02
    s = timed(lambda: torch.matmul(x, w.t()), device, 5)
    return {"seconds": s, "tflops": 2.0 * m * k * n / s / 1e12}


def bench(bin_path, backend, device, dry):
    lens = [128, 256] if dry else [16384, 65536, 131072]
    ours, _ = run([bin_path, "bench-attention", "--backend", backend, "--lens", ",".join(map(str, lens))], 300)
    attention = []
    for r in ours["results"]:
        peer = torch_attention(r["seq_len"], device)
        attention.append({"seq_len": r["seq_len"], "ours_tflops": r["tflops"], "ours_seconds": r["seconds"],
                          "torch_tflops": peer["tflops"], "torch_seconds": peer["seconds"], "peer": peer["peer"],
                          "ratio": r["tflops"] / peer["tflops"]})
    m = 4 if dry else 4096
    gemm = []
    variants = [("ours", {})]
    if not dry:
        variants.append(("ours_own_kernel", {"UL_GEMM": "own"}))  # our tensor-core kernel, not cuBLASLt
    rows = {}
    for label, env in variants:
        r = subprocess.run([bin_path, "bench-gemm", "--backend", backend, "--m", str(m)], capture_output=True,
                           text=True, timeout=300, env={**os.environ, **env})
        if r.returncode != 0:
            raise RuntimeError(f"bench-gemm failed: {r.stderr.strip()[-2000:]}")
        res = json.loads(r.stdout)
        for x in res["results"]:
            rows.setdefault(x["name"], {"name": x["name"], "m": x["m"], "k": x["k"], "n": x["n"]})
            rows[x["name"]][f"{label}_tflops"] = x["tflops"]
            rows[x["name"]][f"{label}_backend"] = res["backend"]
    for row in rows.values():
        peer = torch_gemm(row["m"], row["k"], row["n"], device)
        row["torch_tflops"] = peer["tflops"]
        row["ratio"] = row["ours_tflops"] / peer["tflops"]
        gemm.append(row)
    prefill_lens = "32,64" if dry else "32768,131072"
    shape = "tiny" if dry else "8b"
    try:
        prefill, _ = run([bin_path, "bench-prefill", "--backend", backend, "--shape", shape, "--lens", prefill_lens], 300)
    except subprocess.TimeoutExpired:
        prefill = {"error": "timed out after 300 s"}
    return {"attention": attention, "gemm": gemm, "prefill": prefill}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", default=None)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    dry = args.dry_run
    backend = "reference" if dry else "cuda"
    device = "cpu" if dry else "cuda"
    work = args.work or tempfile.mkdtemp(prefix="ul-gpu-check-")
    os.makedirs(work, exist_ok=True)
    results = {
        "dry_run": dry,
        "backend": backend,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run: C++ reference kernels)",
        "torch": torch.__version__,
    }
    if dry:
        results["note"] = ("dry run: the CUDA kernels were not executed; every figure is the C++ reference "
                           "backend on tiny shapes, proving the pipeline, not the GPU")
    kernel_cmd = [args.bin, "kernels", "--backend", backend] + (["--tiny"] if dry else [])
    step(results, "kernels", lambda: run(kernel_cmd, 300)[0])
    step(results, "golden", lambda: golden(args.bin, work, backend))
    step(results, "bench", lambda: bench(args.bin, backend, device, dry))
    b = results.get("bench", {})
    summary = {}
    if isinstance(b, dict) and "attention" in b:
        summary["attention_min_ratio_vs_sdpa"] = min(x["ratio"] for x in b["attention"])
        summary["gemm_min_ratio_vs_torch"] = min(x["ratio"] for x in b["gemm"])
        pre = b.get("prefill", {}).get("results", [])
        if pre:
            summary["prefill_longest"] = pre[-1]
    results["summary"] = summary
    results["targets"] = TARGETS
    kernels_ok = isinstance(results.get("kernels"), dict) and results["kernels"].get("ok") is True
    golden_ok = isinstance(results.get("golden"), list) and all(g["ok"] for g in results["golden"])
    results["ok"] = kernels_ok and golden_ok and "error" not in results.get("bench", {})
    results["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
