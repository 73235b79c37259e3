// ul_check: the C++ program behind native/scripts/gpu-check.sh. Subcommands print JSON on stdout.
//
//   ul_check info      [--backend cuda|reference]
//       the backend's ul_engine_backend_info members: kernel set, GEMM that runs, cuBLASLt's path
//   ul_check cublaslt-search
//       the cuBLASLt candidate list (library_search.h) from this environment and the load attempt:
//       which file loaded, and every candidate that failed with dlopen's reason
//   ul_check kernels   [--backend cuda|reference] [--tiny]
//       every op of the backend vtable against the reference kernels on the same (rounded) inputs:
//       max abs error, error normalised by the reference's max magnitude, and a per-op tolerance.
//       The GEMMs run on every GEMM the backend has: cuBLASLt (when it loaded) and our own kernel.
//   ul_check logits    --config CFG --model DIR --tokens FILE --out FILE [--backend ..] [--kv bf16|fp8|f32]
//                      [--prefix N | --feed N] [--chunk ROWS]
//       a forward pass of a model directory (every *.safetensors in DIR) -> last logits, f32 LE;
//       with --prefix, N tokens are prefilled first and the rest run after (1 left: decode);
//       with --feed, the tokens go in calls of N (the last call may be shorter); --chunk: max_chunk
//   ul_check kv-roundtrip --config CFG --model DIR --tokens FILE --prefix P [--backend ..] [--kv ..]
//                      [--dtype f32|bf16|f16|fp8] [--save DIR]
//       prefill P tokens, export their KV, run the rest ("continuing"); then truncate to 0 and import
//       the export, and import it into a new engine: both must give the continuing logits. --save
//       writes kv.bin (the export), tokens.bin (int32) and logits.bin (the new engine's, f32)
//   ul_check bench-attention --lens 16384,65536,131072 [--backend ..]
//       full causal attention of L queries over L keys, 32/8 heads, d 128 (the SDPA comparison)
//   ul_check attention-variants [--backend ..] [--variants fa2,fa2-32,wmma] [--tiny]
//       prefill attention through paged, shuffled block tables at ragged sizes (rows and keys off the
//       tiles; GQA 32/8, 16/8, 64/8 and 8/8) vs the reference kernels, once per prefill kernel of
//       the CUDA backend (UL_ATTENTION=each variant); the reference backend runs one "reference" pass
//   ul_check bench-gemm --m 4096 [--backend ..]       the Llama-3.1-8B projection shapes
//   ul_check bench-prefill --lens 32768,131072 [--shape 8b|tiny] [--backend ..]
//       prefill tokens/s of a random-weight model of that shape through the whole engine
//   ul_check paged [--shape tiny|8b] [--kv ..] [--block 16] [--tol 1e-6] [--backend ..]
//       paged == contiguous: four sequences batched through ul_engine_step (shared prefix blocks,
//       copy-on-write, prefill pieces beside decode tokens, lengths off the 64-row tiles) vs each
//       alone on a single-sequence engine; normalised logits error per item
//   ul_check bench-paged-decode [--shape 8b|tiny] [--seqs 16] [--prefix 4096] [--steps 16] [--backend ..]
//       decode steps of --seqs sequences sharing a prefix, batched in one step vs one at a time
//   ul_check bench-decode [--lens 131072,1048576] [--backend ..]
//       one decode row of the 8B shape (32 / 8 heads, d 128) over L keys, bf16 and fp8 KV: seconds,
//       KV GB/s, fraction of the H200's 4.8 TB/s; on CUDA also the general split_kv (UL_DECODE=general)
//   ul_check tiered [--kv ..] [--tokens 300] [--decode-positions 65536] [--copy-mib 1024] [--backend ..]
//       tiered KV == resident KV exactly (a 4-layer tiny model; single-sequence engines with 0, 1
//       and 3 device blocks, a paged engine with 3 of its blocks on the device); the host tier's
//       copy rates (pinned host <-> device, GB/s), a decode step over a host-tier context and a
//       prefill of --prefill-positions (16384) tokens, each tiered (1 device block) vs resident
//
// CFG is a text file of "key value..." lines (written by gpu_check.py from config.json with
// test/reference/rope_reference.py): hidden_size, intermediate_size, num_layers, num_heads,
// num_kv_heads, head_dim, vocab_size, tie_word_embeddings, rms_norm_eps, rotary_dim,
// attention_scaling, inv_freq f0 f1 ...
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../src/backend.h"
#include "../src/dtype.h"
#include "../src/library_search.h"
#include "ul_engine.h"

using namespace ul;

namespace {

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "ul_check: %s\n", m.c_str());
  std::exit(1);
}
void must(const Status& st, const char* what) {
  if (!st.ok()) die(std::string(what) + ": " + st.message);
}
void must(ul_status st, ul_engine* e, const char* what) {
  if (st != UL_OK) die(std::string(what) + ": " + ul_status_name(st) + ": " + ul_engine_last_error(e));
}

std::map<std::string, std::string> parse_flags(int argc, char** argv, int from) {
  std::map<std::string, std::string> f;
  for (int i = from; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) die("unexpected argument " + a);
    if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) f[a.substr(2)] = argv[++i];
    else f[a.substr(2)] = "1";
  }
  return f;
}

std::vector<int> int_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoi(item));
  return out;
}

ul_backend_kind backend_kind(const std::map<std::string, std::string>& f) {
  auto it = f.find("backend");
  std::string b = it == f.end() ? "cuda" : it->second;
  if (b == "cuda") return UL_BACKEND_CUDA;
  if (b == "reference") return UL_BACKEND_REFERENCE;
  die("--backend must be cuda or reference");
}

std::unique_ptr<Backend> make_backend(ul_backend_kind kind) {
  if (kind == UL_BACKEND_REFERENCE) return make_reference_backend();
  std::unique_ptr<Backend> be;
  must(make_cuda_backend(&be), "cuda backend");
  return be;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- device buffers in a backend's dtypes ---------------------------------------------------------
struct Buffers {
  Backend& be;
  std::vector<void*> held;
  explicit Buffers(Backend& b) : be(b) {}
  ~Buffers() {
    for (void* p : held) be.release(p);
  }
  void* alloc(size_t bytes) {
    void* p = nullptr;
    must(be.alloc(bytes, &p), "alloc");
    held.push_back(p);
    return p;
  }
  void* put(const std::vector<float>& v, ul_dtype dt) {
    std::vector<unsigned char> tmp(v.size() * dtype_size(dt));
    convert(v.data(), UL_DTYPE_F32, tmp.data(), dt, v.size());
    void* p = alloc(tmp.size());
    must(be.upload(p, tmp.data(), tmp.size()), "upload");
    return p;
  }
  std::vector<float> get(const void* p, ul_dtype dt, size_t n) {
    std::vector<unsigned char> tmp(n * dtype_size(dt));
    must(be.download(tmp.data(), p, tmp.size()), "download");
    std::vector<float> out(n);
    convert(tmp.data(), dt, out.data(), UL_DTYPE_F32, n);
    return out;
  }
};

std::vector<float> randn(size_t n, float scale, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

/** Rounds through dt, so both backends see identical input values. */
std::vector<float> rounded(std::vector<float> v, ul_dtype dt) {
  for (float& x : v) {
    unsigned char b[4];
    store_from_f32(b, dt, 0, x);
    x = load_as_f32(b, dt, 0);
  }
  return v;
}

std::vector<double> inv_freq_default(int rot, double theta) {
  std::vector<double> f(rot / 2);
  for (int i = 0; i < rot / 2; ++i) f[i] = std::pow(theta, -2.0 * i / rot);
  return f;
}

// ---- kernels: device backend vs reference --------------------------------------------------------
struct Check {
  std::string op, shape;
  double max_abs, max_ref, tol;
  std::string gemm;  // GEMM ops: which GEMM ran ("cublaslt", "own-wmma", "reference")
};

/** The "gemm" member of a backend's info ("cublaslt", "own-wmma", "reference"). */
std::string gemm_name(const Backend& be) {
  std::string m = be.info_json_members();
  const std::string key = "\"gemm\":\"";
  size_t at = m.find(key);
  if (at == std::string::npos) return "?";
  at += key.size();
  return m.substr(at, m.find('"', at) - at);
}

Check compare(const std::string& op, const std::string& shape, const std::vector<float>& got,
              const std::vector<float>& want, double tol) {
  double ma = 0, mr = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= ma)) ma = d;  // NaN propagates as failure
    mr = std::max(mr, std::fabs(static_cast<double>(want[i])));
  }
  return {op, shape, ma, mr, tol, ""};
}

