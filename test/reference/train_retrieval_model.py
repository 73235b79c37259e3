#!/usr/bin/python3
"""Writes the tiny retrieval model (test/fixtures/retrieval-model) as an exact HF Llama directory.

    /usr/bin/python3 test/reference/train_retrieval_model.py OUT_DIR            # the fixture (1 minute)
    /usr/bin/python3 test/reference/train_retrieval_model.py OUT_DIR --train [--steps 800] [--checkpoints]

What it must do: the needle-in-a-haystack prompts of core/eval (tasks.ts), as `ultralong eval` sends
them to /v1/completions (token ids): <|begin_of_text|> filler... needle ...filler question. Every
question ends with the needle's own words up to the value ("... The pass key is:" after "The pass
key is: 73914."), so retrieval is copying: find where the last few bytes occurred before and
continue from there. That is an induction circuit: a previous-token head, then an induction head.

The fixture (default): that circuit written into the weights (`circuit`): 2 layers, hidden 128, 3
heads of 128 (MHA), MLPs zero, untied lm_head, vocab 264: 510,592 parameters, F32 (2 MB). Layer 0's
heads copy the codes of the 1st, 2nd and 3rd previous bytes into the residual stream, attending by
rope phase alone; layer 1's head matches the last three bytes against every earlier place and copies
the byte that followed; lm_head reads it. The byte codes are 20-dim unit vectors, fitted by gradient
descent so the printable bytes are far apart. Deterministic from --seed (a rerun on another torch
build may differ in the last bits).

--train: a 2-layer model (hidden 64, 4/2 heads of 16, SwiGLU 128: 107,840 parameters) trained from
random weights on the same prompts (the loss on the answer and end token, 0.1 on filler bytes), with
sequences that are a random string written twice and random codes repeated in the filler (copying
targets), under PoSE (Zhu et al. 2023: the positions after a random cut shifted by up to 4096 - 512,
so every distance up to 4096 is seen in 512-token sequences). On this machine (two shared cores,
1-4 s a step) four runs of 200-400 steps, adding those copying targets one by one, learned the
filler's grammar but no copying; the induction heads had not formed when time ran out, so the
fixture is the written circuit. docs/evaluation.md has the runs.

Both: tokenizer.json is byte-level BPE with no merges (one token per UTF-8 byte, ids 0-255),
Llama 3's pre-tokenizer, <|begin_of_text|> 256, <|end_of_text|> 257, so core/tokenizer loads it as it
stands. Rope: YaRN, factor 8 over an original 512 (4096 positions), rope_theta 500000. The filler
grammar and word lists are core/eval/filler.ts's and words.ts's; if they change, change them here.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import load_weights  # noqa: E402
from rope_reference import rope_init  # noqa: E402
from write_tiny_model import write_safetensors  # noqa: E402

# ------------------------------------------------------------------------------------------------
# tokenizer: one token per byte (ids 0..255 = the byte), then the added tokens
# ------------------------------------------------------------------------------------------------

LLAMA3_PATTERN = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
                  "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
BOS, EOS = 256, 257
ADDED = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|unused_{i}|>" for i in range(6)]
VOCAB = 256 + len(ADDED)


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (what ByteLevel vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer_json():
    b2u = bytes_to_unicode()
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 256 + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(ADDED)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {b2u[b]: b for b in range(256)}, "merges": []},
    }


# The eval talks to this model through /v1/completions with a raw prompt; a chat template is there so
# /v1/chat/completions works too (the user's text, nothing around it), not because the model knows it.
TOKENIZER_CONFIG = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|end_of_text|>",
    "model_max_length": 4096,
    "tokenizer_class": "PreTrainedTokenizerFast",
    "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
}


def encode(text):
    return list(text.encode("utf-8"))


# ------------------------------------------------------------------------------------------------
# tasks: the same grammar as core/eval (filler.ts, words.ts, tasks.ts)
# ------------------------------------------------------------------------------------------------

NOUNS = ["grass", "sky", "sun", "river", "stone", "road", "field", "house", "tree", "cloud", "bird", "lamp",
         "door", "wall", "boat", "hill", "garden", "window", "bridge", "forest", "meadow", "valley", "shore",
         "village", "market", "table", "chair", "letter", "song", "story"]
ADJECTIVES = ["green", "blue", "yellow", "quiet", "warm", "old", "tall", "wide", "bright", "dark", "soft", "cold",
              "small", "long", "calm", "gray", "red", "white", "young", "slow"]
KEY_WORDS = ["apple", "banana", "candle", "dragon", "engine", "falcon", "guitar", "helmet", "island", "jacket",
             "kettle", "lemon", "mirror", "napkin", "orange", "pencil", "rocket", "saddle", "tiger", "violin",
             "wagon", "zebra", "anchor", "button", "castle", "donkey", "feather", "glove", "hammer", "igloo"]
KEY_ADJECTIVES = ["adorable", "brave", "clever", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lively",
                  "merry", "noble", "proud", "silly", "witty", "zany", "bold", "curious", "fierce", "humble"]


def filler_sentence(rng):
    """One filler sentence, with its leading space (filler.ts)."""
    k = rng.randrange(10)
    if k < 5:
        return f" The {rng.choice(NOUNS)} is {rng.choice(ADJECTIVES)}."
    if k < 8:
        return f" The {rng.choice(NOUNS)} and the {rng.choice(NOUNS)} are {rng.choice(ADJECTIVES)}."
    return rng.choice([" Here we go.", " There and back again."])


def key_name(rng):
    return f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_WORDS)}"


def uuid(rng):
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def number_needle(kind, key, value):
    return f" The special magic {kind} for {key} is: {value}."


def number_question(kind, key):
    return f" What is the special magic {kind} for {key}? The special magic {kind} for {key} is:"


def task(rng):
    """(needles, question, answer): needle texts in the order they appear, the question, the answer text."""
    r = rng.random()
    if r < 0.35:
        v = str(rng.randrange(10000, 100000))
        return [f" The pass key is: {v}. Remember it. {v} is the pass key."], \
            " What is the pass key? The pass key is:", f" {v}"
    kind, make = ("uuid", uuid) if r < 0.6 else ("number", lambda g: str(g.randrange(1000000, 10000000)))
    # several keys (numbers only, to fit 512 bytes): the question names one of them
    n = rng.randrange(2, 4) if r >= 0.8 and kind == "number" else 1
    keys = set()
    while len(keys) < n:
        keys.add(key_name(rng))
    keys = sorted(keys)
    rng.shuffle(keys)
    values = [make(rng) for _ in keys]
    asked = rng.randrange(n)
    return [number_needle(kind, k, v) for k, v in zip(keys, values)], number_question(kind, keys[asked]), \
        f" {values[asked]}"


def echo_pairs(rng, n):
    """n random codes, each to appear twice in the filler: (sentence, weights) for each occurrence.

    Only the tokens of a code's second occurrence after its first character can be predicted, and
    only by copying the first: many more copying targets per sequence than the answer alone gives,
    which is what makes the induction heads form within a few hundred steps."""
    out = []
    for _ in range(n):
        code = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randrange(6, 11)))
        ids = encode(f" Code {code}.")
        first = [0.1] * len(ids)
        second = [0.1] * 7 + [1.0] * (len(ids) - 7)  # " Code " and the first character: not copyable
        out.append(((ids, first), (ids, second)))
    return out


def sample(rng, length, echoes=3):
    """(ids, loss weights): one training sequence of exactly `length` ids."""
    needles, question, answer = task(rng)
    head = [BOS]
    tail = encode(question) + encode(answer) + [EOS]
    needle_ids = [encode(n) for n in needles]
    budget = length - len(head) - len(tail) - sum(len(n) for n in needle_ids)
    pairs = echo_pairs(rng, echoes)
    room = budget - sum(2 * len(a[0]) for a, _ in pairs)  # the codes fit, the filler is what is cut
    filler = []  # (ids, weights) per sentence
    while sum(len(x) for x, _ in filler) < room:
        x = encode(filler_sentence(rng))
        filler.append((x, [0.1] * len(x)))  # the filler's next byte is worth a little
    for a, b in pairs:
        i = rng.randrange(len(filler) + 1)
        filler.insert(i, a)
        filler.insert(rng.randrange(i + 1, len(filler) + 1), b)
    # cut at the budget (the eval cuts the last sentence at a token too); needles between sentences
    flat = [t for x, _ in filler for t in x][:budget]
    wflat = [v for _, w in filler for v in w][:budget]
    bounds = [0]
    for x, _ in filler:
        bounds.append(bounds[-1] + len(x))
    bounds = [b for b in bounds if b <= budget]
    spots = sorted(rng.choice(bounds) for _ in needle_ids)
    ids, w, at = list(head), [0.0], 0
    for spot, n in zip(spots, needle_ids):
        ids += flat[at:spot] + n
        w += wflat[at:spot] + [0.1] * len(n)
        at = spot
    ids += flat[at:] + tail
    w += wflat[at:] + [0.1] * (len(tail) - len(encode(answer)) - 1) + [1.0] * (len(encode(answer)) + 1)
    assert len(ids) == length and len(w) == length, (len(ids), len(w), length)
    return ids, w


# ------------------------------------------------------------------------------------------------
# the fixture: a previous-token + induction circuit written into the weights
# ------------------------------------------------------------------------------------------------

H, HEADS, D, M = 128, 3, 128, 20
# Residual stream slots (M dims each after the bias): the token's own code, then (written by layer
# 0's three heads) the codes of the 1st, 2nd and 3rd previous tokens, then (layer 1) the code of the
# token to predict.
BIAS = 0
CUR, PREV, PP, PPP, OUT = (1 + k * M for k in range(5))


def circuit_config():
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "head_dim": D,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512},
        "max_position_embeddings": 4096, "vocab_size": VOCAB, "tie_word_embeddings": False,
        "bos_token_id": BOS, "eos_token_id": EOS, "attention_bias": False, "mlp_bias": False,
        "torch_dtype": "float32",
    }


def codes(seed=0):
    """(vocab, M) unit codes: random, then the printable bytes', newline's and BOS's pushed apart by
    gradient descent on their largest cosine (0.28 here; random 20-dim codes reach about 0.7)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(VOCAB, M, generator=g, dtype=torch.float64)
    U = U / U.norm(dim=1, keepdim=True)
    imp = list(range(32, 127)) + [10, BOS]
    P = U[imp].clone().requires_grad_(True)
    opt = torch.optim.Adam([P], lr=0.01)
    for _ in range(1500):
        Q = P / P.norm(dim=1, keepdim=True)
        G = Q @ Q.T - torch.eye(len(imp), dtype=torch.float64)
        loss = (G.abs() ** 8).sum() ** (1 / 8)
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        Q = P / P.norm(dim=1, keepdim=True)
        U[imp] = Q
        G = Q @ Q.T - torch.eye(len(imp), dtype=torch.float64)
    return U

