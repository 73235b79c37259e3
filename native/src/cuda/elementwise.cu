// Memory-bound kernels: embedding gather, fused RMSNorm (f32 residual in, bf16 out), RoPE of every
// type from the position (angle in f64, no table: 4M positions), SwiGLU, and KV-cache stores
// (bf16, or fp8 e4m3 with a scale per (kv head, block of UL_FP8_BLOCK positions)).
#include "common.cuh"

namespace ul {
namespace cuda {

// out (rows, dim) f32 = table (vocab, dim) bf16 [tokens[r]]
__global__ void embed_kernel(const bf16* table, const int32_t* tokens, int dim, float* out) {
  int r = blockIdx.x;
  const bf16* src = table + static_cast<size_t>(tokens[r]) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[static_cast<size_t>(r) * dim + i] = to_f32(src[i]);
}

Status launch_embed(const bf16* table, const int32_t* tokens, int rows, int dim, float* out, cudaStream_t s) {
  embed_kernel<<<rows, 256, 0, s>>>(table, tokens, dim, out);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

// One block per row: sum of squares in f32 (block reduction), then out = bf16(w * x * rsqrt(ms + eps)).
__global__ void rmsnorm_kernel(const float* x, const bf16* w, int dim, float eps, bf16* out) {
  __shared__ float partial[32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = warp_sum(ss);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    float v = lane < blockDim.x / 32 ? partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  float inv = rsqrtf(partial[0] / dim + eps);
  bf16* o = out + static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = from_f32<bf16>(to_f32(w[i]) * (xr[i] * inv));
}

Status launch_rmsnorm(const float* x, const bf16* w, int rows, int dim, float eps, bf16* out, cudaStream_t s) {
  rmsnorm_kernel<<<rows, 256, 0, s>>>(x, w, dim, eps, out);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

// Block per row; threads over (head, i < rot/2). The angle pos * inv_freq[i] is formed in f64 and
// reduced mod 2*pi there, so sincosf sees |a| <= pi: f32 precision at any position (at 4M positions
// an f32 product alone is off by up to 0.25 rad).
__global__ void rope_kernel(bf16* x, int heads, int head_dim, int rot_dim, int pos0, const int32_t* positions,
                            const double* inv_freq, float scaling) {
  int r = blockIdx.x, half = rot_dim / 2;
  double pos = static_cast<double>(positions ? positions[r] : pos0 + r);
  for (int t = threadIdx.x; t < heads * half; t += blockDim.x) {
    int h = t / half, i = t % half;
    double a = pos * inv_freq[i];
    a -= 6.283185307179586 * rint(a * 0.15915494309189535);
    float sn, cs;
    sincosf(static_cast<float>(a), &sn, &cs);
    cs *= scaling;
    sn *= scaling;
    bf16* v = x + (static_cast<size_t>(r) * heads + h) * head_dim;
    float lo = to_f32(v[i]), hi = to_f32(v[i + half]);
    v[i] = from_f32<bf16>(lo * cs - hi * sn);
    v[i + half] = from_f32<bf16>(hi * cs + lo * sn);
  }
}

Status launch_rope(bf16* x, int rows, int heads, int head_dim, int rot_dim, int pos0, const int32_t* positions,
                   const double* inv_freq, float scaling, cudaStream_t s) {
  rope_kernel<<<rows, 256, 0, s>>>(x, heads, head_dim, rot_dim, pos0, positions, inv_freq, scaling);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

__global__ void swiglu_kernel(const bf16* gate, const bf16* up, size_t n, bf16* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float g = to_f32(gate[i]);
    out[i] = from_f32<bf16>(g / (1.0f + __expf(-g)) * to_f32(up[i]));
  }
}

Status launch_swiglu(const bf16* gate, const bf16* up, size_t n, bf16* out, cudaStream_t s) {
  size_t blocks = (n + 255) / 256;
  swiglu_kernel<<<static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8), 256, 0, s>>>(gate, up, n, out);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

// Where a store writes: one (layer, K|V) slice, resident rows and the staging copy of the host
// tier's rows, found by ul::kv_row / kv_scale_at (backend.h) as every reader finds them.
struct KvDst {
  void* cache;        // (kv_heads, max_pos slots, head_dim)
  float* scale;       // (kv_heads, fp8_blocks(max_pos)) fp8 only
  void* stage;        // (kv_heads, stage_slots, head_dim) or nullptr
  float* stage_scale; // (kv_heads, fp8_blocks(stage_slots)) fp8 only
  int max_pos, stage_slots;
};

static KvDst kv_dst(const KvStoreArgs& a) { return {a.cache, a.scale, a.stage, a.stage_scale, a.max_pos, a.stage_slots}; }

// bf16: src (rows, kv_heads, head_dim) bf16 -> the row of slot slots[r] (a paged micro-batch), or
// pos0 + r when slots is nullptr. Grid (rows, kv_heads).
__global__ void kv_store_bf16_kernel(const bf16* src, KvDst dst, int kv_heads, int head_dim, int pos0,
                                     const int32_t* slots) {
  int r = blockIdx.x, h = blockIdx.y;
  const bf16* s = src + (static_cast<size_t>(r) * kv_heads + h) * head_dim;
  bf16* d = kv_row(static_cast<bf16*>(dst.cache), static_cast<bf16*>(dst.stage), dst.max_pos, dst.stage_slots, h,
                   slots ? slots[r] : pos0 + r, head_dim);
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) d[i] = s[i];
}

// fp8, the reference's kv_store rule (backend.h fp8_block_scale) for one (kv head, 64-slot block):
// the new rows for slots [lo, hi) of the block (src rows src_row0 ..): their amax (block
// reduction), the block's new scale, requantisation of its earlier slots when it grew, then the new
// rows quantised. Blocks are disjoint, so thread blocks never touch the same scale or bytes. A
// 64-slot block lies in one tier (the tier boundary is a multiple of 64 for fp8).
__device__ void kv_store_fp8_block(const bf16* src, int src_row0, const KvDst& dst, int h, int kv_heads,
                                   int head_dim, int lo, int hi) {
  __shared__ float partial[32];
  __shared__ float block_scale, block_requant;
  const int b = lo / kFp8Block, first = b * kFp8Block;
  auto in = [&](int p, int d) { return to_f32(src[(static_cast<size_t>(src_row0 + p - lo) * kv_heads + h) * head_dim + d]); };
  fp8* c = kv_row(static_cast<fp8*>(dst.cache), static_cast<fp8*>(dst.stage), dst.max_pos, dst.stage_slots, h, first,
                  head_dim);  // the block's first row; its rows follow
  float m = 0;
  for (int t = threadIdx.x; t < (hi - lo) * head_dim; t += blockDim.x) m = fmaxf(m, fabsf(in(lo + t / head_dim, t % head_dim)));
  m = warp_max(m);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < blockDim.x / 32; ++w) m = fmaxf(m, partial[w]);
    float* sp = kv_scale_at(dst.scale, dst.stage_scale, dst.max_pos, dst.stage_slots, h, first);
    float requant = 1.0f;
    *sp = fp8_block_scale(*sp, lo == first, m, &requant);
    block_scale = *sp;
    block_requant = requant;
  }
  __syncthreads();
  const float s = block_scale, requant = block_requant;
  if (requant != 1.0f)
    for (int t = threadIdx.x; t < (lo - first) * head_dim; t += blockDim.x) c[t] = from_f32<fp8>(to_f32(c[t]) * requant);
  for (int t = threadIdx.x; t < (hi - lo) * head_dim; t += blockDim.x) {
    int p = lo + t / head_dim, d = t % head_dim;
    c[static_cast<size_t>(p - first) * head_dim + d] = from_f32<fp8>(fp8_quantize_input(in(p, d), s));
  }
}

// Contiguous rows at slots [pos0, pos0 + rows). Grid (64-slot blocks the write touches, kv_heads).
__global__ void kv_store_fp8_kernel(const bf16* src, KvDst dst, int kv_heads, int head_dim, int pos0, int rows) {
  const int first = (pos0 / kFp8Block + static_cast<int>(blockIdx.x)) * kFp8Block;
  const int lo = max(pos0, first), hi = min(pos0 + rows, first + kFp8Block);
  kv_store_fp8_block(src, lo - pos0, dst, blockIdx.y, kv_heads, head_dim, lo, hi);
}

// A paged micro-batch: segment i = (first src row, first slot, rows) inside one 64-slot block.
// Grid (segments, kv_heads).
__global__ void kv_store_fp8_segments_kernel(const bf16* src, KvDst dst, int kv_heads, int head_dim,
                                             const int32_t* segments) {
  const int32_t* g = segments + 3 * blockIdx.x;
  kv_store_fp8_block(src, g[0], dst, blockIdx.y, kv_heads, head_dim, g[1], g[1] + g[2]);
}

Status launch_kv_store(const KvStoreArgs& a, cudaStream_t s) {
  const bf16* src = static_cast<const bf16*>(a.src);
  if (a.kv_dtype == UL_DTYPE_FP8_E4M3) {
    int blocks = (a.pos0 + a.rows - 1) / kFp8Block - a.pos0 / kFp8Block + 1;
    kv_store_fp8_kernel<<<dim3(blocks, a.kv_heads), 256, 0, s>>>(src, kv_dst(a), a.kv_heads, a.head_dim, a.pos0, a.rows);
  } else if (a.kv_dtype == UL_DTYPE_BF16) {
    kv_store_bf16_kernel<<<dim3(a.rows, a.kv_heads), 128, 0, s>>>(src, kv_dst(a), a.kv_heads, a.head_dim, a.pos0, nullptr);
  } else {
    return Err(UL_ERR_NOT_AVAILABLE, "cuda kv_store: KV dtype must be bf16 or fp8-e4m3");
  }
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

Status launch_kv_store_slots(const KvStoreArgs& a, const int32_t* slots, int rows, const int32_t* fp8_segments,
                             int n_segments, cudaStream_t s) {
  const bf16* src = static_cast<const bf16*>(a.src);
  if (a.kv_dtype == UL_DTYPE_FP8_E4M3) {
    if (n_segments == 0) return Status::Ok();
    kv_store_fp8_segments_kernel<<<dim3(n_segments, a.kv_heads), 256, 0, s>>>(src, kv_dst(a), a.kv_heads, a.head_dim,
                                                                              fp8_segments);
  } else if (a.kv_dtype == UL_DTYPE_BF16) {
    kv_store_bf16_kernel<<<dim3(rows, a.kv_heads), 128, 0, s>>>(src, kv_dst(a), a.kv_heads, a.head_dim, 0, slots);
  } else {
    return Err(UL_ERR_NOT_AVAILABLE, "cuda kv_store: KV dtype must be bf16 or fp8-e4m3");
  }
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

}  // namespace cuda
}  // namespace ul
