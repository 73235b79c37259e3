// decode_emulate: the CPU test of the split-KV decode kernel itself. It compiles native/src/cuda/
// attention_decode.cu, the real kernel source, with g++ (UL_DECODE_HOST_EMULATION) and runs each
// thread block as 128 CPU threads: __syncthreads is a block barrier, __shfl_xor_sync an exchange
// through the warp's slots at one warp barrier, shared memory the kernel's statics (one
// block runs at a time). The kernel's parameters come from the same decode_params / decode_splits
// the launcher uses, so the split count and chunk are the GPU's.
// test/native-decode-emulate.test.ts builds and runs it; each output is compared with a float64
// attention over the same bf16 / dequantised fp8 values through the same shuffled block tables.
//
//   decode_emulate [--break-shuffle]
//
// --break-shuffle makes every shuffle return the lane's own value (a broken warp reduction): every
// case with more than one key must fail (run on the two untiered group-4 cases). Prints one JSON object; exit 1 on a failed case.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace decemu {

struct Warp {
  std::barrier<> bar{32};
  float f[2][32];  // alternate shuffles use alternate slots: one barrier a shuffle
};
struct Block {
  explicit Block(int threads) : bar(threads) {}
  std::barrier<> bar;
  Warp warps[4];
};
Block* block = nullptr;
thread_local uint3 thread_idx, block_idx;
thread_local int parity = 0;
bool break_shuffle = false;

}  // namespace decemu

float __shfl_xor_sync(unsigned, float v, int mask) {
  decemu::Warp& w = decemu::block->warps[decemu::thread_idx.x / 32];
  const int l = static_cast<int>(decemu::thread_idx.x % 32);
  // A lane writes slot set p again only two shuffles later, after the barrier of the shuffle in
  // between, which every lane reaches only once it has read this shuffle's slots.
  float* slots = w.f[decemu::parity ^= 1];
  slots[l] = v;
  w.bar.arrive_and_wait();
  return decemu::break_shuffle ? v : slots[l ^ mask];
}

#define threadIdx decemu::thread_idx
#define blockIdx decemu::block_idx
#define __syncthreads() decemu::block->bar.arrive_and_wait()
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define UL_DECODE_HOST_EMULATION 1

#include "cuda/attention_decode.cu"

namespace {

using ul::cuda::bf16;
using ul::cuda::fp8;

/** Runs a kernel over a grid, one block after another, on `threads` CPU threads started once (a
 *  thread per CUDA thread; starting them per block costs more than the kernel). */
template <typename F>
void launch(dim3 grid, int threads, F kernel) {
  std::barrier<> start(threads + 1), done(threads + 1);
  uint3 at{0, 0, 0};
  bool stop = false;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      decemu::thread_idx = {static_cast<unsigned>(t), 0, 0};
      for (;;) {
        start.arrive_and_wait();
        if (stop) return;
        decemu::block_idx = at;
        kernel();
        done.arrive_and_wait();
      }
    });
  decemu::Block blk(threads);
  decemu::block = &blk;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        at = {bx, by, bz};
        start.arrive_and_wait();
        done.arrive_and_wait();
      }
  stop = true;
  start.arrive_and_wait();
  for (auto& th : ts) th.join();
}

struct Case {
  std::string name;
  bool fp8;
  int heads, kv_heads, block_tokens;
  bool tiered;  // pool blocks from res_blocks on live in a staging region (backend.h kv_row)
};

struct Result {
  double err = 0;  // max over query rows of (max |got - want| / max |want|)
  int splits = 0, heads_per_block = 0;
  bool written = true, ok = false, multi_key_ok = false;
};

// Query rows of different sequences: their key counts (position + 1), none a multiple of anything.
const std::vector<int> kLens = {1, 63, 1000, 4099};

