// Attention of a micro-batch of queries against the paged KV pool (causal: the query at position p
// sees its sequence's keys 0..p), GQA (query head h reads kv head h / (heads / kv_heads)), online
// softmax in base 2, no quadratic memory. Each sequence's keys are found through its block table:
// key position k lives in slot table[k / block_tokens] * block_tokens + k % block_tokens (a
// table offset of -1 means slot = position: the kernel checks and benchmarks). Two kernels:
//
//   flash_prefill  head_dim 128, items of >= 16 rows. Block = one tile (64 query rows of one item)
//                  x one head, 4 warps x 16 rows; loops over 64-key tiles of the item's keys up to
//                  the tile's last query position, each key row looked up in the table.
//                  S = Q K^T and O += P V on tensor cores (wmma bf16, fp32 accumulate); the running
//                  max / sum and the O accumulator (64 floats per lane: 2 lanes per row) in registers.
//   split_kv       any rows, head_dim <= 256 (decode: every sequence's decode token of a batch in
//                  one launch, and the fallback). head_dim 128 with bf16 / fp8 KV and groups of 1,
//                  2, 4, 8 (or multiples) run attention_decode.cu's kernel (16-byte loads, a block
//                  per GQA group: the decode fast path); the rest, or UL_DECODE=general, run this
//                  general one. Grid (head, split, query row): each block reduces
//                  one slice of that row's keys (a warp per key, a lane per 32nd dim) to a partial
//                  (max, sum, O); a second kernel combines the slices. At 1M keys one query row is
//                  spread over heads x 256 blocks, so decode uses the whole GPU.
//
// Every K/V row and fp8 scale is found by ul::kv_row / ul::kv_scale_at (backend.h), the reference's
// rule: slots below max_pos in the resident pool, the others in the staging copy of the layer's
// host-tier blocks (a tiered engine; nullptr staging and every slot resident otherwise).
//
// fp8 caches are dequantised while loading: value * scale of (kv head, block of UL_FP8_BLOCK = 64
// slots). A paged fp8 pool has block_tokens % 64 == 0, so 64 positions starting at a multiple of 64
// are 64 consecutive slots: flash_prefill's 64-key tiles are one scale block each; split_kv reads
// the scale of each key's block.
//
// Performance notes: flash_prefill is an Ampere-style design (mma.sync, S and P round-trip through
// shared memory). FlashAttention-3 on Hopper uses wgmma + TMA + warp specialisation and reaches about
// 600 TFLOP/s causal; this kernel does not aim at that. Rejected: a table of cos/sin, a materialised
// (rows x keys) score matrix (quadratic), and one block per query row for prefill (K/V re-read per row).
#include <mma.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common.cuh"

namespace ul {
namespace cuda {
namespace {

using namespace nvcuda;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -INFINITY;

// ---- flash_prefill -----------------------------------------------------------------------------
constexpr int D = 128, BMQ = 64, BNK = 64, WARPS = 4;
constexpr int LDQ = D + 8;       // bf16 row stride of Q, K, V tiles (keeps wmma pointers 32 B aligned)
constexpr int LDS_S = BNK + 4;   // f32 row stride of a warp's 16 x 64 score tile
constexpr int LDP = BNK + 8;     // bf16 row stride of a warp's 16 x 64 probability tile
constexpr int LDO = D + 4;       // f32 row stride of a warp's 16 x 128 P.V tile
constexpr size_t kFlashSmem = sizeof(bf16) * (BMQ * LDQ + 2 * BNK * LDQ + WARPS * 16 * LDP) +
                              sizeof(float) * (WARPS * 16 * LDS_S + WARPS * 16 * LDO);

struct FlashParams {
  const bf16* q;         // (rows, heads, 128)
  const void* k;         // (kv_heads, max_pos slots, 128) bf16 or fp8
  const void* v;         // (kv_heads, max_pos slots, 128)
  const float* k_scale;  // (kv_heads, fp8_blocks(max_pos)) fp8 only
  const float* v_scale;
  bf16* out;             // (rows, heads, 128)
  const int32_t* tiles;  // (tiles, 4): first row, rows (<= 64), position of the first row, table offset
  const int32_t* tables; // the step's block tables
  int heads, kv_heads, max_pos, block_tokens;
  float scale_log2;      // softmax_scale * log2(e)
  const void* k_stage;   // host tier's staged rows (kv_heads, stage_slots, 128), or nullptr
  const void* v_stage;
  const float* k_stage_scale;
  const float* v_stage_scale;
  int stage_slots;
};

/** The slot of key position k (table offset toff; -1: slot = position). */
__device__ __forceinline__ int key_slot(const int32_t* tables, int toff, int block_tokens, int k) {
  return toff < 0 ? k : tables[toff + k / block_tokens] * block_tokens + k % block_tokens;
}

// 8 consecutive cache elements -> 8 bf16 in shared memory (zeros past the valid keys: garbage there
// could be NaN, and 0 * NaN would poison O).
__device__ __forceinline__ void load8(const bf16* src, float, bf16* dst, bool valid) {
  uint4 v = make_uint4(0, 0, 0, 0);
  if (valid) v = *reinterpret_cast<const uint4*>(src);
  *reinterpret_cast<uint4*>(dst) = v;
}
__device__ __forceinline__ void load8(const fp8* src, float scale, bf16* dst, bool valid) {
  for (int i = 0; i < 8; ++i) dst[i] = valid ? from_f32<bf16>(to_f32(src[i]) * scale) : from_f32<bf16>(0.0f);
}

template <typename T>
__global__ void __launch_bounds__(WARPS * 32) flash_prefill_kernel(FlashParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);             // (64, LDQ)
  bf16* Ks = Qs + BMQ * LDQ;                            // (64 keys, LDQ)
  bf16* Vs = Ks + BNK * LDQ;                            // (64 keys, LDQ)
  bf16* Ps = Vs + BNK * LDQ;                            // (warp, 16, LDP)
  float* Ss = reinterpret_cast<float*>(Ps + WARPS * 16 * LDP);  // (warp, 16, LDS_S)
  float* Os = Ss + WARPS * 16 * LDS_S;                 // (warp, 16, LDO)

