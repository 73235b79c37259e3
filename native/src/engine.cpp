// The host engine: weights, the KV cache, the layer loop and chunked prefill, KV export/import, all
// behind the C ABI of ul_engine.h. It owns layout and orchestration; arithmetic is the backend's
// (backend.h). Portable C++17: the same file runs in the N-API addon, the emscripten module and the
// C++ check programs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend.h"
#include "dtype.h"
#include "ul_engine.h"

using ul::Err;
using ul::Status;

namespace {

struct LayerWeights {
  void* attn_norm = nullptr;  // (hidden)
  void* q = nullptr;          // (heads * head_dim, hidden)
  void* k = nullptr;          // (kv_heads * head_dim, hidden)
  void* v = nullptr;          // (kv_heads * head_dim, hidden)
  void* o = nullptr;          // (hidden, heads * head_dim)
  void* ffn_norm = nullptr;   // (hidden)
  void* gate = nullptr;       // (intermediate, hidden)
  void* up = nullptr;         // (intermediate, hidden)
  void* down = nullptr;       // (hidden, intermediate)
};

thread_local std::string g_create_error;

}  // namespace

struct ul_engine {
  ul_config cfg{};
  std::vector<double> inv_freq_host;
  std::unique_ptr<ul::Backend> be;
  std::string error;

  // Weights, in backend->weight_dtype().
  void* embed = nullptr;    // (vocab, hidden)
  void* norm = nullptr;     // (hidden)
  void* lm_head = nullptr;  // (vocab, hidden); == embed when tied
  std::vector<LayerWeights> layers;
  uint64_t weight_bytes = 0;
  bool ready = false;

  // KV cache: (layer, K|V, kv_head, max_pos, head_dim) in cfg.kv_dtype;
  // fp8 scales (layer, K|V, kv_head, fp8_blocks(max_pos)) f32.
  void* kv = nullptr;
  float* kv_scale = nullptr;
  int32_t position = 0;

  // Scratch for one chunk of max_chunk rows. act = backend->act_dtype().
  double* inv_freq = nullptr;  // (rotary_dim / 2) f64, device
  float* x = nullptr;         // (chunk, hidden) f32 residual stream
  void* xn = nullptr;         // (chunk, max(hidden, heads * head_dim)) act: normed input / attention out
  void* q = nullptr;          // (chunk, heads * head_dim) act
  void* k = nullptr;          // (chunk, kv_heads * head_dim) act
  void* v = nullptr;          // (chunk, kv_heads * head_dim) act
  void* gate = nullptr;       // (chunk, intermediate) act
  void* up = nullptr;         // (chunk, intermediate) act
  float* logits = nullptr;    // (vocab) f32
  bool have_logits = false;
  uint64_t activation_bytes = 0;

  ~ul_engine() {
    if (!be) return;
    for (void* p : owned) be->release(p);
  }

  std::vector<void*> owned;

  Status alloc(size_t bytes, void** out) {
    UL_TRY(be->alloc(bytes, out));
    owned.push_back(*out);
    return Status::Ok();
  }

  ul_status fail(const Status& st) {
    error = st.message;
    return st.code;
  }

  size_t kv_es() const { return ul::dtype_size(cfg.kv_dtype); }
  size_t kv_slice_elems() const {  // one (layer, K|V): (kv_head, max_pos, head_dim)
    return static_cast<size_t>(cfg.num_kv_heads) * cfg.max_positions * cfg.head_dim;
  }
  void* kv_slice(int layer, int kind) const {
    return static_cast<char*>(kv) + (static_cast<size_t>(layer) * 2 + kind) * kv_slice_elems() * kv_es();
  }
  size_t scale_slice_elems() const {  // one (layer, K|V): (kv_head, block)
    return static_cast<size_t>(cfg.num_kv_heads) * ul::fp8_blocks(cfg.max_positions);
  }
  float* kv_scales(int layer, int kind) const {
    return kv_scale ? kv_scale + (static_cast<size_t>(layer) * 2 + kind) * scale_slice_elems() : nullptr;
  }
  /** kv_store of `rows` new (rows, kv_heads, head_dim) rows at `src` into (layer, K|V) from pos0. */
  ul::KvStoreArgs kv_store_args(int layer, int kind, const void* src, int rows, int pos0) const {
    ul::KvStoreArgs s{};
    s.src = src;
    s.cache = kv_slice(layer, kind);
    s.scale = kv_scales(layer, kind);
    s.rows = rows;
    s.kv_heads = cfg.num_kv_heads;
    s.head_dim = cfg.head_dim;
    s.max_pos = cfg.max_positions;
    s.pos0 = pos0;
    s.kv_dtype = cfg.kv_dtype;
    return s;
  }
};