Result run_case(const Case& c) {
  constexpr int D = 128;
  const int group = c.heads / c.kv_heads, bt = c.block_tokens;
  std::mt19937 rng(static_cast<uint32_t>(c.heads * 131 + c.kv_heads * 7 + bt + (c.fp8 ? 1 : 0) + (c.tiered ? 3 : 0)));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  // Tables: every sequence's blocks drawn from one shuffled pool, 2 spare blocks; the last row has
  // no table (offset -1: slot = position), so the pool covers its positions too.
  int blocks = 2;
  for (int len : kLens) blocks += (len + bt - 1) / bt;
  blocks = std::max(blocks, (kLens.back() + bt - 1) / bt);
  std::vector<int32_t> order(blocks), tables, qrows;
  for (int b = 0; b < blocks; ++b) order[b] = b;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<int32_t>> slots;
  const int n_rows = static_cast<int>(kLens.size()) + 1;
  int next = 0;
  for (int r = 0; r < n_rows; ++r) {
    const bool identity = r == n_rows - 1;
    const int len = identity ? kLens[1] + 37 : kLens[r];
    const int toff = identity ? -1 : static_cast<int>(tables.size());
    std::vector<int32_t> s(len);
    if (!identity) {
      for (int b = 0; b < (len + bt - 1) / bt; ++b) tables.push_back(order[next++]);
      for (int p = 0; p < len; ++p) s[p] = ul::slot_of(tables.data() + toff, bt, p);
    } else {
      for (int p = 0; p < len; ++p) s[p] = p;
    }
    // Rows of q / out in reverse order: the row index is the plan's, not the query row's.
    qrows.insert(qrows.end(), {n_rows - 1 - r, len - 1, toff});
    slots.push_back(s);
  }
  const int pool = blocks * bt, nb = (pool + 63) / 64;
  // The truth: bf16 values, or fp8 values and one scale per (kv head, 64-slot block).
  std::vector<double> kval(static_cast<size_t>(c.kv_heads) * pool * D), vval(kval.size());
  std::vector<bf16> q(static_cast<size_t>(n_rows) * c.heads * D), kb(kval.size()), vb(kval.size());
  std::vector<fp8> kf(kval.size()), vf(kval.size());
  std::vector<float> ksc(static_cast<size_t>(c.kv_heads) * nb), vsc(ksc.size());
  for (auto& x : q) x = __float2bfloat16_rn(nd(rng));
  for (int side = 0; side < 2; ++side) {
    auto& val = side ? vval : kval;
    for (int h = 0; h < c.kv_heads; ++h)
      for (int b = 0; b < nb; ++b) {
        const float mag = 0.5f + static_cast<float>(b % 5);  // scales that differ block to block
        float amax = 0;
        std::vector<float> raw(64 * D);
        for (auto& x : raw) amax = std::max(amax, std::fabs(x = nd(rng) * mag));
        const float sc = amax / 448.0f;
        (side ? vsc : ksc)[static_cast<size_t>(h) * nb + b] = sc;
        for (int i = 0; i < 64 && b * 64 + i < pool; ++i)
          for (int d = 0; d < D; ++d) {
            const size_t at = (static_cast<size_t>(h) * pool + b * 64 + i) * D + d;
            const float x = raw[i * D + d];
            if (c.fp8) {
              (side ? vf : kf)[at] = fp8(x / sc);
              val[at] = static_cast<double>(static_cast<float>((side ? vf : kf)[at])) * sc;
            } else {
              (side ? vb : kb)[at] = __float2bfloat16_rn(x);
              val[at] = __bfloat162float((side ? vb : kb)[at]);
            }
          }
      }
  }
  // Tiered: slots from res on in the staging region (kv head stride pool - res), as the engine
  // holds them; scales likewise (resident 64-slot blocks, then the staged ones).
  const int res = c.tiered ? 4 * 64 : pool, st = pool - res, esz = c.fp8 ? 1 : 2;
  const unsigned char* kall = c.fp8 ? reinterpret_cast<const unsigned char*>(kf.data()) : reinterpret_cast<const unsigned char*>(kb.data());
  const unsigned char* vall = c.fp8 ? reinterpret_cast<const unsigned char*>(vf.data()) : reinterpret_cast<const unsigned char*>(vb.data());
  std::vector<unsigned char> k_res(static_cast<size_t>(c.kv_heads) * res * D * esz), v_res(k_res.size()),
      k_st(static_cast<size_t>(c.kv_heads) * std::max(st, 1) * D * esz), v_st(k_st.size());
  const int nb_res = (res + 63) / 64, nb_st = (st + 63) / 64;
  std::vector<float> ks_res(static_cast<size_t>(c.kv_heads) * nb_res), vs_res(ks_res.size()),
      ks_st(static_cast<size_t>(c.kv_heads) * std::max(nb_st, 1)), vs_st(ks_st.size());
  for (int h = 0; h < c.kv_heads; ++h) {
    for (int slot = 0; slot < pool; ++slot) {
      const size_t from = (static_cast<size_t>(h) * pool + slot) * D * esz, row = static_cast<size_t>(D) * esz;
      const size_t to = slot < res ? (static_cast<size_t>(h) * res + slot) * row : (static_cast<size_t>(h) * st + slot - res) * row;
      std::memcpy((slot < res ? k_res : k_st).data() + to, kall + from, row);
      std::memcpy((slot < res ? v_res : v_st).data() + to, vall + from, row);
    }
    for (int b = 0; b < nb; ++b) {
      const bool r = b < nb_res;
      const size_t to = r ? static_cast<size_t>(h) * nb_res + b : static_cast<size_t>(h) * nb_st + b - nb_res;
      (r ? ks_res : ks_st)[to] = ksc[static_cast<size_t>(h) * nb + b];
      (r ? vs_res : vs_st)[to] = vsc[static_cast<size_t>(h) * nb + b];
    }
  }

  ul::AttentionArgs a{};
  std::vector<bf16> out(q.size());
  __nv_bfloat16_raw nan_raw;
  nan_raw.x = 0x7fc1;  // an output never written stays NaN (and fails)
  for (auto& x : out) x = nan_raw;
  a.q = q.data();
  a.k_cache = k_res.data();
  a.v_cache = v_res.data();
  a.k_scale = c.fp8 ? ks_res.data() : nullptr;
  a.v_scale = c.fp8 ? vs_res.data() : nullptr;
  a.out = out.data();
  a.rows = n_rows;
  a.heads = c.heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = D;
  a.max_pos = res;
  a.kv_dtype = c.fp8 ? UL_DTYPE_FP8_E4M3 : UL_DTYPE_BF16;
  a.softmax_scale = 1.0f / std::sqrt(128.0f);
  if (c.tiered) {
    a.k_stage = k_st.data();
    a.v_stage = v_st.data();
    a.k_stage_scale = c.fp8 ? ks_st.data() : nullptr;
    a.v_stage_scale = c.fp8 ? vs_st.data() : nullptr;
    a.stage_slots = st;
  }
  ul::cuda::DevicePlan dp;
  dp.tables = tables.data();
  dp.block_tokens = bt;
  int max_len = 0;
  for (int r = 0; r < n_rows; ++r) max_len = std::max(max_len, qrows[3 * r + 1] + 1);
  Result out_r;
  out_r.heads_per_block = ul::cuda::decode_heads_per_block(a);
  if (out_r.heads_per_block == 0) return out_r;
  std::vector<float> ws(ul::cuda::decode_fast_workspace_floats(a, n_rows, max_len), NAN);
  const ul::cuda::DecodeParams p = ul::cuda::decode_params(a, dp, qrows.data(), n_rows, max_len, ws.data());
  out_r.splits = p.splits;
  const dim3 grid(p.kv_heads * p.hb_per_kv, p.splits, n_rows);
  const int hb = out_r.heads_per_block;
  auto kernel = [&] {
    if (c.fp8) {
      if (hb == 1) ul::cuda::decode_kernel<fp8, 1>(p);
      else if (hb == 2) ul::cuda::decode_kernel<fp8, 2>(p);
      else ul::cuda::decode_kernel<fp8, 4>(p);
    } else {
      if (hb == 1) ul::cuda::decode_kernel<bf16, 1>(p);
      else if (hb == 2) ul::cuda::decode_kernel<bf16, 2>(p);
      else if (hb == 4) ul::cuda::decode_kernel<bf16, 4>(p);
      else ul::cuda::decode_kernel<bf16, 8>(p);
    }
  };
  launch(grid, ul::cuda::kDecWarps * 32, kernel);
  launch(dim3(c.heads, n_rows, 1), ul::cuda::kDecD, [&] { ul::cuda::decode_combine_kernel(p); });

  // float64 attention of each query row over its keys 0 .. position.
  // Errors are normalised per query row (by its largest output): a long row's outputs are small.
  double multi = 0;
  for (int r = 0; r < n_rows; ++r) {
    double row_err = 0, row_ref = 0;
    const int orow = qrows[3 * r], len = qrows[3 * r + 1] + 1;
    for (int h = 0; h < c.heads; ++h) {
      const int kvh = h / group;
      const bf16* qr = q.data() + (static_cast<size_t>(orow) * c.heads + h) * D;
      std::vector<double> s(len);
      double mx = -1e300, sum = 0;
      for (int key = 0; key < len; ++key) {
        const double* kr = kval.data() + (static_cast<size_t>(kvh) * pool + slots[r][key]) * D;
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += static_cast<double>(__bfloat162float(qr[d])) * kr[d];
        mx = std::max(mx, s[key] = dot / std::sqrt(128.0));
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int d = 0; d < D; ++d) {
        double o = 0;
        for (int key = 0; key < len; ++key) o += s[key] * vval[(static_cast<size_t>(kvh) * pool + slots[r][key]) * D + d];
        o /= sum;
        const float got = __bfloat162float(out[(static_cast<size_t>(orow) * c.heads + h) * D + d]);
        const double e = std::isnan(got) ? INFINITY : std::fabs(got - o);
        if (std::isnan(got)) out_r.written = false;
        row_err = std::max(row_err, e);
        row_ref = std::max(row_ref, std::fabs(o));
      }
    }
    out_r.err = std::max(out_r.err, row_err / row_ref);
    if (len > 1) multi = std::max(multi, row_err / row_ref);
  }
  // Bound: one bf16 rounding of the output (relative 2^-8 at most, 8 bits of precision) and f32
  // accumulation: 5e-3 of the row's largest output.
  out_r.ok = out_r.written && out_r.err <= 5e-3;
  out_r.multi_key_ok = out_r.written && multi <= 5e-3;
  return out_r;
}

