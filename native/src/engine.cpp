// The host engine: weights, the KV cache, the layer loop and chunked prefill, KV export/import, all
// behind the C ABI of ul_engine.h. It owns layout and orchestration; arithmetic is the backend's
// (backend.h). Portable C++17: the same file runs in the N-API addon, the emscripten module and the
// C++ check programs.
#include <algorithm>
#include <climits>
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

  // KV pool of total_blocks blocks of block_tokens positions (slots = total_blocks * block_tokens),
  // in two tiers (docs/native.md, "Tiered KV"): blocks [0, device_blocks) in device memory,
  // blocks [device_blocks, total_blocks) in host memory. Each tier has the layout
  //   (layer, K|V, kv_head, tier slots, head_dim) in cfg.kv_dtype,
  //   fp8 scales (layer, K|V, kv_head, fp8_blocks(tier slots)) f32,
  // and slot s is found by ul::kv_row (s < dev_slots: device pool; else host slot s - dev_slots).
  void* kv = nullptr;          // device tier
  float* kv_scale = nullptr;
  void* kv_host = nullptr;     // host tier (CUDA: pinned), nullptr when host_blocks == 0
  float* kv_host_scale = nullptr;
  // Staging: two device copies of ONE layer's host tier (K|V, kv_head, host_slots, head_dim) plus
  // scales, layer l in buffer l % 2; a micro-batch copies in only the host blocks it touches.
  void* stage[2] = {nullptr, nullptr};
  float* stage_scale[2] = {nullptr, nullptr};
  int32_t block_tokens = 0;
  int32_t total_blocks = 0;
  int32_t slots = 0;
  int32_t device_blocks = 0, host_blocks = 0;
  int32_t dev_slots = 0, host_slots = 0;
  // Single-sequence form: its position, and its table (block b = pool block b).
  bool paged = false;
  int32_t position = 0;
  std::vector<int32_t> identity_table;

  // Scratch for one chunk of max_chunk rows. act = backend->act_dtype().
  double* inv_freq = nullptr;  // (rotary_dim / 2) f64, device
  float* x = nullptr;         // (chunk, hidden) f32 residual stream
  void* xn = nullptr;         // (chunk, max(hidden, heads * head_dim)) act: normed input / attention out
  void* q = nullptr;          // (chunk, heads * head_dim) act
  void* k = nullptr;          // (chunk, kv_heads * head_dim) act
  void* v = nullptr;          // (chunk, kv_heads * head_dim) act
  void* gate = nullptr;       // (chunk, intermediate) act
  void* up = nullptr;         // (chunk, intermediate) act
  float* logits = nullptr;    // (logit_rows, vocab) f32: rows through lm_head together
  int logit_rows = 0;
  bool have_logits = false;   // single form: row 0 holds the last forward's logits (sample)
  uint64_t activation_bytes = 0;

  ~ul_engine() {
    if (!be) return;
    be->sync();  // no copy may still be running into memory released below
    for (void* p : owned) be->release(p);
    for (void* p : owned_host) be->release_host(p);
  }

  std::vector<void*> owned, owned_host;

  Status alloc(size_t bytes, void** out) {
    UL_TRY(be->alloc(bytes, out));
    owned.push_back(*out);
    return Status::Ok();
  }
  Status alloc_host(size_t bytes, void** out) {
    UL_TRY(be->alloc_host(bytes, out));
    owned_host.push_back(*out);
    return Status::Ok();
  }

  ul_status fail(const Status& st) {
    error = st.message;
    return st.code;
  }

  size_t kv_es() const { return ul::dtype_size(cfg.kv_dtype); }
  size_t row_bytes() const { return static_cast<size_t>(cfg.head_dim) * kv_es(); }
  /** One (layer, K|V) of a tier of `tier_slots` slots: (kv_head, slot, head_dim) elements. */
  size_t slice_elems(int tier_slots) const { return static_cast<size_t>(cfg.num_kv_heads) * tier_slots * cfg.head_dim; }
  /** Its fp8 scales: (kv_head, fp8_blocks(tier_slots)). */
  size_t scale_elems(int tier_slots) const { return static_cast<size_t>(cfg.num_kv_heads) * ul::fp8_blocks(tier_slots); }
  void* kv_slice(int layer, int kind) const {
    return static_cast<char*>(kv) + (static_cast<size_t>(layer) * 2 + kind) * slice_elems(dev_slots) * kv_es();
  }
  float* kv_scales(int layer, int kind) const {
    return kv_scale ? kv_scale + (static_cast<size_t>(layer) * 2 + kind) * scale_elems(dev_slots) : nullptr;
  }
  char* host_slice(int layer, int kind) const {
    return kv_host ? static_cast<char*>(kv_host) + (static_cast<size_t>(layer) * 2 + kind) * slice_elems(host_slots) * kv_es() : nullptr;
  }
  float* host_scales(int layer, int kind) const {
    return kv_host_scale ? kv_host_scale + (static_cast<size_t>(layer) * 2 + kind) * scale_elems(host_slots) : nullptr;
  }
  char* stage_slice(int buf, int kind) const {
    return stage[buf] ? static_cast<char*>(stage[buf]) + kind * slice_elems(host_slots) * kv_es() : nullptr;
  }
  float* stage_scales(int buf, int kind) const {
    return stage_scale[buf] ? stage_scale[buf] + kind * scale_elems(host_slots) : nullptr;
  }
  /** Bytes of the device tier, the host tier, the staging buffers (each incl. fp8 scales). */
  uint64_t tier_bytes(int tier_slots, int copies) const {
    return static_cast<uint64_t>(copies) * (slice_elems(tier_slots) * kv_es() + (cfg.kv_dtype == UL_DTYPE_FP8_E4M3 ? scale_elems(tier_slots) * sizeof(float) : 0));
  }

  /** Where one KV row (or scale) is: device memory, or the host tier (plain / pinned memory). */
  struct Where {
    char* p;
    bool host;
  };
  /** The row of (layer, K|V, kv_head, slot), by kv_row over the device pool and the host pool. */
  Where row_at(int layer, int kind, int h, int slot) const {
    return {ul::kv_row(static_cast<char*>(kv_slice(layer, kind)), host_slice(layer, kind), dev_slots, host_slots, h, slot,
                       static_cast<int>(row_bytes())),
            slot >= dev_slots};
  }
  /** The fp8 scale of (layer, K|V, kv_head, slot)'s 64-slot block. */
  Where scale_at(int layer, int kind, int h, int slot) const {
    return {reinterpret_cast<char*>(ul::kv_scale_at(kv_scales(layer, kind), host_scales(layer, kind), dev_slots, host_slots, h, slot)),
            slot >= dev_slots};
  }

  /** kv_store of `rows` new (rows, kv_heads, head_dim) rows at `src` into (layer, K|V) from slot
   *  pos0; host-tier slots go to staging buffer `buf` (which holds that layer's host blocks). */
  ul::KvStoreArgs kv_store_args(int layer, int kind, const void* src, int rows, int pos0, int buf) const {
    ul::KvStoreArgs s{};
    s.src = src;
    s.cache = kv_slice(layer, kind);
    s.scale = kv_scales(layer, kind);
    s.rows = rows;
    s.kv_heads = cfg.num_kv_heads;
    s.head_dim = cfg.head_dim;
    s.max_pos = dev_slots;
    s.pos0 = pos0;
    s.kv_dtype = cfg.kv_dtype;
    s.stage = stage_slice(buf, kind);
    s.stage_scale = stage_scales(buf, kind);
    s.stage_slots = host_slots;
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

/** Checks that `table` (n_blocks ids) names pool blocks for positions [0, end). */
Status check_table(const ul_engine* e, const int32_t* table, int n_blocks, int64_t end, const std::string& what) {
  int64_t need = (end + e->block_tokens - 1) / e->block_tokens;
  if (n_blocks < need || (need > 0 && !table))
    return Err(UL_ERR_INVALID_ARGUMENT, what + ": a block table for " + std::to_string(end) + " positions needs " + std::to_string(need) + " blocks of " + std::to_string(e->block_tokens) + ", got " + std::to_string(n_blocks));
  for (int64_t b = 0; b < need; ++b)
    if (table[b] < 0 || table[b] >= e->total_blocks)
      return Err(UL_ERR_INVALID_ARGUMENT, what + ": block id " + std::to_string(table[b]) + " is outside [0, " + std::to_string(e->total_blocks) + ")");
  return Status::Ok();
}

/** Every item of a step, before anything runs: a refused step writes nothing. */
Status check_items(const ul_engine* e, int n_items, const ul_step_item* items) {
  const ul_config& c = e->cfg;
  if (n_items < 0 || (n_items > 0 && !items)) return Err(UL_ERR_INVALID_ARGUMENT, "step: bad item list");
  for (int i = 0; i < n_items; ++i) {
    const ul_step_item& it = items[i];
    std::string what = "step item " + std::to_string(i);
    if (it.n_tokens <= 0 || !it.tokens) return Err(UL_ERR_INVALID_ARGUMENT, what + ": a forward needs at least one token");
    if (it.start < 0) return Err(UL_ERR_INVALID_ARGUMENT, what + ": start " + std::to_string(it.start) + " is not a position");
    int64_t end = static_cast<int64_t>(it.start) + it.n_tokens;
    if (end > c.max_positions)
      return Err(UL_ERR_LIMIT, what + ": KV capacity exceeded: " + std::to_string(it.start) + " + " + std::to_string(it.n_tokens) + " > max_positions " + std::to_string(c.max_positions));
    for (int r = 0; r < it.n_tokens; ++r)
      if (it.tokens[r] < 0 || it.tokens[r] >= c.vocab_size)
        return Err(UL_ERR_INVALID_ARGUMENT, what + ": token id " + std::to_string(it.tokens[r]) + " out of range [0, " + std::to_string(c.vocab_size) + ")");
    UL_TRY(check_table(e, it.table, it.n_blocks, end, what));
  }
  return Status::Ok();
}

/** Consecutive host-tier blocks [first, first + len) (indices within the host tier). */
struct BlockRun {
  int first, len;
};

/** Sorted, deduplicated ids -> runs of consecutive ids. */
std::vector<BlockRun> block_runs(std::vector<int> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<BlockRun> out;
  for (int id : ids) {
    if (!out.empty() && out.back().first + out.back().len == id) ++out.back().len;
    else out.push_back({id, 1});
  }
  return out;
}

/**
 * The host-tier blocks one micro-batch touches: `read`, every block its attention reads (each
 * item's table up to its last row, which includes what it writes), and `write`, the blocks its rows
 * are stored into. Both empty when the engine has no host tier or the micro-batch stays resident.
 */
struct TierIo {
  std::vector<BlockRun> read, write;
};

TierIo tier_io(const ul_engine* e, const ul::StepPlan& plan) {
  TierIo io;
  if (e->host_blocks == 0) return io;
  std::vector<int> read, write;
  const int bt = e->block_tokens;
  for (int i = 0; i < plan.n_items; ++i) {
    const ul::StepItemPlan& it = plan.items[i];
    int need = (it.pos0 + it.rows + bt - 1) / bt;
    for (int b = 0; b < need; ++b) {
      int id = plan.tables ? plan.tables[it.table_off + b] : b;  // no table: the identity
      if (id >= e->device_blocks) read.push_back(id - e->device_blocks);
    }
  }
  for (int r = 0; r < plan.rows; ++r)
    if (plan.slots[r] >= e->dev_slots) write.push_back(plan.slots[r] / bt - e->device_blocks);
  io.read = block_runs(std::move(read));
  io.write = block_runs(std::move(write));
  return io;
}

/**
 * Queues the copies of host blocks `runs` of layer l between the host tier and staging buffer
 * `buf` (to_device: host -> staging), on the backend's copy queue: K and V (or `only_kind`), every
 * kv head, fp8 with the blocks' scales. A block keeps its offset: host slot s is staging slot s.
 * The (K|V, kv head) slices of a layer lie one pitch apart in both (host_slots rows; fp8 scales:
 * fp8_blocks(host_slots)), so each run is one 2D copy of 2 x kv_heads rows.
 */
Status stage_copy(ul_engine* e, int l, int buf, const std::vector<BlockRun>& runs, bool to_device, int only_kind = -1) {
  const size_t row = e->row_bytes(), bt = static_cast<size_t>(e->block_tokens);
  const size_t scales_per_block = bt / ul::kFp8Block, scale_pitch = ul::fp8_blocks(e->host_slots) * sizeof(float);
  const int kind0 = only_kind >= 0 ? only_kind : 0;
  const size_t rows = static_cast<size_t>(only_kind >= 0 ? 1 : 2) * e->cfg.num_kv_heads, pitch = e->host_slots * row;
  auto copy = [&](char* host, char* dev, size_t width, size_t p) {
    return e->be->copy_async(to_device ? dev : host, to_device ? host : dev, width, rows, p, to_device);
  };
  for (const BlockRun& r : runs) {
    size_t off = r.first * bt * row;
    UL_TRY(copy(e->host_slice(l, kind0) + off, e->stage_slice(buf, kind0) + off, r.len * bt * row, pitch));
    if (!e->kv_host_scale) continue;
    size_t soff = r.first * scales_per_block;
    UL_TRY(copy(reinterpret_cast<char*>(e->host_scales(l, kind0) + soff), reinterpret_cast<char*>(e->stage_scales(buf, kind0) + soff),
                r.len * scales_per_block * sizeof(float), scale_pitch));
  }
  return Status::Ok();
}

/**
 * The layer loop over one micro-batch: plan.rows rows of tokens at their positions and slots.
 * Tiered (the micro-batch touches host blocks): layer l's host blocks are in staging buffer l % 2;
 * layer l + 1's copy in is queued before layer l's attention (so it runs while layer l computes:
 * attention, o_proj, MLP), and the blocks layer l wrote are copied back after its attention.
 * Fences: the compute of layer l waits for its copy in; a copy into buffer b waits for the compute
 * queued so far, which includes the last attention that read b (layer l - 1).
 */
Status run_rows(ul_engine* e, const ul::StepPlan& plan, const int32_t* tokens) {
  const ul_config& c = e->cfg;
  ul::Backend& be = *e->be;
  int rows = plan.rows;
  int qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
  UL_TRY(be.prepare_step(plan));
  const TierIo io = tier_io(e, plan);
  const bool tiered = !io.read.empty();
  if (tiered) {
    UL_TRY(be.copy_waits_compute());  // the micro-batch before may still read buffer 0
    UL_TRY(stage_copy(e, 0, 0, io.read, true));
  }
  UL_TRY(be.embed(e->embed, tokens, rows, c.hidden_size, e->x));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = e->layers[l];
    const int buf = l % 2;
    UL_TRY(be.rmsnorm(e->x, L.attn_norm, rows, c.hidden_size, c.rms_norm_eps, e->xn));
    UL_TRY(be.matmul(e->xn, L.q, rows, c.hidden_size, qd, e->q, false));
    UL_TRY(be.matmul(e->xn, L.k, rows, c.hidden_size, kvd, e->k, false));
    UL_TRY(be.matmul(e->xn, L.v, rows, c.hidden_size, kvd, e->v, false));
    UL_TRY(be.rope_step(e->q, c.num_heads, c.head_dim, c.rotary_dim, e->inv_freq, c.attention_scaling, plan));
    UL_TRY(be.rope_step(e->k, c.num_kv_heads, c.head_dim, c.rotary_dim, e->inv_freq, c.attention_scaling, plan));
    if (tiered) UL_TRY(be.compute_waits_copy());  // layer l's host blocks are in buffer buf
    for (int kind = 0; kind < 2; ++kind)
      UL_TRY(be.kv_store_step(e->kv_store_args(l, kind, kind == 0 ? e->k : e->v, rows, 0, buf), plan));
    if (tiered && l + 1 < c.num_layers) {
      UL_TRY(be.copy_waits_compute());
      UL_TRY(stage_copy(e, l + 1, 1 - buf, io.read, true));
    }
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
    a.max_pos = e->dev_slots;
    a.pos0 = 0;
    a.kv_dtype = c.kv_dtype;
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    a.plan = &plan;
    if (tiered) {  // only then: an all-resident micro-batch keeps kernels that read one tier
      a.k_stage = e->stage_slice(buf, 0);
      a.v_stage = e->stage_slice(buf, 1);
      a.k_stage_scale = e->stage_scales(buf, 0);
      a.v_stage_scale = e->stage_scales(buf, 1);
      a.stage_slots = e->host_slots;
    }
    UL_TRY(be.attention(a));
    if (tiered && !io.write.empty()) {
      UL_TRY(be.copy_waits_compute());  // the rows (and fp8 scales) layer l stored
      UL_TRY(stage_copy(e, l, buf, io.write, false));
    }
    UL_TRY(be.matmul(e->xn, L.o, rows, qd, c.hidden_size, e->x, true));
    UL_TRY(be.rmsnorm(e->x, L.ffn_norm, rows, c.hidden_size, c.rms_norm_eps, e->xn));
    UL_TRY(be.matmul(e->xn, L.gate, rows, c.hidden_size, c.intermediate_size, e->gate, false));
    UL_TRY(be.matmul(e->xn, L.up, rows, c.hidden_size, c.intermediate_size, e->up, false));
    UL_TRY(be.swiglu(e->gate, e->up, static_cast<size_t>(rows) * c.intermediate_size, e->gate));
    UL_TRY(be.matmul(e->gate, L.down, rows, c.intermediate_size, c.hidden_size, e->x, true));
  }
  return Status::Ok();
}