int cmd_kernels(const std::map<std::string, std::string>& f) {
  bool tiny = f.count("tiny") > 0;
  auto dev = make_backend(backend_kind(f));
  auto ref = make_reference_backend();
  Buffers D(*dev), R(*ref);
  const ul_dtype act = dev->act_dtype(), wdt = dev->weight_dtype();
  std::vector<Check> checks;
  // Shapes: Llama-3.1-8B widths with short sequences (the reference runs on the CPU).
  const int H = tiny ? 4 : 32, KVH = tiny ? 2 : 8, HD = 128, HID = tiny ? 256 : 4096, FFN = tiny ? 512 : 14336;
  const int ROWS = tiny ? 16 : 64;
  // Bound on error normalised by max |reference|: bf16 storage rounds at 2^-9 relative; sums of
  // thousands of such terms stay within a few ulps of the largest output.
  const double TOL_BF16 = 2e-2, TOL_FP8 = 1.5e-1;
  const double tol_act = act == UL_DTYPE_F32 ? 1e-5 : TOL_BF16;
  auto shape = [](std::initializer_list<int> d) {
    std::string s = "(";
    for (int x : d) s += (s.size() > 1 ? ", " : "") + std::to_string(x);
    return s + ")";
  };

  {  // rmsnorm: x f32 (rows, hidden), w (hidden) -> act
    auto x = randn(static_cast<size_t>(ROWS) * HID, 1.0f, 1), w = rounded(randn(HID, 0.1f, 2), wdt);
    for (float& v : w) v += 1.0f;
    w = rounded(w, wdt);
    void* dx = D.put(x, UL_DTYPE_F32); void* dw = D.put(w, wdt); void* dout = D.alloc(x.size() * dtype_size(act));
    void* rx = R.put(x, UL_DTYPE_F32); void* rw = R.put(w, UL_DTYPE_F32); void* rout = R.alloc(x.size() * 4);
    must(dev->rmsnorm(static_cast<float*>(dx), dw, ROWS, HID, 1e-5f, dout), "rmsnorm");
    must(ref->rmsnorm(static_cast<float*>(rx), rw, ROWS, HID, 1e-5f, rout), "rmsnorm ref");
    checks.push_back(compare("rmsnorm", shape({ROWS, HID}), D.get(dout, act, x.size()), R.get(rout, UL_DTYPE_F32, x.size()), tol_act));
  }
  // gemm: (M, K) x (N, K)^T on each GEMM the device backend has: with cuBLASLt loaded, a second
  // CUDA backend forced to our own kernel (UL_GEMM=own) checks that one too.
  std::vector<std::unique_ptr<Backend>> own_gemm;
  if (gemm_name(*dev) == "cublaslt") {
    const char* saved = getenv("UL_GEMM");
    std::string keep = saved ? saved : "";
    setenv("UL_GEMM", "own", 1);
    own_gemm.push_back(make_backend(UL_BACKEND_CUDA));
    if (saved) setenv("UL_GEMM", keep.c_str(), 1);
    else unsetenv("UL_GEMM");
  }
  std::vector<Backend*> gemm_backends = {dev.get()};
  for (auto& b : own_gemm) gemm_backends.push_back(b.get());
  for (Backend* gb : gemm_backends) {
    Buffers G(*gb);
    const std::string gname = gemm_name(*gb);
    for (int accumulate = 0; accumulate < 2; ++accumulate) {
      const int M = tiny ? 33 : 256, K = HID, N = tiny ? 96 : 1024 + 64;  // N not a multiple of 128
      auto x = rounded(randn(static_cast<size_t>(M) * K, 1.0f, 3), act);
      auto w = rounded(randn(static_cast<size_t>(N) * K, 1.0f / std::sqrt(static_cast<float>(K)), 4), wdt);
      auto y0 = randn(static_cast<size_t>(M) * N, 1.0f, 5);
      ul_dtype ydt = accumulate ? UL_DTYPE_F32 : act;
      void* dx = G.put(x, act); void* dw = G.put(w, wdt); void* dy = accumulate ? G.put(y0, UL_DTYPE_F32) : G.alloc(y0.size() * dtype_size(act));
      void* rx = R.put(x, UL_DTYPE_F32); void* rw = R.put(w, UL_DTYPE_F32); void* ry = R.put(y0, UL_DTYPE_F32);
      // Twice on the device: the second call runs the cached cuBLASLt plan of the first.
      for (int call = 0; call < 2; ++call) {
        if (accumulate && call) must(gb->upload(dy, y0.data(), y0.size() * 4), "upload");
        must(gb->matmul(dx, dw, M, K, N, dy, accumulate != 0), "matmul");
      }
      must(ref->matmul(rx, rw, M, K, N, ry, accumulate != 0), "matmul ref");
      Check c = compare(accumulate ? "gemm_accumulate_f32" : "gemm", shape({M, K, N}), G.get(dy, ydt, y0.size()),
                        R.get(ry, UL_DTYPE_F32, y0.size()), accumulate ? (act == UL_DTYPE_F32 ? 1e-5 : 1e-2) : tol_act);
      c.gemm = gname;
      checks.push_back(c);
    }
    must(gb->sync(), "sync");
  }
  {  // rope at a position beyond 1M (the f64 angle path), yarn-like scaling
    const int pos0 = 1 << 20;
    auto x = rounded(randn(static_cast<size_t>(ROWS) * H * HD, 1.0f, 6), act);
    auto inv = inv_freq_default(HD, 500000.0);
    Buffers* bs[2] = {&D, &R};
    std::vector<float> outs[2];
    for (int b = 0; b < 2; ++b) {
      Backend& be = b ? *ref : *dev;
      ul_dtype dt = b ? UL_DTYPE_F32 : act;
      void* px = bs[b]->put(x, dt);
      void* pi = bs[b]->alloc(inv.size() * 8);
      must(be.upload(pi, inv.data(), inv.size() * 8), "upload inv_freq");
      must(be.rope(px, ROWS, H, HD, HD, pos0, static_cast<double*>(pi), 1.2f), "rope");
      outs[b] = bs[b]->get(px, dt, x.size());
    }
    checks.push_back(compare("rope", shape({ROWS, H, HD}) + " pos0=" + std::to_string(pos0), outs[0], outs[1], tol_act));
  }
  {  // swiglu
    size_t n = static_cast<size_t>(ROWS) * FFN;
    auto g = rounded(randn(n, 2.0f, 7), act), u = rounded(randn(n, 1.0f, 8), act);
    void* dg = D.put(g, act); void* du = D.put(u, act); void* dout = D.alloc(n * dtype_size(act));
    void* rg = R.put(g, UL_DTYPE_F32); void* ru = R.put(u, UL_DTYPE_F32); void* rout = R.alloc(n * 4);
    must(dev->swiglu(dg, du, n, dout), "swiglu");
    must(ref->swiglu(rg, ru, n, rout), "swiglu ref");
    checks.push_back(compare("swiglu", shape({ROWS, FFN}), D.get(dout, act, n), R.get(rout, UL_DTYPE_F32, n), tol_act));
  }
  {  // embed
    const int V = 1000;
    auto table = rounded(randn(static_cast<size_t>(V) * HID, 1.0f, 9), wdt);
    std::vector<int32_t> toks(ROWS);
    for (int i = 0; i < ROWS; ++i) toks[i] = (i * 389) % V;
    void* dt = D.put(table, wdt); void* dout = D.alloc(static_cast<size_t>(ROWS) * HID * 4);
    void* rt = R.put(table, UL_DTYPE_F32); void* rout = R.alloc(static_cast<size_t>(ROWS) * HID * 4);
    must(dev->embed(dt, toks.data(), ROWS, HID, static_cast<float*>(dout)), "embed");
    must(ref->embed(rt, toks.data(), ROWS, HID, static_cast<float*>(rout)), "embed ref");
    checks.push_back(compare("embed", shape({ROWS, HID}), D.get(dout, UL_DTYPE_F32, toks.size() * HID),
                             R.get(rout, UL_DTYPE_F32, toks.size() * HID), 0.0));
  }
  // kv_store + attention: a cache of `ctx` keys, the last `rows` of them queried (a prefill chunk),
  // then one decode row. KV bf16 and fp8 (when the device backend has it).
  for (ul_dtype kvdt : {UL_DTYPE_BF16, UL_DTYPE_FP8_E4M3}) {
    if (!dev->supports_kv(kvdt)) continue;
    const char* kvname = kvdt == UL_DTYPE_BF16 ? "bf16" : "fp8";
    for (int decode = 0; decode < 2; ++decode) {
      const int ctx = tiny ? 96 : 2048, rows = decode ? 1 : (tiny ? 40 : 128), pos0 = ctx - rows;
      auto k = rounded(randn(static_cast<size_t>(ctx) * KVH * HD, 1.0f, 10), act);
      auto v = rounded(randn(static_cast<size_t>(ctx) * KVH * HD, 1.0f, 11), act);
      auto q = rounded(randn(static_cast<size_t>(rows) * H * HD, 1.0f, 12), act);
      std::vector<float> outs[2];
      for (int b = 0; b < 2; ++b) {
        Backend& be = b ? *ref : *dev;
        Buffers& B = b ? R : D;
        ul_dtype dt = b ? UL_DTYPE_F32 : act;
        size_t cache_bytes = static_cast<size_t>(KVH) * ctx * HD * dtype_size(kvdt);
        void* kc = B.alloc(cache_bytes); void* vc = B.alloc(cache_bytes);
        size_t scale_bytes = static_cast<size_t>(KVH) * fp8_blocks(ctx) * 4;  // (kv_head, block)
        float* ks = static_cast<float*>(B.alloc(scale_bytes)); float* vs = static_cast<float*>(B.alloc(scale_bytes));
        bool fp8 = kvdt == UL_DTYPE_FP8_E4M3;
        for (int kind = 0; kind < 2; ++kind) {
          KvStoreArgs s{};
          s.src = B.put(kind ? v : k, dt);
          s.cache = kind ? vc : kc;
          s.scale = fp8 ? (kind ? vs : ks) : nullptr;
          s.rows = ctx; s.kv_heads = KVH; s.head_dim = HD; s.max_pos = ctx; s.pos0 = 0; s.kv_dtype = kvdt;
          must(be.kv_store(s), "kv_store");
        }
        AttentionArgs a{};
        a.q = B.put(q, dt);
        a.k_cache = kc; a.v_cache = vc; a.k_scale = fp8 ? ks : nullptr; a.v_scale = fp8 ? vs : nullptr;
        a.out = B.alloc(q.size() * dtype_size(dt));
        a.rows = rows; a.heads = H; a.kv_heads = KVH; a.head_dim = HD; a.max_pos = ctx; a.pos0 = pos0;
        a.kv_dtype = kvdt; a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(HD));
        must(be.attention(a), "attention");
        outs[b] = B.get(a.out, dt, q.size());
      }
      checks.push_back(compare(std::string(decode ? "attention_decode_" : "attention_prefill_") + kvname,
                               shape({rows, H, KVH, HD}) + " ctx=" + std::to_string(ctx), outs[0], outs[1],
                               kvdt == UL_DTYPE_FP8_E4M3 ? TOL_FP8 : tol_act));
    }
  }
  {  // sampling: the same token for argmax and for a seeded Gumbel draw
    const int V = tiny ? 1000 : 128256;
    auto logits = randn(V, 3.0f, 13);
    std::vector<float> got, want;
    for (float t : {0.0f, 0.8f}) {
      int32_t a = -1, b = -1;
      void* dl = D.put(logits, UL_DTYPE_F32); void* rl = R.put(logits, UL_DTYPE_F32);
      must(dev->sample(static_cast<float*>(dl), V, t, 42, 7, &a), "sample");
      must(ref->sample(static_cast<float*>(rl), V, t, 42, 7, &b), "sample ref");
      got.push_back(static_cast<float>(a));
      want.push_back(static_cast<float>(b));
    }
    checks.push_back(compare("sample_token_ids", shape({V}), got, want, 0.0));
  }
  must(dev->sync(), "sync");

  std::printf("{\"backend\": \"%s\", \"reference\": \"%s\", \"info\": {%s}, \"gemm_backends\": [", dev->name(),
              ref->name(), dev->info_json_members().c_str());
  for (size_t i = 0; i < gemm_backends.size(); ++i)
    std::printf("%s\"%s\"", i ? ", " : "", gemm_name(*gemm_backends[i]).c_str());
  std::printf("], \"kernels\": [");
  bool all = true;
  for (size_t i = 0; i < checks.size(); ++i) {
    const Check& c = checks[i];
    double norm = c.max_ref > 0 ? c.max_abs / c.max_ref : c.max_abs;
    bool ok = norm <= c.tol;
    all = all && ok;
    std::string gemm = c.gemm.empty() ? "" : ", \"gemm\": \"" + c.gemm + "\"";
    std::printf("%s\n  {\"op\": \"%s\", \"shape\": \"%s\"%s, \"max_abs_err\": %.6g, \"max_abs_ref\": %.6g, "
                "\"normalized_err\": %.6g, \"tolerance\": %.6g, \"ok\": %s}",
                i ? "," : "", c.op.c_str(), c.shape.c_str(), gemm.c_str(), c.max_abs, c.max_ref, norm, c.tol,
                ok ? "true" : "false");
  }
  std::printf("\n], \"ok\": %s}\n", all ? "true" : "false");
  return 0;
}

