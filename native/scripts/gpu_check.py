#!/usr/bin/env python3
"""The GPU check of the native core, one stage at a time (see gpu-check.sh and docs/native.md).

Each stage runs in its own process (this script with --run-stage NAME) under its own time limit, so
a stage that hangs or is cut off is a line with "ok": false and the next stage still runs. As each
stage ends, one JSON line goes to stdout and is appended to OUT/gpu-check.jsonl (flushed), then a
final "summary" line: a run stopped from outside keeps every line it finished. Every line names the
GEMM that ran ("gemm": "cublaslt <path>", "own-wmma" or "reference").

With --dry-run every stage runs on the C++ reference backend with tiny shapes and torch on the CPU,
so the whole pipeline (build, programs, parsing, files, JSON) runs on a machine with no GPU.
"""

import argparse
import array
import glob
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "test", "reference"))

# Normalised error bounds (max |ours - reference| / max |reference|) for engine logits: the
# reference backend computes in f32 (only f32 rounding); CUDA keeps bf16 activations and KV, whose
# 2^-9 relative rounding through two layers and the lm_head stays well under 3%.
LOGITS_TOL = {"reference": 1e-4, "cuda": 3e-2}
# fp8 e4m3 KV against the same engine with bf16 (CUDA) or f32 (reference) KV, normalised as above.
# e4m3 keeps 3 mantissa bits (relative step 2^-4 = 6%) on each K and V element; attention averages
# thousands of them, and the two-layer test models stay within a few percent. The bound holds for
# any scale scheme that uses the e4m3 range (per head or per block), so this stage tests the ABI,
# not one scheme.
FP8_TOL = 5e-2
# KV export -> import -> forward against continuing: the same cache bytes (f32 export of an f32 or
# bf16 cache is exact) through the same kernels: equal but for run-to-run noise, which these
# kernels do not have. Not 0 only so that a cuBLASLt algorithm with a non-deterministic reduction
# would be reported as a number, not a failure.
KV_ROUNDTRIP_TOL = 1e-6
TARGETS = {
    "attention_vs_sdpa_ratio": 1.0,
    "gemm_vs_torch_ratio": 0.85,
    "prefill_128k_seconds": 15.0,
}

# name, time limit on one H200 (s), time limit in the dry run (s), what it proves. The H200 limits
# add up to 740 s (caps, not estimates: a stage ends when its work does).
STAGES = [
    ("build", 90, 300, "nvcc compiles every CUDA kernel and links ul_check with cudart (+ dlopen)"),
    ("kernels", 45, 300, "every CUDA op vs the C++ reference; GEMM on cuBLASLt and on our own kernel"),
    ("prefill", 30, 300, "engine logits of a one-shot prefill vs the float64 PyTorch reference"),
    ("chunked", 30, 300, "prefill in calls of 7, 13, 17 tokens and max_chunk 13 (none divides 50) vs float64"),
    ("decode", 30, 300, "prefill then a decode step (split-KV path) vs float64"),
    ("kv-roundtrip", 20, 300, "KV export -> truncate / new engine -> import gives the continuing logits"),
    ("fp8", 30, 300, "fp8-e4m3 KV logits within FP8_TOL of bf16 KV logits"),
    ("kv-export", 20, 300, "writes a KV export + model + logits to OUT/kv-export for import-gpu-kv.ts"),
    ("paged", 30, 300, "ul_engine_step (block tables, shared prefix, copy-on-write, mixed prefill/decode) == each sequence alone"),
    ("attention-fa2", 60, 300, "each prefill kernel (fa2, fa2-32, wmma) vs the reference through shuffled paged tables, ragged sizes, GQA 2/4/8/1"),
    ("bench-attention", 90, 300, "causal attention (fa2, fa2-32, wmma) vs torch SDPA flash, cuDNN and efficient at 16K, 64K, 128K"),
    ("bench-gemm", 30, 300, "the 8B projection GEMMs (cuBLASLt and own kernel) vs torch.matmul"),
    ("bench-prefill", 105, 300, "prefill tokens/s of an 8B-shaped random-weight engine at 32K and 128K"),
    ("bench-paged-decode", 90, 300, "16 sequences sharing a 4096-token prefix: one batched decode step vs 16 alone; "
     "one decode row over 128K and 1M keys (bf16, fp8): KV GB/s and fraction of 4.8 TB/s"),
    ("tiered", 40, 300, "tiered KV (0, 1, 3 device blocks; host blocks staged per layer) == resident KV bit for bit; host tier copy GB/s"),
]
STAGE_NAMES = [s[0] for s in STAGES]

