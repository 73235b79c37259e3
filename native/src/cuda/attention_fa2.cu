// Causal prefill attention, FlashAttention-2 style: the fast path for bf16 KV, head_dim 128 and GQA
// groups of 2, 4 or 8 query heads per kv head (Llama 3.1 8B: 32 / 8). attention.cu's flash_prefill
// stays the fallback (fp8 KV, other groups) and runs the same tiles of the same DevicePlan.
//
// One block = 128 query rows = eight 16-row m-tiles, and they are the `group` query heads of ONE kv
// head over 128 / group consecutive positions of one item (group 4: 4 heads x 32 positions; m-tile
// mt is head mt % group, positions 16 (mt / group) ..+15). Two shapes (template M): a warp computes
// M = 1 m-tile (8 warps, 64-key tiles) or M = 2 (4 warps, 32-key tiles; each K / V fragment it
// loads serves both m-tiles). Every K/V tile a block loads serves all the
// heads that read it: K/V cross global memory and shared memory once per group instead of once per
// query head. The block walks its keys 0 .. its last position in 64-key tiles:
//   - K and V tiles come in with cp.async (16 bytes a thread, zero-filled past the last key) into a
//     3-stage ring: tile t + 2 is in flight while tile t is computed; one __syncthreads per tile.
//     Every key row is found through key_row(), the one address function (block table, as
//     flash_prefill's key_slot).
//   - S = Q K^T: mma.sync m16n8k16 bf16 -> f32 through inline PTX; Q's fragments stay in registers
//     for the whole loop (ldmatrix .x4 once), K's come by ldmatrix .x4 per 16x16 block.
//   - Online softmax in f32, base 2 (scale folded with log2 e), on the accumulators where mma left
//     them: each lane holds 2 rows x 16 keys, row max / sum over the 4 lanes of a row by 2 shuffles.
//   - P never leaves registers: two 8-key S accumulator tiles are exactly one A fragment of P.V
//     (mma_layout.h p_s_tile / p_s_elem), packed to bf16 pairs; V's B fragments by ldmatrix .trans.
//   - Causal: a warp skips every tile wholly after its last row; only tiles crossing a row's
//     position are masked. Blocks are launched longest key range first (causal load balance).
//   - Shared memory: Q 32 KB + 3 x (K + V) 32 KB = 128 KB (M = 2: 80 KB), 256-byte rows unpadded, the
//     16-byte chunks XOR-swizzled (mma_layout.h): every cp.async store, ldmatrix and epilogue access
//     is bank-conflict-free (checked on the CPU by mma_layout_check). One block per SM (up to 255
//     registers a thread; M = 1 uses 222: O is 64 f32, S 32, Q 32; M = 2 doubles O and Q, spills a little).
//   - Ragged sizes: rows past the tile's last row load zeros and are not written; keys past the
//     block's last position are zero-filled and masked by causality.
// Every lane / register / address map is a function of mma_layout.h, tested on the CPU against the
// PTX ISA (test/native-mma-layout.test.ts), and this file itself runs on CPU threads with the PTX
// wrappers emulated (native/programs/fa2_emulate.cpp, test/native-fa2-emulate.test.ts), so the
// first GPU run is not the first test of a layout or of the kernel's logic.
//
// Performance notes: mma.sync with 16 rows a warp reads each K/V tile from shared memory once per
// warp (16 FLOP per shared byte), about the limit of mma.sync on Hopper; M = 2 halves those reads
// per FLOP at 255 registers and a few spills (which shape wins is for the first GPU run to say).
// FlashAttention-3's 600+ TFLOP/s on H100 come from wgmma (warpgroup MMA reading K/V from shared
// memory without a register copy), TMA and warp specialisation, which this kernel does not use;
// a wgmma variant for sm_90 is the next step. Rejected: one block per query head (K/V read 4x per group), S / P through
// shared memory (the old kernel's round trip and bank conflicts), padded rows instead of a swizzle.
#include <cstring>

#include "attention_fa2.cuh"
#include "mma_layout.h"