// ---- logits: one forward pass of a model directory -----------------------------------------------
struct FileConfig {
  ul_config c{};
  std::vector<double> inv_freq;
};

FileConfig read_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) die("cannot read " + path);
  FileConfig fc;
  std::string line;
  std::map<std::string, double> kv;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string key;
    if (!(ls >> key)) continue;
    if (key == "inv_freq") {
      double v;
      while (ls >> v) fc.inv_freq.push_back(v);
    } else {
      double v;
      ls >> v;
      kv[key] = v;
    }
  }
  auto need = [&](const char* k) {
    if (!kv.count(k)) die(path + ": missing " + k);
    return kv[k];
  };
  ul_config& c = fc.c;
  c.hidden_size = static_cast<int>(need("hidden_size"));
  c.intermediate_size = static_cast<int>(need("intermediate_size"));
  c.num_layers = static_cast<int>(need("num_layers"));
  c.num_heads = static_cast<int>(need("num_heads"));
  c.num_kv_heads = static_cast<int>(need("num_kv_heads"));
  c.head_dim = static_cast<int>(need("head_dim"));
  c.vocab_size = static_cast<int>(need("vocab_size"));
  c.tie_word_embeddings = static_cast<int>(need("tie_word_embeddings"));
  c.rms_norm_eps = static_cast<float>(need("rms_norm_eps"));
  c.rotary_dim = static_cast<int>(need("rotary_dim"));
  c.attention_scaling = static_cast<float>(need("attention_scaling"));
  if (static_cast<int>(fc.inv_freq.size()) != c.rotary_dim / 2) die(path + ": inv_freq needs rotary_dim / 2 values");
  return fc;
}

ul_dtype kv_flag(const std::map<std::string, std::string>& f, ul_backend_kind kind) {
  auto it = f.find("kv");
  std::string k = it == f.end() ? (kind == UL_BACKEND_CUDA ? "bf16" : "f32") : it->second;
  if (k == "bf16") return UL_DTYPE_BF16;
  if (k == "fp8") return UL_DTYPE_FP8_E4M3;
  if (k == "f32") return UL_DTYPE_F32;
  die("--kv must be bf16, fp8 or f32");
}

std::vector<int32_t> read_tokens(const std::string& path) {
  std::ifstream tf(path, std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(tf)), std::istreambuf_iterator<char>());
  if (raw.empty() || raw.size() % 4 != 0) die("--tokens must hold int32 token ids");
  std::vector<int32_t> tokens(raw.size() / 4);
  std::memcpy(tokens.data(), raw.data(), tokens.size() * 4);
  return tokens;
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) die("cannot write " + path);
}

/** An engine over the model directory (every *.safetensors in it), ready, for `positions` tokens. */
ul_engine* open_engine(const std::map<std::string, std::string>& f, FileConfig& fc, int positions) {
  ul_backend_kind kind = backend_kind(f);
  fc.c.inv_freq = fc.inv_freq.data();
  fc.c.max_positions = positions;
  fc.c.kv_dtype = kv_flag(f, kind);
  fc.c.backend = kind;
  fc.c.max_chunk = f.count("chunk") ? std::stoi(f.at("chunk")) : 0;
  ul_engine* e = nullptr;
  must(ul_engine_create(&fc.c, &e), nullptr, "create");
  DIR* d = opendir(f.at("model").c_str());
  if (!d) die("cannot open " + f.at("model"));
  std::vector<std::string> files;
  while (dirent* ent = readdir(d)) {
    std::string n = ent->d_name;
    if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) files.push_back(f.at("model") + "/" + n);
  }
  closedir(d);
  std::sort(files.begin(), files.end());
  for (const std::string& file : files) must(ul_engine_load_safetensors(e, file.c_str()), e, "load");
  must(ul_engine_ready(e), e, "ready");
  return e;
}

std::string engine_info(const ul_engine* e) {
  std::vector<char> buf(static_cast<size_t>(ul_engine_backend_info(e, nullptr, 0)) + 1);
  ul_engine_backend_info(e, buf.data(), buf.size());
  return buf.data();
}

int cmd_logits(const std::map<std::string, std::string>& f) {
  for (const char* k : {"config", "model", "tokens", "out"})
    if (!f.count(k)) die(std::string("logits needs --") + k);
  FileConfig fc = read_config(f.at("config"));
  std::vector<int32_t> tokens = read_tokens(f.at("tokens"));
  const int n = static_cast<int>(tokens.size());
  ul_engine* e = open_engine(f, fc, n + 16);
  std::vector<float> logits(fc.c.vocab_size);
  // --prefix N: prefill N tokens first, then the rest (1 token left = the decode path).
  // --feed N: calls of N tokens (a caller's chunked prefill; the last call may be shorter).
  int prefix = f.count("prefix") ? std::stoi(f.at("prefix")) : 0;
  int feed = f.count("feed") ? std::stoi(f.at("feed")) : n;
  if (prefix < 0 || prefix >= n) die("--prefix must be in [0, tokens)");
  if (feed <= 0) die("--feed must be positive");
  if (prefix > 0 && f.count("feed")) die("--prefix and --feed do not combine");
  if (prefix > 0) must(ul_engine_forward(e, tokens.data(), prefix, nullptr), e, "prefill");
  int calls = 0;
  for (int at = prefix; at < n; at += feed, ++calls) {
    int m = std::min(feed, n - at);
    must(ul_engine_forward(e, tokens.data() + at, m, at + m == n ? logits.data() : nullptr), e, "forward");
  }
  write_file(f.at("out"), logits.data(), logits.size() * 4);
  ul_memory_report mem{};
  ul_engine_memory(e, &mem);
  std::printf("{\"tokens\": %d, \"calls\": %d, \"vocab\": %d, \"weight_bytes\": %llu, \"kv_bytes\": %llu, \"info\": %s}\n",
              n, calls + (prefix > 0), fc.c.vocab_size, static_cast<unsigned long long>(mem.weight_bytes),
              static_cast<unsigned long long>(mem.kv_bytes), engine_info(e).c_str());
  ul_engine_destroy(e);
  return 0;
}