# Test models (write_tiny_model.py flags). A: bf16, head_dim 128 (the flash path), yarn. B: f32,
# tied, head_dim 16 (split-KV only), llama3 rope.
MODELS = {
    "yarn_hd128_gqa2": ["--dtype", "bf16", "--layers", "2", "--hidden", "512", "--heads", "4", "--kv-heads", "2",
                        "--head-dim", "128", "--ffn", "768", "--vocab", "512", "--rope", "yarn", "--rope-factor", "8",
                        "--original-max-pos", "64", "--seed", "1"],
    "llama3_hd16_tied_f32": ["--dtype", "f32", "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                             "--ffn", "128", "--vocab", "256", "--rope", "llama3", "--rope-factor", "8",
                             "--original-max-pos", "32", "--tie", "--seed", "2"],
}
A, B = "yarn_hd128_gqa2", "llama3_hd16_tied_f32"


def log(msg):
    print(f"gpu-check: {msg}", file=sys.stderr, flush=True)


# ---- the stage processes -------------------------------------------------------------------------

class Ctx:
    def __init__(self, args):
        self.bin = args.bin
        self.work = args.work
        self.out = args.out
        self.dry = args.dry_run
        self.backend = "reference" if self.dry else "cuda"
        self.device = "cpu" if self.dry else "cuda"
        # The parent kills this process at the stage's limit; stages that measure several sizes stop
        # their programs a little earlier, so the sizes already measured are still reported.
        self.deadline = time.time() + (args.limit or 1e9) - 3

    def remaining(self):
        return max(1.0, self.deadline - time.time())


def run_json(cmd, env=None, timeout=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} {cmd[1]} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def read_f32(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return list(a)


def lcg_tokens(n, vocab, seed):
    """Deterministic token ids without torch (a 32-bit LCG)."""
    x, out = seed, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % 2**31
        out.append((x >> 8) % vocab)
    return out


def model_dir(ctx, name):
    d = os.path.join(ctx.work, name)
    if not os.path.exists(os.path.join(d, "config.json")):
        from write_tiny_model import main as write_tiny_model

        with open(os.devnull, "w") as quiet:
            saved, sys.stdout = sys.stdout, quiet
            try:
                write_tiny_model([d, *MODELS[name]])
            finally:
                sys.stdout = saved
    return d


def vocab_of(d):
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f)["vocab_size"]


def write_engine_config(mdir, path):
    from rope_reference import rope_init

    with open(os.path.join(mdir, "config.json")) as f:
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


class Case:
    """A model and a prompt: files for ul_check, and the float64 reference's last logits (cached)."""

    def __init__(self, ctx, model, n_tokens):
        self.ctx, self.model, self.n = ctx, model, n_tokens
        self.dir = model_dir(ctx, model)
        self.tokens = lcg_tokens(n_tokens, vocab_of(self.dir), seed=len(model) + n_tokens)
        stem = os.path.join(ctx.work, f"{model}-{n_tokens}")
        self.tok_file, self.cfg_file, self.ref_file = stem + ".tokens", stem + ".cfg", stem + ".ref64"
        if not os.path.exists(self.cfg_file):
            with open(self.tok_file, "wb") as f:
                f.write(array.array("i", self.tokens).tobytes())
            write_engine_config(self.dir, self.cfg_file)

    def reference(self):
        if not os.path.exists(self.ref_file):
            from llama_reference import forward as reference_forward

            want = reference_forward(self.dir, self.tokens, last=1)[0].double().tolist()
            with open(self.ref_file + ".tmp", "wb") as f:
                f.write(array.array("d", want).tobytes())
            os.replace(self.ref_file + ".tmp", self.ref_file)
        a = array.array("d")
        with open(self.ref_file, "rb") as f:
            a.frombytes(f.read())
        return list(a)

    def logits(self, label, flags, kv=None):
        out = os.path.join(self.ctx.work, f"{self.model}-{self.n}-{label}.logits")
        cmd = [self.ctx.bin, "logits", "--config", self.cfg_file, "--model", self.dir, "--tokens", self.tok_file,
               "--out", out, "--backend", self.ctx.backend, *flags]
        if kv:
            cmd += ["--kv", kv]
        res = run_json(cmd)
        return read_f32(out), res