namespace {

const char* dtype_name(ul_dtype dt) {
  switch (dt) {
    case UL_DTYPE_F32: return "f32";
    case UL_DTYPE_BF16: return "bf16";
    case UL_DTYPE_F16: return "f16";
    case UL_DTYPE_FP8_E4M3: return "fp8-e4m3";
  }
  return "?";
}

Status validate_config(const ul_config& c) {
  auto bad = [](const std::string& m) { return Err(UL_ERR_INVALID_ARGUMENT, "config: " + m); };
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0)
    return bad("every size must be positive");
  if (c.num_heads % c.num_kv_heads != 0) return bad("num_heads must be a multiple of num_kv_heads");
  if (c.rotary_dim <= 0 || c.rotary_dim > c.head_dim || c.rotary_dim % 2 != 0)
    return bad("rotary_dim must be even and in (0, head_dim]");
  if (!c.inv_freq) return bad("inv_freq is required (rotary_dim / 2 floats)");
  if (c.max_positions <= 0) return bad("max_positions must be positive");
  if (c.max_chunk < 0) return bad("max_chunk must be >= 0");
  if (!(c.rms_norm_eps > 0)) return bad("rms_norm_eps must be positive");
  if (c.kv_dtype < UL_DTYPE_F32 || c.kv_dtype > UL_DTYPE_FP8_E4M3) return bad("unknown kv_dtype");
  return Status::Ok();
}