ul_dtype export_dtype(const std::map<std::string, std::string>& f) {
  std::string d = f.count("dtype") ? f.at("dtype") : "f32";
  if (d == "f32") return UL_DTYPE_F32;
  if (d == "bf16") return UL_DTYPE_BF16;
  if (d == "f16") return UL_DTYPE_F16;
  if (d == "fp8") return UL_DTYPE_FP8_E4M3;
  die("--dtype must be f32, bf16, f16 or fp8");
}

/** Payload bytes of n positions in dt (ul_engine.h): per layer K then V; fp8 puts each one's
 *  (kv_head, block) f32 scales first. */
size_t kv_payload_bytes(const ul_config& c, int n, ul_dtype dt) {
  size_t per = static_cast<size_t>(c.num_kv_heads) * n * c.head_dim * dtype_size(dt);
  if (dt == UL_DTYPE_FP8_E4M3) per += static_cast<size_t>(c.num_kv_heads) * ((n + UL_FP8_BLOCK - 1) / UL_FP8_BLOCK) * 4;
  return 2 * static_cast<size_t>(c.num_layers) * per;
}

/** max |a - b| / max |b| (NaN anywhere: infinity). */
double normalized_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    double x = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(x <= d)) d = std::isnan(x) ? INFINITY : x;
    m = std::max(m, std::fabs(static_cast<double>(b[i])));
  }
  return m > 0 ? d / m : d;
}

// KV export -> import equals continuing. On CUDA every KV byte crosses the pinned staging buffers
// (download_2d / upload_2d); the reference runs the same engine code.
int cmd_kv_roundtrip(const std::map<std::string, std::string>& f) {
  for (const char* k : {"config", "model", "tokens", "prefix"})
    if (!f.count(k)) die(std::string("kv-roundtrip needs --") + k);
  FileConfig fc = read_config(f.at("config"));
  std::vector<int32_t> tokens = read_tokens(f.at("tokens"));
  const int n = static_cast<int>(tokens.size()), p = std::stoi(f.at("prefix"));
  if (p <= 0 || p >= n) die("--prefix must be in (0, tokens)");
  const ul_dtype dt = export_dtype(f);
  const size_t bytes = kv_payload_bytes(fc.c, p, dt);
  ul_engine* a = open_engine(f, fc, n + 16);
  const int tail = n - p;
  std::vector<float> cont(fc.c.vocab_size), trunc(fc.c.vocab_size), fresh(fc.c.vocab_size);
  std::vector<unsigned char> kv(bytes), again(bytes);
  must(ul_engine_forward(a, tokens.data(), p, nullptr), a, "prefill");
  must(ul_engine_export_kv(a, 0, p, dt, kv.data(), kv.size()), a, "export");
  must(ul_engine_forward(a, tokens.data() + p, tail, cont.data()), a, "continue");
  must(ul_engine_truncate(a, 0), a, "truncate");
  must(ul_engine_import_kv(a, kv.data(), kv.size(), p, dt), a, "import after truncate");
  must(ul_engine_forward(a, tokens.data() + p, tail, trunc.data()), a, "forward after import");
  FileConfig fc2 = read_config(f.at("config"));
  ul_engine* b = open_engine(f, fc2, n + 16);
  must(ul_engine_import_kv(b, kv.data(), kv.size(), p, dt), b, "import into a new engine");
  must(ul_engine_export_kv(b, 0, p, dt, again.data(), again.size()), b, "export after import");
  must(ul_engine_forward(b, tokens.data() + p, tail, fresh.data()), b, "forward in the new engine");
  if (f.count("save")) {
    const std::string dir = f.at("save");
    write_file(dir + "/kv.bin", kv.data(), kv.size());
    write_file(dir + "/tokens.bin", tokens.data(), tokens.size() * 4);
    write_file(dir + "/logits.bin", fresh.data(), fresh.size() * 4);
  }
  std::printf("{\"tokens\": %d, \"prefix\": %d, \"export_dtype\": \"%s\", \"kv_bytes\": %zu, "
              "\"reexport_bytes_equal\": %s, \"truncate_import_vs_continuing\": %.6g, "
              "\"new_engine_import_vs_continuing\": %.6g, \"info\": %s}\n",
              n, p, f.count("dtype") ? f.at("dtype").c_str() : "f32", bytes, kv == again ? "true" : "false",
              normalized_diff(trunc, cont), normalized_diff(fresh, cont), engine_info(a).c_str());
  ul_engine_destroy(a);
  ul_engine_destroy(b);
  return 0;
}

int cmd_info(const std::map<std::string, std::string>& f) {
  auto be = make_backend(backend_kind(f));
  std::printf("{%s}\n", be->info_json_members().c_str());
  return 0;
}

// The cuBLASLt search alone (no CUDA needed): what would be tried here, and what dlopen said.
int cmd_cublaslt_search(const std::map<std::string, std::string>&) {
  std::vector<std::string> cands = cublaslt_candidates(LibrarySearchEnv::from_process());
  LoadedLibrary lib = load_first(cands, "cublasLtMatmul");
  std::string list;
  for (size_t i = 0; i < cands.size(); ++i) list += (i ? "," : "") + json_quote(cands[i]);
  std::printf("{\"candidates\": [%s], %s}\n", list.c_str(), library_json_members(lib).c_str());
  return 0;
}

// ---- benchmarks -------------------------------------------------------------------------------------
/** A tiled random bf16/f32 pattern: benchmarks need finite values, not fresh randomness per byte. */
void* fill_random(Buffers& B, size_t n, ul_dtype dt, float scale) {
  const size_t block = std::min<size_t>(n, size_t{1} << 22);
  auto r = randn(block, scale, 99);
  std::vector<unsigned char> tmp(block * dtype_size(dt));
  convert(r.data(), UL_DTYPE_F32, tmp.data(), dt, block);
  void* p = B.alloc(n * dtype_size(dt));
  for (size_t at = 0; at < n; at += block) {
    size_t m = std::min(block, n - at);
    must(B.be.upload(static_cast<char*>(p) + at * dtype_size(dt), tmp.data(), m * dtype_size(dt)), "upload");
  }
  return p;
}

template <typename F>
double time_best(Backend& be, int iters, F&& f) {
  f();
  must(be.sync(), "sync");
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    double t0 = now_s();
    f();
    must(be.sync(), "sync");
    best = std::min(best, now_s() - t0);
  }
  return best;
}

int cmd_bench_attention(const std::map<std::string, std::string>& f) {
  auto be = make_backend(backend_kind(f));
  const int H = 32, KVH = 8, HD = 128;
  std::vector<int> lens = int_list(f.count("lens") ? f.at("lens") : "16384,65536,131072");
  std::printf("{\"backend\": \"%s\", \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"results\": [", be->name(), H, KVH, HD);
  for (size_t i = 0; i < lens.size(); ++i) {
    int L = lens[i];
    Buffers B(*be);
    ul_dtype act = be->act_dtype();
    AttentionArgs a{};
    a.q = fill_random(B, static_cast<size_t>(L) * H * HD, act, 1.0f);
    a.k_cache = fill_random(B, static_cast<size_t>(KVH) * L * HD, UL_DTYPE_BF16, 1.0f);
    a.v_cache = fill_random(B, static_cast<size_t>(KVH) * L * HD, UL_DTYPE_BF16, 1.0f);
    a.out = B.alloc(static_cast<size_t>(L) * H * HD * dtype_size(act));
    a.rows = L; a.heads = H; a.kv_heads = KVH; a.head_dim = HD; a.max_pos = L; a.pos0 = 0;
    a.kv_dtype = UL_DTYPE_BF16; a.softmax_scale = 1.0f / std::sqrt(128.0f);
    double s = time_best(*be, L > 32768 ? 2 : 3, [&] { must(be->attention(a), "attention"); });
    double flops = 4.0 * L * static_cast<double>(L) * HD * H / 2;  // causal: half of QK^T and PV
    std::printf("%s\n  {\"seq_len\": %d, \"seconds\": %.6f, \"tflops\": %.4g}", i ? "," : "", L, s, flops / s / 1e12);
  }
  std::printf("\n]}\n");
  return 0;
}

// ---- bench-decode: one decode row over L keys, the KV stream's bandwidth --------------------------
constexpr double kH200HbmBytesPerS = 4.8e12;

/** One decode query row (position L - 1) of the 8B shape over L keys of bf16 or fp8 KV: seconds,
 *  KV bytes read / second and that as a fraction of the H200's HBM bandwidth; on CUDA also the
 *  general split_kv kernel (UL_DECODE=general, read at each launch) for comparison. */