def compare(got, want, tol):
    err = max(abs(g - w) if g == g else float("inf") for g, w in zip(got, want))
    ref = max(abs(w) for w in want)
    argmax = lambda v: max(range(len(v)), key=v.__getitem__)  # noqa: E731
    return {"max_abs_err": err, "max_abs_ref": ref, "normalized_err": err / ref, "tolerance": tol,
            "same_argmax": argmax(got) == argmax(want), "ok": err / ref <= tol}


def golden_runs(ctx, runs):
    """runs: (label, model, n_tokens, ul_check flags). Each vs the float64 reference."""
    out = []
    for label, model, n, flags in runs:
        case = Case(ctx, model, n)
        got, res = case.logits(label, flags)
        out.append({"case": f"{model}/{n}/{label}", "flags": " ".join(flags) or "one call",
                    **compare(got, case.reference(), LOGITS_TOL[ctx.backend])})
    return {"ok": all(r["ok"] for r in out), "cases": out}


def cublas_wheels():
    """cuBLASLt files of NVIDIA's / PyTorch's pip wheels under this Python's site-packages."""
    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    dirs += [d for d in os.environ.get("UL_PYTHON_SITE", "").split(":") if d]
    found = []
    for d in dict.fromkeys(dirs):
        for pat in ("nvidia/*/lib/libcublasLt.so*", "torch/lib/libcublasLt.so*"):
            found += glob.glob(os.path.join(d, pat))
    return sorted(set(found))


def stage_build(ctx):
    script = os.path.join(ROOT, "native", "scripts", "gpu-check.sh")
    cmd = ["bash", script, "--build-only"] + (["--dry-run"] if ctx.dry else [])
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"ok": False, "error": f"build failed ({r.returncode}): {r.stderr.strip()[-3000:]}"}
    built = time.time() - t0
    search = run_json([ctx.bin, "cublaslt-search"])
    res = {"build_seconds": round(built, 1), "cublaslt_search": search, "cublas_wheels": cublas_wheels()}
    try:
        res["info"] = run_json([ctx.bin, "info", "--backend", ctx.backend])
    except RuntimeError as e:  # no device, or a cuBLASLt that loads but fails: the build itself is fine
        return {**res, "ok": False, "error": str(e)}
    gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    res["device"] = gpus.stdout.strip() if gpus and gpus.returncode == 0 else "cpu (dry run: C++ reference kernels)"
    if not ctx.dry:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True)
        res["nvcc"] = nvcc.stdout.strip().splitlines()[-1] if nvcc.returncode == 0 else None
    return {"ok": True, **res}


def stage_kernels(ctx):
    res = run_json([ctx.bin, "kernels", "--backend", ctx.backend] + (["--tiny"] if ctx.dry else []))
    ok = res["ok"] is True
    wheels = cublas_wheels()
    res["cublas_wheels"] = wheels
    if not ctx.dry:
        gemm = res["info"].get("gemm")
        if wheels and gemm != "cublaslt":
            # The engine would run at a fraction of cuBLAS speed while a cuBLAS sits on disk.
            res["error"] = (f"PyTorch's cuBLAS wheel is here ({wheels[0]}) but the engine found no cuBLASLt; tried: "
                            + json.dumps(res["info"].get("cublaslt_tried")))
            ok = False
        if gemm == "cublaslt" and "own-wmma" not in res.get("gemm_backends", []):
            res["error"] = "cuBLASLt loaded but our own GEMM was not checked"
            ok = False
    return {**res, "ok": ok}


def stage_prefill(ctx):
    return golden_runs(ctx, [("one-shot", A, 100, []), ("one-shot", B, 37, [])])


def stage_chunked(ctx):
    return golden_runs(ctx, [
        ("feed7", A, 50, ["--feed", "7"]),
        ("feed13", A, 50, ["--feed", "13"]),
        ("feed17", A, 50, ["--feed", "17"]),
        ("maxchunk13", A, 50, ["--chunk", "13"]),
        ("feed7", B, 37, ["--feed", "7"]),
    ])


