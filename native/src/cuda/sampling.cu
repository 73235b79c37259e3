// Sampling on the device from the last logits, so one int crosses the bus per decoded token instead
// of vocab floats: argmax (temperature <= 0) or Gumbel-max, argmax(logit / T + G) with G from the
// counter-based RNG of backend.h, which the reference backend uses too (same seed: same token).
// One block of 1024 threads; ties go to the lower index, as in the reference loop.
#include "common.cuh"

namespace ul {
namespace cuda {

__global__ void sample_kernel(const float* logits, int vocab, float temperature, uint64_t seed, uint64_t counter,
                              int32_t* token) {
  __shared__ float best_v[32];
  __shared__ int best_i[32];
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    float v = logits[i];
    if (temperature > 0.0f) v = static_cast<float>(v / temperature + gumbel_noise(seed, counter, static_cast<uint64_t>(i)));
    if (v > bv || (v == bv && i < bi)) {
      bv = v;
      bi = i;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    best_v[warp] = bv;
    best_i[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < blockDim.x / 32; ++w) {
      if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) {
        bv = best_v[w];
        bi = best_i[w];
      }
    }
    *token = bi == 0x7fffffff ? 0 : bi;
  }
}

Status launch_sample(const float* logits, int vocab, float temperature, uint64_t seed, uint64_t counter,
                     int32_t* token, cudaStream_t s) {
  sample_kernel<<<1, 1024, 0, s>>>(logits, vocab, temperature, seed, counter, token);
  UL_CUDA_LAUNCHED();
  return Status::Ok();
}

}  // namespace cuda
}  // namespace ul