  const int h = blockIdx.y, kvh = h / (p.heads / p.kv_heads);
  const int* tile = p.tiles + 4 * blockIdx.x;
  const int m0 = tile[0], tile_rows = tile[1], tile_pos0 = tile[2], toff = tile[3];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const T* kc = static_cast<const T*>(p.k);
  const T* vc = static_cast<const T*>(p.v);
  const T* kst = static_cast<const T*>(p.k_stage);
  const T* vst = static_cast<const T*>(p.v_stage);
  static_assert(BNK == kFp8Block, "a key tile is one fp8 scale block");

  for (int c = tid; c < BMQ * D / 8; c += WARPS * 32) {
    int row = c / (D / 8), col = (c % (D / 8)) * 8, m = m0 + row;
    load8(p.q + (static_cast<size_t>(row < tile_rows ? m : m0) * p.heads + h) * D + col, 1.0f, Qs + row * LDQ + col,
          row < tile_rows);
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qf[D / 16];
  for (int k = 0; k < D / 16; ++k) wmma::load_matrix_sync(qf[k], Qs + warp * 16 * LDQ + k * 16, LDQ);

  // Each lane owns one query row (lane / 2) and half of its columns.
  const int r = lane >> 1, sc = (lane & 1) * (BNK / 2), oc = (lane & 1) * (D / 2);
  const int local = warp * 16 + r, qrow = m0 + local, qpos = tile_pos0 + local;
  const bool row_valid = local < tile_rows;
  float m_i = kNegInf, l_i = 0.0f, o[D / 2];
  for (int j = 0; j < D / 2; ++j) o[j] = 0.0f;
  const int kv_len = tile_pos0 + tile_rows;  // keys any query of this tile can see
  float* s_w = Ss + warp * 16 * LDS_S;
  bf16* p_w = Ps + warp * 16 * LDP;
  float* o_w = Os + warp * 16 * LDO;

  for (int n0 = 0; n0 < kv_len; n0 += BNK) {
    // fp8: the tile's 64 positions are one 64-slot scale block (block_tokens % 64 == 0).
    const int s0 = key_slot(p.tables, toff, p.block_tokens, n0);
    const float ks = p.k_scale ? *kv_scale_at(p.k_scale, p.k_stage_scale, p.max_pos, p.stage_slots, kvh, s0) : 1.0f;
    const float vs = p.v_scale ? *kv_scale_at(p.v_scale, p.v_stage_scale, p.max_pos, p.stage_slots, kvh, s0) : 1.0f;
    for (int c = tid; c < BNK * D / 8; c += WARPS * 32) {
      int row = c / (D / 8), col = (c % (D / 8)) * 8, key = n0 + row;
      bool ok = key < kv_len;
      int slot = ok ? key_slot(p.tables, toff, p.block_tokens, key) : 0;
      load8(kv_row(kc, kst, p.max_pos, p.stage_slots, kvh, slot, D) + col, ks, Ks + row * LDQ + col, ok);
      load8(kv_row(vc, vst, p.max_pos, p.stage_slots, kvh, slot, D) + col, vs, Vs + row * LDQ + col, ok);
    }
    __syncthreads();

    // S (16 x 64) = Q (16 x 128) . K^T: K rows are the columns of a col-major B.
    for (int t = 0; t < BNK / 16; ++t) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k = 0; k < D / 16; ++k) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kb;
        wmma::load_matrix_sync(kb, Ks + t * 16 * LDQ + k * 16, LDQ);
        wmma::mma_sync(acc, qf[k], kb, acc);
      }
      wmma::store_matrix_sync(s_w + t * 16, acc, LDS_S, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over this tile for row r (two lanes per row, combined with one shuffle).
    float sv[BNK / 2], tile_max = kNegInf;
    for (int j = 0; j < BNK / 2; ++j) {
      int key = n0 + sc + j;
      float s = s_w[r * LDS_S + sc + j] * p.scale_log2;
      if (!row_valid || key > qpos) s = kNegInf;
      sv[j] = s;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m_i, tile_max);
    const float alpha = m_new == kNegInf ? 1.0f : exp2f(m_i - m_new);
    float psum = 0.0f;
    for (int j = 0; j < BNK / 2; ++j) {
      float pj = m_new == kNegInf ? 0.0f : exp2f(sv[j] - m_new);
      psum += pj;
      p_w[r * LDP + sc + j] = from_f32<bf16>(pj);
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    l_i = l_i * alpha + psum;
    m_i = m_new;
    __syncwarp();

    // P.V (16 x 128) = P (16 x 64) . V (64 x 128), then O = O * alpha + P.V in registers.
    for (int t = 0; t < D / 16; ++t) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k = 0; k < BNK / 16; ++k) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> vb;
        wmma::load_matrix_sync(pa, p_w + k * 16, LDP);
        wmma::load_matrix_sync(vb, Vs + k * 16 * LDQ + t * 16, LDQ);
        wmma::mma_sync(acc, pa, vb, acc);
      }
      wmma::store_matrix_sync(o_w + t * 16, acc, LDO, wmma::mem_row_major);
    }
    __syncwarp();
    for (int j = 0; j < D / 2; ++j) o[j] = o[j] * alpha + o_w[r * LDO + oc + j];
    __syncthreads();  // every warp is done with Ks / Vs before the next tile overwrites them
  }