def stage_decode(ctx):
    return golden_runs(ctx, [("prefix99", A, 100, ["--prefix", "99"]), ("prefix36", B, 37, ["--prefix", "36"])])


def kv_roundtrip(ctx, dtype, save=None, prefix=70, kv=None):
    case = Case(ctx, A, 100)
    cmd = [ctx.bin, "kv-roundtrip", "--config", case.cfg_file, "--model", case.dir, "--tokens", case.tok_file,
           "--prefix", str(prefix), "--backend", ctx.backend, "--dtype", dtype] + (["--kv", kv] if kv else [])
    if save:
        cmd += ["--save", save]
    res = run_json(cmd)
    res["tolerance"] = KV_ROUNDTRIP_TOL
    res["ok"] = (res["reexport_bytes_equal"] and res["truncate_import_vs_continuing"] <= KV_ROUNDTRIP_TOL
                 and res["new_engine_import_vs_continuing"] <= KV_ROUNDTRIP_TOL)
    return case, res


def stage_kv_roundtrip(ctx):
    # f32 export is exact for every cache dtype; bf16 export is exact for the CUDA (bf16) cache only;
    # an fp8 cache exported as fp8 from position 0 and imported at 0 (block-aligned) is copied as
    # stored, scales included, so it is exact too (64 positions: one whole block).
    runs = [kv_roundtrip(ctx, d)[1] for d in (["f32"] if ctx.dry else ["f32", "bf16"])]
    fp8 = kv_roundtrip(ctx, "fp8", prefix=64, kv="fp8")[1]
    fp8["kv_dtype"] = "fp8"
    runs.append(fp8)
    return {"ok": all(r["ok"] for r in runs), "runs": runs}


def stage_fp8(ctx):
    base_kv = "f32" if ctx.dry else "bf16"
    out = []
    for label, flags in [("one-shot", []), ("feed13", ["--feed", "13"]), ("prefix99", ["--prefix", "99"])]:
        case = Case(ctx, A, 100)
        fp8, _ = case.logits(f"fp8-{label}", flags, kv="fp8")
        base, _ = case.logits(f"{base_kv}-{label}", flags, kv=base_kv)
        r = compare(fp8, base, FP8_TOL)
        r["vs_float64_reference"] = compare(fp8, case.reference(), FP8_TOL)["normalized_err"]
        out.append({"case": f"{A}/100/{label}", "fp8_vs": f"{base_kv} KV", **r})
    return {"ok": all(r["ok"] for r in out), "cases": out}


