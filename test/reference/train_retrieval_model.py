#!/usr/bin/python3
"""Trains the tiny retrieval model (test/fixtures/retrieval-model): an exact HF Llama directory.

    /usr/bin/python3 test/reference/train_retrieval_model.py OUT_DIR [--seed 0] [--threads 2]

Needs Debian's python3-torch and an optimised BLAS under it: `apt-get install -y python3-torch
libopenblas0-pthread`. Debian's torch is built against the generic libblas.so.3; with the reference
BLAS a 4096 x 128 x 512 GEMM runs at ~5 GFLOP/s here, with OpenBLAS at ~64, and this training took
50 minutes on two shared cores instead of hours (why the earlier attempts here never saw copying).

What it must do: the needle-in-a-haystack prompts of core/eval (tasks.ts), as `ultralong eval` sends
them to /v1/completions (token ids): <|begin_of_text|> filler... needle ...filler question. Every
question ends with the needle's own words up to the value ("... The pass key is:" after "The pass
key is: 73914."), so retrieval is copying: find where the last few bytes occurred before and
continue from there. That is an induction circuit (a previous-token head, then an induction head),
which a 2-layer transformer learns from data where copying is the only way to lower the loss.

The model: Llama architecture, 2 layers, hidden 128, 4 heads of 32 (MHA), SwiGLU 256, untied
lm_head, vocab 264, F32 (1.6 MB), rope theta 10000 with YaRN factor 8 over an original 512 (4096
positions). Trained from random weights in four stages (STAGES below), Adam at 3e-3, cosine decay
over the last 30% of steps:
  1. 64-token sequences, batch 32: BOS and a random string of printable bytes written again and
     again; the loss on every copy. The induction heads form here, in a sudden drop of the loss
     (from ln 95 = 4.55 to 0.1) around step 350.
  2. 128 tokens: the same with small alphabets (digits, hex, lowercase), where one byte of context
     is ambiguous, so the match must use the last two or three bytes (a uuid needs that).
  3. 256 tokens, then 4. 512 tokens: half the sequences the eval's own prompts (filler, needles,
     question, the answer and the end token weighted 1, the rest 0.1, random codes written twice in
     the filler as more copying targets), half the repeats; under PoSE (Zhu et al. 2023: half the
     sequences have their positions after a random cut shifted, so distances up to 4096 are seen).
Deterministic from --seed on one torch build, BLAS and thread count (the committed fixture: Debian
torch 1.13.1, OpenBLAS 0.3.21 pthread, 2 threads); another build may differ in the last bits.

tokenizer.json is byte-level BPE with no merges (one token per UTF-8 byte, ids 0-255), Llama 3's
pre-tokenizer, <|begin_of_text|> 256, <|end_of_text|> 257, so core/tokenizer loads it as it stands.
The filler grammar and word lists are core/eval/filler.ts's and words.ts's; if they change, change
them here.
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
    only by copying the first: more copying targets per sequence than the answer alone gives."""
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



# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------

LENGTH, FACTOR = 512, 8  # trained length; YaRN factor (max_position_embeddings = 4096)
PRINTABLE = "".join(chr(c) for c in range(32, 127))
SMALL_ALPHABETS = ["abcdefghijklmnopqrstuvwxyz0123456789 ", "0123456789", "0123456789abcdef-",
                   "abcdefghijklmnopqrstuvwxyz ."]
# (length, batch, steps, share of repeated strings, share of those over all printable bytes, share under PoSE)
STAGES = [(64, 32, 600, 1.0, 1.0, 0.0), (128, 32, 400, 1.0, 0.4, 0.0), (256, 16, 600, 0.5, 0.3, 0.5),
          (512, 16, 800, 0.4, 0.3, 0.5)]
LR, WARMUP, DECAY_FROM = 3e-3, 50, 0.7