/** Final norm + lm_head of the micro-batch rows `rows` (residual rows of e->x), logit_rows at a
 *  time; row j's logits go to out + j * vocab (host), or stay in e->logits when out is NULL. */
Status logits_of_rows(ul_engine* e, const std::vector<int>& rows, float* out) {
  const ul_config& c = e->cfg;
  ul::Backend& be = *e->be;
  size_t act = ul::dtype_size(be.act_dtype()), V = static_cast<size_t>(c.vocab_size);
  for (size_t at = 0; at < rows.size(); at += e->logit_rows) {
    int g = static_cast<int>(std::min<size_t>(e->logit_rows, rows.size() - at));
    for (int j = 0; j < g; ++j)
      UL_TRY(be.rmsnorm(e->x + static_cast<size_t>(rows[at + j]) * c.hidden_size, e->norm, 1, c.hidden_size, c.rms_norm_eps,
                        static_cast<char*>(e->xn) + j * c.hidden_size * act));
    UL_TRY(be.zero(e->logits, g * V * sizeof(float)));
    UL_TRY(be.matmul(e->xn, e->lm_head, g, c.hidden_size, c.vocab_size, e->logits, true));
    if (out) UL_TRY(be.download(out + at * V, e->logits, g * V * sizeof(float)));
  }
  return Status::Ok();
}