def stage_kv_export(ctx):
    dest = os.path.join(ctx.out, "kv-export")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    case, res = kv_roundtrip(ctx, "f32", save=dest)
    shutil.copytree(case.dir, os.path.join(dest, "model"),
                    ignore=shutil.ignore_patterns(".ultralong-fingerprint.json"))
    reference = case.reference()  # also writes case.ref_file
    shutil.copyfile(case.ref_file, os.path.join(dest, "reference.f64"))
    with open(os.path.join(case.dir, "config.json")) as f:
        cfg = json.load(f)
    meta = {
        "model": "model", "kv": "kv.bin", "tokens": "tokens.bin", "logits": "logits.bin",
        "reference": "reference.f64",  # float64 PyTorch reference logits of the whole prompt
        "prefix": res["prefix"], "n_tokens": res["tokens"], "export_dtype": "f32",
        "layout": {"layers": cfg["num_hidden_layers"], "kvHeads": cfg["num_key_value_heads"],
                   "headDim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]},
        "backend": ctx.backend, "info": res["info"],
        # logits.bin came from `backend`; an f32 CPU runtime that imports kv.bin matches it within:
        "tolerance": LOGITS_TOL[ctx.backend],
        "reference_normalized_err": compare(read_f32(os.path.join(dest, "logits.bin")), reference,
                                            1.0)["normalized_err"],
    }
    with open(os.path.join(dest, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return {"ok": res["ok"], "dir": dest, "files": sorted(os.listdir(dest)), "roundtrip": res,
            "next": f"npx tsx native/scripts/import-gpu-kv.ts {ctx.out}"}


# ---- benchmarks beside PyTorch on the same device -------------------------------------------------

def timed(fn, device, iters):
    import torch

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


# torch SDPA's backends, each forced in turn (torch.nn.attention.sdpa_kernel) on the GPU.
SDPA_BACKENDS = ["flash", "cudnn", "efficient"]


def torch_attention(seq_len, device, backend="flash"):
    """Causal attention, 32/8 heads, d 128, bf16, through one SDPA backend (CPU dry run: plain masked
    softmax attention, Debian's torch 1.13 has no SDPA). GQA natively (enable_gqa) where the backend
    takes it, else with K and V expanded to 32 heads before the clock starts."""
    import torch

    H, KVH, D = 32, 8, 128
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(1, H, seq_len, D, device=device, dtype=dt)
    k = torch.randn(1, KVH, seq_len, D, device=device, dtype=dt)
    v = torch.randn(1, KVH, seq_len, D, device=device, dtype=dt)
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if device == "cuda" and sdpa is not None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]
        gqa = "native"
        try:
            with sdpa_kernel(which):
                sdpa(q, k, v, is_causal=True, enable_gqa=True)
        except (RuntimeError, TypeError):
            gqa = "expanded"
            k, v = k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1)

        def fn():
            with sdpa_kernel(which):
                if gqa == "native":
                    return sdpa(q, k, v, is_causal=True, enable_gqa=True)
                return sdpa(q, k, v, is_causal=True)
        how = f"sdpa_{backend}"
    else:
        how, gqa = "torch_math_cpu", "expanded"
        ke, ve = k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1)
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()

        def fn():
            s = (q @ ke.transpose(-1, -2)) / D**0.5
            return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ ve
    s = timed(fn, device, 2 if seq_len > 32768 else 3)
    return {"seconds": s, "tflops": 4.0 * seq_len * seq_len * D * H / 2 / s / 1e12, "peer": how, "gqa": gqa}


def torch_gemm(m, k, n, device):
    import torch

    dt = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(m, k, device=device, dtype=dt)
    w = torch.randn(n, k, device=device, dtype=dt) * 0.02
    s = timed(lambda: torch.matmul(x, w.t()), device, 5)
    return {"seconds": s, "tflops": 2.0 * m * k * n / s / 1e12}


def stage_bench_attention(ctx):
    """Our prefill kernels (fa2 first: the default) and every SDPA backend at each length, in this
    run; ours_tflops / ratio are the default kernel against the fastest backend that ran."""
    lens = [128, 256] if ctx.dry else [16384, 65536, 131072]
    variants = [("reference", {})] if ctx.dry else [(v, {"UL_ATTENTION": v}) for v in ("fa2", "fa2-32", "wmma")]
    backends = ["math_cpu"] if ctx.dry else SDPA_BACKENDS
    rows = []
    for n in lens:  # one program per length and kernel: a length cut off by the limit keeps the shorter ones
        ours = {}
        for label, env in variants:
            try:
                r = run_json([ctx.bin, "bench-attention", "--backend", ctx.backend, "--lens", str(n)], env=env,
                             timeout=ctx.remaining())["results"][0]
            except subprocess.TimeoutExpired:
                return {"ok": False, "error": f"seq_len {n} ({label}) ran past the stage's limit", "results": rows}
            ours[label] = {"tflops": r["tflops"], "seconds": r["seconds"]}
        peers = {}
        for b in backends:
            try:
                peers[b] = torch_attention(n, ctx.device, b)
            except RuntimeError as e:  # a backend this GPU / build lacks: reported, not fatal
                peers[b] = {"error": str(e)[:300]}
        ran = {b: p for b, p in peers.items() if "tflops" in p}
        if not ran:
            return {"ok": False, "error": f"no SDPA backend ran at seq_len {n}", "results": rows, "peers": peers}
        best = max(ran, key=lambda b: ran[b]["tflops"])
        default = ours[variants[0][0]]
        rows.append({"seq_len": n, "ours_tflops": default["tflops"], "ours_seconds": default["seconds"],
                     "ours": variants[0][0], "variants": ours, "peers": peers,
                     "torch_tflops": ran[best]["tflops"], "torch_seconds": ran[best]["seconds"],
                     "peer": ran[best]["peer"], "ratio": default["tflops"] / ran[best]["tflops"],
                     "ratio_vs": {f"{v}/{b}": ours[v]["tflops"] / p["tflops"] for v in ours for b, p in ran.items()}})
    res = {"ok": True, "results": rows, "min_ratio_vs_sdpa": min(x["ratio"] for x in rows)}
    if ctx.dry:
        res["skipped"] = ("dry run: the CUDA kernels (fa2, fa2-32, wmma) and torch's SDPA backends (flash, cudnn, "
                          "efficient) are not run; the reference kernels against torch's CPU attention prove the wiring")
    return res


