// fa2_emulate: the CPU test of the fa2_prefill kernel itself. It compiles native/src/cuda/
// attention_fa2.cu, the real kernel source, with g++ (UL_FA2_HOST_EMULATION) and runs each thread
// block as 256 CPU threads: __syncthreads / __syncwarp are barriers, and the seven PTX wrappers the
// kernel calls are emulated from the ISA's description, not from mma_layout.h:
//   ldmatrix .x4 [.trans]   lanes 8j..8j+7 give matrix j's row addresses; lane t receives row t / 4,
//                           elements 2 (t % 4), +1 (.trans: rows 2 (t % 4), +1 at column t / 4)
//   mma.m16n8k16            A, B, C gathered from the 32 lanes by ptx_isa_tables.h, D = A B + C
//   cp.async + groups       copies are queued per thread and land only when a cp.async.wait_group
//                           forces them (as late as the ISA allows), so a read of a tile the kernel
//                           did not wait for sees stale data and fails the comparison
// test/native-fa2-emulate.test.ts builds and runs it; the outputs are compared with a float64
// causal attention over the same bf16 inputs through the same block tables.
//
//   fa2_emulate [--break-wait]
//
// --break-wait lets every wait_group leave one more group in flight than asked (a pipeline that
// does not wait enough): the comparison must fail. Prints one JSON object; exit 1 on a failed case.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ptx_isa_tables.h"

// ---- the execution model: one block at a time, one std::thread per CUDA thread -----------------
namespace fa2emu {

struct Warp {
  std::barrier<> bar{32};
  uint32_t u[32][6];
  float f[32][4];
};
struct Block {
  explicit Block(int threads) : bar(threads) {}
  std::barrier<> bar;
  Warp warps[8];
};
Block* block = nullptr;
thread_local uint3 thread_idx, block_idx;
thread_local dim3 grid_dim;
bool break_wait = false;

int lane() { return static_cast<int>(thread_idx.x % 32); }
Warp& warp() { return block->warps[thread_idx.x / 32]; }
void sync_block() { block->bar.arrive_and_wait(); }
void sync_warp() { warp().bar.arrive_and_wait(); }

// Host ranges a valid cp.async may read (Q, K, V) and the bytes of shared memory.
struct Range {
  const unsigned char* at;
  size_t bytes;
};
std::vector<Range> readable;
bool failed_access = false;
std::string access_error;
void access_fault(const std::string& what) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (!failed_access) access_error = what;
  failed_access = true;
}

}  // namespace fa2emu

float __shfl_xor_sync(unsigned, float v, int mask) {
  fa2emu::Warp& w = fa2emu::warp();
  const int l = fa2emu::lane();
  w.f[l][0] = v;
  w.bar.arrive_and_wait();
  const float r = w.f[l ^ mask][0];
  w.bar.arrive_and_wait();
  return r;
}

#define threadIdx fa2emu::thread_idx
#define blockIdx fa2emu::block_idx
#define gridDim fa2emu::grid_dim
#define __syncthreads() fa2emu::sync_block()
#define __syncwarp() fa2emu::sync_warp()
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define UL_FA2_HOST_EMULATION 1

#include "cuda/common.cuh"

