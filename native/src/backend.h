// The kernel-set seam: a small vtable the host engine (engine.cpp) drives. Two implementations:
// ref/ref_backend.cpp (plain loops, the oracle) and cuda/cuda_backend.cu (tensor cores). Buffers
// are opaque device pointers; the engine does layout, the backend does arithmetic.
//
// Element types the engine uses:
//   residual stream       f32                     (rows, hidden)
//   activations ("act")   backend->act_dtype()    ref: f32, CUDA: bf16
//   weights               backend->weight_dtype() ref: f32, CUDA: bf16
//   KV pool               config kv_dtype         (layer, K|V, kv_head, slots, head_dim)
//   fp8 KV scales         f32                     (layer, K|V, kv_head, block): x = fp8 * scale,
//                                                 block = slot / UL_FP8_BLOCK (fp8_blocks(slots))
// A sequence's position p lives in slot table[p / block_tokens] * block_tokens + p % block_tokens
// (StepPlan); `max_pos` in the args below is the resident pool's slot count, the stride of a kv head.
//
// KV tiers (engine.cpp): slots [0, max_pos) are the resident (device) pool; slots [max_pos,
// max_pos + stage_slots) belong to host-tier blocks, whose rows for the layer at hand were copied
// into a device staging region of the same (kv_head, slot, head_dim) layout. kv_row / kv_scale_at
// are the ONE address rule for both tiers, used by the reference and every CUDA kernel.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ul_engine.h"

#ifdef __CUDACC__
#define UL_HOST_DEVICE __host__ __device__
#else
#define UL_HOST_DEVICE
#endif