def stage_attention_fa2(ctx):
    res = run_json([ctx.bin, "attention-variants", "--backend", ctx.backend] + (["--tiny"] if ctx.dry else []),
                   timeout=ctx.remaining())
    ok = res["ok"] is True
    res["max_normalized_err"] = max(c["normalized_err"] for v in res["variants"] for c in v["cases"])
    if ctx.dry:
        res["skipped"] = ("dry run: the CUDA prefill kernels (fa2, fa2-32, wmma) are not executed; the reference against "
                          "itself proves the paged plans, the sizes and the comparison")
    else:  # each pass must have run the kernel it asked for (UL_ATTENTION read at backend creation)
        asked = [v["variant"] for v in res["variants"]]
        seen = [v["info"].get("attention") for v in res["variants"]]
        if seen != asked:
            ok = False
            res["error"] = f"UL_ATTENTION not honoured: asked {asked}, the backend reported {seen}"
    return {**res, "ok": ok}


def stage_bench_gemm(ctx):
    m = 4 if ctx.dry else 4096
    variants = [("ours", {})] + ([] if ctx.dry else [("ours_own_kernel", {"UL_GEMM": "own"})])
    rows = {}
    for label, env in variants:
        res = run_json([ctx.bin, "bench-gemm", "--backend", ctx.backend, "--m", str(m)], env=env)
        for x in res["results"]:
            rows.setdefault(x["name"], {"name": x["name"], "m": x["m"], "k": x["k"], "n": x["n"]})
            rows[x["name"]][f"{label}_tflops"] = x["tflops"]
            rows[x["name"]][f"{label}_backend"] = res["backend"]
    out = []
    for row in rows.values():
        peer = torch_gemm(row["m"], row["k"], row["n"], ctx.device)
        row["torch_tflops"] = peer["tflops"]
        row["ratio"] = row["ours_tflops"] / peer["tflops"]
        out.append(row)
    return {"ok": True, "results": out, "min_ratio_vs_torch": min(x["ratio"] for x in out)}


def stage_bench_prefill(ctx):
    lens, shape = ([32, 64], "tiny") if ctx.dry else ([32768, 131072], "8b")
    res = {"results": []}
    for n in lens:  # one engine per length (the weights load again): 32K survives a 128K cut off
        try:
            r = run_json([ctx.bin, "bench-prefill", "--backend", ctx.backend, "--shape", shape, "--lens", str(n)],
                         timeout=ctx.remaining())
        except subprocess.TimeoutExpired:
            return {**res, "ok": False, "error": f"{n} tokens ran past the stage's limit"}
        res = {**r, "results": res["results"] + r["results"]}
    return {**res, "ok": all(r["logits_finite"] for r in res["results"])}


# paged == contiguous (the same kernels; only the GEMMs' row counts differ, which may change a
# cuBLASLt algorithm's sum order): bf16 on the GPU, f32 (exact) in the dry run; fp8 with 64-position
# blocks within FP8_TOL (the dry run's reference cuts one prefill at its 256-row micro-batch, so an
# fp8 block scale is set from fewer rows first: not bit-equal there).
PAGED_TOL = {"gpu": 2e-2, "dry": 1e-6, "fp8": 5e-2}


def stage_paged(ctx):
    kv = "f32" if ctx.dry else "bf16"
    cases = [(kv, 16, PAGED_TOL["dry" if ctx.dry else "gpu"]), ("fp8", 64, PAGED_TOL["fp8"])]
    results = []
    for kv_dtype, block, tol in cases:
        results.append(run_json([ctx.bin, "paged", "--backend", ctx.backend, "--shape", "tiny", "--kv", kv_dtype,
                                 "--block", str(block), "--tol", str(tol)]))
    return {"ok": all(r["ok"] for r in results), "results": results,
            "max_normalized_err": max(r["max_normalized_err"] for r in results)}