  if (row_valid) {
    float inv = l_i > 0.0f ? 1.0f / l_i : 0.0f;
    bf16* dst = p.out + (static_cast<size_t>(qrow) * p.heads + h) * D + oc;
    for (int j = 0; j < D / 2; ++j) dst[j] = from_f32<bf16>(o[j] * inv);
  }
}

// ---- split_kv -----------------------------------------------------------------------------------
constexpr int kMaxDimPerLane = 8;  // head_dim <= 256
constexpr int kSplitWarps = 4;

struct SplitParams {
  const bf16* q;  // (rows, heads, head_dim)
  const void* k;  // (kv_heads, max_pos slots, head_dim)
  const void* v;
  const float* k_scale;
  const float* v_scale;
  float* ws_m;  // (query rows, heads, splits) running max (base 2)
  float* ws_l;  // (query rows, heads, splits) sum of exp2
  float* ws_o;  // (query rows, heads, splits, head_dim) unnormalised output
  bf16* out;    // (rows, heads, head_dim)
  const int32_t* qrows;   // (query rows, 3): row in q / out, its position, its table offset
  const int32_t* tables;  // the step's block tables
  int heads, kv_heads, head_dim, max_pos, block_tokens, splits, chunk;
  float scale_log2;
  const void* k_stage;  // host tier's staged rows (kv_heads, stage_slots, head_dim), or nullptr
  const void* v_stage;
  const float* k_stage_scale;
  const float* v_stage_scale;
  int stage_slots;
};