/** Where a tensor name points, and the shape the config implies for it. */
Status locate(ul_engine* e, const std::string& name, void*** slot, std::vector<int64_t>* shape) {
  const ul_config& c = e->cfg;
  int64_t h = c.hidden_size, qd = static_cast<int64_t>(c.num_heads) * c.head_dim,
          kvd = static_cast<int64_t>(c.num_kv_heads) * c.head_dim, im = c.intermediate_size;
  if (name == "model.embed_tokens.weight") {
    *slot = &e->embed;
    *shape = {c.vocab_size, h};
    return Status::Ok();
  }
  if (name == "model.norm.weight") {
    *slot = &e->norm;
    *shape = {h};
    return Status::Ok();
  }
  if (name == "lm_head.weight") {
    if (c.tie_word_embeddings) return Err(UL_ERR_INVALID_ARGUMENT, "lm_head.weight given but tie_word_embeddings is set");
    *slot = &e->lm_head;
    *shape = {c.vocab_size, h};
    return Status::Ok();
  }
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) == 0) {
    size_t dot = name.find('.', prefix.size());
    if (dot != std::string::npos) {
      std::string idx = name.substr(prefix.size(), dot - prefix.size());
      bool digits = !idx.empty() && idx.size() < 7 &&
                    std::all_of(idx.begin(), idx.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
      int layer = digits ? std::stoi(idx) : -1;
      if (layer >= 0 && layer < c.num_layers) {
        LayerWeights& L = e->layers[layer];
        std::string rest = name.substr(dot + 1);
        struct Entry { const char* n; void** p; std::vector<int64_t> s; };
        Entry entries[] = {
            {"input_layernorm.weight", &L.attn_norm, {h}},
            {"self_attn.q_proj.weight", &L.q, {qd, h}},
            {"self_attn.k_proj.weight", &L.k, {kvd, h}},
            {"self_attn.v_proj.weight", &L.v, {kvd, h}},
            {"self_attn.o_proj.weight", &L.o, {h, qd}},
            {"post_attention_layernorm.weight", &L.ffn_norm, {h}},
            {"mlp.gate_proj.weight", &L.gate, {im, h}},
            {"mlp.up_proj.weight", &L.up, {im, h}},
            {"mlp.down_proj.weight", &L.down, {h, im}},
        };
        for (Entry& en : entries) {
          if (rest == en.n) {
            *slot = en.p;
            *shape = en.s;
            return Status::Ok();
          }
        }
      }
    }
  }
  return Err(UL_ERR_INVALID_ARGUMENT, "unknown tensor '" + name + "' (biases and non-Llama weights are not supported)");
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

Status set_tensor(ul_engine* e, const char* name, ul_dtype dtype, const int64_t* shape, int ndim,
                  const void* data) {
  if (e->ready) return Err(UL_ERR_STATE, "set_tensor after ready");
  if (!name || !data || (!shape && ndim > 0) || ndim < 0)
    return Err(UL_ERR_INVALID_ARGUMENT, "set_tensor: null argument");
  if (dtype != UL_DTYPE_F32 && dtype != UL_DTYPE_BF16 && dtype != UL_DTYPE_F16)
    return Err(UL_ERR_INVALID_ARGUMENT, std::string("weights must be f32, bf16 or f16, got ") + dtype_name(dtype));
  void** slot = nullptr;
  std::vector<int64_t> want;
  UL_TRY(locate(e, name, &slot, &want));
  std::vector<int64_t> got(shape, shape + ndim);
  if (got != want)
    return Err(UL_ERR_INVALID_ARGUMENT, std::string(name) + ": shape " + shape_str(got) + " but config implies " + shape_str(want));
  if (*slot) return Err(UL_ERR_INVALID_ARGUMENT, std::string(name) + " was already set");
  size_t n = 1;
  for (int64_t d : want) n *= static_cast<size_t>(d);
  ul_dtype wdt = e->be->weight_dtype();
  size_t bytes = n * ul::dtype_size(wdt);
  void* dst = nullptr;
  UL_TRY(e->alloc(bytes, &dst));
  if (wdt == dtype) {
    UL_TRY(e->be->upload(dst, data, bytes));
  } else {
    // Convert on host in bounded pieces (a 128256 x 4096 embedding in f32 is 2 GB).
    const size_t piece = size_t{1} << 22;
    std::vector<unsigned char> tmp(std::min(n, piece) * ul::dtype_size(wdt));
    for (size_t at = 0; at < n; at += piece) {
      size_t m = std::min(piece, n - at);
      ul::convert(static_cast<const char*>(data) + at * ul::dtype_size(dtype), dtype, tmp.data(), wdt, m);
      UL_TRY(e->be->upload(static_cast<char*>(dst) + at * ul::dtype_size(wdt), tmp.data(), m * ul::dtype_size(wdt)));
    }
  }
  *slot = dst;
  e->weight_bytes += bytes;
  return Status::Ok();
}

Status check_ready(ul_engine* e) {
  if (e->cfg.tie_word_embeddings) e->lm_head = e->embed;
  std::vector<std::string> missing;
  if (!e->embed) missing.push_back("model.embed_tokens.weight");
  if (!e->norm) missing.push_back("model.norm.weight");
  if (!e->lm_head) missing.push_back("lm_head.weight");
  for (size_t i = 0; i < e->layers.size(); ++i) {
    const LayerWeights& L = e->layers[i];
    const void* ps[] = {L.attn_norm, L.q, L.k, L.v, L.o, L.ffn_norm, L.gate, L.up, L.down};
    for (const void* p : ps)
      if (!p) {
        missing.push_back("model.layers." + std::to_string(i) + ".*");
        break;
      }
  }
  if (!missing.empty()) {
    std::string m = "missing weights:";
    for (size_t i = 0; i < missing.size() && i < 5; ++i) m += " " + missing[i];
    return Err(UL_ERR_STATE, m);
  }
  e->ready = true;
  return Status::Ok();
}

/** One chunk: rows tokens at positions [position, position + rows); logits of the last if asked. */
Status run_chunk(ul_engine* e, const int32_t* tokens, int rows, bool want_logits) {
  const ul_config& c = e->cfg;
  ul::Backend& be = *e->be;
  int pos0 = e->position;
  int qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
  for (int r = 0; r < rows; ++r)
    if (tokens[r] < 0 || tokens[r] >= c.vocab_size)
      return Err(UL_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[r]) + " out of range [0, " + std::to_string(c.vocab_size) + ")");
  UL_TRY(be.embed(e->embed, tokens, rows, c.hidden_size, e->x));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = e->layers[l];
    UL_TRY(be.rmsnorm(e->x, L.attn_norm, rows, c.hidden_size, c.rms_norm_eps, e->xn));
    UL_TRY(be.matmul(e->xn, L.q, rows, c.hidden_size, qd, e->q, false));
    UL_TRY(be.matmul(e->xn, L.k, rows, c.hidden_size, kvd, e->k, false));
    UL_TRY(be.matmul(e->xn, L.v, rows, c.hidden_size, kvd, e->v, false));
    UL_TRY(be.rope(e->q, rows, c.num_heads, c.head_dim, c.rotary_dim, pos0, e->inv_freq, c.attention_scaling));
    UL_TRY(be.rope(e->k, rows, c.num_kv_heads, c.head_dim, c.rotary_dim, pos0, e->inv_freq, c.attention_scaling));
    for (int kind = 0; kind < 2; ++kind)
      UL_TRY(be.kv_store(e->kv_store_args(l, kind, kind == 0 ? e->k : e->v, rows, pos0)));
    ul::AttentionArgs a{};
    a.q = e->q;
    a.k_cache = e->kv_slice(l, 0);
    a.v_cache = e->kv_slice(l, 1);
    a.k_scale = e->kv_scales(l, 0);
    a.v_scale = e->kv_scales(l, 1);
    a.out = e->xn;
    a.rows = rows;
    a.heads = c.num_heads;
    a.kv_heads = c.num_kv_heads;
    a.head_dim = c.head_dim;
    a.max_pos = c.max_positions;
    a.pos0 = pos0;
    a.kv_dtype = c.kv_dtype;
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    UL_TRY(be.attention(a));
    UL_TRY(be.matmul(e->xn, L.o, rows, qd, c.hidden_size, e->x, true));
    UL_TRY(be.rmsnorm(e->x, L.ffn_norm, rows, c.hidden_size, c.rms_norm_eps, e->xn));
    UL_TRY(be.matmul(e->xn, L.gate, rows, c.hidden_size, c.intermediate_size, e->gate, false));
    UL_TRY(be.matmul(e->xn, L.up, rows, c.hidden_size, c.intermediate_size, e->up, false));
    UL_TRY(be.swiglu(e->gate, e->up, static_cast<size_t>(rows) * c.intermediate_size, e->gate));
    UL_TRY(be.matmul(e->gate, L.down, rows, c.intermediate_size, c.hidden_size, e->x, true));
  }
  e->position = pos0 + rows;
  if (want_logits) {
    const float* last = e->x + static_cast<size_t>(rows - 1) * c.hidden_size;
    UL_TRY(be.rmsnorm(last, e->norm, 1, c.hidden_size, c.rms_norm_eps, e->xn));
    std::vector<float> zeros(c.vocab_size, 0.0f);
    UL_TRY(be.upload(e->logits, zeros.data(), zeros.size() * sizeof(float)));
    UL_TRY(be.matmul(e->xn, e->lm_head, 1, c.hidden_size, c.vocab_size, e->logits, true));
    e->have_logits = true;
  }
  return Status::Ok();
}