namespace ul {
namespace cuda {
namespace {

using mma::RowCol;

constexpr int kD = 128;                  // head_dim
constexpr int kRows = 128;               // query rows of a block (group heads x 128 / group positions)
constexpr int kStages = 3;               // K/V ring depth
constexpr int kPlanTileRows = 64;        // rows of a DevicePlan tile (prepare_step)
constexpr float kLog2e = 1.4426950408889634f;

/** The two shapes: M 16-row m-tiles a warp, 128 / (16 M) warps, key tiles of 64 / M. */
template <int M>
struct Fa2Shape {
  static constexpr int kWarps = 8 / M, kThreads = 32 * kWarps, kKeys = 64 / M;
  static constexpr size_t kSmemBytes = sizeof(bf16) * (static_cast<size_t>(kRows) * kD + kStages * 2 * kKeys * kD);
};
static_assert(kD == mma::kTileCols, "tile rows are one head_dim of bf16");

struct Fa2Params {
  const bf16* q;          // (rows, heads, 128)
  const bf16* k;          // (kv_heads, max_pos slots, 128)
  const bf16* v;          // (kv_heads, max_pos slots, 128)
  bf16* out;              // (rows, heads, 128)
  const int32_t* tiles;   // (n_tiles, 4): first row, rows (<= 64), position of the first row, table offset
  const int32_t* tables;  // the step's block tables
  int heads, max_pos, block_tokens;
  int group;              // heads / kv_heads: 2, 4 or 8
  int block_pos;          // query positions of a block: 128 / group
  float scale_log2;       // softmax_scale * log2(e)
  const bf16* k_stage;    // host-tier rows staged for this layer (kv_heads, stage_slots, 128), or nullptr
  const bf16* v_stage;
  int stage_slots;        // slots >= max_pos are staged (backend.h kv_row)
};

/** The K or V row (`cache`, `stage`: p.k, p.k_stage or p.v, p.v_stage) of kv head kvh at key
 *  position `key` of an item whose table starts at tables[toff] (-1: slot = position). The only
 *  place a K/V row is addressed: the table rule of attention.cu's key_slot and backend.h's slot_of,
 *  then backend.h's kv_row for the two tiers (slots >= max_pos are in the staging region). */
__device__ __forceinline__ const bf16* key_row(const bf16* cache, const bf16* stage, const Fa2Params& p, int kvh,
                                               int toff, int key) {
  const int slot = toff < 0 ? key : p.tables[toff + key / p.block_tokens] * p.block_tokens + key % p.block_tokens;
  return kv_row(cache, stage, p.max_pos, p.stage_slots, kvh, slot, kD);
}

// The PTX wrappers. UL_FA2_HOST_EMULATION (native/programs/fa2_emulate.cpp, a CPU test) compiles
// this file with g++ and supplies CPU versions of exactly these seven, from the ISA's description.
#ifndef UL_FA2_HOST_EMULATION
__device__ __forceinline__ uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}
/** 16 bytes global -> shared, asynchronous; !valid writes 16 zero bytes (src-size 0, src unread). */
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/** Waits until at most N of this thread's committed groups are still in flight. */
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
/** d (16x8 f32) += a (16x16 bf16) . b (16x8 bf16), fragments as mma_layout.h a_elem / b_elem / c_elem. */
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif  // UL_FA2_HOST_EMULATION
/** Two f32 -> one register of two bf16, `lo` in the low half (the lower-indexed element, as the ISA
 *  packs a0 / a1). */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Grid (plan tiles x 64 / block_pos, kv_heads), Fa2Shape<M>::kThreads threads and kSmemBytes of
// dynamic shared memory. M = 16-row m-tiles a warp computes: 1 (8 warps, 64-key tiles) or 2 (4 warps,
// 32-key tiles: each K / V fragment a warp reads from shared memory feeds two m-tiles, half the
// shared-memory reads per FLOP, at 128 f32 of O a lane).
template <int M>
__global__ void __launch_bounds__(Fa2Shape<M>::kThreads, 1) fa2_prefill_kernel(Fa2Params p) {
  constexpr int kThreads = Fa2Shape<M>::kThreads, kKeys = Fa2Shape<M>::kKeys;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);  // (128 block rows, 128) swizzled; m-tile mt = rows 16 mt ..
  bf16* kvs = qs + kRows * kD;               // (stage, K | V, kKeys keys, 128) swizzled