std::string num(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", x);
  return std::isfinite(x) ? std::string(b) : std::string("null");  // JSON has no inf / NaN
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--break-shuffle") == 0) {
    decemu::break_shuffle = true;
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: decode_emulate [--break-shuffle]\n");
    return 2;
  }
  // GQA groups 1, 4 (Llama 3.1 8B) and 8 (fp8: two blocks of 4 heads a kv head), tables of 16 and
  // 64 positions (an fp8 pool's blocks are multiples of 64); group 4 also tiered, over 2 kv heads
  // (the kv head strides of both tiers); the others over 1 (time).
  std::vector<Case> cases;
  for (bool f8 : {false, true})
    for (int group : {1, 4, 8})
      for (bool tiered : {false, true}) {
        if (tiered && group != 4) continue;
        const int kvh = tiered ? 2 : 1;
        cases.push_back({std::string(f8 ? "fp8" : "bf16") + "_group" + std::to_string(group) + (tiered ? "_tiered" : ""),
                         f8, group * kvh, kvh, f8 ? 64 : 16, tiered});
      }
  // The broken variant needs only to fail, not every shape: the two group-4 cases (time).
  if (decemu::break_shuffle)
    cases.erase(std::remove_if(cases.begin(), cases.end(),
                               [](const Case& c) { return c.heads / c.kv_heads != 4 || c.tiered; }),
                cases.end());
  bool all = true;
  std::printf("{\"break_shuffle\": %s, \"lens\": [1, 63, 1000, 4099, 100], \"cases\": [",
              decemu::break_shuffle ? "true" : "false");
  for (size_t i = 0; i < cases.size(); ++i) {
    const Result r = run_case(cases[i]);
    all = all && r.ok;
    std::printf("%s\n  {\"case\": \"%s\", \"heads_per_block\": %d, \"splits\": %d, "
                "\"normalized_err\": %s, \"finite_and_written\": %s, \"multi_key_ok\": %s, \"ok\": %s}",
                i ? "," : "", cases[i].name.c_str(), r.heads_per_block, r.splits, num(r.err).c_str(),
                r.written ? "true" : "false", r.multi_key_ok ? "true" : "false", r.ok ? "true" : "false");
  }
  std::printf("\n], \"ok\": %s}\n", all ? "true" : "false");
  return all ? 0 : 1;
}