namespace ul {

/** A status plus message; UL_OK has none. Backends return these, the engine stores the message. */
struct Status {
  ul_status code = UL_OK;
  std::string message;
  bool ok() const { return code == UL_OK; }
  static Status Ok() { return {}; }
};
inline Status Err(ul_status code, std::string message) { return Status{code, std::move(message)}; }

#define UL_TRY(expr)              \
  do {                            \
    ::ul::Status st_ = (expr);    \
    if (!st_.ok()) return st_;    \
  } while (0)

/** One item's rows in a step (a piece of the engine's micro-batch). */
struct StepItemPlan {
  int row0;       // first row of the item in the micro-batch
  int rows;       // its rows: positions pos0 .. pos0 + rows - 1
  int pos0;
  int table_off;  // its block table: StepPlan::tables[table_off ..]
};

/**
 * One micro-batch of a step, on the host: the items' row segments (in row order, covering every
 * row), their block tables, and per row its position and pool slot. prepare_step hands it to the
 * backend once per micro-batch (CUDA copies it to the device there, not once per layer).
 */
struct StepPlan {
  int n_items = 0;
  const StepItemPlan* items = nullptr;
  const int32_t* tables = nullptr;  // nullptr: every item's slots are its positions (identity)
  int table_ints = 0;
  const int32_t* positions = nullptr;  // (rows)
  const int32_t* slots = nullptr;      // (rows)
  int rows = 0;
  int block_tokens = 0;
};

/** The slot of position p in the table at `table` (block_tokens positions per block). */
UL_HOST_DEVICE inline int slot_of(const int32_t* table, int block_tokens, int p) {
  return table[p / block_tokens] * block_tokens + p % block_tokens;
}

/**
 * The row of (kv_head, slot) in one (layer, K|V) slice: slots below res_slots in the resident pool
 * `resident` (kv_head stride res_slots), the others in the staging region `staged` (stride
 * stage_slots, slot - res_slots). row = elements of one row (head_dim, or head_dim * element size
 * for byte pointers). Untiered callers pass staged = nullptr and every slot below res_slots.
 */
template <typename T>
UL_HOST_DEVICE inline T* kv_row(T* resident, T* staged, int res_slots, int stage_slots, int kv_head, int slot,
                                int row) {
  return slot < res_slots ? resident + (static_cast<size_t>(kv_head) * res_slots + slot) * row
                          : staged + (static_cast<size_t>(kv_head) * stage_slots + (slot - res_slots)) * row;
}

/** The fp8 scale of (kv_head, slot)'s 64-slot block, by kv_row's rule (res_slots % 64 == 0). */
template <typename T>
UL_HOST_DEVICE inline T* kv_scale_at(T* resident, T* staged, int res_slots, int stage_slots, int kv_head, int slot) {
  return slot < res_slots ? resident + static_cast<size_t>(kv_head) * ((res_slots + UL_FP8_BLOCK - 1) / UL_FP8_BLOCK) + slot / UL_FP8_BLOCK
                          : staged + static_cast<size_t>(kv_head) * ((stage_slots + UL_FP8_BLOCK - 1) / UL_FP8_BLOCK) +
                                (slot - res_slots) / UL_FP8_BLOCK;
}

/**
 * Attention over the cache. With `plan`: each item's rows attend over its own block table (causal:
 * the row at position p sees the item's keys 0..p). Without (kernel checks, benchmarks): one item of
 * `rows` queries at positions [pos0, pos0 + rows) whose slots are its positions.
 */
struct AttentionArgs {
  const void* q;        // (rows, heads, head_dim), act dtype, post-RoPE
  const void* k_cache;  // (kv_heads, max_pos, head_dim), kv dtype, this layer
  const void* v_cache;  // (kv_heads, max_pos, head_dim), kv dtype, this layer
  const float* k_scale; // (kv_heads, fp8_blocks(max_pos)) fp8 only, else nullptr
  const float* v_scale; // (kv_heads, fp8_blocks(max_pos)) fp8 only, else nullptr
  void* out;            // (rows, heads, head_dim), act dtype
  int rows, heads, kv_heads, head_dim, max_pos, pos0;
  ul_dtype kv_dtype;
  float softmax_scale;  // 1 / sqrt(head_dim)
  const StepPlan* plan = nullptr;  // the step's items (after prepare_step), or nullptr: see above
  // Host tier (kv_row): slots >= max_pos are read here. nullptr / 0: every slot is resident.
  const void* k_stage = nullptr;        // (kv_heads, stage_slots, head_dim), kv dtype
  const void* v_stage = nullptr;
  const float* k_stage_scale = nullptr; // (kv_heads, fp8_blocks(stage_slots)) fp8 only
  const float* v_stage_scale = nullptr;
  int stage_slots = 0;
};

/**
 * Writes new K or V rows into one (layer, K|V) slice of the cache. fp8: for each (kv_head, block)
 * the write touches, fp8_block_scale gives the block's scale (positions of the block before pos0
 * are requantised when it grows), then the new rows are quantised with it: nothing saturates.
 */
struct KvStoreArgs {
  const void* src;  // (rows, kv_heads, head_dim), act dtype
  void* cache;      // (kv_heads, max_pos, head_dim), kv dtype
  float* scale;     // (kv_heads, fp8_blocks(max_pos)) fp8 only, else nullptr
  int rows, kv_heads, head_dim, max_pos, pos0;
  ul_dtype kv_dtype;
  // Host tier (kv_row): slots >= max_pos are written here. nullptr / 0: every slot is resident.
  void* stage = nullptr;         // (kv_heads, stage_slots, head_dim), kv dtype
  float* stage_scale = nullptr;  // (kv_heads, fp8_blocks(stage_slots)) fp8 only
  int stage_slots = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual ul_dtype act_dtype() const = 0;
  virtual ul_dtype weight_dtype() const = 0;
  /** KV dtypes this backend supports (supports_op style, instead of guessing). */
  virtual bool supports_kv(ul_dtype dt) const = 0;
  /** What runs the ops, as JSON object members without braces (ul_engine_backend_info):
   *  "kernels":"...","gemm":"..." plus, for CUDA, where cuBLASLt came from. */
  virtual std::string info_json_members() const {
    return std::string("\"kernels\":\"") + name() + "\",\"gemm\":\"" + name() + "\"";
  }

  // Memory. Sizes in bytes. upload/download are raw bytes (the engine converts dtypes on host).
  virtual Status alloc(size_t bytes, void** out) = 0;
  virtual void release(void* p) = 0;
  virtual Status upload(void* dst, const void* src, size_t bytes) = 0;
  virtual Status download(void* dst, const void* src, size_t bytes) = 0;
  /** height rows of width bytes, device rows `pitch` bytes apart, host rows packed. */
  virtual Status download_2d(void* dst, const void* src, size_t pitch, size_t width,
                             size_t height) = 0;
  virtual Status upload_2d(void* dst, size_t pitch, const void* src, size_t width,
                           size_t height) = 0;
  virtual Status memory_info(uint64_t* free_bytes, uint64_t* total_bytes) = 0;