U = codes()

def circuit(config, U, a_q=150.0, s=300.0, lam=12.0, K=16):
    """The weights (HF names, float64). Layer 0: head h attends to the token h + 1 back, by rope phase
    alone (q and k from the bias dimension, q rotated by -(h + 1) x theta on the K fastest pairs:
    the score peaks at that distance with a margin of a_q x 1.37 x mscale^2 / sqrt(D) = 26 logits
    over every other distance below 16k), and copies its code into PREV, PP or PPP. Layer 1's head 0
    compares (CUR, PREV, PP) of the query with (PREV, PP, PPP) of each key on the 30 slowest rope
    pairs (rotated by under 0.6 rad at 16k tokens), so it attends to where the last three bytes
    occurred before, and copies that place's code into OUT; lm_head reads OUT. MLPs are zero."""
    inv = rope_init(config)[0]
    W = {}
    E = torch.zeros(VOCAB, H, dtype=torch.float64)
    E[:, BIAS] = 1.0
    E[:, CUR:CUR + M] = U
    W["model.embed_tokens.weight"] = E
    n1 = math.sqrt(H / 2.0)            # x = E * n1 after the first norm
    n2 = math.sqrt(H / 5.0)            # x = h1 * n2 after the second
    half = D // 2
    for L in range(2):
        p = f"model.layers.{L}."
        q = torch.zeros(HEADS * D, H, dtype=torch.float64)
        k = torch.zeros(HEADS * D, H, dtype=torch.float64)
        v = torch.zeros(HEADS * D, H, dtype=torch.float64)
        o = torch.zeros(H, HEADS * D, dtype=torch.float64)
        if L == 0:
            for h, slot in enumerate((PREV, PP, PPP)):
                dh = h + 1
                for pr in range(K):
                    th = inv[pr].item()
                    q[h * D + pr, BIAS] = a_q * math.cos(-dh * th) / n1
                    q[h * D + half + pr, BIAS] = a_q * math.sin(-dh * th) / n1
                    k[h * D + pr, BIAS] = 1.0 / n1
                for m in range(M):
                    v[h * D + m, CUR + m] = 1.0 / n1
                    o[slot + m, h * D + m] = 1.0
        else:
            dims = list(range(34, 64)) + list(range(34 + half, 64 + half))
            qsrc = [CUR + m for m in range(M)] + [PREV + m for m in range(M)] + [PP + m for m in range(M)]
            ksrc = [PREV + m for m in range(M)] + [PP + m for m in range(M)] + [PPP + m for m in range(M)]
            for dd, qs, ks in zip(dims, qsrc, ksrc):
                q[dd, qs] = s / n2
                k[dd, ks] = 1.0 / n2
            for m in range(M):
                v[m, CUR + m] = 1.0 / n2
                o[OUT + m, m] = 1.0
        W[p + "input_layernorm.weight"] = torch.ones(H, dtype=torch.float64)
        W[p + "self_attn.q_proj.weight"] = q
        W[p + "self_attn.k_proj.weight"] = k
        W[p + "self_attn.v_proj.weight"] = v
        W[p + "self_attn.o_proj.weight"] = o
        W[p + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.float64)
        W[p + "mlp.gate_proj.weight"] = torch.zeros(64, H, dtype=torch.float64)
        W[p + "mlp.up_proj.weight"] = torch.zeros(64, H, dtype=torch.float64)
        W[p + "mlp.down_proj.weight"] = torch.zeros(H, 64, dtype=torch.float64)
    W["model.norm.weight"] = torch.ones(H, dtype=torch.float64)
    lm = torch.zeros(VOCAB, H, dtype=torch.float64)
    lm[:, OUT:OUT + M] = lam * U
    W["lm_head.weight"] = lm
    return W

