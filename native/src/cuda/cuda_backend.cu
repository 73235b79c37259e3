// The CUDA kernel set behind the Backend vtable (backend.h): bf16 weights and activations, f32
// residual stream, bf16 or fp8-e4m3 KV cache, one compute stream (and a copy stream for the host
// KV tier: pinned host blocks staged per layer while the layer before computes). Projections go to cuBLASLt when the
// library loads (cublaslt.cu), else to our tensor-core GEMM (gemm.cu). Every host <-> device copy
// (weights, KV export/import, logits) goes through two pinned staging halves, double-buffered.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "attention_fa2.cuh"
#include "common.cuh"

namespace ul {
namespace cuda {
namespace {

class CudaBackend final : public Backend {
 public:
  ~CudaBackend() override {
    cublaslt_close(lt_);
    for (cudaEvent_t ev : half_free_)
      if (ev) cudaEventDestroy(ev);
    if (staging_) cudaFreeHost(staging_);
    if (workspace_) cudaFree(workspace_);
    if (plan_dev_) cudaFree(plan_dev_);
    if (tokens_) cudaFree(tokens_);
    if (token_out_) cudaFree(token_out_);
    for (cudaEvent_t ev : {copy_done_, compute_done_})
      if (ev) cudaEventDestroy(ev);
    if (copy_stream_) cudaStreamDestroy(copy_stream_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status init() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
      return Err(UL_ERR_NOT_AVAILABLE, std::string("no CUDA device: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "none found"));
    cudaDeviceProp prop{};
    UL_CUDA(cudaGetDeviceProperties(&prop, 0));
    if (prop.major < 8)
      return Err(UL_ERR_NOT_AVAILABLE, std::string(prop.name) + " is sm_" + std::to_string(prop.major * 10 + prop.minor) + "; bf16 tensor cores need sm_80 or newer");
    // UL_ATTENTION: the prefill kernel for bf16 KV: fa2 (attention_fa2.cu, 16 rows a warp; default),
    // fa2-32 (32 rows a warp) or wmma (flash_prefill).
    const std::string att = std::getenv("UL_ATTENTION") ? std::getenv("UL_ATTENTION") : "";
    if (att.empty() || att == "fa2") fa2_rows_ = 16;
    else if (att == "fa2-32") fa2_rows_ = 32;
    else if (att == "wmma") fa2_rows_ = 0;
    else return Err(UL_ERR_INVALID_ARGUMENT, "UL_ATTENTION must be fa2, fa2-32 or wmma, not '" + att + "'");
    UL_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    UL_CUDA(cudaMalloc(&token_out_, sizeof(int32_t)));
    return cublaslt_open(&lt_, &gemm_report_);
  }

  const char* name() const override { return lt_ ? "cuda+cublaslt" : "cuda"; }
  std::string info_json_members() const override {
    return std::string("\"kernels\":\"cuda\",\"attention\":\"") + (fa2_rows_ == 16 ? "fa2" : fa2_rows_ == 32 ? "fa2-32" : "wmma") + "\",\"gemm\":\"" +
           (lt_ ? "cublaslt" : "own-wmma") +
           "\",\"gemm_plans\":" + std::to_string(cublaslt_plans_built(lt_)) +
           ",\"gemm_own_shapes\":" + std::to_string(own_gemm_shapes_.size()) + "," + gemm_report_;
  }
  ul_dtype act_dtype() const override { return UL_DTYPE_BF16; }
  ul_dtype weight_dtype() const override { return UL_DTYPE_BF16; }
  bool supports_kv(ul_dtype dt) const override { return dt == UL_DTYPE_BF16 || dt == UL_DTYPE_FP8_E4M3; }

  Status alloc(size_t bytes, void** out) override {
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return Err(UL_ERR_OUT_OF_MEMORY, "cudaMalloc of " + std::to_string(bytes) + " bytes failed (device memory full)");
    }
    UL_CUDA(e);
    UL_CUDA(cudaMemsetAsync(*out, 0, bytes, stream_));
    return Status::Ok();
  }
  void release(void* p) override { cudaFree(p); }

  // Host <-> device through two pinned staging halves of kPiece bytes: the host memcpy of one piece
  // overlaps the DMA of the other (events say when a half is free again). Pieces keep the pinned
  // footprint at 2 x 64 MiB whatever the transfer (an 8B embedding is 1 GiB in bf16).
  Status upload(void* dst, const void* src, size_t bytes) override {
    UL_TRY(ensure_staging());
    for (size_t at = 0, k = 0; at < bytes; at += kPiece, ++k) {
      size_t m = std::min(kPiece, bytes - at);
      char* half = half_ptr(k);
      UL_CUDA(cudaEventSynchronize(half_free_[k % 2]));  // the DMA that last read this half is done
      std::memcpy(half, static_cast<const char*>(src) + at, m);
      UL_CUDA(cudaMemcpyAsync(static_cast<char*>(dst) + at, half, m, cudaMemcpyHostToDevice, stream_));
      UL_CUDA(cudaEventRecord(half_free_[k % 2], stream_));
    }
    UL_CUDA(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }
  Status download(void* dst, const void* src, size_t bytes) override {
    UL_TRY(ensure_staging());
    size_t pieces = (bytes + kPiece - 1) / kPiece;
    for (size_t k = 0; k <= pieces; ++k) {
      if (k < pieces) {  // queue piece k (ordered after the compute that produced it: same stream)
        size_t at = k * kPiece, m = std::min(kPiece, bytes - at);
        UL_CUDA(cudaMemcpyAsync(half_ptr(k), static_cast<const char*>(src) + at, m, cudaMemcpyDeviceToHost, stream_));
        UL_CUDA(cudaEventRecord(half_free_[k % 2], stream_));
      }
      if (k > 0) {  // while it runs, copy out piece k - 1
        size_t j = k - 1, at = j * kPiece, m = std::min(kPiece, bytes - at);
        UL_CUDA(cudaEventSynchronize(half_free_[j % 2]));
        std::memcpy(static_cast<char*>(dst) + at, half_ptr(j), m);
      }
    }
    return Status::Ok();
  }
  // Rows of a (kv_head, max_pos, head_dim) slice: one 1D transfer per row (8 per layer and K|V).
  Status download_2d(void* dst, const void* src, size_t pitch, size_t width, size_t height) override {
    for (size_t r = 0; r < height; ++r)
      UL_TRY(download(static_cast<char*>(dst) + r * width, static_cast<const char*>(src) + r * pitch, width));
    return Status::Ok();
  }
  Status upload_2d(void* dst, size_t pitch, const void* src, size_t width, size_t height) override {
    for (size_t r = 0; r < height; ++r)
      UL_TRY(upload(static_cast<char*>(dst) + r * pitch, static_cast<const char*>(src) + r * width, width));
    return Status::Ok();
  }
  Status zero(void* p, size_t bytes) override {
    UL_CUDA(cudaMemsetAsync(p, 0, bytes, stream_));
    return Status::Ok();
  }
  Status copy_device(void* dst, const void* src, size_t bytes) override {
    UL_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    return Status::Ok();
  }
  Status memory_info(uint64_t* free_bytes, uint64_t* total_bytes) override {
    size_t f = 0, t = 0;
    UL_CUDA(cudaMemGetInfo(&f, &t));
    *free_bytes = f;
    *total_bytes = t;
    return Status::Ok();
  }

  Status embed(const void* table, const int32_t* tokens_host, int rows, int dim, float* out) override {
    if (static_cast<size_t>(rows) > tokens_cap_) {
      if (tokens_) UL_CUDA(cudaFree(tokens_));
      tokens_ = nullptr;
      UL_CUDA(cudaMalloc(&tokens_, sizeof(int32_t) * rows));
      tokens_cap_ = rows;
    }
    UL_TRY(upload(tokens_, tokens_host, sizeof(int32_t) * rows));
    return launch_embed(static_cast<const bf16*>(table), tokens_, rows, dim, out, stream_);
  }
  Status rmsnorm(const float* x, const void* w, int rows, int dim, float eps, void* out) override {
    return launch_rmsnorm(x, static_cast<const bf16*>(w), rows, dim, eps, static_cast<bf16*>(out), stream_);
  }
  Status matmul(const void* x, const void* w, int rows, int in_dim, int out_dim, void* y, bool y_f32) override {
    const bf16* xb = static_cast<const bf16*>(x);
    const bf16* wb = static_cast<const bf16*>(w);
    if (lt_) {
      const uint64_t shape = (uint64_t(rows) << 42) ^ (uint64_t(in_dim) << 21) ^ uint64_t(out_dim) ^ (uint64_t(y_f32) << 63);
      if (!own_gemm_shapes_.count(shape)) {
        Status st = cublaslt_gemm(lt_, xb, wb, rows, in_dim, out_dim, y, y_f32, stream_);
        if (st.ok()) return st;
        // cuBLASLt loaded but cannot run this shape (no algorithm, NOT_SUPPORTED, a launch error):
        // it never wrote y, so our kernel computes it, now and from now on; the report counts it.
        own_gemm_shapes_.insert(shape);
      }
    }
    return launch_gemm_tc(xb, wb, rows, in_dim, out_dim, y, y_f32, stream_);
  }
  Status rope(void* x, int rows, int heads, int head_dim, int rot_dim, int pos0, const double* inv_freq,
              float scaling) override {
    return launch_rope(static_cast<bf16*>(x), rows, heads, head_dim, rot_dim, pos0, nullptr, inv_freq, scaling, stream_);
  }
  // One launch for every item's rows, at their positions (prepare_step put them on the device).
  Status rope_step(void* x, int heads, int head_dim, int rot_dim, const double* inv_freq, float scaling,
                   const StepPlan& plan) override {
    return launch_rope(static_cast<bf16*>(x), plan.rows, heads, head_dim, rot_dim, 0, dev_.positions, inv_freq, scaling,
                       stream_);
  }
  // One launch: bf16 to every row's slot; fp8 one thread block per (64-slot block the micro-batch
  // writes, kv head), each block's scale set from all the rows written into it.
  Status kv_store_step(const KvStoreArgs& a, const StepPlan& plan) override {
    return launch_kv_store_slots(a, dev_.slots, plan.rows, dev_.fp8_segments, dev_.n_fp8_segments, stream_);
  }
  Status swiglu(const void* gate, const void* up, size_t n, void* out) override {
    return launch_swiglu(static_cast<const bf16*>(gate), static_cast<const bf16*>(up), n, static_cast<bf16*>(out), stream_);
  }
  Status kv_store(const KvStoreArgs& a) override { return launch_kv_store(a, stream_); }
  /**
   * The micro-batch's tables, flash tiles and split-KV query rows, built here and copied to the
   * device in one upload (once per micro-batch, not per layer): ints
   *   [tables | tiles (4 each) | all rows (3 each) | rows of items under 16 rows (3 each) |
   *    positions | slots | fp8 segments (3 each)]
   * A plan without tables (kernel checks) is slot = position (table offset -1).
   */
  Status prepare_step(const StepPlan& plan) override {
    std::vector<int32_t>& h = plan_host_;
    h.assign(plan.tables, plan.tables + plan.table_ints);
    size_t tiles_at = h.size();
    int n_tiles = 0;
    for (int i = 0; i < plan.n_items; ++i) {
      const StepItemPlan& it = plan.items[i];
      if (it.rows < kFlashMinRows) continue;
      int toff = plan.tables ? it.table_off : -1;
      for (int t = 0; t < it.rows; t += 64, ++n_tiles)
        h.insert(h.end(), {it.row0 + t, std::min(64, it.rows - t), it.pos0 + t, toff});
    }
    size_t all_at = h.size();
    int max_all = 0, max_small = 0, n_small = 0;
    for (int pass = 0; pass < 2; ++pass) {
      for (int i = 0; i < plan.n_items; ++i) {
        const StepItemPlan& it = plan.items[i];
        if (pass == 1 && it.rows >= kFlashMinRows) continue;
        int toff = plan.tables ? it.table_off : -1;
        for (int r = 0; r < it.rows; ++r) h.insert(h.end(), {it.row0 + r, it.pos0 + r, toff});
        int& most = pass == 0 ? max_all : max_small;
        most = std::max(most, it.pos0 + it.rows);
        if (pass == 1) n_small += it.rows;
      }
    }
    size_t small_at = all_at + 3 * static_cast<size_t>(plan.rows), positions_at = h.size();
    if (plan.positions) h.insert(h.end(), plan.positions, plan.positions + plan.rows);
    size_t slots_at = h.size();
    if (plan.slots) h.insert(h.end(), plan.slots, plan.slots + plan.rows);
    // fp8 segments: rows of consecutive slots (one item's piece inside one KV block), cut at 64-slot
    // block boundaries; the same runs the default kv_store_step stores one launch each.
    size_t segments_at = h.size();
    int n_segments = 0;
    for (int r = 0; plan.slots && r < plan.rows;) {
      int n = 1;
      while (r + n < plan.rows && plan.slots[r + n] == plan.slots[r] + n && plan.slots[r + n] % kFp8Block != 0 &&
             plan.positions[r + n] % plan.block_tokens != 0)
        ++n;
      h.insert(h.end(), {r, plan.slots[r], n});
      ++n_segments;
      r += n;
    }
    if (h.size() > plan_cap_) {
      UL_CUDA(cudaStreamSynchronize(stream_));
      if (plan_dev_) UL_CUDA(cudaFree(plan_dev_));
      plan_dev_ = nullptr;
      UL_CUDA(cudaMalloc(&plan_dev_, h.size() * sizeof(int32_t) * 2));
      plan_cap_ = h.size() * 2;
    }
    if (!h.empty()) UL_TRY(upload(plan_dev_, h.data(), h.size() * sizeof(int32_t)));
    dev_ = DevicePlan{};
    dev_.tables = plan_dev_;
    dev_.tiles = plan_dev_ + tiles_at;
    dev_.n_tiles = n_tiles;
    dev_.all_rows = plan_dev_ + all_at;
    dev_.n_all = plan.rows;
    dev_.max_len_all = max_all;
    dev_.small_rows = plan_dev_ + small_at;
    dev_.n_small = n_small;
    dev_.max_len_small = max_small;
    dev_.positions = plan.positions ? plan_dev_ + positions_at : nullptr;
    dev_.slots = plan.slots ? plan_dev_ + slots_at : nullptr;
    dev_.fp8_segments = plan_dev_ + segments_at;
    dev_.n_fp8_segments = n_segments;
    dev_.block_tokens = std::max(1, plan.block_tokens);
    return Status::Ok();
  }

  Status attention(const AttentionArgs& a) override {
    if (!a.plan) {  // kernel checks and benchmarks: one item at pos0, slot = position
      StepItemPlan one{0, a.rows, a.pos0, 0};
      StepPlan plan;
      plan.n_items = 1;
      plan.items = &one;
      plan.rows = a.rows;
      UL_TRY(prepare_step(plan));
    }
    // Flash for the tiles of items of >= 16 rows, split-KV for the rest (or for every row where
    // flash does not apply: head_dim other than 128).
    bool flash = flash_supported(a);
    const int32_t* rows = flash ? dev_.small_rows : dev_.all_rows;
    int n = flash ? dev_.n_small : dev_.n_all, max_len = flash ? dev_.max_len_small : dev_.max_len_all;
    // Both kernels read both KV tiers (ul::kv_row): a layer with a staged host tier runs on either.
    if (flash)
      UL_TRY(fa2_rows_ && fa2_supported(a) ? launch_fa2_prefill(a, dev_, stream_, fa2_rows_)
                                           : launch_flash_prefill(a, dev_, stream_));
    if (n == 0) return Status::Ok();
    size_t need = decode_workspace_floats(a, n, max_len);
    if (need > workspace_cap_) {
      UL_CUDA(cudaStreamSynchronize(stream_));
      if (workspace_) UL_CUDA(cudaFree(workspace_));
      workspace_ = nullptr;
      UL_CUDA(cudaMalloc(&workspace_, need * sizeof(float)));
      workspace_cap_ = need;
    }
    return launch_split_kv(a, dev_, rows, n, max_len, workspace_, stream_);
  }
  Status sample(const float* logits, int vocab, float temperature, uint64_t seed, uint64_t counter,
                int32_t* token_host) override {
    UL_TRY(launch_sample(logits, vocab, temperature, seed, counter, token_out_, stream_));
    return download(token_host, token_out_, sizeof(int32_t));
  }
  Status sync() override {
    UL_CUDA(cudaStreamSynchronize(stream_));
    if (copy_stream_) UL_CUDA(cudaStreamSynchronize(copy_stream_));
    return Status::Ok();
  }

  // The host KV tier: pinned memory (DMA without the staging halves, asynchronous to the host) and
  // a second stream, so layer l + 1's blocks move over PCIe while layer l's kernels run.
  Status alloc_host(size_t bytes, void** out) override {
    cudaError_t e = cudaHostAlloc(out, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return Err(UL_ERR_OUT_OF_MEMORY, "cudaHostAlloc of " + std::to_string(bytes) + " bytes failed (pinned host memory full)");
    }
    UL_CUDA(e);
    std::memset(*out, 0, bytes);
    return Status::Ok();
  }
  void release_host(void* p) override { cudaFreeHost(p); }
  Status copy_async(void* dst, const void* src, size_t width, size_t height, size_t pitch, bool to_device) override {
    UL_TRY(ensure_copy_stream());
    const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    if (height > 1 && pitch <= max_pitch_) {
      UL_CUDA(cudaMemcpy2DAsync(dst, pitch, src, pitch, width, height, kind, copy_stream_));
      return Status::Ok();
    }
    for (size_t r = 0; r < height; ++r)  // one row, or a pitch beyond what a 2D copy takes
      UL_CUDA(cudaMemcpyAsync(static_cast<char*>(dst) + r * pitch, static_cast<const char*>(src) + r * pitch, width, kind,
                              copy_stream_));
    return Status::Ok();
  }
  Status copy_waits_compute() override {
    UL_TRY(ensure_copy_stream());
    UL_CUDA(cudaEventRecord(compute_done_, stream_));
    UL_CUDA(cudaStreamWaitEvent(copy_stream_, compute_done_, 0));
    return Status::Ok();
  }
  Status compute_waits_copy() override {
    UL_TRY(ensure_copy_stream());
    UL_CUDA(cudaEventRecord(copy_done_, copy_stream_));
    UL_CUDA(cudaStreamWaitEvent(stream_, copy_done_, 0));
    return Status::Ok();
  }

 private:
  static constexpr size_t kPiece = size_t{64} << 20;
  static constexpr int kFlashMinRows = 16;  // items with fewer rows (decode) go to split-KV

  char* half_ptr(size_t k) const { return static_cast<char*>(staging_) + (k % 2) * kPiece; }

  Status ensure_staging() {
    if (staging_) return Status::Ok();
    UL_CUDA(cudaHostAlloc(&staging_, 2 * kPiece, cudaHostAllocDefault));
    for (cudaEvent_t& ev : half_free_) {
      UL_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
      UL_CUDA(cudaEventRecord(ev, stream_));
    }
    return Status::Ok();
  }

  Status ensure_copy_stream() {
    if (copy_stream_) return Status::Ok();
    UL_CUDA(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    UL_CUDA(cudaEventCreateWithFlags(&copy_done_, cudaEventDisableTiming));
    UL_CUDA(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
    int device = 0, max_pitch = 0;
    UL_CUDA(cudaGetDevice(&device));
    UL_CUDA(cudaDeviceGetAttribute(&max_pitch, cudaDevAttrMaxPitch, device));
    max_pitch_ = static_cast<size_t>(max_pitch);
    return Status::Ok();
  }

  cudaStream_t stream_ = nullptr;
  int fa2_rows_ = 16;  // bf16 KV prefill (fa2_supported) on fa2_prefill with 16 or 32 rows a warp; 0: flash_prefill
  cudaStream_t copy_stream_ = nullptr;  // host-tier KV copies (copy_async); created on first use
  cudaEvent_t copy_done_ = nullptr, compute_done_ = nullptr;  // the two fences between the streams
  size_t max_pitch_ = 0;  // cudaDevAttrMaxPitch: the largest pitch cudaMemcpy2DAsync takes
  CublasLt* lt_ = nullptr;
  // Shapes (rows, in, out, f32 output) cuBLASLt failed on, which our GEMM runs instead.
  std::unordered_set<uint64_t> own_gemm_shapes_;
  std::string gemm_report_;  // JSON members: where cuBLASLt came from, or what was tried
  void* staging_ = nullptr;  // pinned host memory, two halves of kPiece, for every host <-> device copy
  cudaEvent_t half_free_[2] = {nullptr, nullptr};
  std::vector<int32_t> plan_host_;  // prepare_step's ints, then copied to plan_dev_
  int32_t* plan_dev_ = nullptr;
  size_t plan_cap_ = 0;
  DevicePlan dev_;
  float* workspace_ = nullptr;  // split-KV partials
  size_t workspace_cap_ = 0;
  int32_t* tokens_ = nullptr;  // (rows) token ids for embed
  size_t tokens_cap_ = 0;
  int32_t* token_out_ = nullptr;
};

}  // namespace
}  // namespace cuda

Status make_cuda_backend(std::unique_ptr<Backend>* out) {
  auto be = std::make_unique<cuda::CudaBackend>();
  UL_TRY(be->init());
  *out = std::move(be);
  return Status::Ok();
}

bool cuda_compiled() { return true; }

}  // namespace ul