int cmd_bench_decode(const std::map<std::string, std::string>& f) {
  auto be = make_backend(backend_kind(f));
  const int H = 32, KVH = 8, HD = 128;
  std::vector<int> lens = int_list(f.count("lens") ? f.at("lens") : "131072,1048576");
  std::vector<std::pair<ul_dtype, const char*>> kvs = {{UL_DTYPE_BF16, "bf16"}, {UL_DTYPE_FP8_E4M3, "fp8"}};
  const bool cuda = backend_kind(f) == UL_BACKEND_CUDA;
  std::printf("{\"backend\": \"%s\", \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"hbm_bytes_per_s\": %.3g, "
              "\"results\": [", be->name(), H, KVH, HD, kH200HbmBytesPerS);
  bool first = true;
  for (auto [kvdt, kvname] : kvs) {
    if (!be->supports_kv(kvdt)) continue;
    for (int L : lens) {
      Buffers B(*be);
      const ul_dtype act = be->act_dtype();
      const bool fp8 = kvdt == UL_DTYPE_FP8_E4M3;
      const size_t cache = static_cast<size_t>(KVH) * L * HD, scales = static_cast<size_t>(KVH) * fp8_blocks(L);
      AttentionArgs a{};
      a.q = fill_random(B, static_cast<size_t>(H) * HD, act, 1.0f);
      a.k_cache = fill_random(B, cache, kvdt, 1.0f);
      a.v_cache = fill_random(B, cache, kvdt, 1.0f);
      if (fp8) {
        a.k_scale = static_cast<const float*>(B.put(std::vector<float>(scales, 1.0f / 64), UL_DTYPE_F32));
        a.v_scale = static_cast<const float*>(B.put(std::vector<float>(scales, 1.0f / 64), UL_DTYPE_F32));
      }
      a.out = B.alloc(static_cast<size_t>(H) * HD * dtype_size(act));
      a.rows = 1; a.heads = H; a.kv_heads = KVH; a.head_dim = HD; a.max_pos = L; a.pos0 = L - 1;
      a.kv_dtype = kvdt; a.softmax_scale = 1.0f / std::sqrt(128.0f);
      const double bytes = 2.0 * cache * dtype_size(kvdt) + (fp8 ? 2.0 * scales * 4 : 0.0);
      const int iters = cuda ? 10 : 1;
      const double s = time_best(*be, iters, [&] { must(be->attention(a), "attention"); });
      std::printf("%s\n  {\"kv\": \"%s\", \"keys\": %d, \"kv_bytes\": %.0f, \"seconds\": %.6g, \"gbps\": %.4g, "
                  "\"fraction_of_hbm\": %.4f", first ? "" : ",", kvname, L, bytes, s, bytes / s / 1e9,
                  bytes / s / kH200HbmBytesPerS);
      if (cuda) {
        setenv("UL_DECODE", "general", 1);
        const double g = time_best(*be, iters, [&] { must(be->attention(a), "attention (general)"); });
        unsetenv("UL_DECODE");
        std::printf(", \"general_seconds\": %.6g, \"general_gbps\": %.4g, \"speedup_vs_general\": %.3f", g,
                    bytes / g / 1e9, g / s);
      }
      std::printf("}");
      first = false;
    }
  }
  std::printf("\n]}\n");
  return 0;
}

// ---- attention-variants: each prefill kernel vs the reference through paged tables ---------------
/** Sets UL_ATTENTION (the CUDA backend reads it when it is created); "" unsets it. */
void set_attention_env(const std::string& v) {
  if (v.empty()) unsetenv("UL_ATTENTION");
  else setenv("UL_ATTENTION", v.c_str(), 1);
}

int cmd_attention_variants(const std::map<std::string, std::string>& f) {
  const bool tiny = f.count("tiny") > 0;
  const ul_backend_kind kind = backend_kind(f);
  std::vector<std::string> variants = {"reference"};
  if (kind == UL_BACKEND_CUDA) {
    variants.clear();
    std::stringstream ss(f.count("variants") ? f.at("variants") : "fa2,fa2-32,wmma");
    for (std::string v; std::getline(ss, v, ',');) variants.push_back(v);
  }
  const int HD = 128, BT = 16;
  // (heads, kv_heads, items of (rows, pos0)): no row count or key count a multiple of 16 or 64; the
  // first case is Llama 3.1 8B's GQA over 3000 keys with two items (one of them a short tail tile).
  // Sized for the reference, which runs on one CPU core (about 10 s for all four).
  struct Case {
    int heads, kv_heads;
    std::vector<std::pair<int, int>> items;
  };
  const std::vector<Case> cases =
      tiny ? std::vector<Case>{{32, 8, {{45, 55}, {17, 20}}}, {16, 8, {{33, 7}}}, {64, 8, {{21, 30}}}, {8, 8, {{19, 5}}}}
           : std::vector<Case>{{32, 8, {{333, 2667}, {37, 500}}}, {16, 8, {{150, 350}}}, {64, 8, {{150, 350}}},
                               {8, 8, {{150, 350}}}};
  auto ref = make_reference_backend();
  std::string json = "{\"backend\": \"" + std::string(kind == UL_BACKEND_CUDA ? "cuda" : "reference") +
                     "\", \"block_tokens\": " + std::to_string(BT) + ", \"variants\": [";
  bool all = true;
  std::vector<std::vector<float>> want(cases.size());  // the reference's outputs, computed once
  for (size_t vi = 0; vi < variants.size(); ++vi) {
    if (kind == UL_BACKEND_CUDA) set_attention_env(variants[vi]);
    auto dev = kind == UL_BACKEND_CUDA ? make_backend(kind) : make_reference_backend();
    json += std::string(vi ? "," : "") + "\n  {\"variant\": \"" + variants[vi] + "\", \"info\": {" +
            dev->info_json_members() + "}, \"cases\": [";
    for (size_t ci = 0; ci < cases.size(); ++ci) {
      const Case& c = cases[ci];
      // Pool: every item's blocks plus 5 spare, handed out in a shuffled order.
      std::vector<StepItemPlan> items;
      std::vector<int32_t> tables, positions, slots;
      int rows = 0, blocks = 5, keys = 0;
      for (auto [r, p0] : c.items) blocks += (p0 + r + BT - 1) / BT;
      std::vector<int32_t> order(blocks);
      for (int b = 0; b < blocks; ++b) order[b] = b;
      std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<uint32_t>(17 + ci)));
      int next = 0;
      for (auto [r, p0] : c.items) {
        items.push_back({rows, r, p0, static_cast<int>(tables.size())});
        const int32_t* table = order.data() + next;
        for (int b = 0; b < (p0 + r + BT - 1) / BT; ++b) tables.push_back(order[next++]);
        for (int i = 0; i < r; ++i) {
          positions.push_back(p0 + i);
          slots.push_back(slot_of(table, BT, p0 + i));
        }
        rows += r;
        keys = std::max(keys, p0 + r);
      }
      StepPlan plan;
      plan.n_items = static_cast<int>(items.size());
      plan.items = items.data();
      plan.tables = tables.data();
      plan.table_ints = static_cast<int>(tables.size());
      plan.positions = positions.data();
      plan.slots = slots.data();
      plan.rows = rows;
      plan.block_tokens = BT;
      const int pool = blocks * BT;
      auto k = rounded(randn(static_cast<size_t>(c.kv_heads) * pool * HD, 1.0f, 31 + ci), UL_DTYPE_BF16);
      auto v = rounded(randn(static_cast<size_t>(c.kv_heads) * pool * HD, 1.0f, 41 + ci), UL_DTYPE_BF16);
      auto q = rounded(randn(static_cast<size_t>(rows) * c.heads * HD, 1.0f, 51 + ci), UL_DTYPE_BF16);
      auto run = [&](Backend& be) {
        Buffers B(be);
        ul_dtype act = be.act_dtype();
        AttentionArgs a{};
        a.q = B.put(q, act);
        a.k_cache = B.put(k, UL_DTYPE_BF16);
        a.v_cache = B.put(v, UL_DTYPE_BF16);
        a.out = B.alloc(q.size() * dtype_size(act));
        a.rows = rows; a.heads = c.heads; a.kv_heads = c.kv_heads; a.head_dim = HD; a.max_pos = pool; a.pos0 = 0;
        a.kv_dtype = UL_DTYPE_BF16; a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(HD));
        a.plan = &plan;
        must(be.prepare_step(plan), "prepare_step");
        must(be.attention(a), "attention");
        must(be.sync(), "sync");
        return B.get(a.out, act, q.size());
      };
      if (want[ci].empty()) want[ci] = run(*ref);
      Check r = compare("attention", "", run(*dev), want[ci], 0.0);
      const double tol = dev->act_dtype() == UL_DTYPE_F32 ? 1e-5 : 2e-2;  // bf16 output and P (2^-9 each)
      const double err = r.max_abs / r.max_ref;
      const bool ok = err <= tol;
      all = all && ok;
      std::string shape = "[";
      for (size_t i = 0; i < c.items.size(); ++i)
        shape += (i ? ", [" : "[") + std::to_string(c.items[i].first) + ", " + std::to_string(c.items[i].second) + "]";
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s\n    {\"heads\": %d, \"kv_heads\": %d, \"group\": %d, \"items_rows_pos0\": %s], \"keys\": %d, "
                    "\"pool_slots\": %d, \"max_abs_err\": %.6g, \"normalized_err\": %.6g, \"tol\": %g, \"ok\": %s}",
                    ci ? "," : "", c.heads, c.kv_heads, c.heads / c.kv_heads, shape.c_str(), keys, pool, r.max_abs, err,
                    tol, ok ? "true" : "false");
      json += buf;
    }
    json += "\n  ]}";
  }
  std::printf("%s\n], \"ok\": %s}\n", json.c_str(), all ? "true" : "false");
  return 0;
}