# ------------------------------------------------------------------------------------------------
# model: HF Llama semantics (rotate_half RoPE on HF-layout weights, RMSNorm, SwiGLU, GQA)
# ------------------------------------------------------------------------------------------------


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class _Weights(dict):
    """HF tensor name -> Parameter, in insertion (file) order, each registered on the module (whose
    parameter names cannot hold dots)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def __setitem__(self, name, p):
        self.module.register_parameter(name.replace(".", "__"), p)
        super().__setitem__(name, p)


class Llama(torch.nn.Module):
    def __init__(self, config, g):
        super().__init__()
        c = config
        self.c = c
        E, H, KV, D, Fh, V = (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"],
                              c["intermediate_size"], c["vocab_size"])
        self.H, self.KV, self.D = H, KV, D

        def lin(o, i):
            return torch.nn.Parameter(torch.randn(o, i, generator=g) * i ** -0.5)

        def norm(n):
            return torch.nn.Parameter(torch.ones(n))

        self.w = _Weights(self)
        self.w["model.embed_tokens.weight"] = torch.nn.Parameter(torch.randn(V, E, generator=g))
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            self.w[p + "input_layernorm.weight"] = norm(E)
            self.w[p + "self_attn.q_proj.weight"] = lin(H * D, E)
            self.w[p + "self_attn.k_proj.weight"] = lin(KV * D, E)
            self.w[p + "self_attn.v_proj.weight"] = lin(KV * D, E)
            self.w[p + "self_attn.o_proj.weight"] = lin(E, H * D)
            self.w[p + "post_attention_layernorm.weight"] = norm(E)
            self.w[p + "mlp.gate_proj.weight"] = lin(Fh, E)
            self.w[p + "mlp.up_proj.weight"] = lin(Fh, E)
            self.w[p + "mlp.down_proj.weight"] = lin(E, Fh)
        self.w["model.norm.weight"] = norm(E)
        self.w["lm_head.weight"] = lin(V, E)
        inv_freq, scaling = rope_init(c)
        self.inv_freq, self.scaling = inv_freq.float(), float(scaling)

    def forward(self, ids, pos):
        """ids, pos: (B, T) int64 -> logits (B, T, vocab). pos: position ids (PoSE skips)."""
        c, w = self.c, self.w
        B, T = ids.shape
        H, KV, D = self.H, self.KV, self.D
        ang = pos[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((ang, ang), dim=-1)[:, None]  # (B, 1, T, D)
        cos, sin = emb.cos() * self.scaling, emb.sin() * self.scaling
        mask = torch.full((T, T), float("-inf")).triu(1)
        h = w["model.embed_tokens.weight"][ids]
        eps = c["rms_norm_eps"]

        def rms(x, g):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = rms(h, w[p + "input_layernorm.weight"])
            q = (x @ w[p + "self_attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2)
            k = (x @ w[p + "self_attn.k_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
            v = (x @ w[p + "self_attn.v_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + mask, dim=-1) @ v  # (B, H, T, D)
            h = h + att.transpose(1, 2).reshape(B, T, H * D) @ w[p + "self_attn.o_proj.weight"].T
            x = rms(h, w[p + "post_attention_layernorm.weight"])
            gate = F.silu(x @ w[p + "mlp.gate_proj.weight"].T)
            h = h + (gate * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        return rms(h, w["model.norm.weight"]) @ w["lm_head.weight"].T


def config_dict(args):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.ffn,
        "num_hidden_layers": args.layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": args.hidden // 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": float(args.factor),
                         "original_max_position_embeddings": args.length},
        "max_position_embeddings": args.length * args.factor,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def repeat_sample(rng, length):
    """(ids, weights): BOS, a random string of filler words, codes and digits, then the same string
    again, cut to `length`. Every token of the second copy is a copying target (the classic way to
    grow induction heads); the needle tasks alone give a few dozen per sequence."""
    half = []
    while len(half) < (length - 1) // 2:
        k = rng.random()
        if k < 0.4:
            half += encode(filler_sentence(rng))
        elif k < 0.7:
            half += encode(" " + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(3, 9))))
        else:
            half += encode(" " + str(rng.randrange(10 ** rng.randrange(1, 8))))
    half = half[:(length - 1) // 2]
    ids = ([BOS] + half + half + half)[:length]
    w = [0.0] + [0.1] * len(half) + [1.0] * (length - 1 - len(half))
    return ids, w


def batch(rng, n, length, max_pos, repeats=0.5):
    ids, ws, pos = [], [], []
    for _ in range(n):
        x, w = repeat_sample(rng, length) if rng.random() < repeats else sample(rng, length)
        ids.append(x)
        ws.append(w)
        p = list(range(length))
        if rng.random() < 0.75:  # PoSE: a random skip between two parts
            cut = rng.randrange(1, length)
            skip = rng.randrange(0, max_pos - length + 1)
            p = p[:cut] + [q + skip for q in p[cut:]]
        pos.append(p)
    return torch.tensor(ids), torch.tensor(ws), torch.tensor(pos)


@torch.no_grad()
def accuracy(model, rng, n, length, end_token=True):
    """Share of sequences whose every answer byte (and end token) is the argmax (teacher forced)."""
    ok = 0
    for _ in range(n):
        x, w = sample(rng, length, echoes=0)
        ids = torch.tensor([x])
        logits = model(ids[:, :-1], torch.arange(length - 1)[None])
        sel = torch.tensor(w[1:]) == 1.0
        if not end_token:
            sel[-1] = False
        ok += int((logits[0].argmax(-1)[sel] == ids[0, 1:][sel]).all())
    return ok / n


def main(argv=None):
    ap = argparse.ArgumentParser(description="write the tiny retrieval model (test/fixtures/retrieval-model)")
    ap.add_argument("out_dir")
    ap.add_argument("--train", action="store_true",
                    help="train a 2-layer model from random weights instead (the experiment docs/evaluation.md reports)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoints", action="store_true", help="also write OUT_DIR.stepN every 100 steps")
    ap.add_argument("--resume", help="start from this model directory's weights (a checkpoint) instead of random")
    args = ap.parse_args(argv)
    if not args.train:
        torch.set_num_threads(args.threads)
        config = circuit_config()
        model = Llama(config, torch.Generator().manual_seed(args.seed))
        weights = circuit(config, codes(args.seed))
        with torch.no_grad():
            for name, w in weights.items():
                model.w[name].copy_(w.float())
        save(model, config, args.out_dir)
        print(json.dumps({"out_dir": args.out_dir, "parameters": sum(p.numel() for p in model.parameters()),
                          "answer_accuracy_512": accuracy(model, random.Random(99), 16, 512, end_token=False)}))
        return 0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    config = config_dict(args)
    model = Llama(config, torch.Generator().manual_seed(args.seed))
    if args.resume:
        with torch.no_grad():
            for name, t in load_weights(args.resume).items():
                model.w[name].copy_(t.float())
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"parameters": n_params}), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = 50

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, args.steps - warm)))

    t0 = time.time()
    max_pos = config["max_position_embeddings"]
    for step in range(args.steps):
        ids, w, pos = batch(rng, args.batch, args.length, max_pos)
        logits = model(ids[:, :-1], pos[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
        loss = (loss * w[:, 1:].reshape(-1)).sum() / w[:, 1:].sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            line = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
            if step % 100 == 0 and step > 0:
                line["answer_accuracy"] = accuracy(model, random.Random(1000 + step), 16, args.length)
                if args.checkpoints:  # a model directory to try while training goes on
                    save(model, config, f"{args.out_dir}.step{step}")
            print(json.dumps(line), flush=True)

    save(model, config, args.out_dir)
    print(json.dumps({"out_dir": args.out_dir, "parameters": n_params, "seconds": round(time.time() - t0, 1),
                      "final_accuracy": accuracy(model, random.Random(99), 32, args.length)}), flush=True)
    return 0


def save(model, config, out_dir):
    """The model directory: weights (F32), config, generation config, tokenizer files."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = [(n, p.detach().to(torch.float32)) for n, p in model.w.items()]
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, "F32")
    files = {
        "config.json": config,
        "generation_config.json": {"bos_token_id": BOS, "eos_token_id": EOS},
        "tokenizer.json": tokenizer_json(),
        "tokenizer_config.json": TOKENIZER_CONFIG,
    }
    for name, obj in files.items():
        with open(os.path.join(out_dir, name), "w") as fh:
            json.dump(obj, fh, indent=None if name == "tokenizer.json" else 2, ensure_ascii=False)
            fh.write("\n")


if __name__ == "__main__":
    sys.exit(main())