def config_dict():
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": float(FACTOR), "original_max_position_embeddings": LENGTH},
        "max_position_embeddings": LENGTH * FACTOR,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def repeat_sample(rng, length, wide_share):
    """(ids, weights): BOS, then a random string written again and again, cut to `length`. Every
    token after the first copy can only be predicted by copying (the classic way to grow induction
    heads); drawn from every printable byte (share `wide_share`), else from a small alphabet."""
    n = rng.randrange(min(12, (length - 1) // 4), (length - 1) // 2)
    alphabet = PRINTABLE if rng.random() < wide_share else rng.choice(SMALL_ALPHABETS)
    s = encode("".join(rng.choice(alphabet) for _ in range(n)))
    ids, w = [BOS] + s, [0.0] * (1 + n)
    while len(ids) < length:
        ids += s
        w += [1.0] * n
    return ids[:length], w[:length]


def draw(rng, stage):
    """One training sequence of the stage: a repeated string or an eval prompt (drawn again when
    the task's needles leave no room at this length)."""
    length, _, _, repeats, wide, _ = stage
    while True:
        try:
            if rng.random() < repeats:
                return repeat_sample(rng, length, wide)
            return sample(rng, length, echoes=1 if length < 400 else 3)
        except (IndexError, AssertionError):
            pass


def eval_sample(rng, length):
    while True:
        try:
            return sample(rng, length, echoes=0)
        except (IndexError, AssertionError):
            pass


def batch(rng, stage, max_pos):
    length, n, _, _, _, pose = stage
    ids, ws, pos = [], [], []
    for _ in range(n):
        x, w = draw(rng, stage)
        ids.append(x)
        ws.append(w)
        p = list(range(length))
        if rng.random() < pose:  # PoSE: a random skip between two parts
            cut = rng.randrange(1, length)
            skip = rng.randrange(0, max_pos - length + 1)
            p = p[:cut] + [q + skip for q in p[cut:]]
        pos.append(p)
    return torch.tensor(ids), torch.tensor(ws), torch.tensor(pos)


@torch.no_grad()
def accuracy(model, rng, n, length):
    """Share of eval-style sequences whose every answer byte is the argmax (teacher forced)."""
    ok = 0
    for _ in range(n):
        x, w = eval_sample(rng, length)
        ids = torch.tensor([x])
        logits = model(ids[:, :-1], torch.arange(length - 1)[None])
        sel = torch.tensor(w[1:]) == 1.0
        sel[-1] = False  # the end token: the eval stops at max_tokens anyway
        ok += int((logits[0].argmax(-1)[sel] == ids[0, 1:][sel]).all())
    return ok / n


def main(argv=None):
    ap = argparse.ArgumentParser(description="train the tiny retrieval model (test/fixtures/retrieval-model)")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-scale", type=float, default=1.0,
                    help="multiply every stage's steps (a smoke run: 0.05; the fixture: 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    config = config_dict()
    model = Llama(config, torch.Generator().manual_seed(args.seed))
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), weight_decay=0.0)
    stages = [(s[0], s[1], max(1, round(s[2] * args.steps_scale))) + s[3:] for s in STAGES]
    total = sum(s[2] for s in stages)
    max_pos = config["max_position_embeddings"]
    t0, g = time.time(), 0
    for stage in stages:
        length, steps = stage[0], stage[2]
        for step in range(steps):
            frac = g / total
            lr = LR * min(1.0, (g + 1) / WARMUP)
            if frac >= DECAY_FROM:
                lr *= 0.5 * (1 + math.cos(math.pi * (frac - DECAY_FROM) / (1 - DECAY_FROM)))
            for group in opt.param_groups:
                group["lr"] = lr
            ids, w, pos = batch(rng, stage, max_pos)
            logits = model(ids[:, :-1], pos[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
            loss = (loss * w[:, 1:].reshape(-1)).sum() / w[:, 1:].sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                line = {"length": length, "step": g, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
                if length >= 256 and (step % 200 == 0 or step == steps - 1):
                    line["answer_accuracy"] = accuracy(model, random.Random(1000 + g), 16, length)
                print(json.dumps(line), flush=True)
            g += 1
    save(model, config, args.out_dir)
    print(json.dumps({"out_dir": args.out_dir, "seconds": round(time.time() - t0, 1),
                      "answer_accuracy_512": accuracy(model, random.Random(99), 64, LENGTH)}), flush=True)
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
