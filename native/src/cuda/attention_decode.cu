// Split-KV decode attention, bandwidth-shaped: the fast path of launch_split_kv (attention.cu) for
// head_dim 128, bf16 or fp8 KV and GQA groups whose query heads per block (below) are 1, 2, 4 or 8.
// Decode at long context only streams the KV (128K keys x 8 kv heads x 128 x 2 B x (K, V) = 512 MiB
// a layer in bf16), so the design is about bytes per load, loads in flight and reading each row once:
//
//   - Grid (kv head x head block, split, query row). A block serves HB query heads of ONE kv head
//     (HB = the whole GQA group, 4 for Llama 3.1 8B; fp8 caps it at 4, bf16 at 8, by registers), so
//     each K/V row crosses HBM once per group instead of once per query head.
//   - 16-byte loads (uint4): a K or V row is 256 B in bf16 (16 lanes x 8 values) or 128 B in fp8 (8
//     lanes x 16 values); a warp loads 2 (bf16) or 4 (fp8) whole rows per instruction, coalesced.
//     Each row group of lanes owns one key. kUnroll keys a row group are loaded before any is used,
//     so a block keeps 4 warps x 32 lanes x 2 x kUnroll x 16 B = 16 KB in flight.
//   - fp8 is dequantised in registers: the 16 bytes become f32 and the dot / P.V use value x the
//     key's 64-slot block scale (ul::kv_scale_at), applied once per key, not per element.
//   - Scores: each lane's partial dot over its dims for the HB heads, summed over its row group by
//     log2(lanes per row) shuffles; online softmax in f32, base 2 (q pre-scaled by softmax_scale x
//     log2 e). Each row group runs its own (max, sum, O) stream; the streams merge at the end by
//     shuffles (row groups of a warp), then shared memory (the 4 warps), into one partial per
//     (query row, head, split) in the workspace.
//   - Splits: enough blocks for every SM of an H200 (132) several times over at batch 1, at least
//     kMinChunk keys each; the combine kernel weighs the splits' partials (weights computed once per
//     split into shared memory) and is small next to the KV stream (splits x 130 floats per head).
//   - Every key's slot comes from its block table (ul::slot_of's rule, table offset -1: slot =
//     position), every row from ul::kv_row: both KV tiers, any table, ragged lengths (a split past a
//     row's last key writes an empty partial: max -inf, sum 0).
// This file also compiles with g++ (UL_DECODE_HOST_EMULATION): native/programs/decode_emulate.cpp
// runs the kernel on CPU threads against float64 (test/native-decode-emulate.test.ts).
//
// Performance notes: no tensor cores (a decode row is a GEMV per head; 4 heads a group is not an
// mma tile worth its shuffles), no shared-memory staging of K/V (every byte is used once, by the
// lane that loaded it). Rejected: a lane per key (a 256 B row per lane is 16 uncoalesced loads),
// one block per query head (K/V read 4x), cp.async / TMA pipelines (plain vector loads with
// kUnroll in flight reach the same bytes in flight without the shared-memory round trip).
#include <algorithm>
#include <cstring>

#include "common.cuh"

#ifdef UL_DECODE_HOST_EMULATION
#define UL_DECODE_SHARED static  // one block runs at a time on the host: a static is its shared memory
#else
#define UL_DECODE_SHARED __shared__
#endif