int cmd_bench_gemm(const std::map<std::string, std::string>& f) {
  auto be = make_backend(backend_kind(f));
  const int M = f.count("m") ? std::stoi(f.at("m")) : 4096;
  struct Shape { const char* name; int k, n; };
  const Shape shapes[] = {{"q_proj", 4096, 4096}, {"kv_proj", 4096, 1024}, {"o_proj", 4096, 4096},
                          {"gate_up_proj", 4096, 14336}, {"down_proj", 14336, 4096}};
  std::printf("{\"backend\": \"%s\", \"m\": %d, \"results\": [", be->name(), M);
  for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); ++i) {
    const Shape& sh = shapes[i];
    Buffers B(*be);
    ul_dtype act = be->act_dtype();
    void* x = fill_random(B, static_cast<size_t>(M) * sh.k, act, 1.0f);
    void* w = fill_random(B, static_cast<size_t>(sh.n) * sh.k, be->weight_dtype(), 0.02f);
    void* y = B.alloc(static_cast<size_t>(M) * sh.n * dtype_size(act));
    double s = time_best(*be, 5, [&] { must(be->matmul(x, w, M, sh.k, sh.n, y, false), "matmul"); });
    std::printf("%s\n  {\"name\": \"%s\", \"m\": %d, \"k\": %d, \"n\": %d, \"seconds\": %.6f, \"tflops\": %.4g}",
                i ? "," : "", sh.name, M, sh.k, sh.n, s, 2.0 * M * sh.k * static_cast<double>(sh.n) / s / 1e12);
  }
  std::printf("\n]}\n");
  return 0;
}

/** A Llama-3.1-8B-shaped (or tiny: hidden 256, 2 layers, vocab 1024) config, head_dim 128. */
ul_config random_config(bool tiny, std::vector<double>* inv) {
  ul_config c{};
  c.hidden_size = tiny ? 256 : 4096;
  c.intermediate_size = tiny ? 512 : 14336;
  c.num_layers = tiny ? 2 : 32;
  c.num_heads = tiny ? 4 : 32;
  c.num_kv_heads = tiny ? 2 : 8;
  c.head_dim = 128;
  c.vocab_size = tiny ? 1024 : 128256;
  c.rms_norm_eps = 1e-5f;
  c.rotary_dim = 128;
  *inv = inv_freq_default(128, 500000.0);
  c.inv_freq = inv->data();
  c.attention_scaling = 1.0f;
  return c;
}

/**
 * An engine of config c with random weights, ready: single-sequence (block_tokens 0) or paged.
 * `distinct`: every tensor its own N(0, 0.02) draw (the paged check: a row's logits must depend on
 * its own tokens); otherwise one shared block reused for every tensor (benchmarks: fast to set).
 */
ul_engine* random_engine(const ul_config& c, int block_tokens, int total_blocks, bool distinct, int device_blocks = -1) {
  ul_engine* e = nullptr;
  if (device_blocks >= 0 && block_tokens > 0)
    must(ul_engine_create_paged_tiered(&c, block_tokens, total_blocks, device_blocks, &e), nullptr, "create_paged_tiered");
  else if (device_blocks >= 0) must(ul_engine_create_tiered(&c, device_blocks, &e), nullptr, "create_tiered");
  else if (block_tokens > 0) must(ul_engine_create_paged(&c, block_tokens, total_blocks, &e), nullptr, "create_paged");
  else must(ul_engine_create(&c, &e), nullptr, "create");
  size_t biggest = static_cast<size_t>(c.vocab_size) * c.hidden_size;
  biggest = std::max(biggest, static_cast<size_t>(c.intermediate_size) * c.hidden_size);
  std::vector<uint16_t> block(biggest);
  uint32_t seed = 7;
  auto refill = [&]() {
    auto r = randn(std::min<size_t>(biggest, size_t{1} << 22), 0.02f, seed++);
    for (size_t i = 0; i < biggest; ++i) block[i] = f32_to_bf16(r[i % r.size()]);
  };
  refill();
  std::vector<uint16_t> ones(c.hidden_size, f32_to_bf16(1.0f));
  int64_t h = c.hidden_size, q = static_cast<int64_t>(c.num_heads) * c.head_dim,
          kv = static_cast<int64_t>(c.num_kv_heads) * c.head_dim, im = c.intermediate_size;
  auto set = [&](const std::string& name, std::vector<int64_t> shape, const uint16_t* data) {
    if (distinct && data == block.data()) refill();
    must(ul_engine_set_tensor(e, name.c_str(), UL_DTYPE_BF16, shape.data(), static_cast<int>(shape.size()), data), e, "set_tensor");
  };
  set("model.embed_tokens.weight", {c.vocab_size, h}, block.data());
  set("lm_head.weight", {c.vocab_size, h}, block.data());
  set("model.norm.weight", {h}, ones.data());
  for (int l = 0; l < c.num_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    set(p + "input_layernorm.weight", {h}, ones.data());
    set(p + "post_attention_layernorm.weight", {h}, ones.data());
    set(p + "self_attn.q_proj.weight", {q, h}, block.data());
    set(p + "self_attn.k_proj.weight", {kv, h}, block.data());
    set(p + "self_attn.v_proj.weight", {kv, h}, block.data());
    set(p + "self_attn.o_proj.weight", {h, q}, block.data());
    set(p + "mlp.gate_proj.weight", {im, h}, block.data());
    set(p + "mlp.up_proj.weight", {im, h}, block.data());
    set(p + "mlp.down_proj.weight", {h, im}, block.data());
  }
  must(ul_engine_ready(e), e, "ready");
  return e;
}

int cmd_bench_prefill(const std::map<std::string, std::string>& f) {
  ul_backend_kind kind = backend_kind(f);
  bool tiny = f.count("shape") && f.at("shape") == "tiny";
  std::vector<int> lens = int_list(f.count("lens") ? f.at("lens") : "32768,131072");
  int max_len = *std::max_element(lens.begin(), lens.end());
  std::vector<double> inv;
  ul_config c = random_config(tiny, &inv);
  c.max_positions = max_len;
  c.kv_dtype = kv_flag(f, kind);
  c.backend = kind;
  ul_engine* e = random_engine(c, 0, 0, false);
  std::vector<int32_t> tokens(max_len);
  for (int i = 0; i < max_len; ++i) tokens[i] = (i * 7919) % c.vocab_size;
  std::vector<float> logits(c.vocab_size);
  ul_memory_report mem{};
  ul_engine_memory(e, &mem);
  std::printf("{\"shape\": \"%s\", \"layers\": %d, \"weight_bytes\": %llu, \"kv_bytes\": %llu, \"results\": [",
              tiny ? "tiny" : "llama-3.1-8b", c.num_layers, static_cast<unsigned long long>(mem.weight_bytes),
              static_cast<unsigned long long>(mem.kv_bytes));
  for (size_t i = 0; i < lens.size(); ++i) {
    must(ul_engine_truncate(e, 0), e, "truncate");
    double t0 = now_s();
    must(ul_engine_forward(e, tokens.data(), lens[i], logits.data()), e, "forward");
    double s = now_s() - t0;
    bool finite = std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); });
    std::printf("%s\n  {\"tokens\": %d, \"seconds\": %.4f, \"tokens_per_s\": %.1f, \"logits_finite\": %s}", i ? "," : "",
                lens[i], s, lens[i] / s, finite ? "true" : "false");
  }
  std::printf("\n]}\n");
  ul_engine_destroy(e);
  return 0;
}

/** max |a - b| / max(1e-30, max |b|). */
double normalized_err(const std::vector<float>& a, const float* b, size_t n) {
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

/** Distinct token ids for a sequence (seed) of n tokens. */
std::vector<int32_t> seq_tokens(int n, int vocab, int seed) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 7919 + seed * 104729 + 13) % vocab);
  return t;
}

/**
 * paged == contiguous: four sequences through ul_engine_step on a paged engine (scattered block
 * tables of --block positions, a 150-token prefix shared by A, B and C with its partial last block
 * copied on write, prefill pieces beside decode tokens, lengths that are not tile multiples) against
 * each sequence run alone in the same pieces on a single-sequence engine. Prints each item's
 * normalised logits error; ok when all <= --tol.
 */