namespace ul {
namespace cuda {
namespace {

constexpr size_t kEmuSmemBytes = 131072;
alignas(128) unsigned char smem[kEmuSmemBytes];  // the running block's dynamic shared memory

struct Copy {
  uint32_t dst;
  const unsigned char* src;
  bool valid;
};
thread_local std::vector<Copy> pending;                 // issued, not yet committed
thread_local std::vector<std::vector<Copy>> in_flight;  // committed groups, oldest first

uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(ptr) - smem);
}
void cp_async16(uint32_t dst, const void* src, bool valid) {
  const auto* s = static_cast<const unsigned char*>(src);
  if (dst % 16 || dst + 16 > kEmuSmemBytes) fa2emu::access_fault("cp.async to shared offset " + std::to_string(dst));
  if (valid) {
    bool inside = false;
    for (const auto& r : fa2emu::readable) inside = inside || (s >= r.at && s + 16 <= r.at + r.bytes);
    if (!inside || reinterpret_cast<uintptr_t>(s) % 16) fa2emu::access_fault("cp.async from outside Q/K/V or unaligned");
  }
  pending.push_back({dst, s, valid});
}
void cp_async_commit() {
  in_flight.push_back(std::move(pending));
  pending.clear();
}
template <int N>
void cp_async_wait() {
  const size_t keep = static_cast<size_t>(N) + (fa2emu::break_wait ? 1 : 0);
  while (in_flight.size() > keep) {
    for (const Copy& c : in_flight.front()) {
      if (c.valid) std::memcpy(smem + c.dst, c.src, 16);
      else std::memset(smem + c.dst, 0, 16);
    }
    in_flight.erase(in_flight.begin());
  }
}
uint32_t load_u32(uint32_t at) {
  uint32_t v;
  std::memcpy(&v, smem + at, 4);
  return v;
}
uint32_t load_u16(uint32_t at) {
  uint16_t v;
  std::memcpy(&v, smem + at, 2);
  return v;
}
template <bool Trans>
void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  fa2emu::Warp& w = fa2emu::warp();
  const int t = fa2emu::lane();
  if (addr % 16 || addr + 16 > kEmuSmemBytes) fa2emu::access_fault("ldmatrix row address " + std::to_string(addr));
  w.u[t][0] = addr;
  w.bar.arrive_and_wait();
  for (int j = 0; j < 4; ++j) {
    if (!Trans) {
      r[j] = load_u32(w.u[8 * j + t / 4][0] + 4 * (t % 4));
    } else {
      const uint32_t lo = load_u16(w.u[8 * j + 2 * (t % 4)][0] + 2 * (t / 4));
      const uint32_t hi = load_u16(w.u[8 * j + 2 * (t % 4) + 1][0] + 2 * (t / 4));
      r[j] = lo | hi << 16;
    }
  }
  w.bar.arrive_and_wait();
}
void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) { ldmatrix_x4<false>(addr, r); }
void ldsm_x4_trans(uint32_t addr, uint32_t (&r)[4]) { ldmatrix_x4<true>(addr, r); }