  // The block's rows: part `part` of a plan tile, block_pos positions x group heads.
  const int per_tile = kPlanTileRows / p.block_pos;
  const int bid = gridDim.x - 1 - blockIdx.x;  // the last (longest) tiles first
  const int* tile = p.tiles + 4 * (bid / per_tile);
  const int part = bid % per_tile;
  const int left = tile[1] - part * p.block_pos;
  const int rows = left < p.block_pos ? left : p.block_pos;  // positions this block queries
  if (rows <= 0) return;  // a short tile's unused part
  const int row0 = tile[0] + part * p.block_pos, pos0 = tile[2] + part * p.block_pos, toff = tile[3];
  const int kvh = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int kv_len = pos0 + rows;  // keys 0 .. kv_len - 1: up to the block's last position
  const int n_tiles = (kv_len + kKeys - 1) / kKeys;

  // Q: block row r (m-tile r / 16) is head kvh * group + (r / 16) % group at position index
  // 16 ((r / 16) / group) + r % 16. Rows past `rows` load zeros.
  for (int i = 0; i < kRows * mma::kRowChunks / kThreads; ++i) {
    const RowCol c = mma::copy_chunk(tid, i, kThreads);
    const int mt = c.row >> 4, pi = 16 * (mt / p.group) + (c.row & 15);
    const bool ok = pi < rows;
    const bf16* src = p.q + (static_cast<size_t>(row0 + (ok ? pi : 0)) * p.heads + kvh * p.group + mt % p.group) * kD +
                      c.col * mma::kChunkElems;
    cp_async16(smem_addr(qs + mma::tile_offset(c.row, c.col * mma::kChunkElems)), src, ok);
  }
  cp_async_commit();