def stage_bench_paged_decode(ctx):
    """The batched paged decode step, then the decode kernel's KV bandwidth: one decode row of the 8B
    shape over 128K and 1M keys (bf16, fp8), GB/s and the fraction of the H200's 4.8 TB/s."""
    flags = ["--shape", "tiny", "--prefix", "64", "--steps", "2"] if ctx.dry else ["--shape", "8b", "--prefix", "4096"]
    r = run_json([ctx.bin, "bench-paged-decode", "--backend", ctx.backend, "--seqs", "16", *flags],
                 timeout=ctx.remaining())
    lens = "1000,4099" if ctx.dry else "131072,1048576"
    bw = run_json([ctx.bin, "bench-decode", "--backend", ctx.backend, "--lens", lens], timeout=ctx.remaining())
    bandwidth = [{k: x[k] for k in x if k != "kv_bytes"} for x in bw["results"]]
    return {**r, "decode_bandwidth": bandwidth,
            "ok": r["logits_finite"] and len(bandwidth) == 4 and all(x["gbps"] > 0 for x in bandwidth)}


def stage_tiered(ctx):
    """ul_check tiered per KV dtype: every case identical to the all-resident engine (the same kernels on
    the same values), plus the pinned host <-> device copy rates and a decode step over a host-held
    context (taken from the first run)."""
    kvs = ["f32", "fp8"] if ctx.dry else ["bf16", "fp8"]
    sizes = (["--tokens", "200", "--decode-positions", "2048", "--prefill-positions", "256", "--copy-mib", "64"]
             if ctx.dry else ["--tokens", "1000", "--decode-positions", "262144", "--prefill-positions", "16384",
                              "--copy-mib", "1024"])
    results = [run_json([ctx.bin, "tiered", "--backend", ctx.backend, "--kv", kv, *sizes], timeout=ctx.remaining())
               for kv in kvs]
    return {"ok": all(r["ok"] for r in results), "results": results, "copy": results[0]["copy"],
            "decode": results[0]["decode"], "prefill": results[0]["prefill"]}


STAGE_FNS = {
    "build": stage_build, "kernels": stage_kernels, "prefill": stage_prefill, "chunked": stage_chunked,
    "decode": stage_decode, "kv-roundtrip": stage_kv_roundtrip, "fp8": stage_fp8, "kv-export": stage_kv_export,
    "paged": stage_paged, "attention-fa2": stage_attention_fa2, "bench-attention": stage_bench_attention, "bench-gemm": stage_bench_gemm,
    "bench-prefill": stage_bench_prefill, "bench-paged-decode": stage_bench_paged_decode, "tiered": stage_tiered,
}
assert list(STAGE_FNS) == STAGE_NAMES


def run_stage_here(args):
    """--run-stage: one stage in this process; its result is the last line of stdout."""
    try:
        res = STAGE_FNS[args.run_stage](Ctx(args))
    except Exception as e:  # a failed stage is data for the report, not the end of the check
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(res), flush=True)
    return 0


# ---- the parent: stages in order, one line each ---------------------------------------------------

def budgets(dry):
    """Per-stage limits; UL_GPU_CHECK_BUDGETS="stage=seconds,..." overrides some (tests use it)."""
    b = {name: (dry_s if dry else gpu_s) for name, gpu_s, dry_s, _ in STAGES}
    for item in filter(None, os.environ.get("UL_GPU_CHECK_BUDGETS", "").split(",")):
        name, _, secs = item.partition("=")
        if name not in b:
            raise SystemExit(f"gpu-check: UL_GPU_CHECK_BUDGETS names no stage '{name}' (stages: {', '.join(b)})")
        b[name] = float(secs)
    return b


def run_stage_process(name, limit, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--run-stage", name, "--bin", args.bin, "--work", args.work,
           "--out", args.out, "--limit", str(limit)] + (["--dry-run"] if args.dry_run else [])
    # Own session: a stage cut off is killed with every program it started (ul_check, nvcc).
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, _ = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return {"ok": False, "error": f"timed out after {limit:g} s (the stage's limit)", "timed_out": True}
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "error": f"stage exited {p.returncode} without a result: {stdout[-2000:]}"}