/**
 * One step (items already checked): every item's rows in item order, cut into micro-batches of
 * max_chunk rows (an item may straddle: its later rows attend to the K/V its earlier rows wrote in
 * the micro-batch before). Logits rows in item order.
 */
Status run_step(ul_engine* e, int n_items, const ul_step_item* items, float* logits_out) {
  const ul_config& c = e->cfg;
  const int bt = e->block_tokens, chunk = c.max_chunk;
  std::vector<ul::StepItemPlan> segs;
  std::vector<int32_t> tables, positions, slots, tokens;
  std::vector<int> logit_rows;
  int out_row = 0;
  auto flush = [&]() -> Status {
    if (positions.empty()) return Status::Ok();
    ul::StepPlan plan;
    plan.n_items = static_cast<int>(segs.size());
    plan.items = segs.data();
    // The single-sequence engine's table is the identity: no table, slot = position (the
    // kernels then read no table per key).
    plan.tables = e->paged ? tables.data() : nullptr;
    plan.table_ints = e->paged ? static_cast<int>(tables.size()) : 0;
    plan.positions = positions.data();
    plan.slots = slots.data();
    plan.rows = static_cast<int>(positions.size());
    plan.block_tokens = bt;
    UL_TRY(run_rows(e, plan, tokens.data()));
    if (!logit_rows.empty()) {
      UL_TRY(logits_of_rows(e, logit_rows, logits_out ? logits_out + static_cast<size_t>(out_row) * c.vocab_size : nullptr));
      out_row += static_cast<int>(logit_rows.size());
    }
    segs.clear();
    tables.clear();
    positions.clear();
    slots.clear();
    tokens.clear();
    logit_rows.clear();
    return Status::Ok();
  };
  for (int i = 0; i < n_items; ++i) {
    const ul_step_item& it = items[i];
    for (int off = 0; off < it.n_tokens;) {
      int row0 = static_cast<int>(positions.size());
      int rows = std::min(it.n_tokens - off, chunk - row0), p0 = it.start + off;
      int need = (p0 + rows + bt - 1) / bt;
      segs.push_back({row0, rows, p0, static_cast<int>(tables.size())});
      tables.insert(tables.end(), it.table, it.table + need);
      for (int r = 0; r < rows; ++r) {
        positions.push_back(p0 + r);
        slots.push_back(ul::slot_of(it.table, bt, p0 + r));
        tokens.push_back(it.tokens[off + r]);
      }
      off += rows;
      if (off == it.n_tokens && it.want_logits) logit_rows.push_back(row0 + rows - 1);
      if (static_cast<int>(positions.size()) == chunk) UL_TRY(flush());
    }
  }
  UL_TRY(flush());
  return e->be->sync();
}