template <typename T>
__global__ void __launch_bounds__(kSplitWarps * 32) split_kv_kernel(SplitParams p) {
  __shared__ float sm[kSplitWarps], sl[kSplitWarps], so[kSplitWarps][kMaxDimPerLane * 32];
  const int h = blockIdx.x, split = blockIdx.y, z = blockIdx.z;
  const int row = p.qrows[3 * z], toff = p.qrows[3 * z + 2];
  const int kvh = h / (p.heads / p.kv_heads), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int len = p.qrows[3 * z + 1] + 1;
  const int start = split * p.chunk, end = min(start + p.chunk, len);
  const T* kc = static_cast<const T*>(p.k);
  const T* vc = static_cast<const T*>(p.v);
  const T* kst = static_cast<const T*>(p.k_stage);
  const T* vst = static_cast<const T*>(p.v_stage);
  const bf16* qr = p.q + (static_cast<size_t>(row) * p.heads + h) * p.head_dim;
  float qv[kMaxDimPerLane], acc[kMaxDimPerLane];
  for (int i = 0; i < kMaxDimPerLane; ++i) {
    int d = lane + 32 * i;
    qv[i] = d < p.head_dim ? to_f32(qr[d]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = kNegInf, l = 0.0f;
  for (int key = start + warp; key < end; key += kSplitWarps) {
    const int slot = key_slot(p.tables, toff, p.block_tokens, key);
    const T* kr = kv_row(kc, kst, p.max_pos, p.stage_slots, kvh, slot, p.head_dim);
    const T* vr = kv_row(vc, vst, p.max_pos, p.stage_slots, kvh, slot, p.head_dim);
    const float ks = p.k_scale ? *kv_scale_at(p.k_scale, p.k_stage_scale, p.max_pos, p.stage_slots, kvh, slot) : 1.0f;
    const float vs = p.v_scale ? *kv_scale_at(p.v_scale, p.v_stage_scale, p.max_pos, p.stage_slots, kvh, slot) : 1.0f;
    float s = 0.0f;
    for (int i = 0; i < kMaxDimPerLane; ++i) {
      int d = lane + 32 * i;
      if (d < p.head_dim) s += qv[i] * to_f32(kr[d]);
    }
    s = warp_sum(s) * ks * p.scale_log2;
    float mn = fmaxf(m, s), a = exp2f(m - mn), pj = exp2f(s - mn);
    l = l * a + pj;
    for (int i = 0; i < kMaxDimPerLane; ++i) {
      int d = lane + 32 * i;
      acc[i] = acc[i] * a + (d < p.head_dim ? pj * to_f32(vr[d]) * vs : 0.0f);
    }
    m = mn;
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
  for (int i = 0; i < kMaxDimPerLane; ++i) so[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float M = kNegInf;
  for (int w = 0; w < kSplitWarps; ++w) M = fmaxf(M, sm[w]);
  size_t base = (static_cast<size_t>(z) * p.heads + h) * p.splits + split;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float O = 0.0f;
    for (int w = 0; w < kSplitWarps; ++w) O += sm[w] == kNegInf ? 0.0f : so[w][d] * exp2f(sm[w] - M);
    p.ws_o[base * p.head_dim + d] = O;
  }
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kSplitWarps; ++w) L += sm[w] == kNegInf ? 0.0f : sl[w] * exp2f(sm[w] - M);
    p.ws_m[base] = M;
    p.ws_l[base] = L;
  }
}

// Grid (head, query row): out = sum_s O_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
__global__ void split_kv_combine_kernel(SplitParams p) {
  const int h = blockIdx.x, z = blockIdx.y, row = p.qrows[3 * z];
  size_t base = (static_cast<size_t>(z) * p.heads + h) * p.splits;
  float M = kNegInf;
  for (int s = 0; s < p.splits; ++s) M = fmaxf(M, p.ws_m[base + s]);
  float L = 0.0f;
  for (int s = 0; s < p.splits; ++s) L += p.ws_m[base + s] == kNegInf ? 0.0f : p.ws_l[base + s] * exp2f(p.ws_m[base + s] - M);
  float inv = L > 0.0f ? 1.0f / L : 0.0f;
  bf16* dst = p.out + (static_cast<size_t>(row) * p.heads + h) * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float O = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
      float ms = p.ws_m[base + s];
      if (ms != kNegInf) O += p.ws_o[(base + s) * p.head_dim + d] * exp2f(ms - M);
    }
    dst[d] = from_f32<bf16>(O * inv);
  }
}

/** Splits per (query row, head): about 256 keys each, at most 256 for one row, bounded for many rows. */
int split_count(const AttentionArgs& a, int qrows, int max_len) {
  int want = (max_len + 255) / 256;
  int cap = std::max(1, 8192 / std::max(1, qrows * a.heads / 32));
  return std::max(1, std::min({want, 256, cap}));
}

