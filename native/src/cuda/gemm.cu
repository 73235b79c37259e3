// Our own tensor-core GEMM, the fallback when cuBLASLt is absent: y (M, N) = x (M, K) . w (N, K)^T,
// bf16 in, fp32 accumulate (wmma 16x16x16), y either bf16 (written) or f32 (accumulated: the
// residual add fused into the o_proj and down_proj GEMMs).
//
// Tiling: block 128 x 128, K step 32, 8 warps as 2 (M) x 4 (N), warp tile 64 x 32 = 4 x 2 fragments.
// Global -> shared with cp.async (16 B, zero-filled past the edges), two stages so the next K slice
// loads while this one multiplies. Needs K % 8 == 0 (16-byte rows); M and N are arbitrary.
//
// Performance notes: this is an Ampere-style kernel (mma.sync through wmma). On Hopper, cuBLASLt's
// wgmma + TMA kernels are roughly 2x faster, which is why cuBLASLt is preferred when present.
#include <mma.h>

#include "common.cuh"

namespace ul {
namespace cuda {
namespace {

using namespace nvcuda;

constexpr int BM = 128, BN = 128, BK = 32, PAD = 8, LDS = BK + PAD;  // LDS: 80 B rows, wmma-aligned
constexpr int THREADS = 256;

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  int src_size = valid ? 16 : 0;  // 0: write zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// One K slice of A (BM x BK) and B (BN x BK) into shared memory: 2 x 16-byte chunks per thread each.
__device__ __forceinline__ void load_tile(bf16 (*As)[LDS], bf16 (*Bs)[LDS], const bf16* x, const bf16* w, int M,
                                          int N, int K, int m0, int n0, int k0) {
  for (int c = threadIdx.x; c < BM * BK / 8; c += THREADS) {
    int row = c / (BK / 8), col = (c % (BK / 8)) * 8;
    int gm = m0 + row, gk = k0 + col;
    bool ok = gm < M && gk < K;
    cp_async16(&As[row][col], ok ? x + static_cast<size_t>(gm) * K + gk : x, ok);
  }
  for (int c = threadIdx.x; c < BN * BK / 8; c += THREADS) {
    int row = c / (BK / 8), col = (c % (BK / 8)) * 8;
    int gn = n0 + row, gk = k0 + col;
    bool ok = gn < N && gk < K;
    cp_async16(&Bs[row][col], ok ? w + static_cast<size_t>(gn) * K + gk : w, ok);
  }
}

__global__ void __launch_bounds__(THREADS) gemm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                       int M, int K, int N, void* y, bool y_f32) {
  __shared__ __align__(128) bf16 As[2][BM][LDS];  // (stage, m, k)
  __shared__ __align__(128) bf16 Bs[2][BN][LDS];  // (stage, n, k): w rows = B columns (col-major B)
  int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int wm = (warp / 4) * 64, wn = (warp % 4) * 32;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  int tiles = (K + BK - 1) / BK;
  load_tile(As[0], Bs[0], x, w, M, N, K, m0, n0, 0);
  cp_async_commit();
  for (int t = 0; t < tiles; ++t) {
    int cur = t & 1;
    cp_async_wait_all();
    __syncthreads();  // stage `cur` is complete and every warp is done with stage cur ^ 1
    if (t + 1 < tiles) {
      load_tile(As[cur ^ 1], Bs[cur ^ 1], x, w, M, N, K, m0, n0, (t + 1) * BK);
      cp_async_commit();
    }
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[2];
      for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(a[i], &As[cur][wm + i * 16][kk], LDS);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &Bs[cur][wn + j * 16][kk], LDS);
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  }
  __syncthreads();
  // Epilogue through a per-warp 16 x 16 f32 scratch carved from As (no longer needed).
  float* scratch = reinterpret_cast<float*>(&As[0][0][0]) + warp * 256;
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        int gm = m0 + wm + i * 16 + e / 16, gn = n0 + wn + j * 16 + e % 16;
        if (gm < M && gn < N) {
          size_t at = static_cast<size_t>(gm) * N + gn;
          if (y_f32)
            static_cast<float*>(y)[at] += scratch[e];
          else
            static_cast<bf16*>(y)[at] = from_f32<bf16>(scratch[e]);
        }
      }
      __syncwarp();
    }
  }
}

}  // namespace

Status launch_gemm_tc(const bf16* x, const bf16* w, int M, int K, int N, void* y, bool y_f32_accumulate,
                      cudaStream_t s) {
  if (K % 8 != 0) return Err(UL_ERR_INVALID_ARGUMENT, "gemm: K must be a multiple of 8, got " + std::to_string(K));
  dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);
  gemm_kernel<<<grid, THREADS, 0, s>>>(x, w, M, K, N, y, y_f32_accumulate);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

}  // namespace cuda
}  // namespace ul