Status step(ul_engine* e, int n_items, const ul_step_item* items, float* logits_out) {
  if (!e->ready) return Err(UL_ERR_STATE, "step before ready (weights not all set)");
  if (!e->paged) return Err(UL_ERR_STATE, "step needs a paged engine (ul_engine_create_paged)");
  UL_TRY(check_items(e, n_items, items));
  bool any = false;
  for (int i = 0; i < n_items; ++i) any = any || items[i].want_logits;
  if (any && !logits_out) return Err(UL_ERR_INVALID_ARGUMENT, "step: logits wanted but logits_out is NULL");
  return run_step(e, n_items, items, logits_out);
}

/** The single-sequence forward: one item on the identity table at the engine's position. */
Status forward(ul_engine* e, const int32_t* tokens, int n, float* logits) {
  if (!e->ready) return Err(UL_ERR_STATE, "forward before ready (weights not all set)");
  if (e->paged) return Err(UL_ERR_STATE, "forward needs a single-sequence engine; a paged one runs ul_engine_step");
  if (n <= 0 || !tokens) return Err(UL_ERR_INVALID_ARGUMENT, "forward needs at least one token");
  ul_step_item it{tokens, n, e->position, e->identity_table.data(), static_cast<int32_t>(e->identity_table.size()), logits != nullptr};
  UL_TRY(check_items(e, 1, &it));
  e->have_logits = false;
  UL_TRY(run_step(e, 1, &it, logits));
  e->position += n;
  e->have_logits = logits != nullptr;
  return Status::Ok();
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

/** A piece of positions [pos, pos + len) of one sequence in consecutive slots. */
struct Run {
  int pos, slot, len;
};

/** Positions [start, end) through `table` as runs of consecutive slots: one per KV block, merged
 *  where the next block follows in the pool and in the same tier (a single-sequence engine's
 *  table is one run per tier). */
std::vector<Run> runs_of(const ul_engine* e, const int32_t* table, int start, int end) {
  std::vector<Run> out;
  int bt = e->block_tokens;
  for (int p = start; p < end;) {
    int len = std::min(end, (p / bt + 1) * bt) - p, slot = ul::slot_of(table, bt, p);
    if (!out.empty() && out.back().slot + out.back().len == slot && slot != e->dev_slots) out.back().len += len;
    else out.push_back({p, slot, len});
    p += len;
  }
  return out;
}

/** The pool's scale index (within one kv head) of the 64-position block holding position p. */
int scale_block_of(const ul_engine* e, const int32_t* table, int p) {
  return ul::slot_of(table, e->block_tokens, p) / ul::kFp8Block;
}

/** bytes between host memory `buf` and KV memory at w: the host tier by memcpy (the copy queue is
 *  idle between calls: every call ends with sync), the device tier through the backend. */
Status xfer(ul_engine* e, unsigned char* buf, const ul_engine::Where& w, size_t bytes, bool to_host) {
  if (w.host) {
    if (to_host) std::memcpy(buf, w.p, bytes);
    else std::memcpy(w.p, buf, bytes);
    return Status::Ok();
  }
  return to_host ? e->be->download(buf, w.p, bytes) : e->be->upload(w.p, buf, bytes);
}

/**
 * (layer, K|V) of positions [start, end) through `table`, between the pool and host memory:
 * values (kv_head, n, head_dim) in the cache dtype; `scales` (fp8 cache, or nullptr) the scales of
 * position blocks start / 64 .. (end - 1) / 64 as (kv_head, blocks). to_host: pool -> host.
 */
Status move_range(ul_engine* e, int l, int kind, const int32_t* table, int start, int end, unsigned char* values,
                  float* scales, bool to_host) {
  const ul_config& c = e->cfg;
  size_t row = e->row_bytes(), n = static_cast<size_t>(end - start);
  for (const Run& r : runs_of(e, table, start, end)) {
    for (int h = 0; h < c.num_kv_heads; ++h)
      UL_TRY(xfer(e, values + (h * n + (r.pos - start)) * row, e->row_at(l, kind, h, r.slot), r.len * row, to_host));
  }
  if (!scales) return Status::Ok();
  // Position blocks b (relative to start's) whose scale blocks follow each other in the pool, in
  // one tier, move together: (first b, scale block, count).
  int first = start / ul::kFp8Block, blocks = (end - 1) / ul::kFp8Block - first + 1;
  std::vector<Run> spans;
  for (int b = 0; b < blocks; ++b) {
    int sb = scale_block_of(e, table, std::max(start, (first + b) * ul::kFp8Block));
    if (!spans.empty() && spans.back().slot + spans.back().len == sb && sb * ul::kFp8Block != e->dev_slots) ++spans.back().len;
    else spans.push_back({b, sb, 1});
  }
  for (const Run& r : spans)
    for (int h = 0; h < c.num_kv_heads; ++h) {
      unsigned char* host = reinterpret_cast<unsigned char*>(scales + h * blocks + r.pos);
      UL_TRY(xfer(e, host, e->scale_at(l, kind, h, r.slot * ul::kFp8Block), r.len * sizeof(float), to_host));
    }
  return Status::Ok();
}

/** Checks a KV range of a sequence: [start, end) within max_positions and covered by `table`. */
Status check_range(const ul_engine* e, const int32_t* table, int n_blocks, int64_t start, int64_t end, const char* what) {
  if (start < 0 || end < start)
    return Err(UL_ERR_INVALID_ARGUMENT, std::string(what) + ": [" + std::to_string(start) + ", " + std::to_string(end) + ") is not a position range");
  if (end > e->cfg.max_positions)
    return Err(UL_ERR_LIMIT, std::string(what) + ": " + std::to_string(end) + " positions exceed max_positions " + std::to_string(e->cfg.max_positions));
  return check_table(e, table, n_blocks, end, what);
}

Status export_kv(ul_engine* e, const int32_t* table, int start, int end, ul_dtype dt, void* out, size_t out_bytes) {
  const ul_config& c = e->cfg;
  if (dt < UL_DTYPE_F32 || dt > UL_DTYPE_FP8_E4M3) return Err(UL_ERR_INVALID_ARGUMENT, "export: unknown dtype");
  size_t n = static_cast<size_t>(end - start);
  PayloadSlice g;
  UL_TRY(check_payload(c, n, dt, out_bytes, "export", &g));
  if (n == 0) return Status::Ok();
  bool fp8_cache = c.kv_dtype == UL_DTYPE_FP8_E4M3;
  // A payload block is a cache block when the range starts on a block boundary: copy as stored.
  bool as_stored = fp8_cache && dt == UL_DTYPE_FP8_E4M3 && start % ul::kFp8Block == 0;
  size_t es = e->kv_es(), per_head = n * c.head_dim;
  int cache_blocks = (end - 1) / ul::kFp8Block - start / ul::kFp8Block + 1;
  std::vector<unsigned char> staging(g.values * es);
  std::vector<float> cache_scales(static_cast<size_t>(c.num_kv_heads) * cache_blocks), x(per_head), payload_scales;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      UL_TRY(move_range(e, l, kind, table, start, end, staging.data(), fp8_cache ? cache_scales.data() : nullptr, true));
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
        // Position start + i: its block relative to start's block is (start % B + i) / B.
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
  return e->be->sync();
}

/** fp8 cache, general case: the payload's values go through the backend's kv_store (the rule a
 *  forward's writes follow), max_chunk positions at a time, via the act-dtype scratch e->k. */
Status import_fp8_via_store(ul_engine* e, int l, int kind, const int32_t* table, int start, const std::vector<float>& x, size_t n) {
  const ul_config& c = e->cfg;
  ul_dtype act = e->be->act_dtype();
  size_t per_head = n * c.head_dim;
  std::vector<unsigned char> rows(static_cast<size_t>(c.max_chunk) * c.num_kv_heads * c.head_dim * ul::dtype_size(act));
  std::vector<int32_t> positions, slots, tables;
  for (size_t at = 0; at < n; at += c.max_chunk) {
    int m = static_cast<int>(std::min<size_t>(c.max_chunk, n - at)), p0 = start + static_cast<int>(at);
    for (int r = 0; r < m; ++r)  // (kv_head, pos, head_dim) -> (rows, kv_heads, head_dim)
      for (int h = 0; h < c.num_kv_heads; ++h)
        for (int d = 0; d < c.head_dim; ++d)
          ul::store_from_f32(rows.data(), act, (static_cast<size_t>(r) * c.num_kv_heads + h) * c.head_dim + d, x[h * per_head + (at + r) * c.head_dim + d]);
    UL_TRY(e->be->upload(e->k, rows.data(), static_cast<size_t>(m) * c.num_kv_heads * c.head_dim * ul::dtype_size(act)));
    positions.clear();
    slots.clear();
    for (int r = 0; r < m; ++r) {
      positions.push_back(p0 + r);
      slots.push_back(ul::slot_of(table, e->block_tokens, p0 + r));
    }
    int need = (p0 + m + e->block_tokens - 1) / e->block_tokens;
    tables.assign(table, table + need);
    ul::StepItemPlan item{0, m, p0, 0};
    ul::StepPlan plan;
    plan.n_items = 1;
    plan.items = &item;
    plan.tables = tables.data();
    plan.table_ints = need;
    plan.positions = positions.data();
    plan.slots = slots.data();
    plan.rows = m;
    plan.block_tokens = e->block_tokens;
    UL_TRY(e->be->prepare_step(plan));
    // Host-tier blocks written go through staging buffer 0 as in a step (kv_store reads a block's
    // earlier values when its fp8 scale grows), this (layer, K|V) only.
    const std::vector<BlockRun> touched = tier_io(e, plan).write;
    if (!touched.empty()) {
      UL_TRY(e->be->copy_waits_compute());
      UL_TRY(stage_copy(e, l, 0, touched, true, kind));
      UL_TRY(e->be->compute_waits_copy());
    }
    UL_TRY(e->be->kv_store_step(e->kv_store_args(l, kind, e->k, m, 0, 0), plan));
    if (!touched.empty()) {
      UL_TRY(e->be->copy_waits_compute());
      UL_TRY(stage_copy(e, l, 0, touched, false, kind));
    }
  }
  return Status::Ok();
}

Status import_kv(ul_engine* e, const int32_t* table, int start, const void* bytes, size_t n_bytes, int tokens, ul_dtype dt) {
  const ul_config& c = e->cfg;
  if (dt < UL_DTYPE_F32 || dt > UL_DTYPE_FP8_E4M3) return Err(UL_ERR_INVALID_ARGUMENT, "import: unknown dtype");
  size_t n = static_cast<size_t>(tokens);
  PayloadSlice g;
  UL_TRY(check_payload(c, n, dt, n_bytes, "import", &g));
  if (n == 0) return Status::Ok();
  bool fp8_cache = c.kv_dtype == UL_DTYPE_FP8_E4M3;
  // An fp8 payload starting on a cache block boundary fills whole blocks from their first
  // position: its bytes and scales are the cache's, as stored.
  bool as_stored = fp8_cache && dt == UL_DTYPE_FP8_E4M3 && start % ul::kFp8Block == 0;
  int end = start + tokens;
  std::vector<unsigned char> staging(g.values * e->kv_es());
  std::vector<float> x, scales;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const char* src = static_cast<const char*>(bytes) + (static_cast<size_t>(l) * 2 + kind) * g.bytes;
      if (as_stored) {
        scales.resize(g.scales);
        std::memcpy(scales.data(), src, g.scales * sizeof(float));
        std::memcpy(staging.data(), src + g.scales * sizeof(float), g.values);
        UL_TRY(move_range(e, l, kind, table, start, end, staging.data(), scales.data(), false));
        continue;
      }
      if (dt != UL_DTYPE_FP8_E4M3 && dt == c.kv_dtype) {
        std::memcpy(staging.data(), src, g.values * e->kv_es());
        UL_TRY(move_range(e, l, kind, table, start, end, staging.data(), nullptr, false));
        continue;
      }
      decode_slice(src, dt, c, n, &x);
      if (fp8_cache) {
        UL_TRY(import_fp8_via_store(e, l, kind, table, start, x, n));
        continue;
      }
      ul::convert(x.data(), UL_DTYPE_F32, staging.data(), c.kv_dtype, g.values);
      UL_TRY(move_range(e, l, kind, table, start, end, staging.data(), nullptr, false));
    }
  }
  return e->be->sync();
}