/** UL_DECODE=general: the general kernel even where attention_decode.cu applies (benchmarks compare
 *  the two; read at each call, so one process can time both). */
bool force_general_split_kv() {
  const char* v = std::getenv("UL_DECODE");
  return v && std::strcmp(v, "general") == 0;
}

}  // namespace

bool flash_supported(const AttentionArgs& a) {
  return a.head_dim == D && (a.kv_dtype == UL_DTYPE_BF16 || a.kv_dtype == UL_DTYPE_FP8_E4M3);
}

Status launch_flash_prefill(const AttentionArgs& a, const DevicePlan& dp, cudaStream_t s) {
  if (!flash_supported(a)) return Err(UL_ERR_INVALID_ARGUMENT, "flash_prefill: needs head_dim 128, bf16/fp8 KV");
  if (dp.n_tiles == 0) return Status::Ok();
  FlashParams p{static_cast<const bf16*>(a.q), a.k_cache, a.v_cache, a.k_scale, a.v_scale, static_cast<bf16*>(a.out),
                dp.tiles, dp.tables, a.heads, a.kv_heads, a.max_pos, dp.block_tokens, a.softmax_scale * kLog2e,
                a.k_stage, a.v_stage, a.k_stage_scale, a.v_stage_scale, a.stage_slots};
  dim3 grid(dp.n_tiles, a.heads);
  if (a.kv_dtype == UL_DTYPE_FP8_E4M3) {
    UL_CUDA(cudaFuncSetAttribute(flash_prefill_kernel<fp8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kFlashSmem));
    flash_prefill_kernel<fp8><<<grid, WARPS * 32, kFlashSmem, s>>>(p);
  } else {
    UL_CUDA(cudaFuncSetAttribute(flash_prefill_kernel<bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize, kFlashSmem));
    flash_prefill_kernel<bf16><<<grid, WARPS * 32, kFlashSmem, s>>>(p);
  }
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

size_t decode_workspace_floats(const AttentionArgs& a, int qrows, int max_len) {
  if (decode_heads_per_block(a) > 0 && !force_general_split_kv()) return decode_fast_workspace_floats(a, qrows, max_len);
  return static_cast<size_t>(qrows) * a.heads * split_count(a, qrows, max_len) * (a.head_dim + 2);
}

Status launch_split_kv(const AttentionArgs& a, const DevicePlan& dp, const int32_t* qrows, int n_qrows, int max_len,
                       float* workspace, cudaStream_t s) {
  if (a.head_dim > kMaxDimPerLane * 32) return Err(UL_ERR_INVALID_ARGUMENT, "split_kv: head_dim above 256");
  if (n_qrows == 0) return Status::Ok();
  // head_dim 128, bf16 / fp8, groups of 1, 2, 4, 8: the vector-load kernel (attention_decode.cu).
  if (decode_heads_per_block(a) > 0 && !force_general_split_kv())
    return launch_decode(a, dp, qrows, n_qrows, max_len, workspace, s);
  int splits = split_count(a, n_qrows, max_len);
  size_t n = static_cast<size_t>(n_qrows) * a.heads * splits;
  SplitParams p{static_cast<const bf16*>(a.q), a.k_cache, a.v_cache, a.k_scale, a.v_scale, workspace, workspace + n,
                workspace + 2 * n, static_cast<bf16*>(a.out), qrows, dp.tables, a.heads, a.kv_heads, a.head_dim,
                a.max_pos, dp.block_tokens, splits, (max_len + splits - 1) / splits, a.softmax_scale * kLog2e,
                a.k_stage, a.v_stage, a.k_stage_scale, a.v_stage_scale, a.stage_slots};
  dim3 grid(a.heads, splits, n_qrows);
  if (a.kv_dtype == UL_DTYPE_FP8_E4M3)
    split_kv_kernel<fp8><<<grid, kSplitWarps * 32, 0, s>>>(p);
  else if (a.kv_dtype == UL_DTYPE_BF16)
    split_kv_kernel<bf16><<<grid, kSplitWarps * 32, 0, s>>>(p);
  else
    return Err(UL_ERR_NOT_AVAILABLE, "split_kv: KV dtype must be bf16 or fp8-e4m3");
  UL_CUDA_LAUNCHED();
  split_kv_combine_kernel<<<dim3(a.heads, n_qrows), 128, 0, s>>>(p);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

}  // namespace cuda
}  // namespace ul