  // Key tile t into stage t % kStages (zeros past kv_len).
  auto load_kv = [&](int t) {
    bf16* ks = kvs + (t % kStages) * 2 * kKeys * kD;
    bf16* vs = ks + kKeys * kD;
    for (int i = 0; i < kKeys * mma::kRowChunks / kThreads; ++i) {
      const RowCol c = mma::copy_chunk(tid, i, kThreads);
      const int key = t * kKeys + c.row;
      const bool ok = key < kv_len;  // else zeros (the source is not read)
      const int col = c.col * mma::kChunkElems, off = mma::tile_offset(c.row, col);
      cp_async16(smem_addr(ks + off), (ok ? key_row(p.k, p.k_stage, p, kvh, toff, key) : p.k) + col, ok);
      cp_async16(smem_addr(vs + off), (ok ? key_row(p.v, p.v_stage, p, kvh, toff, key) : p.v) + col, ok);
    }
  };
  // Groups committed in order: Q, tiles 0 .. kStages - 2, then one per loop iteration (maybe
  // empty), so "tile t has landed" is always "at most kStages - 2 groups in flight".
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < n_tiles) load_kv(t);
    cp_async_commit();
  }
  cp_async_wait<kStages - 1>();  // Q
  __syncthreads();

  // This warp's m-tiles mt = M warp + j: head hq[j], position indices wq[j] .. wq[j] + 15.
  int hq[M], wq[M], warp_last = -1;
  bool warp_rows = false;  // false: every row of this warp is past the tile (it only loads)
  uint32_t qf[M][kD / 16][4];  // A fragments of Q, k-step kk = dims 16 kk .. 16 kk + 15
  const RowCol a = mma::ldsm_a_x4(lane);
  #pragma unroll
  for (int j = 0; j < M; ++j) {
    const int mt = M * warp + j;
    hq[j] = kvh * p.group + mt % p.group;
    wq[j] = 16 * (mt / p.group);
    warp_rows = warp_rows || wq[j] < rows;
    if (pos0 + wq[j] + 15 > warp_last) warp_last = pos0 + wq[j] + 15;
    #pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      ldsm_x4(smem_addr(qs + mma::tile_offset(16 * mt + a.row, 16 * kk + a.col)), qf[j][kk]);
  }
  float o[M][kD / 8][4];  // O accumulators, 8-dim n-tiles (C fragments)
  float m_run[M][2], l_run[M][2];  // rows c_elem(lane, 0) and (lane, 2) of each m-tile
  #pragma unroll
  for (int j = 0; j < M; ++j) {
    #pragma unroll
    for (int n = 0; n < kD / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; ++e) o[j][n][e] = 0.0f;
    #pragma unroll
    for (int h = 0; h < 2; ++h) m_run[j][h] = -INFINITY, l_run[j][h] = 0.0f;
  }
  const RowCol kaddr = mma::ldsm_k_x4(lane), vaddr = mma::ldsm_v_trans_x4(lane);

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile t visible to all; every warp is done with tile t - 1, whose stage is refilled now
    if (t + kStages - 1 < n_tiles) load_kv(t + kStages - 1);
    cp_async_commit();
    const int n0 = t * kKeys;
    if (!warp_rows || n0 > warp_last) continue;  // causal: no row of this warp sees these keys
    const bf16* ks = kvs + (t % kStages) * 2 * kKeys * kD;
    const bf16* vs = ks + kKeys * kD;

    // S (16 x kKeys per m-tile) = Q K^T: n-tile pairs np (keys 16 np ..) x k-steps kk (dims 16 kk ..);
    // each K fragment serves the warp's M m-tiles.
    float s[M][kKeys / 8][4];
    #pragma unroll
    for (int j = 0; j < M; ++j)
      #pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
        #pragma unroll
        for (int e = 0; e < 4; ++e) s[j][n][e] = 0.0f;
    #pragma unroll
    for (int np = 0; np < kKeys / 16; ++np)
      #pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t b[4];
        ldsm_x4(smem_addr(ks + mma::tile_offset(16 * np + kaddr.row, 16 * kk + kaddr.col)), b);
        #pragma unroll
        for (int j = 0; j < M; ++j) {
          mma_bf16(s[j][2 * np], qf[j][kk], b[0], b[1]);
          mma_bf16(s[j][2 * np + 1], qf[j][kk], b[2], b[3]);
        }
      }

    // Per m-tile: scale to base 2, mask keys after each row's position (only on tiles crossing the
    // diagonal), online softmax.
    #pragma unroll
    for (int j = 0; j < M; ++j) {
      const int first = pos0 + wq[j];
      const bool crosses = n0 + kKeys - 1 > first;
      float mx[2] = {m_run[j][0], m_run[j][1]};
      #pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
          const RowCol c = mma::c_elem(lane, e);
          float x = s[j][n][e] * p.scale_log2;
          if (crosses && n0 + 8 * n + c.col > first + c.row) x = -INFINITY;
          s[j][n][e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
      float alpha[2], base[2];
      #pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = quad_max(mx[h]);
        base[h] = mx[h] == -INFINITY ? 0.0f : mx[h];  // a row with no key yet: p = 0, no NaN
        alpha[h] = exp2f(m_run[j][h] - base[h]);
        m_run[j][h] = mx[h];
        l_run[j][h] *= alpha[h];
      }
      #pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pe = exp2f(s[j][n][e] - base[e >> 1]);
          s[j][n][e] = pe;
          l_run[j][e >> 1] += pe;  // this lane's part of the row sum; the 4 lanes are added at the end
        }
      #pragma unroll
      for (int n = 0; n < kD / 8; ++n)
        #pragma unroll
        for (int e = 0; e < 4; ++e) o[j][n][e] *= alpha[e >> 1];
    }

    // O += P V: P's A fragments straight from the S accumulators; V by ldmatrix .trans, each V
    // fragment serving the M m-tiles.
    #pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      uint32_t pa[M][4];
      #pragma unroll
      for (int j = 0; j < M; ++j)
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int n = mma::p_s_tile(kk, r), e = mma::p_s_elem(r);
          pa[j][r] = pack_bf16(s[j][n][e], s[j][n][e + 1]);
        }
      #pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t b[4];
        ldsm_x4_trans(smem_addr(vs + mma::tile_offset(16 * kk + vaddr.row, 16 * dp + vaddr.col)), b);
        #pragma unroll
        for (int j = 0; j < M; ++j) {
          mma_bf16(o[j][2 * dp], pa[j], b[0], b[1]);
          mma_bf16(o[j][2 * dp + 1], pa[j], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy may land after the block's shared memory is reused
  if (!warp_rows) return;

  // Epilogue per m-tile: O / l as bf16 into the m-tile's own Q rows (only this warp read them),
  // then 16-byte rows out to (row, head); rows past `rows` are not written.
  #pragma unroll
  for (int j = 0; j < M; ++j) {
    const int mt = M * warp + j;
    if (wq[j] >= rows) continue;  // warp-uniform
    float inv[2];
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(l_run[j][h]);
      inv[h] = l > 0.0f ? 1.0f / l : 0.0f;
    }
    #pragma unroll
    for (int n = 0; n < kD / 8; ++n)
      #pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const RowCol c = mma::c_elem(lane, e);
        const uint32_t v = pack_bf16(o[j][n][e] * inv[e >> 1], o[j][n][e + 1] * inv[e >> 1]);
        std::memcpy(static_cast<void*>(qs + mma::tile_offset(16 * mt + c.row, 8 * n + c.col)), &v, sizeof v);
      }
    __syncwarp();
    for (int i = 0; i < 16 * mma::kRowChunks / 32; ++i) {
      const RowCol c = mma::copy_chunk(lane, i, 32);
      if (wq[j] + c.row >= rows) continue;
      const uint4 v = *reinterpret_cast<const uint4*>(qs + mma::tile_offset(16 * mt + c.row, c.col * mma::kChunkElems));
      *reinterpret_cast<uint4*>(p.out + (static_cast<size_t>(row0 + wq[j] + c.row) * p.heads + hq[j]) * kD +
                                c.col * mma::kChunkElems) = v;
    }
  }
}

}  // namespace