/** bytes from src to dst, each in either tier. */
Status copy_between(ul_engine* e, const ul_engine::Where& dst, const ul_engine::Where& src, size_t bytes) {
  if (dst.host && src.host) {
    std::memcpy(dst.p, src.p, bytes);
    return Status::Ok();
  }
  if (dst.host) return e->be->download(dst.p, src.p, bytes);
  if (src.host) return e->be->upload(dst.p, src.p, bytes);
  return e->be->copy_device(dst.p, src.p, bytes);
}

/** Block `to` = block `from` for each pair, in every (layer, K|V, kv_head); fp8 with its scales. */
Status copy_blocks(ul_engine* e, int n_pairs, const int32_t* pairs) {
  const ul_config& c = e->cfg;
  if (!e->paged) return Err(UL_ERR_STATE, "copy_blocks needs a paged engine");
  if (n_pairs < 0 || (n_pairs > 0 && !pairs)) return Err(UL_ERR_INVALID_ARGUMENT, "copy_blocks: bad pair list");
  for (int i = 0; i < 2 * n_pairs; ++i)
    if (pairs[i] < 0 || pairs[i] >= e->total_blocks)
      return Err(UL_ERR_INVALID_ARGUMENT, "copy_blocks: block id " + std::to_string(pairs[i]) + " is outside [0, " + std::to_string(e->total_blocks) + ")");
  const int bt = e->block_tokens;
  const size_t block_bytes = e->row_bytes() * bt, scale_bytes = bt / ul::kFp8Block * sizeof(float);
  for (int i = 0; i < n_pairs; ++i) {
    int from = pairs[2 * i], to = pairs[2 * i + 1];
    if (from == to) continue;
    // A block's rows (and its scales) are consecutive in its tier: one copy each, tier to tier.
    for (int l = 0; l < c.num_layers; ++l)
      for (int kind = 0; kind < 2; ++kind)
        for (int h = 0; h < c.num_kv_heads; ++h) {
          UL_TRY(copy_between(e, e->row_at(l, kind, h, to * bt), e->row_at(l, kind, h, from * bt), block_bytes));
          if (e->kv_scale)
            UL_TRY(copy_between(e, e->scale_at(l, kind, h, to * bt), e->scale_at(l, kind, h, from * bt), scale_bytes));
        }
  }
  return e->be->sync();
}