Status forward(ul_engine* e, const int32_t* tokens, int n, float* logits) {
  if (!e->ready) return Err(UL_ERR_STATE, "forward before ready (weights not all set)");
  if (n <= 0 || !tokens) return Err(UL_ERR_INVALID_ARGUMENT, "forward needs at least one token");
  if (static_cast<int64_t>(e->position) + n > e->cfg.max_positions)
    return Err(UL_ERR_LIMIT, "KV capacity exceeded: " + std::to_string(e->position) + " + " + std::to_string(n) + " > max_positions " + std::to_string(e->cfg.max_positions));
  e->have_logits = false;
  for (int at = 0; at < n; at += e->cfg.max_chunk) {
    int rows = std::min(e->cfg.max_chunk, n - at);
    bool last = at + rows == n;
    UL_TRY(run_chunk(e, tokens + at, rows, last && logits != nullptr));
  }
  if (logits) {
    UL_TRY(e->be->download(logits, e->logits, static_cast<size_t>(e->cfg.vocab_size) * sizeof(float)));
  }
  return e->be->sync();
}

/**
 * One (layer, K|V) slice of an n-position payload in `dt` (core/kv/layout.ts):
 *   values (kv_head, pos, head_dim), preceded in fp8 by scales (kv_head, fp8_blocks(n)) f32
 * with the payload's blocks counted from its first position.
 */
struct PayloadSlice {
  size_t values = 0;  // kv_head * n * head_dim
  size_t scales = 0;  // kv_head * fp8_blocks(n), fp8 only
  size_t bytes = 0;
};

PayloadSlice payload_slice(const ul_config& c, size_t n, ul_dtype dt) {
  PayloadSlice s;
  s.values = static_cast<size_t>(c.num_kv_heads) * n * c.head_dim;
  s.scales = dt == UL_DTYPE_FP8_E4M3 ? static_cast<size_t>(c.num_kv_heads) * ul::fp8_blocks(static_cast<int>(n)) : 0;
  s.bytes = s.values * ul::dtype_size(dt) + s.scales * sizeof(float);
  return s;
}

/** The slice geometry of an n-position payload, and a check that it is exactly layers * 2 slices. */
Status check_payload(const ul_config& c, size_t n, ul_dtype dt, size_t bytes, const char* what, PayloadSlice* slice) {
  *slice = payload_slice(c, n, dt);
  size_t want = static_cast<size_t>(c.num_layers) * 2 * slice->bytes;
  if (bytes != want)
    return Err(UL_ERR_INVALID_ARGUMENT, std::string(what) + " payload is " + std::to_string(bytes) + " bytes, expected " + std::to_string(want) + " for " + std::to_string(n) + " positions of " + dtype_name(dt));
  return Status::Ok();
}

