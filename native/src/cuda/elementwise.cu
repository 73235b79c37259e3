// Memory-bound kernels: embedding gather, fused RMSNorm (f32 residual in, bf16 out), RoPE of every
// type from the position (angle in f64, no table: 4M positions), SwiGLU, and KV-cache stores
// (bf16, or fp8 e4m3 with a per-head scale set at a sequence's first write).
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
__global__ void rope_kernel(bf16* x, int heads, int head_dim, int rot_dim, int pos0, const double* inv_freq,
                            float scaling) {
  int r = blockIdx.x, half = rot_dim / 2;
  double pos = static_cast<double>(pos0 + r);
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

Status launch_rope(bf16* x, int rows, int heads, int head_dim, int rot_dim, int pos0, const double* inv_freq,
                   float scaling, cudaStream_t s) {
  rope_kernel<<<rows, 256, 0, s>>>(x, heads, head_dim, rot_dim, pos0, inv_freq, scaling);
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

// fp8 scale at a sequence's first write: 2 * amax / 448 per kv head (x2 headroom for later
// positions; beyond it values saturate). Grid: kv_heads; block reduction over (rows, head_dim).
__global__ void kv_amax_kernel(const bf16* src, int rows, int kv_heads, int head_dim, float* scale) {
  __shared__ float partial[32];
  int h = blockIdx.x;
  float m = 0;
  for (int t = threadIdx.x; t < rows * head_dim; t += blockDim.x) {
    int r = t / head_dim, d = t % head_dim;
    m = fmaxf(m, fabsf(to_f32(src[(static_cast<size_t>(r) * kv_heads + h) * head_dim + d])));
  }
  m = warp_max(m);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < blockDim.x / 32; ++w) m = fmaxf(m, partial[w]);
    m = fmaxf(m, partial[0]);
    scale[h] = m > 0 ? 2.0f * m / 448.0f : 1.0f;
  }
}

// src (rows, kv_heads, head_dim) bf16 -> cache (kv_heads, max_pos, head_dim) at pos0. Grid (rows, kv_heads).
template <typename T>
__global__ void kv_store_kernel(const bf16* src, T* cache, const float* scale, int kv_heads, int head_dim,
                                int max_pos, int pos0) {
  int r = blockIdx.x, h = blockIdx.y;
  float inv = scale ? 1.0f / scale[h] : 1.0f;
  const bf16* s = src + (static_cast<size_t>(r) * kv_heads + h) * head_dim;
  T* d = cache + (static_cast<size_t>(h) * max_pos + pos0 + r) * head_dim;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) d[i] = from_f32<T>(to_f32(s[i]) * inv);
}

Status launch_kv_store(const KvStoreArgs& a, cudaStream_t s) {
  const bf16* src = static_cast<const bf16*>(a.src);
  dim3 grid(a.rows, a.kv_heads);
  if (a.kv_dtype == UL_DTYPE_FP8_E4M3) {
    if (a.init_scale) {
      kv_amax_kernel<<<a.kv_heads, 256, 0, s>>>(src, a.rows, a.kv_heads, a.head_dim, a.scale);
      UL_CUDA_LAUNCHED();
    }
    kv_store_kernel<fp8><<<grid, 128, 0, s>>>(src, static_cast<fp8*>(a.cache), a.scale, a.kv_heads, a.head_dim,
                                              a.max_pos, a.pos0);
  } else if (a.kv_dtype == UL_DTYPE_BF16) {
    kv_store_kernel<bf16><<<grid, 128, 0, s>>>(src, static_cast<bf16*>(a.cache), nullptr, a.kv_heads, a.head_dim,
                                               a.max_pos, a.pos0);
  } else {
    return Err(UL_ERR_NOT_AVAILABLE, "cuda kv_store: KV dtype must be bf16 or fp8-e4m3");
  }
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

}  // namespace cuda
}  // namespace ul