/**
 * paged: block_tokens x total_blocks; otherwise one sequence of max_positions (64-position blocks).
 * device_blocks: blocks of the pool in device memory (the lowest ids), the rest in the host tier;
 * kAllResident: every block.
 */
constexpr int32_t kAllResident = -1;

Status create(const ul_config* config, bool paged, int32_t block_tokens, int32_t total_blocks, int32_t device_blocks,
              ul_engine** out) {
  if (!config || !out) return Err(UL_ERR_INVALID_ARGUMENT, "create: null argument");
  UL_TRY(validate_config(*config));
  if (!paged) {
    block_tokens = ul::kFp8Block;
    total_blocks = (config->max_positions + block_tokens - 1) / block_tokens;
  }
  if (block_tokens <= 0 || total_blocks <= 0)
    return Err(UL_ERR_INVALID_ARGUMENT, "create_paged: block_tokens and total_blocks must be positive");
  if (device_blocks == kAllResident) device_blocks = total_blocks;
  if (device_blocks < 0 || device_blocks > total_blocks)
    return Err(UL_ERR_INVALID_ARGUMENT, "create: device_blocks " + std::to_string(device_blocks) + " is outside [0, " + std::to_string(total_blocks) + "] (the pool's blocks of " + std::to_string(block_tokens) + " positions)");
  if (static_cast<int64_t>(block_tokens) * total_blocks > INT32_MAX)
    return Err(UL_ERR_LIMIT, "create_paged: the pool's slots exceed 2^31 - 1");
  if (config->kv_dtype == UL_DTYPE_FP8_E4M3 && block_tokens % ul::kFp8Block != 0)
    return Err(UL_ERR_INVALID_ARGUMENT, "create_paged: fp8 KV needs block_tokens to be a multiple of " + std::to_string(ul::kFp8Block) + " (one scale per 64 positions), not " + std::to_string(block_tokens));
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
  e->paged = paged;
  e->block_tokens = block_tokens;
  e->total_blocks = total_blocks;
  e->slots = block_tokens * total_blocks;
  e->device_blocks = device_blocks;
  e->host_blocks = total_blocks - device_blocks;
  e->dev_slots = device_blocks * block_tokens;
  e->host_slots = e->host_blocks * block_tokens;
  if (!paged)
    for (int32_t b = 0; b < total_blocks; ++b) e->identity_table.push_back(b);
  e->logit_rows = std::min(32, c.max_chunk);

  const bool fp8 = c.kv_dtype == UL_DTYPE_FP8_E4M3;
  const size_t layer_kinds = static_cast<size_t>(c.num_layers) * 2;
  UL_TRY(e->alloc(layer_kinds * e->slice_elems(e->dev_slots) * e->kv_es(), &e->kv));
  void* p = nullptr;
  if (fp8) {
    UL_TRY(e->alloc(layer_kinds * e->scale_elems(e->dev_slots) * sizeof(float), &p));
    e->kv_scale = static_cast<float*>(p);
  }
  if (e->host_blocks > 0) {
    UL_TRY(e->alloc_host(layer_kinds * e->slice_elems(e->host_slots) * e->kv_es(), &e->kv_host));
    if (fp8) {
      UL_TRY(e->alloc_host(layer_kinds * e->scale_elems(e->host_slots) * sizeof(float), &p));
      e->kv_host_scale = static_cast<float*>(p);
    }
    for (int buf = 0; buf < 2; ++buf) {
      UL_TRY(e->alloc(2 * e->slice_elems(e->host_slots) * e->kv_es(), &e->stage[buf]));
      if (fp8) {
        UL_TRY(e->alloc(2 * e->scale_elems(e->host_slots) * sizeof(float), &p));
        e->stage_scale[buf] = static_cast<float*>(p);
      }
    }
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
      {&logits, static_cast<size_t>(e->logit_rows) * c.vocab_size * sizeof(float)},
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
  Status st = create(config, false, 0, 0, kAllResident, out);
  g_create_error = st.message;
  return st.code;
}

ul_status ul_engine_create_paged(const ul_config* config, int32_t block_tokens, int32_t total_blocks, ul_engine** out) {
  if (out) *out = nullptr;
  Status st = create(config, true, block_tokens, total_blocks, kAllResident, out);
  g_create_error = st.message;
  return st.code;
}

ul_status ul_engine_create_tiered(const ul_config* config, int32_t device_blocks, ul_engine** out) {
  if (out) *out = nullptr;
  Status st = device_blocks < 0 ? Err(UL_ERR_INVALID_ARGUMENT, "create: device_blocks " + std::to_string(device_blocks) + " is negative")
                                : create(config, false, 0, 0, device_blocks, out);
  g_create_error = st.message;
  return st.code;
}

ul_status ul_engine_create_paged_tiered(const ul_config* config, int32_t block_tokens, int32_t total_blocks,
                                        int32_t device_blocks, ul_engine** out) {
  if (out) *out = nullptr;
  Status st = device_blocks < 0 ? Err(UL_ERR_INVALID_ARGUMENT, "create: device_blocks " + std::to_string(device_blocks) + " is negative")
                                : create(config, true, block_tokens, total_blocks, device_blocks, out);
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
  if (e->paged) return e->fail(Err(UL_ERR_STATE, "sample needs a single-sequence engine"));
  if (!e->have_logits) return e->fail(Err(UL_ERR_STATE, "sample needs a forward that computed logits"));
  return e->fail(e->be->sample(e->logits, e->cfg.vocab_size, temperature, seed, static_cast<uint64_t>(e->position), token));
}

int32_t ul_engine_position(const ul_engine* e) { return e ? e->position : -1; }

ul_status ul_engine_truncate(ul_engine* e, int32_t position) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  if (e->paged) return e->fail(Err(UL_ERR_STATE, "truncate needs a single-sequence engine"));
  if (position < 0 || position > e->position)
    return e->fail(Err(UL_ERR_INVALID_ARGUMENT, "truncate to " + std::to_string(position) + " outside [0, " + std::to_string(e->position) + "]"));
  e->position = position;
  e->have_logits = false;
  return UL_OK;
}