/** n positions of one kv head, (pos, head_dim) f32 -> `dt` at element `at` of dst; fp8 quantises
 *  each block of kFp8Block positions with scale amax / 448 into scales[0..fp8_blocks(n)). */
void encode_head(const float* x, size_t n, int head_dim, ul_dtype dt, void* dst, size_t at, float* scales) {
  if (dt != UL_DTYPE_FP8_E4M3) {
    for (size_t i = 0; i < n * head_dim; ++i) ul::store_from_f32(dst, dt, at + i, x[i]);
    return;
  }
  for (size_t b = 0; b * ul::kFp8Block < n; ++b) {
    size_t lo = b * ul::kFp8Block * head_dim, hi = std::min(n, (b + 1) * ul::kFp8Block) * head_dim;
    float amax = 0, unused = 0;
    for (size_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    scales[b] = ul::fp8_block_scale(0.0f, true, amax, &unused);
    for (size_t i = lo; i < hi; ++i) ul::store_from_f32(dst, dt, at + i, ul::fp8_quantize_input(x[i], scales[b]));
  }
}

/** Element i of one kv head's n positions (pos, head_dim) in `dt` -> f32; fp8 multiplies by the
 *  scale of i's block, blocks counted from the head's first position. */
float decode_at(const void* src, ul_dtype dt, size_t at, size_t i, const float* scales, int head_dim) {
  float v = ul::load_as_f32(src, dt, at + i);
  return scales ? v * scales[i / head_dim / ul::kFp8Block] : v;
}

/** One payload slice -> f32 (kv_head, n, head_dim). */
void decode_slice(const char* slice, ul_dtype dt, const ul_config& c, size_t n, std::vector<float>* out) {
  PayloadSlice g = payload_slice(c, n, dt);
  // fp8 only. Copied out: the slice (and the caller's buffer) need not be 4-byte aligned.
  std::vector<float> scale_copy(g.scales);
  if (g.scales) std::memcpy(scale_copy.data(), slice, g.scales * sizeof(float));
  const float* scales = scale_copy.data();
  const char* values = slice + g.scales * sizeof(float);
  size_t per_head = n * c.head_dim, nb = g.scales / c.num_kv_heads;
  out->resize(g.values);
  for (int h = 0; h < c.num_kv_heads; ++h)
    for (size_t i = 0; i < per_head; ++i)
      (*out)[h * per_head + i] = decode_at(values, dt, h * per_head, i, g.scales ? scales + h * nb : nullptr, c.head_dim);
}

Status export_kv(ul_engine* e, int start, int end, ul_dtype dt, void* out, size_t out_bytes) {
  const ul_config& c = e->cfg;
  if (start < 0 || end < start || end > e->position)
    return Err(UL_ERR_INVALID_ARGUMENT, "export range [" + std::to_string(start) + ", " + std::to_string(end) + ") outside [0, " + std::to_string(e->position) + ")");
  if (dt < UL_DTYPE_F32 || dt > UL_DTYPE_FP8_E4M3) return Err(UL_ERR_INVALID_ARGUMENT, "export: unknown dtype");
  size_t n = static_cast<size_t>(end - start);
  PayloadSlice g;
  UL_TRY(check_payload(c, n, dt, out_bytes, "export", &g));
  if (n == 0) return Status::Ok();
  bool fp8_cache = c.kv_dtype == UL_DTYPE_FP8_E4M3;
  // A payload block is a cache block when the range starts on a block boundary: copy as stored.
  bool as_stored = fp8_cache && dt == UL_DTYPE_FP8_E4M3 && start % ul::kFp8Block == 0;
  size_t es = e->kv_es(), row = static_cast<size_t>(c.head_dim) * es, per_head = n * c.head_dim;
  int first_block = start / ul::kFp8Block, cache_blocks = (end - 1) / ul::kFp8Block - first_block + 1;
  std::vector<unsigned char> staging(g.values * es);
  std::vector<float> cache_scales(static_cast<size_t>(c.num_kv_heads) * cache_blocks), x(per_head), payload_scales;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const char* src = static_cast<const char*>(e->kv_slice(l, kind)) + static_cast<size_t>(start) * row;
      UL_TRY(e->be->download_2d(staging.data(), src, static_cast<size_t>(c.max_positions) * row, n * row, c.num_kv_heads));
      if (fp8_cache) {
        size_t pitch = static_cast<size_t>(ul::fp8_blocks(c.max_positions)) * sizeof(float);
        UL_TRY(e->be->download_2d(cache_scales.data(), e->kv_scales(l, kind) + first_block, pitch, cache_blocks * sizeof(float), c.num_kv_heads));
      }
      char* dst = static_cast<char*>(out) + (static_cast<size_t>(l) * 2 + kind) * g.bytes;
      char* dst_values = dst + g.scales * sizeof(float);
      // fp8 payloads start each slice with its scales, at a byte offset that need not be 4-aligned:
      // they are written with memcpy, never through a float pointer.
      if (as_stored) {
        std::memcpy(dst, cache_scales.data(), g.scales * sizeof(float));
        std::memcpy(dst_values, staging.data(), g.values);
        continue;
      }
      if (!fp8_cache && dt != UL_DTYPE_FP8_E4M3) {
        ul::convert(staging.data(), c.kv_dtype, dst_values, dt, g.values);
        continue;
      }
      size_t nb = g.scales / c.num_kv_heads;
      payload_scales.resize(g.scales);
      for (int h = 0; h < c.num_kv_heads; ++h) {
        // Cache positions start + i: their block relative to first_block is (start % B + i) / B.
        for (size_t i = 0; i < per_head; ++i) {
          float v = ul::load_as_f32(staging.data(), c.kv_dtype, h * per_head + i);
          if (fp8_cache) v *= cache_scales[h * cache_blocks + (start % ul::kFp8Block + i / c.head_dim) / ul::kFp8Block];
          x[i] = v;
        }
        encode_head(x.data(), n, c.head_dim, dt, dst_values, h * per_head, payload_scales.data() + h * nb);
      }
      if (g.scales) std::memcpy(dst, payload_scales.data(), g.scales * sizeof(float));
    }
  }
  return Status::Ok();
}