int cmd_paged(const std::map<std::string, std::string>& f) {
  ul_backend_kind kind = backend_kind(f);
  bool tiny = !f.count("shape") || f.at("shape") == "tiny";
  const int bt = f.count("block") ? std::stoi(f.at("block")) : 16;
  const double tol = f.count("tol") ? std::stod(f.at("tol")) : 1e-6;
  std::vector<double> inv;
  ul_config c = random_config(tiny, &inv);
  c.max_positions = 512;
  c.kv_dtype = kv_flag(f, kind);
  c.backend = kind;
  const int P = 150, V = c.vocab_size, nb = 512 / bt + 1, total = 4 * nb + 2;
  // Scattered tables: sequence s takes blocks s, s + 4, s + 8, ... (A's first blocks are shared).
  auto table_of = [&](int s) {
    std::vector<int32_t> t(nb);
    for (int b = 0; b < nb; ++b) t[b] = (b * 4 + s) % total;
    return t;
  };
  std::vector<std::vector<int32_t>> tables = {table_of(0), table_of(1), table_of(2), table_of(3)};
  for (int s = 1; s < 3; ++s)
    for (int b = 0; b < P / bt; ++b) tables[s][b] = tables[0][b];  // whole prefix blocks shared
  std::vector<int32_t> prefix = seq_tokens(P, V, 1);
  std::vector<std::vector<int32_t>> toks(4);
  const int own[4] = {38, 2, 71, 205};
  for (int s = 0; s < 3; ++s) {
    toks[s] = prefix;
    std::vector<int32_t> rest = seq_tokens(own[s], V, 2 + s);
    toks[s].insert(toks[s].end(), rest.begin(), rest.end());
  }
  toks[3] = seq_tokens(own[3], V, 9);
  struct Piece { int seq, start, n; bool logits; };
  // Step 1: A's prefix beside D's prefill; copy-on-write; step 2: A 37, B 1, C 70 from the prefix,
  // D decodes; step 3: a decode token each.
  std::vector<std::vector<Piece>> steps = {
      {{0, 0, P, false}, {3, 0, 203, true}},
      {{0, P, 37, true}, {1, P, 1, true}, {2, P, 70, true}, {3, 203, 1, true}},
      {{0, P + 37, 1, true}, {1, P + 1, 1, true}, {2, P + 70, 1, true}, {3, 204, 1, true}},
  };
  ul_engine* pe = random_engine(c, bt, total, true);
  ul_engine* se = random_engine(c, 0, 0, true);
  std::vector<float> want(V);
  std::printf("{\"backend\": \"%s\", \"kv\": \"%s\", \"block_tokens\": %d, \"tol\": %g, \"results\": [",
              kind == UL_BACKEND_CUDA ? "cuda" : "reference", c.kv_dtype == UL_DTYPE_BF16 ? "bf16" : c.kv_dtype == UL_DTYPE_FP8_E4M3 ? "fp8" : "f32",
              bt, tol);
  double worst = 0;
  bool first = true;
  for (size_t k = 0; k < steps.size(); ++k) {
    std::vector<ul_step_item> items;
    int wanted = 0;
    for (const Piece& p : steps[k]) {
      items.push_back({toks[p.seq].data() + p.start, p.n, p.start, tables[p.seq].data(), nb, p.logits ? 1 : 0});
      wanted += p.logits;
    }
    std::vector<float> got(static_cast<size_t>(wanted) * V);
    must(ul_engine_step(pe, static_cast<int>(items.size()), items.data(), got.data()), pe, "step");
    if (k == 0 && P % bt != 0) {  // B and C leave the prefix mid-block: copy it first
      int32_t pairs[4] = {tables[0][P / bt], tables[1][P / bt], tables[0][P / bt], tables[2][P / bt]};
      must(ul_engine_copy_blocks(pe, 2, pairs), pe, "copy_blocks");
    }
    int row = 0;
    for (const Piece& p : steps[k]) {
      if (!p.logits) continue;
      // Alone: the prefix as A wrote it, then this sequence's own pieces up to this one.
      must(ul_engine_truncate(se, 0), se, "truncate");
      for (size_t j = 0; j <= k; ++j)
        for (const Piece& q : steps[j]) {
          bool mine = q.seq == p.seq || (q.seq == 0 && q.start == 0 && p.seq < 3);
          if (!mine || q.start != ul_engine_position(se) || (j == k && q.seq != p.seq)) continue;
          must(ul_engine_forward(se, toks[q.seq].data() + q.start, q.n, j == k ? want.data() : nullptr), se, "forward");
        }
      double err = normalized_err(want, got.data() + static_cast<size_t>(row) * V, V);
      worst = std::max(worst, err);
      std::printf("%s\n  {\"step\": %zu, \"seq\": %d, \"start\": %d, \"tokens\": %d, \"normalized_err\": %.3g}",
                  first ? "" : ",", k + 1, p.seq, p.start, p.n, err);
      first = false;
      ++row;
    }
  }
  std::printf("\n], \"max_normalized_err\": %.3g, \"ok\": %s}\n", worst, worst <= tol ? "true" : "false");
  ul_engine_destroy(pe);
  ul_engine_destroy(se);
  return 0;
}

/**
 * Batched decode: --seqs sequences share a --prefix of whole 64-position blocks (prefilled once),
 * each gets its own 17-token suffix in one step, then --steps decode steps of all of them at once
 * (logits for every item) are timed against the same steps run one sequence at a time.
 */
int cmd_bench_paged_decode(const std::map<std::string, std::string>& f) {
  ul_backend_kind kind = backend_kind(f);
  bool tiny = f.count("shape") && f.at("shape") == "tiny";
  const int S = f.count("seqs") ? std::stoi(f.at("seqs")) : 16;
  const int P = f.count("prefix") ? std::stoi(f.at("prefix")) : 4096;
  const int steps = f.count("steps") ? std::stoi(f.at("steps")) : 16;
  const int bt = 64, suffix = 17;
  if (P % bt != 0) die("--prefix must be a multiple of 64 (whole shared blocks)");
  std::vector<double> inv;
  ul_config c = random_config(tiny, &inv);
  const int own_blocks = (suffix + 2 * steps + bt - 1) / bt;
  c.max_positions = P + suffix + 2 * steps;
  c.kv_dtype = kv_flag(f, kind);
  c.backend = kind;
  const int shared = P / bt, total = shared + S * own_blocks, V = c.vocab_size;
  ul_engine* e = random_engine(c, bt, total, false);
  std::vector<std::vector<int32_t>> tables(S), toks(S);
  for (int s = 0; s < S; ++s) {
    for (int b = 0; b < shared; ++b) tables[s].push_back(b);
    for (int b = 0; b < own_blocks; ++b) tables[s].push_back(shared + s * own_blocks + b);
    toks[s] = seq_tokens(P, V, 1);
    std::vector<int32_t> rest = seq_tokens(suffix + 2 * steps, V, 2 + s);
    toks[s].insert(toks[s].end(), rest.begin(), rest.end());
  }
  auto item = [&](int s, int start, int n, bool logits) {
    return ul_step_item{toks[s].data() + start, n, start, tables[s].data(), static_cast<int32_t>(tables[s].size()), logits ? 1 : 0};
  };
  std::vector<float> logits(static_cast<size_t>(S) * V);
  double t0 = now_s();
  ul_step_item pre = item(0, 0, P, false);
  must(ul_engine_step(e, 1, &pre, nullptr), e, "step");
  double prefill_s = now_s() - t0;
  std::vector<ul_step_item> items;
  for (int s = 0; s < S; ++s) items.push_back(item(s, P, suffix, true));
  must(ul_engine_step(e, S, items.data(), logits.data()), e, "step");
  int pos = P + suffix;
  // Batched: every sequence's next token in one step.
  t0 = now_s();
  for (int k = 0; k < steps; ++k, ++pos) {
    for (int s = 0; s < S; ++s) items[s] = item(s, pos, 1, true);
    must(ul_engine_step(e, S, items.data(), logits.data()), e, "step");
  }
  double batched = (now_s() - t0) / steps;
  bool finite = std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); });
  // One at a time: the same number of steps, each sequence stepped alone.
  t0 = now_s();
  for (int k = 0; k < steps; ++k, ++pos)
    for (int s = 0; s < S; ++s) {
      ul_step_item one = item(s, pos, 1, true);
      must(ul_engine_step(e, 1, &one, logits.data()), e, "step");
    }
  double alone = (now_s() - t0) / steps;
  std::printf("{\"shape\": \"%s\", \"seqs\": %d, \"shared_prefix\": %d, \"block_tokens\": %d, \"steps\": %d, "
              "\"prefix_prefill_s\": %.4f, \"batched_step_ms\": %.3f, \"one_at_a_time_step_ms\": %.3f, "
              "\"speedup\": %.3f, \"decode_tokens_per_s\": %.1f, \"logits_finite\": %s}\n",
              tiny ? "tiny" : "llama-3.1-8b", S, P, bt, steps, prefill_s, batched * 1e3, alone * 1e3, alone / batched,
              S / batched, finite ? "true" : "false");
  ul_engine_destroy(e);
  return 0;
}

}  // namespace

// ---- tiered KV -----------------------------------------------------------------------------------
/** Logits of a prefill in calls of `feed` tokens, then `decode` one-token forwards, concatenated. */
std::vector<float> single_run(ul_engine* e, const std::vector<int32_t>& toks, int n, int feed, int decode, int V) {
  std::vector<float> out, logits(V);
  for (int at = 0; at < n + decode;) {
    int m = at < n ? std::min(feed, n - at) : 1;
    must(ul_engine_forward(e, toks.data() + at, m, logits.data()), e, "forward");
    out.insert(out.end(), logits.begin(), logits.end());
    at += m;
  }
  return out;
}

/** Two sequences over interleaved 64-position blocks (even / odd ids, so each table mixes both
 *  tiers): a prefill of both in one step, then `decode` steps of both. Every logits row. */
