#!/usr/bin/python3
"""Independent float64 PyTorch forward pass of Hugging Face transformers' LlamaForCausalLM.

Golden logits for every runtime (WASM, native, CUDA) come from here. It reads a HF model directory
itself (config.json; model.safetensors or model.safetensors.index.json shards; F32, BF16, F16
parsed with json + struct + torch.frombuffer) and computes, in float64 throughout:

    h = embed_tokens[tokens]                                   (T, hidden)
    per layer:  x = rmsnorm(h) * input_layernorm
                q, k, v = x Wq^T, x Wk^T, x Wv^T               (heads, T, head_dim) / (kv_heads, ...)
                q, k = q cos + rotate_half(q) sin, k likewise  (rope_reference.rope_init; cos and
                                                                sin carry the attention scaling)
                k, v repeated kv_heads -> heads (repeat_kv: head h reads kv head h // n_rep)
                a = softmax(q k^T / sqrt(head_dim) + causal mask) v
                h = h + a Wo^T
                x = rmsnorm(h) * post_attention_layernorm
                h = h + (silu(x Wg^T) * (x Wu^T)) Wd^T
    logits = (rmsnorm(h) * norm) lm_head^T                      (lm_head = embed_tokens if tied)

It imports nothing from transformers (not installed) and nothing from this project's TypeScript.

CLI (stable; runtimes' golden tests call it):

    /usr/bin/python3 test/reference/llama_reference.py MODEL_DIR
        (--tokens 1,2,3 | --tokens-file F)   F: int32 little-endian token ids
        [--last N]                           logits of the last N positions only (default: all)
        [--kv-out KV.bin]                    K and V of every position, core/kv/layout.ts order, f32
        --out OUT.bin                        float32 little-endian (N, vocab) row-major

writes OUT.bin, OUT.bin.json (a sidecar describing it) and prints a one-line JSON summary.

As a module:  forward(model_dir, tokens, last=None) -> float64 tensor (N, vocab)
              LlamaReference(model_dir).forward(tokens, last=None, kv=None)
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rope_reference import rope_init  # noqa: E402  (same folder, independent of transformers)

F64 = torch.float64
SAFETENSORS_DTYPES = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2)}


class ModelError(Exception):
    """A model directory the reference cannot read; the message names file and tensor."""


# ---------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, then the tensors' bytes
# ---------------------------------------------------------------------------------------------


def safetensors_header(path):
    """(header dict without __metadata__, byte offset where data starts, file size)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ModelError(f"{path}: shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            raise ModelError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            raise ModelError(f"{path}: malformed header ({e})") from e
    header.pop("__metadata__", None)
    return header, 8 + n, size


def read_tensor(path, name, info, data_start, fh):
    """One tensor as float64, checked against its declared dtype, shape and offsets."""
    dtype = info.get("dtype")
    if dtype not in SAFETENSORS_DTYPES:
        raise ModelError(f"{path}: tensor {name} has dtype {dtype}; the reference reads F32, BF16, F16")
    torch_dtype, itemsize = SAFETENSORS_DTYPES[dtype]
    shape = info["shape"]
    begin, end = info["data_offsets"]
    count = math.prod(shape)
    if end - begin != count * itemsize:
        raise ModelError(f"{path}: tensor {name} spans {end - begin} bytes but shape {shape} needs {count * itemsize}")
    fh.seek(data_start + begin)
    buf = bytearray(fh.read(end - begin))
    if len(buf) != end - begin:
        raise ModelError(f"{path}: tensor {name} runs past the end of the file")
    if count == 0:
        return torch.zeros(shape, dtype=F64)
    return torch.frombuffer(buf, dtype=torch_dtype).to(F64).reshape(shape)


def load_weights(model_dir):
    """Every tensor of the checkpoint (single file or index + shards), as float64."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index_path):
        with open(index_path) as fh:
            weight_map = json.load(fh)["weight_map"]
        by_file = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, []).append(name)
    elif os.path.exists(single):
        by_file = {"model.safetensors": None}
    else:
        raise ModelError(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json")
    weights = {}
    for fname, names in sorted(by_file.items()):
        path = os.path.join(model_dir, fname)
        header, data_start, _ = safetensors_header(path)
        wanted = names if names is not None else list(header)
        with open(path, "rb") as fh:
            for name in wanted:
                if name not in header:
                    raise ModelError(f"{path}: tensor {name} is in the index but not in this shard")
                weights[name] = read_tensor(path, name, header[name], data_start, fh)
    return weights


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    # transformers' LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then * weight
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaReference:
    # Queries per attention block: bounds the (heads, block, T) score matrix in float64.
    QUERY_BLOCK = 256

    def __init__(self, model_dir):
        self.model_dir = model_dir
        with open(os.path.join(model_dir, "config.json")) as fh:
            self.config = json.load(fh)
        c = self.config
        self.hidden = c["hidden_size"]
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads") or self.heads
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.vocab = c["vocab_size"]
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.ffn = c["intermediate_size"]
        self.w = load_weights(model_dir)
        self._check_weights()

    def _check_weights(self):
        c, H, KV, D, E, F = self.config, self.heads, self.kv_heads, self.head_dim, self.hidden, self.ffn
        expect = {"model.embed_tokens.weight": (self.vocab, E), "model.norm.weight": (E,)}
        if not c.get("tie_word_embeddings", False):
            expect["lm_head.weight"] = (self.vocab, E)
        for i in range(self.layers):
            p = f"model.layers.{i}."
            expect.update({
                p + "input_layernorm.weight": (E,),
                p + "post_attention_layernorm.weight": (E,),
                p + "self_attn.q_proj.weight": (H * D, E),
                p + "self_attn.k_proj.weight": (KV * D, E),
                p + "self_attn.v_proj.weight": (KV * D, E),
                p + "self_attn.o_proj.weight": (E, H * D),
                p + "mlp.gate_proj.weight": (F, E),
                p + "mlp.up_proj.weight": (F, E),
                p + "mlp.down_proj.weight": (E, F),
            })
            if c.get("attention_bias", False):
                expect.update({p + "self_attn.q_proj.bias": (H * D,), p + "self_attn.k_proj.bias": (KV * D,),
                               p + "self_attn.v_proj.bias": (KV * D,), p + "self_attn.o_proj.bias": (E,)})
            if c.get("mlp_bias", False):
                expect.update({p + "mlp.gate_proj.bias": (F,), p + "mlp.up_proj.bias": (F,),
                               p + "mlp.down_proj.bias": (E,)})
        for name, shape in expect.items():
            if name not in self.w:
                raise ModelError(f"{self.model_dir}: tensor {name} is missing")
            if tuple(self.w[name].shape) != shape:
                raise ModelError(f"{self.model_dir}: tensor {name} has shape {list(self.w[name].shape)}, "
                                 f"config.json implies {list(shape)}")

    def _linear(self, x, name):
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def rope(self, seq_len):
        """(cos, sin), each (T, head_dim) float64, attention scaling applied, rotate_half layout."""
        inv_freq, scaling = rope_init(self.config, seq_len=seq_len)
        if inv_freq.shape[0] * 2 != self.head_dim:
            raise ModelError(f"{self.model_dir}: partial rotary embeddings are not a Llama feature")
        ang = torch.arange(seq_len, dtype=F64)[:, None] * inv_freq[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos() * scaling, emb.sin() * scaling

    def forward(self, tokens, last=None, kv=None):
        """Logits (N, vocab) float64 for the last N positions (all when last is None).

        kv: optional list that receives, per layer, (K, V) each (kv_heads, T, head_dim) float64,
        K after rotary embedding (the runtime-neutral snapshot layout of core/kv/layout.ts).
        """
        return torch.cat(list(self.logits_blocks(tokens, last=last, kv=kv)), dim=0)

    def hidden_states(self, tokens, kv=None):
        """Final normed hidden states (T, hidden) float64."""
        tokens = torch.as_tensor(tokens, dtype=torch.int64)
        if tokens.ndim != 1 or tokens.numel() == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab:
            raise ValueError(f"token ids must be in [0, {self.vocab})")
        T, H, KV, D = tokens.numel(), self.heads, self.kv_heads, self.head_dim
        n_rep = H // KV
        cos, sin = self.rope(T)
        cos, sin = cos[None], sin[None]  # broadcast over heads
        h = self.w["model.embed_tokens.weight"][tokens]  # (T, hidden)
        B = self.QUERY_BLOCK
        causal = torch.full((B, B), float("-inf"), dtype=F64).triu(1)  # 0 on and below the diagonal
        for i in range(self.layers):
            p = f"model.layers.{i}."
            x = rms_norm(h, self.w[p + "input_layernorm.weight"], self.eps)
            q = self._linear(x, p + "self_attn.q_proj").view(T, H, D).transpose(0, 1)  # (H, T, D)
            k = self._linear(x, p + "self_attn.k_proj").view(T, KV, D).transpose(0, 1)  # (KV, T, D)
            v = self._linear(x, p + "self_attn.v_proj").view(T, KV, D).transpose(0, 1)  # (KV, T, D)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if kv is not None:
                kv.append((k.clone(), v.clone()))
            k = k.repeat_interleave(n_rep, dim=0)  # (H, T, D)
            v = v.repeat_interleave(n_rep, dim=0)
            attn = torch.empty(H, T, D, dtype=F64)
            scale = 1.0 / math.sqrt(D)
            for s in range(0, T, B):
                e = min(s + B, T)
                # Queries [s, e) see keys [0, s) whole and keys [s, e) causally; keys past e are
                # masked for all of them, so they are left out rather than masked.
                scores = (q[:, s:e] @ k[:, :e].transpose(1, 2)) * scale  # (H, e-s, e)
                scores[:, :, s:e] += causal[: e - s, : e - s]
                attn[:, s:e] = torch.softmax(scores, dim=-1) @ v[:, :e]
            o = attn.transpose(0, 1).reshape(T, H * D)
            h = h + self._linear(o, p + "self_attn.o_proj")
            x = rms_norm(h, self.w[p + "post_attention_layernorm.weight"], self.eps)
            gate = torch.nn.functional.silu(self._linear(x, p + "mlp.gate_proj"))
            h = h + self._linear(gate * self._linear(x, p + "mlp.up_proj"), p + "mlp.down_proj")
        return rms_norm(h, self.w["model.norm.weight"], self.eps)

    def lm_head(self):
        # Tied: transformers points lm_head at embed_tokens, whatever lm_head.weight the file holds.
        if self.config.get("tie_word_embeddings", False):
            return self.w["model.embed_tokens.weight"]
        return self.w["lm_head.weight"]

    def logits_blocks(self, tokens, last=None, kv=None, block=256):
        """Yields logits in row blocks (<= block positions each) for the last N positions."""
        h = self.hidden_states(tokens, kv=kv)
        T = h.shape[0]
        n = T if last is None else max(1, min(int(last), T))
        head = self.lm_head()
        for s in range(T - n, T, block):
            yield h[s:min(s + block, T)] @ head.T


def forward(model_dir, tokens, last=None):
    """Logits (N, vocab) float64 of `tokens` through the model in `model_dir`."""
    return LlamaReference(model_dir).forward(tokens, last=last)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def read_tokens(args):
    if args.tokens is not None:
        return [int(t) for t in args.tokens.split(",") if t.strip() != ""]
    with open(args.tokens_file, "rb") as fh:
        raw = fh.read()
    if len(raw) % 4 != 0:
        raise ValueError(f"{args.tokens_file}: {len(raw)} bytes is not a whole number of int32 tokens")
    return list(struct.unpack(f"<{len(raw) // 4}i", raw))


def main(argv=None):
    ap = argparse.ArgumentParser(description="float64 reference forward pass of a HF Llama model directory")
    ap.add_argument("model_dir")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="comma-separated token ids")
    src.add_argument("--tokens-file", help="int32 little-endian token ids")
    ap.add_argument("--last", type=int, default=None, help="write only the last N positions' logits")
    ap.add_argument("--kv-out", default=None, help="write K (after RoPE) and V as f32 in core/kv/layout.ts order")
    ap.add_argument("--out", required=True, help="float32 little-endian logits (N, vocab)")
    args = ap.parse_args(argv)

    started = time.time()
    try:
        tokens = read_tokens(args)
        model = LlamaReference(args.model_dir)
    except (ModelError, ValueError, OSError, KeyError) as e:
        print(f"llama_reference: {e}", file=sys.stderr)
        return 1
    loaded = time.time()
    T = len(tokens)
    n = T if args.last is None else max(1, min(args.last, T))
    kv = [] if args.kv_out else None
    try:
        blocks = model.logits_blocks(tokens, last=n, kv=kv)
        last_row = None
        with open(args.out, "wb") as fh:
            for block in blocks:
                fh.write(block.to(torch.float32).contiguous().numpy().tobytes())
                last_row = block[-1]
    except ValueError as e:
        print(f"llama_reference: {e}", file=sys.stderr)
        return 1
    if kv is not None:
        with open(args.kv_out, "wb") as fh:
            for k, v in kv:  # per layer: K (kv_head, pos, head_dim) then V (kv_head, pos, head_dim)
                fh.write(k.to(torch.float32).contiguous().numpy().tobytes())
                fh.write(v.to(torch.float32).contiguous().numpy().tobytes())
    done = time.time()

    top = torch.topk(last_row, k=min(5, last_row.numel()))
    rope_type = (model.config.get("rope_parameters") or model.config.get("rope_scaling") or {})
    rope_type = rope_type.get("rope_type", rope_type.get("type", "default"))
    _, scaling = rope_init(model.config, seq_len=T)
    sidecar = {
        "generator": "test/reference/llama_reference.py (float64 PyTorch, independent of transformers)",
        "model_dir": os.path.abspath(args.model_dir),
        "tokens": T,
        "positions": [T - n, T],
        "shape": [n, model.vocab],
        "dtype": "f32",
        "layout": "row-major (position, vocab), little-endian",
        "rope_type": rope_type,
        "attention_scaling": scaling,
        "last_argmax": int(torch.argmax(last_row)),
        "last_top5": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
        "torch": torch.__version__,
        "seconds": {"load": round(loaded - started, 3), "forward": round(done - loaded, 3)},
    }
    if args.kv_out:
        sidecar["kv_out"] = {
            "path": os.path.abspath(args.kv_out),
            "dtype": "f32",
            "layout": "per layer: K (kv_head, pos, head_dim) after RoPE, then V (kv_head, pos, head_dim)",
            "layers": model.layers, "kv_heads": model.kv_heads, "head_dim": model.head_dim, "positions": [0, T],
        }
    with open(args.out + ".json", "w") as fh:
        json.dump(sidecar, fh, indent=1)
        fh.write("\n")
    print(json.dumps({k: sidecar[k] for k in ("tokens", "shape", "rope_type", "last_argmax", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