float bf16_half(uint32_t reg, int half) {
  const uint32_t bits = (half ? reg >> 16 : reg & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  fa2emu::Warp& w = fa2emu::warp();
  const int t = fa2emu::lane();
  for (int i = 0; i < 4; ++i) w.u[t][i] = a[i], w.f[t][i] = d[i];
  w.u[t][4] = b0;
  w.u[t][5] = b1;
  w.bar.arrive_and_wait();
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 8; ++i) {
      const ptx_isa::RowCol p = ptx_isa::isa_a(l, i);
      A[p.row][p.col] = bf16_half(w.u[l][i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {
      const ptx_isa::RowCol p = ptx_isa::isa_b(l, i), q = ptx_isa::isa_c(l, i);
      B[p.row][p.col] = bf16_half(w.u[l][4 + i / 2], i % 2);
      C[q.row][q.col] = w.f[l][i];
    }
  }
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    const ptx_isa::RowCol q = ptx_isa::isa_c(t, i);
    float acc = C[q.row][q.col];
    for (int k = 0; k < 16; ++k) acc += A[q.row][k] * B[k][q.col];
    d[i] = acc;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace ul

#include "cuda/attention_fa2.cu"

namespace {

using ul::cuda::bf16;

/** Runs fa2_prefill_kernel<M> over a grid, one block after another, Fa2Shape<M>::kThreads threads each. */
template <int M>
void launch(const ul::cuda::Fa2Params& p, dim3 grid) {
  using Shape = ul::cuda::Fa2Shape<M>;
  static_assert(Shape::kSmemBytes <= ul::cuda::kEmuSmemBytes, "the emulated shared memory holds the kernel's");
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::memset(ul::cuda::smem, 0xff, sizeof ul::cuda::smem);  // garbage: NaN bf16 pattern
      auto blk = std::make_unique<fa2emu::Block>(Shape::kThreads);
      fa2emu::block = blk.get();
      std::vector<std::thread> threads;
      for (unsigned t = 0; t < static_cast<unsigned>(Shape::kThreads); ++t)
        threads.emplace_back([&, t] {
          fa2emu::thread_idx = {t, 0, 0};
          fa2emu::block_idx = {bx, by, 0};
          fa2emu::grid_dim = grid;
          ul::cuda::in_flight.clear();
          ul::cuda::pending.clear();
          ul::cuda::fa2_prefill_kernel<M>(p);
        });
      for (auto& th : threads) th.join();
    }
}

struct Case {
  const char* name;
  int heads, kv_heads, block_tokens;  // block_tokens 0: no table (slot = position, toff -1)
  std::vector<std::pair<int, int>> items;  // (rows, pos0), each >= 16 rows
  int res_blocks = -1;  // >= 0: tiered, pool blocks >= res_blocks in the staging region (backend.h kv_row)
};

struct Result {
  std::string name;
  int warp_rows = 16;
  double err = 0, ref = 0, sum_err = 0;  // max |got - want|, max |want|, sum |got - want|
  size_t n = 0;
  bool written = true, ok = false;
};

Result run_case(const Case& c, int warp_rows) {
  const int D = 128, group = c.heads / c.kv_heads;
  std::mt19937 rng(static_cast<uint32_t>(c.heads * 131 + c.block_tokens));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  // Pool and tables as prepare_step gives them: tiles of 64 rows (first row, rows, pos0, toff).
  const int bt = c.block_tokens > 0 ? c.block_tokens : 1;
  int rows = 0, blocks = 3;
  for (auto [r, p0] : c.items) blocks += (p0 + r + bt - 1) / bt;
  std::vector<int32_t> order(blocks), tables, tiles;
  for (int b = 0; b < blocks; ++b) order[b] = b;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<int32_t>> item_slots;  // per item: slot of each position
  int next = 0;
  for (auto [r, p0] : c.items) {
    const int toff = c.block_tokens > 0 ? static_cast<int>(tables.size()) : -1;
    std::vector<int32_t> slots(p0 + r);
    for (int p = 0; p < p0 + r; ++p) slots[p] = p;
    if (c.block_tokens > 0) {
      const int n = (p0 + r + bt - 1) / bt;
      for (int b = 0; b < n; ++b) tables.push_back(order[next + b]);
      for (int p = 0; p < p0 + r; ++p) slots[p] = ul::slot_of(tables.data() + toff, bt, p);
      next += n;
    }
    for (int t = 0; t < r; t += 64) tiles.insert(tiles.end(), {rows + t, std::min(64, r - t), p0 + t, toff});
    item_slots.push_back(slots);
    rows += r;
  }
  const int pool = blocks * bt + 7;  // pool slots (the identity case: positions); 7 spare rows
  std::vector<bf16> q(static_cast<size_t>(rows) * c.heads * D), k(static_cast<size_t>(c.kv_heads) * pool * D),
      v(k.size()), out(q.size());
  for (auto& x : q) x = __float2bfloat16_rn(nd(rng));
  for (auto& x : k) x = __float2bfloat16_rn(nd(rng));
  for (auto& x : v) x = __float2bfloat16_rn(nd(rng));
  const uint16_t sentinel = 0x7fc1;  // a NaN: an output element never written stays NaN (and fails)
  __nv_bfloat16_raw nan_raw;
  nan_raw.x = sentinel;
  for (auto& x : out) x = nan_raw;

  ul::cuda::Fa2Params p{};
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  p.tiles = tiles.data();
  p.tables = tables.data();
  p.heads = c.heads;
  p.max_pos = pool;
  p.block_tokens = bt;
  p.group = group;
  p.block_pos = ul::cuda::kRows / group;
  p.scale_log2 = 1.0f / std::sqrt(128.0f) * ul::cuda::kLog2e;
  fa2emu::readable = {{reinterpret_cast<const unsigned char*>(q.data()), q.size() * 2},
                      {reinterpret_cast<const unsigned char*>(k.data()), k.size() * 2},
                      {reinterpret_cast<const unsigned char*>(v.data()), v.size() * 2}};
  // Tiered: the same rows split as the engine holds them, slots below res in the resident pool
  // (kv_head stride res), the rest in a staging region (stride pool - res); k and v stay the truth.
  std::vector<bf16> k_res, v_res, k_st, v_st;
  if (c.res_blocks >= 0) {
    const int res = c.res_blocks * bt, st = pool - res;
    for (auto* pr : {&k_res, &v_res}) pr->resize(static_cast<size_t>(c.kv_heads) * std::max(res, 1) * D);
    for (auto* pr : {&k_st, &v_st}) pr->resize(static_cast<size_t>(c.kv_heads) * st * D);
    for (int h = 0; h < c.kv_heads; ++h)
      for (int slot = 0; slot < pool; ++slot) {
        const size_t from = (static_cast<size_t>(h) * pool + slot) * D;
        const size_t to = slot < res ? (static_cast<size_t>(h) * res + slot) * D : (static_cast<size_t>(h) * st + slot - res) * D;
        std::copy_n(k.data() + from, D, (slot < res ? k_res : k_st).data() + to);
        std::copy_n(v.data() + from, D, (slot < res ? v_res : v_st).data() + to);
      }
    p.k = k_res.data();
    p.v = v_res.data();
    p.k_stage = k_st.data();
    p.v_stage = v_st.data();
    p.max_pos = res;
    p.stage_slots = st;
    fa2emu::readable = {{reinterpret_cast<const unsigned char*>(q.data()), q.size() * 2}};
    for (auto* pr : {&k_res, &v_res, &k_st, &v_st})
      fa2emu::readable.push_back({reinterpret_cast<const unsigned char*>(pr->data()), pr->size() * 2});
  }
  const int n_tiles = static_cast<int>(tiles.size() / 4);
  const dim3 grid(n_tiles * (ul::cuda::kPlanTileRows / p.block_pos), c.kv_heads);
  if (warp_rows == 16) launch<1>(p, grid);
  else launch<2>(p, grid);

  // float64 causal attention over the same bf16 values, row by row.
  Result res;
  res.name = c.name;
  res.warp_rows = warp_rows;
  int row = 0;
  for (size_t it = 0; it < c.items.size(); ++it) {
    const auto [r, p0] = c.items[it];
    for (int i = 0; i < r; ++i, ++row)
      for (int h = 0; h < c.heads; ++h) {
        const int kvh = h / group, len = p0 + i + 1;
        const bf16* qr = q.data() + (static_cast<size_t>(row) * c.heads + h) * D;
        std::vector<double> s(len);
        double mx = -1e300;
        for (int key = 0; key < len; ++key) {
          const bf16* kr = k.data() + (static_cast<size_t>(kvh) * pool + item_slots[it][key]) * D;
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += static_cast<double>(__bfloat162float(qr[d])) * __bfloat162float(kr[d]);
          s[key] = dot / std::sqrt(128.0);
          mx = std::max(mx, s[key]);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int key = 0; key < len; ++key)
            o += s[key] * __bfloat162float(v[(static_cast<size_t>(kvh) * pool + item_slots[it][key]) * D + d]);
          o /= sum;
          const float got = __bfloat162float(out[(static_cast<size_t>(row) * c.heads + h) * D + d]);
          if (std::isnan(got)) res.written = false;
          res.err = std::max(res.err, std::fabs(got - o));
          res.sum_err += std::fabs(got - o);
          ++res.n;
          if (std::isnan(got)) res.err = INFINITY;
          res.ref = std::max(res.ref, std::fabs(o));
        }
      }
  }
  // Bound: P and the output are rounded to bf16 (relative 2^-9 each); 1e-2 of the largest output.
  res.ok = res.written && res.err / res.ref <= 1e-2 && !fa2emu::failed_access;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--break-wait") == 0) {
    fa2emu::break_wait = true;
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: fa2_emulate [--break-wait]\n");
    return 2;
  }
  // Sizes off every tile (16-row warps, 64-row plan tiles, 64-key tiles), two items in one launch,
  // two kv heads, shuffled tables of 16 and of 5 positions (blocks that split key tiles), the
  // identity table, and 7 key tiles (the 3-stage ring wraps twice).
  const std::vector<Case> cases = {
      {"group4_table16_two_items", 8, 2, 16, {{77, 100}, {19, 0}}},
      {"group2_identity", 4, 2, 0, {{70, 30}}},
      {"group8_table5", 8, 1, 5, {{21, 141}}},
      {"group4_420_keys", 4, 1, 16, {{20, 400}}},
      {"group4_table16_tiered", 8, 2, 16, {{77, 100}, {19, 0}}, 5},
  };
  bool all = true;
  std::printf("{\"break_wait\": %s, \"cases\": [", fa2emu::break_wait ? "true" : "false");
  for (size_t i = 0; i < 2 * cases.size(); ++i) {
    Result r = run_case(cases[i / 2], i % 2 ? 32 : 16);  // each case on both kernel shapes
    all = all && r.ok;
    // JSON has no inf / NaN: a non-finite error (NaN output) prints as null.
    auto num = [](double x) {
      char b[32];
      std::snprintf(b, sizeof b, "%.4g", x);
      return std::isfinite(x) ? std::string(b) : std::string("null");
    };
    std::printf("%s\n  {\"case\": \"%s\", \"warp_rows\": %d, \"max_abs_err\": %s, \"normalized_err\": %s, "
                "\"mean_abs_err\": %s, \"finite_and_written\": %s, \"ok\": %s}",
                i ? "," : "", r.name.c_str(), r.warp_rows, num(r.err).c_str(), num(r.err / r.ref).c_str(),
                num(r.sum_err / static_cast<double>(r.n)).c_str(),
                r.written ? "true" : "false", r.ok ? "true" : "false");
  }
  std::printf("\n], \"access_error\": \"%s\", \"ok\": %s}\n", fa2emu::access_error.c_str(), all ? "true" : "false");
  return all ? 0 : 1;
}