/** fp8 cache, general case: the payload's values go through the backend's kv_store (the rule a
 *  forward's writes follow), max_chunk positions at a time, via the act-dtype scratch e->k. */
Status import_fp8_via_store(ul_engine* e, int l, int kind, const std::vector<float>& x, size_t n) {
  const ul_config& c = e->cfg;
  ul_dtype act = e->be->act_dtype();
  size_t per_head = n * c.head_dim;
  std::vector<unsigned char> rows(static_cast<size_t>(c.max_chunk) * c.num_kv_heads * c.head_dim * ul::dtype_size(act));
  for (size_t at = 0; at < n; at += c.max_chunk) {
    int m = static_cast<int>(std::min<size_t>(c.max_chunk, n - at));
    for (int r = 0; r < m; ++r)  // (kv_head, pos, head_dim) -> (rows, kv_heads, head_dim)
      for (int h = 0; h < c.num_kv_heads; ++h)
        for (int d = 0; d < c.head_dim; ++d)
          ul::store_from_f32(rows.data(), act, (static_cast<size_t>(r) * c.num_kv_heads + h) * c.head_dim + d, x[h * per_head + (at + r) * c.head_dim + d]);
    UL_TRY(e->be->upload(e->k, rows.data(), static_cast<size_t>(m) * c.num_kv_heads * c.head_dim * ul::dtype_size(act)));
    UL_TRY(e->be->kv_store(e->kv_store_args(l, kind, e->k, m, e->position + static_cast<int>(at))));
  }
  return Status::Ok();
}

Status import_kv(ul_engine* e, const void* bytes, size_t n_bytes, int tokens, ul_dtype dt) {
  const ul_config& c = e->cfg;
  if (!e->ready) return Err(UL_ERR_STATE, "import before ready");
  if (tokens < 0) return Err(UL_ERR_INVALID_ARGUMENT, "negative token count");
  if (dt < UL_DTYPE_F32 || dt > UL_DTYPE_FP8_E4M3) return Err(UL_ERR_INVALID_ARGUMENT, "import: unknown dtype");
  if (static_cast<int64_t>(e->position) + tokens > c.max_positions)
    return Err(UL_ERR_LIMIT, "KV capacity exceeded by import of " + std::to_string(tokens) + " positions at " + std::to_string(e->position));
  size_t n = static_cast<size_t>(tokens);
  PayloadSlice g;
  UL_TRY(check_payload(c, n, dt, n_bytes, "import", &g));
  if (n == 0) return Status::Ok();
  bool fp8_cache = c.kv_dtype == UL_DTYPE_FP8_E4M3;
  // An fp8 payload starting on a cache block boundary fills whole blocks from their first
  // position: its bytes and scales are the cache's, as stored.
  bool as_stored = fp8_cache && dt == UL_DTYPE_FP8_E4M3 && e->position % ul::kFp8Block == 0;
  size_t es = e->kv_es(), row = static_cast<size_t>(c.head_dim) * es;
  std::vector<unsigned char> staging(g.values * es);
  std::vector<float> x;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const char* src = static_cast<const char*>(bytes) + (static_cast<size_t>(l) * 2 + kind) * g.bytes;
      char* dst = static_cast<char*>(e->kv_slice(l, kind)) + static_cast<size_t>(e->position) * row;
      size_t pitch = static_cast<size_t>(c.max_positions) * row;
      if (as_stored) {
        size_t nb = g.scales / c.num_kv_heads, scale_pitch = static_cast<size_t>(ul::fp8_blocks(c.max_positions)) * sizeof(float);
        UL_TRY(e->be->upload_2d(e->kv_scales(l, kind) + e->position / ul::kFp8Block, scale_pitch, src, nb * sizeof(float), c.num_kv_heads));
        UL_TRY(e->be->upload_2d(dst, pitch, src + g.scales * sizeof(float), n * row, c.num_kv_heads));
        continue;
      }
      if (dt != UL_DTYPE_FP8_E4M3 && dt == c.kv_dtype) {
        UL_TRY(e->be->upload_2d(dst, pitch, src, n * row, c.num_kv_heads));
        continue;
      }
      decode_slice(src, dt, c, n, &x);
      if (fp8_cache) {
        UL_TRY(import_fp8_via_store(e, l, kind, x, n));
        continue;
      }
      ul::convert(x.data(), UL_DTYPE_F32, staging.data(), c.kv_dtype, g.values);
      UL_TRY(e->be->upload_2d(dst, pitch, staging.data(), n * row, c.num_kv_heads));
    }
  }
  e->position += tokens;
  e->have_logits = false;
  return e->be->sync();
}

