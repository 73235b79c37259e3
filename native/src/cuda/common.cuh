// Shared by the CUDA kernel files: error checks that become ul::Status (file:line + CUDA's message),
// element loads/stores for the storage types, and the launcher declarations cuda_backend.cu calls.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <string>

#include "../backend.h"

namespace ul {
namespace cuda {

using bf16 = __nv_bfloat16;
using fp8 = __nv_fp8_e4m3;

inline Status cuda_error(cudaError_t e, const char* expr, const char* file, int line) {
  return Err(UL_ERR_DEVICE, std::string(file) + ":" + std::to_string(line) + ": " + expr + ": " +
                                cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

#define UL_CUDA(expr)                                                               \
  do {                                                                              \
    cudaError_t e_ = (expr);                                                        \
    if (e_ != cudaSuccess) return ::ul::cuda::cuda_error(e_, #expr, __FILE__, __LINE__); \
  } while (0)

/** After a kernel launch: launch-configuration errors (asynchronous faults surface at sync). */
#define UL_CUDA_LAUNCHED() UL_CUDA(cudaGetLastError())

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(fp8 x) { return static_cast<float>(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ fp8 from_f32<fp8>(float x) { return fp8(x); }  // saturates to +-448

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- launchers (each kernel file defines its own) --------------------------------------------
// elementwise.cu
Status launch_embed(const bf16* table, const int32_t* tokens, int rows, int dim, float* out, cudaStream_t s);
Status launch_rmsnorm(const float* x, const bf16* w, int rows, int dim, float eps, bf16* out, cudaStream_t s);
/** positions (device, rows) or nullptr: row r at pos0 + r. */
Status launch_rope(bf16* x, int rows, int heads, int head_dim, int rot_dim, int pos0, const int32_t* positions,
                   const double* inv_freq, float scaling, cudaStream_t s);
Status launch_swiglu(const bf16* gate, const bf16* up, size_t n, bf16* out, cudaStream_t s);
Status launch_kv_store(const KvStoreArgs& a, cudaStream_t s);
/** One launch for a micro-batch: bf16 row r to slot slots[r]; fp8 per segment (first src row, first
 *  slot, rows) inside one 64-slot block (DevicePlan::fp8_segments), the fp8_block_scale rule. */
Status launch_kv_store_slots(const KvStoreArgs& a, const int32_t* slots, int rows, const int32_t* fp8_segments,
                             int n_segments, cudaStream_t s);
// gemm.cu: y (M, N) = x (M, K) . w (N, K)^T, tensor cores (wmma bf16, fp32 accumulate).
Status launch_gemm_tc(const bf16* x, const bf16* w, int M, int K, int N, void* y, bool y_f32_accumulate,
                      cudaStream_t s);
// attention.cu
/**
 * A micro-batch's plan on the device (cuda_backend.cu prepare_step copies it in once): the block
 * tables, flash tiles (first row, rows <= 64, position of the first row, table offset; items of
 * >= 16 rows) and split-KV query rows (row, position, table offset) of every row and of the rows of
 * items under 16 rows, with the longest key range of each. Table offset -1: slot = position.
 */
struct DevicePlan {
  const int32_t* tables = nullptr;
  const int32_t* tiles = nullptr;
  int n_tiles = 0;
  const int32_t* all_rows = nullptr;
  int n_all = 0, max_len_all = 0;
  const int32_t* small_rows = nullptr;
  int n_small = 0, max_len_small = 0;
  const int32_t* positions = nullptr;  // (rows) per row
  const int32_t* slots = nullptr;      // (rows) per row
  const int32_t* fp8_segments = nullptr;  // (segments, 3): first row, first slot, rows; one 64-slot block each
  int n_fp8_segments = 0;
  int block_tokens = 1;
};
/** Flash prefill of dp's tiles (head_dim 128, bf16/fp8 KV: flash_supported). */
Status launch_flash_prefill(const AttentionArgs& a, const DevicePlan& dp, cudaStream_t s);
/** Split-KV attention of n_qrows query rows (qrows: row, position, table offset), head_dim <= 256;
 *  workspace grown by the caller to the size decode_workspace_floats() names. */
size_t decode_workspace_floats(const AttentionArgs& a, int n_qrows, int max_len);
Status launch_split_kv(const AttentionArgs& a, const DevicePlan& dp, const int32_t* qrows, int n_qrows, int max_len,
                       float* workspace, cudaStream_t s);
bool flash_supported(const AttentionArgs& a);
// attention_decode.cu: launch_split_kv's fast path (16-byte KV loads, one block per GQA group).
/** Query heads one decode block serves, or 0 where the fast path does not apply (launch_split_kv
 *  then runs its general kernel): head_dim 128, bf16 / fp8 KV, group 1, 2, 4, 8 or a multiple. */
int decode_heads_per_block(const AttentionArgs& a);
/** Splits per query row: enough blocks for an H200 at batch 1, at least 256 keys each. */
int decode_splits(const AttentionArgs& a, int n_qrows, int max_len);
size_t decode_fast_workspace_floats(const AttentionArgs& a, int n_qrows, int max_len);
Status launch_decode(const AttentionArgs& a, const DevicePlan& dp, const int32_t* qrows, int n_qrows, int max_len,
                     float* workspace, cudaStream_t s);
// sampling.cu
Status launch_sample(const float* logits, int vocab, float temperature, uint64_t seed, uint64_t counter,
                     int32_t* token, cudaStream_t s);

// cublaslt.cu: cuBLASLt through dlopen. Absent library: *out = nullptr and OK (the backend uses
// gemm.cu), unless UL_GEMM=cublaslt (NOT_AVAILABLE); found but unusable: DEVICE error. `report` gets
// JSON members naming the library that loaded and every candidate that failed (library_search.h).
struct CublasLt;
Status cublaslt_open(CublasLt** out, std::string* report);
void cublaslt_close(CublasLt* lt);
/** Plans (descriptor, layouts, algorithm) built so far: one per distinct GEMM shape. */
size_t cublaslt_plans_built(const CublasLt* lt);
Status cublaslt_gemm(CublasLt* lt, const bf16* x, const bf16* w, int M, int K, int N, void* y,
                     bool y_f32_accumulate, cudaStream_t s);

}  // namespace cuda
}  // namespace ul