  // Ops. Shapes in comments; every pointer is device memory of this backend unless it says host.
  /** out (rows, dim) f32 = table[tokens[r]]; table (vocab, dim) weight dtype; tokens on host. */
  virtual Status embed(const void* table, const int32_t* tokens_host, int rows, int dim,
                       float* out) = 0;
  /** out (rows, dim) act = x / rms(x) * w; x (rows, dim) f32, w (dim) weight dtype. */
  virtual Status rmsnorm(const float* x, const void* w, int rows, int dim, float eps,
                         void* out) = 0;
  /**
   * y (rows, out_dim) = x (rows, in_dim) . w (out_dim, in_dim)^T; x act, w weight dtype.
   * y_f32: y is f32 and accumulated into (y += ...), the residual add; else y is act and written.
   */
  virtual Status matmul(const void* x, const void* w, int rows, int in_dim, int out_dim, void* y,
                        bool y_f32) = 0;
  /** In place on x (rows, heads, head_dim) act: rotate_half RoPE of the first rot_dim dims at
   *  position pos0 + row; angle = (double)pos * inv_freq[i] (f64); cos, sin scaled by `scaling`. */
  virtual Status rope(void* x, int rows, int heads, int head_dim, int rot_dim, int pos0,
                      const double* inv_freq, float scaling) = 0;
  /** out (n) act = silu(gate) * up; gate and up are (rows, n/rows) act. */
  virtual Status swiglu(const void* gate, const void* up, size_t n, void* out) = 0;
  virtual Status kv_store(const KvStoreArgs& a) = 0;
  virtual Status attention(const AttentionArgs& a) = 0;

  // Paged steps. The defaults run the contiguous ops above once per item (rope) or per run of
  // consecutive slots (kv_store); CUDA overrides them with one launch for the whole micro-batch.
  /** Called once per micro-batch before its layers run; the plan stays valid until the next. */
  virtual Status prepare_step(const StepPlan& plan) {
    (void)plan;
    return Status::Ok();
  }
  /** rope() of every item's rows at their positions; x (plan.rows, heads, head_dim) act. */
  virtual Status rope_step(void* x, int heads, int head_dim, int rot_dim, const double* inv_freq,
                           float scaling, const StepPlan& plan);
  /** kv_store() of plan.rows rows (a.src) to their slots; a.rows and a.pos0 are ignored. */
  virtual Status kv_store_step(const KvStoreArgs& a, const StepPlan& plan);
  /** bytes of device memory set to 0. */
  virtual Status zero(void* p, size_t bytes) = 0;
  /** Device to device copy (no overlap). */
  virtual Status copy_device(void* dst, const void* src, size_t bytes) = 0;
  /** argmax (temperature <= 0) or Gumbel-max sample of logits (vocab) f32 on device. */
  virtual Status sample(const float* logits, int vocab, float temperature, uint64_t seed,
                        uint64_t counter, int32_t* token_host) = 0;
  /** Waits for queued work, compute and copies (CUDA); no-op for the reference. */
  virtual Status sync() = 0;