Status create(const ul_config* config, ul_engine** out) {
  if (!config || !out) return Err(UL_ERR_INVALID_ARGUMENT, "create: null argument");
  UL_TRY(validate_config(*config));
  auto e = std::make_unique<ul_engine>();
  e->cfg = *config;
  if (e->cfg.backend == UL_BACKEND_REFERENCE) {
    e->be = ul::make_reference_backend();
  } else if (e->cfg.backend == UL_BACKEND_CUDA) {
    UL_TRY(ul::make_cuda_backend(&e->be));
  } else {
    return Err(UL_ERR_INVALID_ARGUMENT, "unknown backend");
  }
  ul_config& c = e->cfg;
  if (!e->be->supports_kv(c.kv_dtype))
    return Err(UL_ERR_NOT_AVAILABLE, std::string(e->be->name()) + " backend has no " + dtype_name(c.kv_dtype) + " KV cache");
  if (c.max_chunk == 0) c.max_chunk = c.backend == UL_BACKEND_CUDA ? 4096 : 256;
  e->inv_freq_host.assign(c.inv_freq, c.inv_freq + c.rotary_dim / 2);
  c.inv_freq = e->inv_freq_host.data();
  e->layers.resize(c.num_layers);

  size_t kv_bytes = static_cast<size_t>(c.num_layers) * 2 * e->kv_slice_elems() * e->kv_es();
  UL_TRY(e->alloc(kv_bytes, &e->kv));
  if (c.kv_dtype == UL_DTYPE_FP8_E4M3) {
    void* p = nullptr;
    UL_TRY(e->alloc(static_cast<size_t>(c.num_layers) * 2 * e->scale_slice_elems() * sizeof(float), &p));
    e->kv_scale = static_cast<float*>(p);
  }
  size_t act = ul::dtype_size(e->be->act_dtype()), rows = static_cast<size_t>(c.max_chunk);
  size_t qd = static_cast<size_t>(c.num_heads) * c.head_dim, kvd = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  struct Scratch { void** p; size_t bytes; };
  void* inv = nullptr;
  void* x = nullptr;
  void* logits = nullptr;
  Scratch scratch[] = {
      {&inv, c.rotary_dim / 2 * sizeof(double)},
      {&x, rows * c.hidden_size * sizeof(float)},
      {&e->xn, rows * std::max<size_t>(c.hidden_size, qd) * act},
      {&e->q, rows * qd * act},
      {&e->k, rows * kvd * act},
      {&e->v, rows * kvd * act},
      {&e->gate, rows * c.intermediate_size * act},
      {&e->up, rows * c.intermediate_size * act},
      {&logits, static_cast<size_t>(c.vocab_size) * sizeof(float)},
  };
  for (Scratch& s : scratch) {
    UL_TRY(e->alloc(s.bytes, s.p));
    e->activation_bytes += s.bytes;
  }
  e->inv_freq = static_cast<double*>(inv);
  e->x = static_cast<float*>(x);
  e->logits = static_cast<float*>(logits);
  UL_TRY(e->be->upload(e->inv_freq, e->inv_freq_host.data(), e->inv_freq_host.size() * sizeof(double)));
  *out = e.release();
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The C ABI: check arguments, delegate, turn Status into (code, last_error).

namespace ul {
Status load_safetensors(ul_engine* e, const char* path);  // safetensors.cpp
}

extern "C" {

const char* ul_status_name(ul_status s) {
  switch (s) {
    case UL_OK: return "ok";
    case UL_ERR_INVALID_ARGUMENT: return "invalid_argument";
    case UL_ERR_FORMAT: return "invalid_format";
    case UL_ERR_NOT_AVAILABLE: return "not_available";
    case UL_ERR_OUT_OF_MEMORY: return "out_of_memory";
    case UL_ERR_LIMIT: return "limit_exceeded";
    case UL_ERR_DEVICE: return "device_error";
    case UL_ERR_IO: return "io_error";
    case UL_ERR_STATE: return "invalid_state";
  }
  return "unknown";
}

int32_t ul_backend_compiled(ul_backend_kind kind) {
  if (kind == UL_BACKEND_REFERENCE) return 1;
  if (kind == UL_BACKEND_CUDA) return ul::cuda_compiled() ? 1 : 0;
  return 0;
}

ul_status ul_engine_create(const ul_config* config, ul_engine** out) {
  if (out) *out = nullptr;
  Status st = create(config, out);
  g_create_error = st.message;
  return st.code;
}

void ul_engine_destroy(ul_engine* engine) { delete engine; }

const char* ul_engine_last_error(const ul_engine* engine) {
  return engine ? engine->error.c_str() : g_create_error.c_str();
}

ul_status ul_engine_set_tensor(ul_engine* e, const char* name, ul_dtype dtype, const int64_t* shape,
                               int32_t ndim, const void* data) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(set_tensor(e, name, dtype, shape, ndim, data));
}

ul_status ul_engine_load_safetensors(ul_engine* e, const char* path) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(ul::load_safetensors(e, path));
}