ul_status ul_engine_export_kv(ul_engine* e, int32_t start, int32_t end, ul_dtype dtype, void* out,
                              size_t out_bytes) {
  if (!e || (!out && out_bytes)) return UL_ERR_INVALID_ARGUMENT;
  if (e->paged) return e->fail(Err(UL_ERR_STATE, "export_kv needs a single-sequence engine; a paged one uses export_kv_paged"));
  if (start < 0 || end < start || end > e->position)
    return e->fail(Err(UL_ERR_INVALID_ARGUMENT, "export range [" + std::to_string(start) + ", " + std::to_string(end) + ") outside [0, " + std::to_string(e->position) + ")"));
  return e->fail(export_kv(e, e->identity_table.data(), start, end, dtype, out, out_bytes));
}

ul_status ul_engine_export_kv_paged(ul_engine* e, const int32_t* table, int32_t n_blocks, int32_t start, int32_t end,
                                    ul_dtype dtype, void* out, size_t out_bytes) {
  if (!e || (!out && out_bytes)) return UL_ERR_INVALID_ARGUMENT;
  if (!e->paged) return e->fail(Err(UL_ERR_STATE, "export_kv_paged needs a paged engine"));
  Status st = check_range(e, table, n_blocks, start, end, "export");
  return e->fail(st.ok() ? export_kv(e, table, start, end, dtype, out, out_bytes) : st);
}