namespace ul {
namespace cuda {
namespace {

constexpr int kDecD = 128;       // head_dim
constexpr int kDecWarps = 4;     // warps a block
constexpr int kUnroll = 4;       // keys a row group loads before computing
constexpr int kMinChunk = 256;   // keys a split at least
// H200 SMs x 6: whole waves at the 3 bf16 blocks (155 registers) and 2 fp8 blocks (254) an SM
// holds, so a batch-1 step has no part-filled last wave (8 kv heads: 99 splits a row).
constexpr int kTargetBlocks = 132 * 6;
constexpr int kMaxSplits = 1024;
constexpr float kDecLog2e = 1.4426950408889634f;

/** Per storage type: 16 bytes = kVals values; a row is kLanes lanes; a warp loads kRowsPerLoad rows. */
template <typename T>
struct DecShape {
  static constexpr int kVals = 16 / static_cast<int>(sizeof(T));
  static constexpr int kLanes = kDecD / kVals;
  static constexpr int kRowsPerLoad = 32 / kLanes;
  static constexpr int kKeysPerStep = kDecWarps * kRowsPerLoad * kUnroll;  // keys a block per loop step
};

struct DecodeParams {
  const bf16* q;          // (rows, heads, 128)
  const void* k;          // (kv_heads, max_pos slots, 128) bf16 or fp8
  const void* v;
  const float* k_scale;   // (kv_heads, fp8_blocks(max_pos)) fp8 only
  const float* v_scale;
  float* ws_m;            // (query rows, heads, splits) running max (base 2)
  float* ws_l;            // (query rows, heads, splits) sum of exp2
  float* ws_o;            // (query rows, heads, splits, 128) unnormalised output
  bf16* out;              // (rows, heads, 128)
  const int32_t* qrows;   // (query rows, 3): row in q / out, its position, its table offset
  const int32_t* tables;  // the step's block tables
  int heads, kv_heads, max_pos, block_tokens, splits, chunk;
  int hb_per_kv;          // head blocks per kv head: group / HB
  float scale_log2;       // softmax_scale * log2(e)
  const void* k_stage;    // host tier's staged rows (kv_heads, stage_slots, 128), or nullptr
  const void* v_stage;
  const float* k_stage_scale;
  const float* v_stage_scale;
  int stage_slots;
};

/** 16 bytes of cache -> kVals floats, from the four 32-bit words (registers, no local-memory copy). */
__device__ __forceinline__ float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
__device__ __forceinline__ void unpack16(const uint4& raw, float (&f)[8]) {  // bf16: the high half of an f32
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
  for (int i = 0; i < 4; ++i) f[2 * i] = bits_f32(w[i] << 16), f[2 * i + 1] = bits_f32(w[i] & 0xffff0000u);
}
__device__ __forceinline__ void unpack16(const uint4& raw, float (&f)[16]) {  // fp8 e4m3, byte 0 first
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
  for (int i = 0; i < 16; ++i) {
    fp8 b;
    b.__x = static_cast<__nv_fp8_storage_t>(w[i / 4] >> (8 * (i % 4)) & 0xffu);
    f[i] = to_f32(b);
  }
}

template <typename T, int HB>
__global__ void __launch_bounds__(kDecWarps * 32) decode_kernel(DecodeParams p) {
  using S = DecShape<T>;
  constexpr int V = S::kVals;
  UL_DECODE_SHARED float sm[kDecWarps][HB], sl[kDecWarps][HB], so[kDecWarps][HB][kDecD];
  const int kvh = blockIdx.x / p.hb_per_kv, h0 = kvh * (p.hb_per_kv * HB) + (blockIdx.x % p.hb_per_kv) * HB;
  const int split = blockIdx.y, z = blockIdx.z;
  const int row = p.qrows[3 * z], toff = p.qrows[3 * z + 2], len = p.qrows[3 * z + 1] + 1;
  const int start = split * p.chunk, end = start + p.chunk < len ? start + p.chunk : len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rg = lane / S::kLanes, col = (lane % S::kLanes) * V;  // this lane's row group, first dim
  const T* kc = static_cast<const T*>(p.k);
  const T* vc = static_cast<const T*>(p.v);
  const T* kst = static_cast<const T*>(p.k_stage);
  const T* vst = static_cast<const T*>(p.v_stage);

  float qv[HB][V], acc[HB][V], m[HB], l[HB];
  #pragma unroll
  for (int g = 0; g < HB; ++g) {
    const bf16* qr = p.q + (static_cast<size_t>(row) * p.heads + h0 + g) * kDecD + col;
    #pragma unroll
    for (int i = 0; i < V; ++i) qv[g][i] = to_f32(qr[i]) * p.scale_log2, acc[g][i] = 0.0f;
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  // Keys of this row group: start + step + (u * kDecWarps + warp) * kRowsPerLoad + rg. The loop
  // bound is the block's, not the lane's: every lane of a warp reaches every shuffle.
  for (int step = start; step < end; step += S::kKeysPerStep) {
    uint4 kr[kUnroll], vr[kUnroll];
    float ks[kUnroll], vs[kUnroll];
    bool ok[kUnroll];
    #pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int key = step + (u * kDecWarps + warp) * S::kRowsPerLoad + rg;
      ok[u] = key < end;
      kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      ks[u] = vs[u] = 1.0f;
      if (ok[u]) {
        const int slot = toff < 0 ? key : slot_of(p.tables + toff, p.block_tokens, key);
        kr[u] = *reinterpret_cast<const uint4*>(kv_row(kc, kst, p.max_pos, p.stage_slots, kvh, slot, kDecD) + col);
        vr[u] = *reinterpret_cast<const uint4*>(kv_row(vc, vst, p.max_pos, p.stage_slots, kvh, slot, kDecD) + col);
        if (p.k_scale) {
          ks[u] = *kv_scale_at(p.k_scale, p.k_stage_scale, p.max_pos, p.stage_slots, kvh, slot);
          vs[u] = *kv_scale_at(p.v_scale, p.v_stage_scale, p.max_pos, p.stage_slots, kvh, slot);
        }
      }
    }
    #pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[V], vf[V];
      unpack16(kr[u], kf);
      unpack16(vr[u], vf);
      #pragma unroll
      for (int g = 0; g < HB; ++g) {
        float s = 0.0f;
        #pragma unroll
        for (int i = 0; i < V; ++i) s += qv[g][i] * kf[i];
        #pragma unroll
        for (int o = S::kLanes / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        s = ok[u] ? s * ks[u] : -INFINITY;
        const float mn = fmaxf(m[g], s);
        // mn -inf: no key of this stream yet (and this one masked): nothing to add or rescale.
        const float a = mn == -INFINITY ? 1.0f : exp2f(m[g] - mn);
        const float pj = mn == -INFINITY ? 0.0f : exp2f(s - mn);
        l[g] = l[g] * a + pj;
        const float pv = pj * vs[u];
        #pragma unroll
        for (int i = 0; i < V; ++i) acc[g][i] = acc[g][i] * a + pv * vf[i];
        m[g] = mn;
      }
    }
  }
  // Merge the row groups of the warp (lanes lane ^ kLanes, ^ 2 kLanes, ...: the same dims).
  #pragma unroll
  for (int o = S::kLanes; o < 32; o <<= 1)
    #pragma unroll
    for (int g = 0; g < HB; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o), lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float mn = fmaxf(m[g], mo);
      const float a = mn == -INFINITY ? 0.0f : exp2f(m[g] - mn), b = mn == -INFINITY ? 0.0f : exp2f(mo - mn);
      l[g] = l[g] * a + lo * b;
      #pragma unroll
      for (int i = 0; i < V; ++i) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
        acc[g][i] = acc[g][i] * a + ao * b;
      }
      m[g] = mn;
    }
  if (rg == 0)
    #pragma unroll
    for (int g = 0; g < HB; ++g) {
      #pragma unroll
      for (int i = 0; i < V; ++i) so[warp][g][col + i] = acc[g][i];
      if (lane == 0) sm[warp][g] = m[g], sl[warp][g] = l[g];
    }
  __syncthreads();
  // Merge the warps: each (head, dim) of the block once.
  for (int e = threadIdx.x; e < HB * kDecD; e += kDecWarps * 32) {
    const int g = e / kDecD, d = e % kDecD;
    float M = -INFINITY;
    for (int w = 0; w < kDecWarps; ++w) M = fmaxf(M, sm[w][g]);
    float O = 0.0f, L = 0.0f;
    for (int w = 0; w < kDecWarps; ++w) {
      if (sm[w][g] == -INFINITY) continue;
      const float wt = exp2f(sm[w][g] - M);
      O += so[w][g][d] * wt;
      L += sl[w][g] * wt;
    }
    const size_t base = (static_cast<size_t>(z) * p.heads + h0 + g) * p.splits + split;
    p.ws_o[base * kDecD + d] = O;
    if (d == 0) p.ws_m[base] = M, p.ws_l[base] = L;
  }
}

// Grid (head, query row), 128 threads: out = sum_s O_s 2^(m_s - M) / sum_s l_s 2^(m_s - M), the
// weights computed once per split.
__global__ void __launch_bounds__(kDecD) decode_combine_kernel(DecodeParams p) {
  UL_DECODE_SHARED float wt[kMaxSplits];
  UL_DECODE_SHARED float red[kDecD];
  const int h = blockIdx.x, z = blockIdx.y, row = p.qrows[3 * z], t = threadIdx.x;
  const size_t base = (static_cast<size_t>(z) * p.heads + h) * p.splits;
  float M = -INFINITY;
  for (int s = t; s < p.splits; s += kDecD) M = fmaxf(M, p.ws_m[base + s]);
  red[t] = M;
  __syncthreads();
  M = -INFINITY;
  for (int i = 0; i < kDecD; ++i) M = fmaxf(M, red[i]);
  __syncthreads();  // every thread has read red before it holds the sums
  float L = 0.0f;
  for (int s = t; s < p.splits; s += kDecD) {
    const float ms = p.ws_m[base + s];
    wt[s] = ms == -INFINITY ? 0.0f : exp2f(ms - M);
    L += p.ws_l[base + s] * wt[s];
  }
  red[t] = L;
  __syncthreads();
  L = 0.0f;
  for (int i = 0; i < kDecD; ++i) L += red[i];
  float O = 0.0f;
  for (int s = 0; s < p.splits; ++s)
    if (wt[s] != 0.0f) O += p.ws_o[(base + s) * kDecD + t] * wt[s];
  p.out[(static_cast<size_t>(row) * p.heads + h) * kDecD + t] = from_f32<bf16>(L > 0.0f ? O / L : 0.0f);
}

}  // namespace