def gemm_label(info):
    if not info:
        return "unknown (no backend info: the build stage failed)"
    if info.get("gemm") == "cublaslt":
        return f"cublaslt {info.get('cublaslt')}"
    return info.get("gemm", "unknown")


def main_parent(args):
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    limits = budgets(args.dry_run)
    wanted = set(args.stage or STAGE_NAMES) | {"build"}
    unknown = wanted - set(STAGE_NAMES)
    if unknown:
        raise SystemExit(f"gpu-check: no stage {', '.join(sorted(unknown))} (stages: {', '.join(STAGE_NAMES)})")
    plan = [(n, limits[n]) for n in STAGE_NAMES if n in wanted]
    run_id = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    log(f"stages and limits (s): {', '.join(f'{n} {s:g}' for n, s in plan)}; total {sum(s for _, s in plan):g} s")
    jsonl = open(os.path.join(args.out, "gpu-check.jsonl"), "a")

    def emit(line):
        text = json.dumps(line)
        print(text, flush=True)
        jsonl.write(text + "\n")
        jsonl.flush()
        os.fsync(jsonl.fileno())

    t_all, info, results = time.time(), None, {}
    common = {"run": run_id, "dry_run": args.dry_run, "backend": "reference" if args.dry_run else "cuda"}
    for name, limit in plan:
        log(f"{name} (limit {limit:g} s) ...")
        t0 = time.time()
        res = run_stage_process(name, limit, args)
        if name == "build":
            info = res.get("info")
            common["device"] = res.get("device")
        ok = res.pop("ok", False) is True
        results[name] = (ok, res)
        emit({"stage": name, "ok": ok, "seconds": round(time.time() - t0, 2), "limit_s": limit,
              "gemm": gemm_label(info), **common, **res})
    summary = {}
    for key, stage, field in [("attention_min_ratio_vs_sdpa", "bench-attention", "min_ratio_vs_sdpa"),
                              ("gemm_min_ratio_vs_torch", "bench-gemm", "min_ratio_vs_torch"),
                              ("attention_fa2_max_normalized_err", "attention-fa2", "max_normalized_err")]:
        if stage in results and field in results[stage][1]:
            summary[key] = results[stage][1][field]
    pre = results.get("bench-prefill", (False, {}))[1].get("results")
    if pre:
        summary["prefill_longest"] = pre[-1]
    dec = results.get("bench-paged-decode", (False, {}))[1]
    if "speedup" in dec:
        summary["paged_decode_16"] = {k: dec[k] for k in ("batched_step_ms", "one_at_a_time_step_ms", "speedup",
                                                            "decode_tokens_per_s")}
    if "decode_bandwidth" in dec:
        summary["decode_bandwidth"] = dec["decode_bandwidth"]
    if "copy" in results.get("tiered", (False, {}))[1]:
        t = results["tiered"][1]
        summary["tiered_copy"] = {**t["copy"], "decode": t["decode"], "prefill": t["prefill"]}
    if "max_normalized_err" in results.get("paged", (False, {}))[1]:
        summary["paged_max_normalized_err"] = results["paged"][1]["max_normalized_err"]
    line = {"stage": "summary", "ok": all(ok for ok, _ in results.values()),
            "stages": {n: ok for n, (ok, _) in results.items()},
            "failed": [n for n, (ok, _) in results.items() if not ok],
            "seconds": round(time.time() - t_all, 1), "limit_s": sum(s for _, s in plan),
            "gemm": gemm_label(info), **common, "figures": summary, "targets": TARGETS}
    if args.dry_run:
        line["note"] = ("dry run: the CUDA kernels were not executed; every figure is the C++ reference backend "
                        "on tiny shapes, proving the pipeline, not the GPU")
    emit(line)
    return 0 if line["ok"] else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the ul_check binary (built by the build stage)")
    ap.add_argument("--work", required=True, help="scratch folder: models, tokens, logits")
    ap.add_argument("--out", default=None, help="gpu-check.jsonl and kv-export/ go here (default: WORK/out)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--stage", action="append", help="run only this stage (repeatable; build always runs)")
    ap.add_argument("--run-stage", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)
    args.out = os.path.abspath(args.out or os.path.join(args.work, "out"))
    args.bin = os.path.abspath(args.bin)
    if args.run_stage:
        return run_stage_here(args)
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