bool fa2_supported(const AttentionArgs& a) {
  if (a.head_dim != kD || a.kv_dtype != UL_DTYPE_BF16 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return false;
  const int group = a.heads / a.kv_heads;
  return group == 2 || group == 4 || group == 8;
}

#ifndef UL_FA2_HOST_EMULATION
template <int M>
Status launch_shape(const Fa2Params& p, int n_tiles, int kv_heads, cudaStream_t s) {
  constexpr size_t smem = Fa2Shape<M>::kSmemBytes;
  UL_CUDA(cudaFuncSetAttribute(fa2_prefill_kernel<M>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  dim3 grid(n_tiles * (kPlanTileRows / p.block_pos), kv_heads);
  fa2_prefill_kernel<M><<<grid, Fa2Shape<M>::kThreads, smem, s>>>(p);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

Status launch_fa2_prefill(const AttentionArgs& a, const DevicePlan& dp, cudaStream_t s, int warp_rows) {
  if (!fa2_supported(a))
    return Err(UL_ERR_INVALID_ARGUMENT, "fa2_prefill: needs head_dim 128, bf16 KV, 2, 4 or 8 query heads per kv head");
  if (warp_rows != 16 && warp_rows != 32) return Err(UL_ERR_INVALID_ARGUMENT, "fa2_prefill: warp_rows must be 16 or 32");
  if (dp.n_tiles == 0) return Status::Ok();
  const int group = a.heads / a.kv_heads;
  Fa2Params p{static_cast<const bf16*>(a.q),
              static_cast<const bf16*>(a.k_cache),
              static_cast<const bf16*>(a.v_cache),
              static_cast<bf16*>(a.out),
              dp.tiles,
              dp.tables,
              a.heads,
              a.max_pos,
              dp.block_tokens,
              group,
              kRows / group,
              a.softmax_scale * kLog2e,
              static_cast<const bf16*>(a.k_stage),
              static_cast<const bf16*>(a.v_stage),
              a.stage_slots};
  return warp_rows == 16 ? launch_shape<1>(p, dp.n_tiles, a.kv_heads, s) : launch_shape<2>(p, dp.n_tiles, a.kv_heads, s);
}
#endif  // UL_FA2_HOST_EMULATION

}  // namespace cuda
}  // namespace ul