  // The host KV tier. Host memory the device copies from without the engine's staging halves
  // (CUDA: pinned, cudaHostAlloc; reference: plain), and a copy queue beside the compute queue
  // (CUDA: a second stream; reference: the memcpy happens at once), ordered by two fences.
  /** bytes of host memory, zeroed. */
  virtual Status alloc_host(size_t bytes, void** out) = 0;
  virtual void release_host(void* p) = 0;
  /** Queues a copy between host-tier memory and device memory on the copy queue: `height` rows of
   *  `width` bytes, `pitch` bytes apart on both sides (the host tier and staging share a layout). */
  virtual Status copy_async(void* dst, const void* src, size_t width, size_t height, size_t pitch, bool to_device) = 0;
  /** Copies queued from now on start after the compute queued so far. */
  virtual Status copy_waits_compute() = 0;
  /** Compute queued from now on starts after the copies queued so far. */
  virtual Status compute_waits_copy() = 0;
};

inline Status Backend::rope_step(void* x, int heads, int head_dim, int rot_dim, const double* inv_freq,
                                 float scaling, const StepPlan& plan) {
  size_t row_bytes = static_cast<size_t>(heads) * head_dim * (act_dtype() == UL_DTYPE_F32 ? 4 : 2);
  for (int i = 0; i < plan.n_items; ++i) {
    const StepItemPlan& it = plan.items[i];
    UL_TRY(rope(static_cast<char*>(x) + it.row0 * row_bytes, it.rows, heads, head_dim, rot_dim, it.pos0, inv_freq, scaling));
  }
  return Status::Ok();
}

inline Status Backend::kv_store_step(const KvStoreArgs& a, const StepPlan& plan) {
  size_t row_bytes = static_cast<size_t>(a.kv_heads) * a.head_dim * (act_dtype() == UL_DTYPE_F32 ? 4 : 2);
  // Runs of rows whose slots are consecutive (one KV block at most: a run never crosses a block
  // boundary of the table, and an fp8 scale block lies inside one KV block).
  for (int r = 0; r < plan.rows;) {
    int n = 1;
    while (r + n < plan.rows && plan.slots[r + n] == plan.slots[r] + n && plan.positions[r + n] % plan.block_tokens != 0) ++n;
    KvStoreArgs s = a;
    s.src = static_cast<const char*>(a.src) + r * row_bytes;
    s.rows = n;
    s.pos0 = plan.slots[r];
    UL_TRY(kv_store(s));
    r += n;
  }
  return Status::Ok();
}

std::unique_ptr<Backend> make_reference_backend();
/** CUDA backend, or NOT_AVAILABLE (not compiled in, no device). Defined in cuda/ or cuda_stub. */
Status make_cuda_backend(std::unique_ptr<Backend>* out);
bool cuda_compiled();

// Counter-based RNG for sampling (SplitMix64): the same on host and device, so the reference and
// CUDA draw identical noise for the same (seed, counter, index).
UL_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// ---- fp8 KV block scales (host and device: the reference and CUDA apply the same rule) ----------
constexpr int kFp8Block = UL_FP8_BLOCK;
constexpr float kFp8Max = 448.0f;  // largest finite e4m3 ("fn") value

UL_HOST_DEVICE inline int fp8_blocks(int max_pos) { return (max_pos + kFp8Block - 1) / kFp8Block; }

/**
 * The scale of one (kv_head, block) after a write whose new values have max |x| = `amax`.
 * `fresh`: the block holds no earlier positions (the write starts at or before its first position).
 * A fresh block, or one whose scale is 0 (every earlier value was 0), gets amax / 448: its largest
 * value lands on 448, the full e4m3 range. Otherwise the old scale doubles until amax fits; `*requant`
 * (old / new, a power of two, 1 when unchanged) is what earlier positions' fp8 values are multiplied
 * by. Powers of two keep that requantisation exact for every value that stays above e4m3's
 * subnormal range (2^-6 * scale in real units, about the block's max / 28 000): only such tiny
 * values can lose bits. A non-finite amax (an inf activation) leaves the scale as it is: the
 * value saturates alone instead of zeroing, then NaN-ing, the block's other positions. Rejected: x2 headroom at first write without requantisation (the old scheme; a later value
 * above twice the first chunk's max saturated) and rescaling to exactly amax / 448 (every growth
 * would round every earlier value again).
 */
UL_HOST_DEVICE inline float fp8_block_scale(float old, bool fresh, float amax, float* requant) {
  *requant = 1.0f;
  if (!(amax <= 3.0e38f)) return fresh || !(old > 0.0f) ? 0.0f : old;  // inf or NaN amax
  if (fresh || !(old > 0.0f)) return amax / kFp8Max;
  float s = old;
  while (amax > kFp8Max * s) s *= 2.0f;  // terminates: s reaches inf, and amax > inf is false
  *requant = old / s;
  return s;
}

/** x / scale, 0 for an all-zero block (scale 0). */
UL_HOST_DEVICE inline float fp8_quantize_input(float x, float scale) { return scale > 0.0f ? x / scale : 0.0f; }

/** Gumbel noise for vocabulary entry i: -log(-log(U)), U in (0, 1) from 53 random bits. */
UL_HOST_DEVICE inline double gumbel_noise(uint64_t seed, uint64_t counter, uint64_t i) {
  uint64_t bits = splitmix64(seed ^ splitmix64(counter * 0x100000001b3ull + i));
  double u = (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  return -log(-log(u));
}

}  // namespace ul