ul_status ul_engine_step(ul_engine* e, int32_t n_items, const ul_step_item* items, float* logits_out) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(step(e, n_items, items, logits_out));
}

ul_status ul_engine_copy_blocks(ul_engine* e, int32_t n_pairs, const int32_t* pairs) {
  if (!e) return UL_ERR_INVALID_ARGUMENT;
  return e->fail(copy_blocks(e, n_pairs, pairs));
}

ul_status ul_engine_import_kv_paged(ul_engine* e, const int32_t* table, int32_t n_blocks, int32_t start,
                                    const void* bytes, size_t n_bytes, int32_t tokens, ul_dtype dtype) {
  if (!e || (!bytes && n_bytes)) return UL_ERR_INVALID_ARGUMENT;
  if (!e->ready) return e->fail(Err(UL_ERR_STATE, "import before ready"));
  if (!e->paged) return e->fail(Err(UL_ERR_STATE, "import_kv_paged needs a paged engine"));
  if (tokens < 0) return e->fail(Err(UL_ERR_INVALID_ARGUMENT, "negative token count"));
  Status st = check_range(e, table, n_blocks, start, static_cast<int64_t>(start) + tokens, "import");
  return e->fail(st.ok() ? import_kv(e, table, start, bytes, n_bytes, tokens, dtype) : st);
}

ul_status ul_engine_import_kv(ul_engine* e, const void* bytes, size_t n_bytes, int32_t tokens,
                              ul_dtype dtype) {
  if (!e || (!bytes && n_bytes)) return UL_ERR_INVALID_ARGUMENT;
  if (!e->ready) return e->fail(Err(UL_ERR_STATE, "import before ready"));
  if (e->paged) return e->fail(Err(UL_ERR_STATE, "import_kv needs a single-sequence engine; a paged one uses import_kv_paged"));
  if (tokens < 0) return e->fail(Err(UL_ERR_INVALID_ARGUMENT, "negative token count"));
  if (static_cast<int64_t>(e->position) + tokens > e->cfg.max_positions)
    return e->fail(Err(UL_ERR_LIMIT, "KV capacity exceeded by import of " + std::to_string(tokens) + " positions at " + std::to_string(e->position)));
  Status st = import_kv(e, e->identity_table.data(), e->position, bytes, n_bytes, tokens, dtype);
  if (st.ok()) {
    e->position += tokens;
    e->have_logits = false;
  }
  return e->fail(st);
}

ul_status ul_engine_memory(const ul_engine* e, ul_memory_report* out) {
  if (!e || !out) return UL_ERR_INVALID_ARGUMENT;
  const ul_config& c = e->cfg;
  out->weight_bytes = e->weight_bytes;
  // Both tiers: what the pool holds, wherever it lives (ul_engine_memory_tiers splits it).
  out->kv_bytes = e->tier_bytes(e->dev_slots, 2 * c.num_layers) + e->tier_bytes(e->host_slots, 2 * c.num_layers);
  out->activation_bytes = e->activation_bytes;
  Status st = e->be->memory_info(&out->device_free, &out->device_total);
  return st.code;
}

ul_status ul_engine_memory_tiers(const ul_engine* e, ul_kv_tiers* out) {
  if (!e || !out) return UL_ERR_INVALID_ARGUMENT;
  const int layer_kinds = 2 * e->cfg.num_layers;
  out->block_tokens = static_cast<uint64_t>(e->block_tokens);
  out->device_blocks = static_cast<uint64_t>(e->device_blocks);
  out->host_blocks = static_cast<uint64_t>(e->host_blocks);
  out->device_kv_bytes = e->tier_bytes(e->dev_slots, layer_kinds);
  out->host_kv_bytes = e->tier_bytes(e->host_slots, layer_kinds);
  out->staging_bytes = e->host_blocks ? e->tier_bytes(e->host_slots, 2 * 2) : 0;  // 2 buffers x (K, V)
  return UL_OK;
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