ul_status ul_engine_ready(ul_engine* e) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(check_ready(e));
}

ul_status ul_engine_forward(ul_engine* e, const int32_t* tokens, int32_t n, float* logits) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(forward(e, tokens, n, logits));
}

ul_status ul_engine_sample(ul_engine* e, float temperature, uint64_t seed, int32_t* token) {
  if (!e || !token) return UL_ERR_INVALID_ARGUMENT;
  if (!e->have_logits) return e->fail(Err(UL_ERR_STATE, "sample needs a forward that computed logits"));
  return e->fail(e->be->sample(e->logits, e->cfg.vocab_size, temperature, seed, static_cast<uint64_t>(e->position), token));
}

int32_t ul_engine_position(const ul_engine* e) { return e ? e->position : -1; }

ul_status ul_engine_truncate(ul_engine* e, int32_t position) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  if (position < 0 || position > e->position)
    return e->fail(Err(UL_ERR_INVALID_ARGUMENT, "truncate to " + std::to_string(position) + " outside [0, " + std::to_string(e->position) + "]"));
  e->position = position;
  e->have_logits = false;
  return UL_OK;
}

ul_status ul_engine_export_kv(ul_engine* e, int32_t start, int32_t end, ul_dtype dtype, void* out,
                              size_t out_bytes) {
  if (!e || (!out && out_bytes)) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(export_kv(e, start, end, dtype, out, out_bytes));
}

ul_status ul_engine_import_kv(ul_engine* e, const void* bytes, size_t n_bytes, int32_t tokens,
                              ul_dtype dtype) {
  if (!e || (!bytes && n_bytes)) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(import_kv(e, bytes, n_bytes, tokens, dtype));
}

ul_status ul_engine_memory(const ul_engine* e, ul_memory_report* out) {
  if (!e || !out) return UL_ERR_INVALID_ARGUMENT;
  const ul_config& c = e->cfg;
  out->weight_bytes = e->weight_bytes;
  out->kv_bytes = static_cast<uint64_t>(c.num_layers) * 2 * e->kv_slice_elems() * e->kv_es() +
                  (e->kv_scale ? static_cast<uint64_t>(c.num_layers) * 2 * e->scale_slice_elems() * 4 : 0);
  out->activation_bytes = e->activation_bytes;
  Status st = e->be->memory_info(&out->device_free, &out->device_total);
  return st.code;
}

int32_t ul_engine_backend_info(const ul_engine* e, char* buf, size_t size) {
  if (!e) return -1;
  std::string line = "{" + e->be->info_json_members() + ",\"kv_dtype\":\"" + dtype_name(e->cfg.kv_dtype) + "\"}";
  if (buf && size > 0) {
    size_t n = std::min(size - 1, line.size());
    std::memcpy(buf, line.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int32_t>(line.size());
}

}  // extern "C"