std::vector<float> paged_run(ul_engine* e, const std::vector<int32_t>& toks, int n, int decode, int nb, int V) {
  std::vector<std::vector<int32_t>> tables(2);
  for (int s = 0; s < 2; ++s)
    for (int b = 0; b < nb; ++b) tables[s].push_back(2 * b + s);
  std::vector<float> out;
  for (int k = 0; k <= decode; ++k) {
    std::vector<ul_step_item> items;
    for (int s = 0; s < 2; ++s) {
      int start = k == 0 ? 0 : n + s * 7 + k - 1, len = k == 0 ? n + s * 7 : 1;  // B is 7 longer
      items.push_back({toks.data() + start + s * 11, len, start, tables[s].data(), nb, 1});
    }
    std::vector<float> got(2 * static_cast<size_t>(V));
    must(ul_engine_step(e, 2, items.data(), got.data()), e, "step");
    out.insert(out.end(), got.begin(), got.end());
  }
  return out;
}

/**
 * tiered == resident: the same random weights, tokens and calls on an all-resident engine and on
 * engines whose pool has only 0, 1 or 3 blocks of 64 positions on the device (the rest in pinned
 * host memory, staged per layer). The same kernels run on the same values, so the logits must be
 * identical bit for bit. Then the host tier's raw copy rates (copy_async of --copy-mib between
 * pinned host memory and the device, best of 3) and one decode step over --decode-positions of
 * imported KV with 1 device block vs all resident: host KV read per step / the step's time.
 */
int cmd_tiered(const std::map<std::string, std::string>& f) {
  ul_backend_kind kind = backend_kind(f);
  const int n = f.count("tokens") ? std::stoi(f.at("tokens")) : 300, decode = 4;
  const int L = f.count("decode-positions") ? std::stoi(f.at("decode-positions")) : 65536;
  const size_t copy_bytes = (f.count("copy-mib") ? std::stoul(f.at("copy-mib")) : 1024) << 20;
  std::vector<double> inv;
  ul_config c = random_config(true, &inv);
  c.num_layers = 4;  // each staging buffer serves two layers: a stale one would show
  c.max_positions = n + 32;
  c.kv_dtype = kv_flag(f, kind);
  c.backend = kind;
  c.max_chunk = 200;  // micro-batches straddle 64-position blocks and the tier boundary
  const int V = c.vocab_size, feed = 150;
  std::vector<int32_t> toks = seq_tokens(n + 64, V, 3);
  const char* kv = c.kv_dtype == UL_DTYPE_BF16 ? "bf16" : c.kv_dtype == UL_DTYPE_FP8_E4M3 ? "fp8" : "f32";
  std::printf("{\"backend\": \"%s\", \"kv\": \"%s\", \"layers\": %d, \"tokens\": %d, \"cases\": [",
              kind == UL_BACKEND_CUDA ? "cuda" : "reference", kv, c.num_layers, n);
  bool all = true;
  auto report = [&](const char* form, int device_blocks, const ul_engine* e, const std::vector<float>& got,
                    const std::vector<float>& want, bool first) {
    ul_kv_tiers t{};
    ul_engine_memory_tiers(e, &t);
    bool same = got.size() == want.size() && std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0;
    all = all && same;
    std::printf("%s\n  {\"form\": \"%s\", \"device_blocks\": %d, \"host_blocks\": %llu, \"host_kv_bytes\": %llu, "
                "\"identical\": %s, \"normalized_err\": %.3g}",
                first ? "" : ",", form, device_blocks, static_cast<unsigned long long>(t.host_blocks),
                static_cast<unsigned long long>(t.host_kv_bytes), same ? "true" : "false",
                normalized_err(got, want.data(), want.size()));
  };
  ul_engine* resident = random_engine(c, 0, 0, true);
  const std::vector<float> want = single_run(resident, toks, n, feed, decode, V);
  ul_engine_destroy(resident);
  bool first = true;
  for (int device_blocks : {0, 1, 3}) {
    ul_engine* e = random_engine(c, 0, 0, true, device_blocks);
    report("single", device_blocks, e, single_run(e, toks, n, feed, decode, V), want, first);
    first = false;
    ul_engine_destroy(e);
  }
  const int nb = (n + 7 + decode + 63) / 64;
  ul_engine* pr = random_engine(c, 64, 2 * nb, true);
  const std::vector<float> pwant = paged_run(pr, toks, n, decode, nb, V);
  ul_engine_destroy(pr);
  ul_engine* pt = random_engine(c, 64, 2 * nb, true, 3);
  report("paged", 3, pt, paged_run(pt, toks, n, decode, nb, V), pwant, false);
  ul_engine_destroy(pt);

  // Raw copy rates of the host tier's path: pinned host memory <-> device on the copy queue.
  auto be = make_backend(kind);
  void* host = nullptr;
  must(be->alloc_host(copy_bytes, &host), "alloc_host");
  Buffers B(*be);
  void* dev = B.alloc(copy_bytes);
  double h2d = time_best(*be, 3, [&] { must(be->copy_async(dev, host, copy_bytes, 1, copy_bytes, true), "copy in"); });
  double d2h = time_best(*be, 3, [&] { must(be->copy_async(host, dev, copy_bytes, 1, copy_bytes, false), "copy out"); });
  be->release_host(host);
  std::printf("\n], \"copy\": {\"bytes\": %zu, \"h2d_gbps\": %.4g, \"d2h_gbps\": %.4g}", copy_bytes,
              copy_bytes / h2d / 1e9, copy_bytes / d2h / 1e9);

  // A decode step over L positions of imported (random) bf16 KV, then a prefill of P tokens from
  // position 0 (the engine's default chunk): resident vs 1 device block.
  const int P = std::min(L, f.count("prefill-positions") ? std::stoi(f.at("prefill-positions")) : 16384);
  const std::vector<int32_t> ptoks = seq_tokens(P, V, 4);
  ul_config d = c;
  d.kv_dtype = kind == UL_BACKEND_CUDA ? UL_DTYPE_BF16 : UL_DTYPE_F32;
  d.max_positions = L + 1;
  d.max_chunk = 0;
  const size_t payload = kv_payload_bytes(d, L, UL_DTYPE_BF16);
  std::vector<uint16_t> kvp(payload / 2);
  auto r = randn(std::min<size_t>(kvp.size(), size_t{1} << 20), 0.5f, 5);
  for (size_t i = 0; i < kvp.size(); ++i) kvp[i] = f32_to_bf16(r[i % r.size()]);
  double step_s[2] = {0, 0}, prefill_s[2] = {0, 0};
  uint64_t host_kv = 0;
  std::vector<float> logits(V);
  for (int tiered = 0; tiered < 2; ++tiered) {
    ul_engine* e = random_engine(d, 0, 0, false, tiered ? 1 : -1);
    must(ul_engine_import_kv(e, kvp.data(), payload, L, UL_DTYPE_BF16), e, "import");
    double best = 1e30;
    for (int it = 0; it < 4; ++it) {  // the first is a warm-up
      double t0 = now_s();
      must(ul_engine_forward(e, toks.data(), 1, logits.data()), e, "decode");
      if (it > 0) best = std::min(best, now_s() - t0);
      must(ul_engine_truncate(e, L), e, "truncate");
    }
    step_s[tiered] = best;
    must(ul_engine_truncate(e, 0), e, "truncate");
    double t0 = now_s();
    must(ul_engine_forward(e, ptoks.data(), P, logits.data()), e, "prefill");
    prefill_s[tiered] = now_s() - t0;
    ul_kv_tiers t{};
    ul_engine_memory_tiers(e, &t);
    if (tiered) host_kv = t.host_kv_bytes;
    ul_engine_destroy(e);
  }
  std::printf(", \"decode\": {\"positions\": %d, \"host_kv_bytes\": %llu, \"resident_s\": %.6f, \"tiered_s\": %.6f, "
              "\"host_kv_gbps\": %.4g}, \"prefill\": {\"positions\": %d, \"resident_s\": %.6f, \"tiered_s\": %.6f, "
              "\"slowdown\": %.4g}, \"ok\": %s}\n",
              L, static_cast<unsigned long long>(host_kv), step_s[0], step_s[1], host_kv / step_s[1] / 1e9, P, prefill_s[0],
              prefill_s[1], prefill_s[1] / prefill_s[0], all ? "true" : "false");
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) die("usage: ul_check info|cublaslt-search|kernels|logits|kv-roundtrip|paged|attention-variants|bench-attention|bench-gemm|bench-prefill|bench-paged-decode|bench-decode|tiered [--flags]");
  std::string cmd = argv[1];
  auto f = parse_flags(argc, argv, 2);
  if (cmd == "kernels") return cmd_kernels(f);
  if (cmd == "info") return cmd_info(f);
  if (cmd == "cublaslt-search") return cmd_cublaslt_search(f);
  if (cmd == "logits") return cmd_logits(f);
  if (cmd == "kv-roundtrip") return cmd_kv_roundtrip(f);
  if (cmd == "bench-attention") return cmd_bench_attention(f);
  if (cmd == "attention-variants") return cmd_attention_variants(f);
  if (cmd == "bench-gemm") return cmd_bench_gemm(f);
  if (cmd == "bench-prefill") return cmd_bench_prefill(f);
  if (cmd == "paged") return cmd_paged(f);
  if (cmd == "bench-paged-decode") return cmd_bench_paged_decode(f);
  if (cmd == "bench-decode") return cmd_bench_decode(f);
  if (cmd == "tiered") return cmd_tiered(f);
  die("unknown command " + cmd);
}
