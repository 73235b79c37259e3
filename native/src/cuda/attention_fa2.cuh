// The FlashAttention-2-style causal prefill kernel (attention_fa2.cu): what cuda_backend.cu calls.
#pragma once
#include "common.cuh"

namespace ul {
namespace cuda {

/** fa2_prefill covers these: head_dim 128, bf16 KV, heads / kv_heads in {2, 4, 8}. Otherwise
 *  (fp8 KV, other GQA groups) flash_prefill (attention.cu) runs the same tiles. */
bool fa2_supported(const AttentionArgs& a);
/** Causal prefill of dp's tiles (the same 64-row tiles flash_prefill runs), keys through each
 *  tile's block table; needs fa2_supported(a). warp_rows: query rows a warp computes, 16 (8 warps,
 *  64-key tiles) or 32 (4 warps, 32-key tiles: half the shared-memory reads per FLOP). */
Status launch_fa2_prefill(const AttentionArgs& a, const DevicePlan& dp, cudaStream_t s, int warp_rows);

}  // namespace cuda
}  // namespace ul