/** Query heads a decode block serves (the group, capped by registers), or 0: no fast path. */
int decode_heads_per_block(const AttentionArgs& a) {
  if (a.head_dim != kDecD || a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return 0;
  if (a.kv_dtype != UL_DTYPE_BF16 && a.kv_dtype != UL_DTYPE_FP8_E4M3) return 0;
  // fp8 caps HB at 4: HB 8 would hold 2 x 8 x 16 f32 of q and O a lane (spills).
  const int group = a.heads / a.kv_heads, cap = a.kv_dtype == UL_DTYPE_FP8_E4M3 ? 4 : 8;
  const int hb = std::min(group, cap);
  return (hb == 1 || hb == 2 || hb == 4 || hb == 8) && group % hb == 0 ? hb : 0;
}

int decode_splits(const AttentionArgs& a, int n_qrows, int max_len) {
  const int hb = std::max(1, decode_heads_per_block(a));
  const int per_split = std::max(1, n_qrows * (a.heads / hb));  // blocks a split adds
  const int want = (kTargetBlocks + per_split - 1) / per_split;
  const int most = (std::max(1, max_len) + kMinChunk - 1) / kMinChunk;
  return std::max(1, std::min({want, most, kMaxSplits}));
}

size_t decode_fast_workspace_floats(const AttentionArgs& a, int n_qrows, int max_len) {
  return static_cast<size_t>(n_qrows) * a.heads * decode_splits(a, n_qrows, max_len) * (kDecD + 2);
}

namespace {
DecodeParams decode_params(const AttentionArgs& a, const DevicePlan& dp, const int32_t* qrows, int n_qrows, int max_len,
                           float* workspace) {
  const int splits = decode_splits(a, n_qrows, max_len);
  const size_t n = static_cast<size_t>(n_qrows) * a.heads * splits;
  const int hb = decode_heads_per_block(a);
  return DecodeParams{static_cast<const bf16*>(a.q), a.k_cache, a.v_cache, a.k_scale, a.v_scale, workspace,
                      workspace + n, workspace + 2 * n, static_cast<bf16*>(a.out), qrows, dp.tables, a.heads,
                      a.kv_heads, a.max_pos, dp.block_tokens, splits, (std::max(1, max_len) + splits - 1) / splits,
                      a.heads / a.kv_heads / std::max(1, hb), a.softmax_scale * kDecLog2e, a.k_stage, a.v_stage,
                      a.k_stage_scale, a.v_stage_scale, a.stage_slots};
}

}  // namespace

#ifndef UL_DECODE_HOST_EMULATION
namespace {
template <typename T>
Status launch_typed(const DecodeParams& p, int hb, int n_qrows, cudaStream_t s) {
  dim3 grid(p.kv_heads * p.hb_per_kv, p.splits, n_qrows);
  switch (hb) {
    case 1: decode_kernel<T, 1><<<grid, kDecWarps * 32, 0, s>>>(p); break;
    case 2: decode_kernel<T, 2><<<grid, kDecWarps * 32, 0, s>>>(p); break;
    case 4: decode_kernel<T, 4><<<grid, kDecWarps * 32, 0, s>>>(p); break;
    default:  // 8: bf16 only (decode_heads_per_block caps fp8 at 4 by registers)
      if constexpr (sizeof(T) == 2) decode_kernel<T, 8><<<grid, kDecWarps * 32, 0, s>>>(p);
      break;
  }
  return Status::Ok();
}
}  // namespace

Status launch_decode(const AttentionArgs& a, const DevicePlan& dp, const int32_t* qrows, int n_qrows, int max_len,
                     float* workspace, cudaStream_t s) {
  const int hb = decode_heads_per_block(a);
  if (hb == 0) return Err(UL_ERR_INVALID_ARGUMENT, "decode: needs head_dim 128, bf16/fp8 KV, a group of 1, 2, 4 or 8 (or a multiple)");
  if (n_qrows == 0) return Status::Ok();
  const DecodeParams p = decode_params(a, dp, qrows, n_qrows, max_len, workspace);
  if (a.kv_dtype == UL_DTYPE_FP8_E4M3) UL_TRY(launch_typed<fp8>(p, hb, n_qrows, s));
  else UL_TRY(launch_typed<bf16>(p, hb, n_qrows, s));
  UL_CUDA_LAUNCHED();
  decode_combine_kernel<<<dim3(a.heads, n_qrows), kDecD, 0, s>>>(p);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}
#endif  // UL_DECODE_HOST_EMULATION

}  // namespace cuda
}  // namespace ul
