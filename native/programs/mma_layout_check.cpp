// mma_layout_check: the CPU test of native/src/cuda/mma_layout.h, the fragment maps, ldmatrix
// address maps and shared-memory swizzle of attention_fa2.cu, run before any GPU has run the kernel
// (test/native-mma-layout.test.ts compiles it with g++ and runs it).
//
//   mma_layout_check [--break a|b|c|k|v|p|swizzle]
//
// Prints one JSON object: {"ok": bool, "checks": [{"name", "ok", "detail"}...]}; exits 1 when a check
// fails. --break swaps one map of the header for a plausible wrong one (a transposed quadrant order,
// a missing XOR, ...) so the test can see that the checks catch it.
//
// What is independent of the header: the ISA tables below are transcribed from the PTX ISA text in
// its own form (groupID, threadID_in_group and the "for ai where i < 2 ..." conditions as written
// there, with if / else); ldmatrix and mma are simulated from the ISA's description of what each
// lane supplies and receives; the reference products are plain loops over row-major matrices.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda/mma_layout.h"
#include "ptx_isa_tables.h"

using ul::mma::RowCol;

namespace {

std::string broken;  // --break: which header map is replaced by a wrong one

// ---- the header's maps, or the broken variant ---------------------------------------------------
RowCol a_map(int lane, int e) {
  RowCol rc = ul::mma::a_elem(lane, e);
  if (broken == "a" && (e & 2)) rc.row ^= 8, rc.col ^= 8;  // a2a3, a6a7 and a4a5 moved to other quadrants
  return rc;
}
RowCol b_map(int lane, int e) {
  RowCol rc = ul::mma::b_elem(lane, e);
  if (broken == "b") std::swap(rc.row, rc.col), rc.row = rc.row * 2 % 16;
  return rc;
}
RowCol c_map(int lane, int e) {
  RowCol rc = ul::mma::c_elem(lane, e);
  if (broken == "c") rc.col = (rc.col + 1) % 8;
  return rc;
}
RowCol k_addr(int lane) {
  RowCol rc = ul::mma::ldsm_k_x4(lane);
  if (broken == "k") rc = ul::mma::ldsm_a_x4(lane);  // the A quadrant order for K: S's n-tiles mix up
  return rc;
}
RowCol v_addr(int lane) {
  RowCol rc = ul::mma::ldsm_v_trans_x4(lane);
  if (broken == "v") rc = ul::mma::ldsm_k_x4(lane);
  return rc;
}
int p_tile(int kk, int r) { return broken == "p" ? 2 * kk + (r & 1) : ul::mma::p_s_tile(kk, r); }
int p_elem(int r) { return broken == "p" ? (r >> 1) << 1 : ul::mma::p_s_elem(r); }
int swz(int row, int chunk) { return broken == "swizzle" ? chunk : ul::mma::swizzle_chunk(row, chunk); }
int tile_off(int row, int col) {
  return row * ul::mma::kTileCols + swz(row, col / ul::mma::kChunkElems) * ul::mma::kChunkElems +
         col % ul::mma::kChunkElems;
}

// The same figures as literal data, row 0 and row 8 of A (which thread holds which element): the
// figure's "T0: {a0,a1} T1: {a0,a1} T2 T3 | T0: {a4,a5} ..." read off as (thread, element) per col.
const int kIsaARow0[16][2] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}, {2, 0}, {2, 1}, {3, 0}, {3, 1},
                              {0, 4}, {0, 5}, {1, 4}, {1, 5}, {2, 4}, {2, 5}, {3, 4}, {3, 5}};
const int kIsaARow8[16][2] = {{0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 2}, {2, 3}, {3, 2}, {3, 3},
                              {0, 6}, {0, 7}, {1, 6}, {1, 7}, {2, 6}, {2, 7}, {3, 6}, {3, 7}};

// ldmatrix ("Warp-level matrix load instruction: ldmatrix"): for .x4, threads 0-7, 8-15, 16-23,
// 24-31 supply the addresses of rows 0-7 of matrices 0, 1, 2, 3; "each thread in a warp holds a
// fragment of a row": thread t receives row t / 4, elements 2 * (t % 4) and +1 of each matrix in
// its register j; .trans delivers the transposed matrix (thread t: elements (2 * (t % 4) + h, t / 4)
// of the rows as addressed).
struct Regs {
  float v[32][4][2];  // (lane, register, half)
};
Regs ldmatrix_x4(const std::vector<float>& smem, const int* addr, bool trans) {
  Regs out{};
  for (int t = 0; t < 32; ++t)
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h) {
        int r = trans ? 2 * (t % 4) + h : t / 4, c = trans ? t / 4 : 2 * (t % 4) + h;
        out.v[t][j][h] = smem[addr[8 * j + r] + c];  // row r of matrix j starts at its lane's address
      }
  return out;
}

// mma.m16n8k16 of one warp, as the hardware defines it: the A and B the lanes' registers hold
// (placed by the ISA tables), D = A B + C, D handed back per the C table. a: 4 regs x 2 halves per
// lane; b: 2 regs x 2; c: 4 floats per lane.
void mma_m16n8k16(const float (*a)[4][2], const float (*b)[2][2], float (*c)[4]) {
  double A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 8; ++i) {
      RowCol p = ptx_isa::isa_a(l, i);
      A[p.row][p.col] = a[l][i / 2][i % 2];
    }
    for (int i = 0; i < 4; ++i) {
      RowCol p = ptx_isa::isa_b(l, i);
      B[p.row][p.col] = b[l][i / 2][i % 2];
      RowCol q = ptx_isa::isa_c(l, i);
      C[q.row][q.col] = c[l][i];
    }
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n)
      for (int k = 0; k < 16; ++k) C[m][n] += A[m][k] * B[k][n];
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      RowCol q = ptx_isa::isa_c(l, i);
      c[l][i] = static_cast<float>(C[q.row][q.col]);
    }
}

/** The B operand of one 8-wide n-tile from an .x4 load: registers 2 * half and 2 * half + 1. */
struct BRegs {
  float v[32][2][2];
};
BRegs b_pair(const Regs& r, int half) {
  BRegs b{};
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 2; ++j)
      for (int h = 0; h < 2; ++h) b.v[l][j][h] = r.v[l][2 * half + j][h];
  return b;
}

struct Check {
  std::string name, detail;
  bool ok;
};
std::vector<Check> checks;
void check(const std::string& name, bool ok, const std::string& detail = "") { checks.push_back({name, detail, ok}); }

std::string at(int lane, int e, RowCol got, RowCol want) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "lane %d element %d: header (%d, %d), ISA (%d, %d)", lane, e, got.row, got.col,
                want.row, want.col);
  return buf;
}

void check_map(const char* name, int elems, int rows, int cols, RowCol (*mine)(int, int), RowCol (*isa)(int, int)) {
  std::string bad;
  std::set<int> cells;
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < elems; ++e) {
      RowCol g = mine(l, e), w = isa(l, e);
      if ((g.row != w.row || g.col != w.col) && bad.empty()) bad = at(l, e, g, w);
      if (g.row >= 0 && g.row < rows && g.col >= 0 && g.col < cols) cells.insert(g.row * cols + g.col);
    }
  check(std::string(name) + " fragment == PTX ISA table", bad.empty(), bad);
  check(std::string(name) + " fragment covers its matrix once", cells.size() == static_cast<size_t>(rows * cols),
        std::to_string(cells.size()) + " distinct cells of " + std::to_string(rows * cols));
}

// Bank model (shared memory: 32 banks of 4 bytes): a warp's 16-byte accesses are served a quarter
// warp (8 lanes) at a time, conflict-free when the 8 chunks sit at 8 different 16-byte positions of
// a 128-byte line; 4-byte accesses are served for all 32 lanes at once, conflict-free when they hit
// 32 different banks (or the same word).
bool phases16_conflict_free(const int* byte_addr, std::string* why) {
  for (int ph = 0; ph < 4; ++ph) {
    std::set<int> pos;
    for (int l = 8 * ph; l < 8 * ph + 8; ++l) pos.insert(byte_addr[l] / 16 % 8);
    if (pos.size() != 8) {
      *why = "lanes " + std::to_string(8 * ph) + "-" + std::to_string(8 * ph + 7) + " hit " +
             std::to_string(pos.size()) + " of 8 bank groups";
      return false;
    }
  }
  return true;
}
bool words_conflict_free(const int* byte_addr, std::string* why) {
  for (int i = 0; i < 32; ++i)
    for (int j = 0; j < i; ++j)
      if (byte_addr[i] / 4 % 32 == byte_addr[j] / 4 % 32 && byte_addr[i] / 4 != byte_addr[j] / 4) {
        *why = "lanes " + std::to_string(j) + " and " + std::to_string(i) + " share bank " +
               std::to_string(byte_addr[i] / 4 % 32);
        return false;
      }
  return true;
}

void check_swizzle() {
  using namespace ul::mma;
  bool bij = true;
  for (int row = 0; row < 128 && bij; ++row) {
    std::set<int> seen;
    for (int c = 0; c < kRowChunks; ++c) seen.insert(swz(row, c));
    bij = seen.size() == static_cast<size_t>(kRowChunks) && *seen.begin() == 0 && *seen.rbegin() == kRowChunks - 1;
  }
  check("swizzle is a bijection of each row's 16 chunks", bij);

  // ldmatrix .x4 reads of every 16x16 block the kernel addresses (Q: rows 0..127; K, V: 64 rows).
  struct Pattern {
    const char* name;
    RowCol (*addr)(int);
    int rows;
  };
  const Pattern patterns[] = {{"ldmatrix Q (A map)", [](int l) { return ul::mma::ldsm_a_x4(l); }, 128},
                              {"ldmatrix K", k_addr, 64},
                              {"ldmatrix.trans V", v_addr, 64}};
  for (const Pattern& p : patterns) {
    std::string why;
    bool ok = true;
    for (int r0 = 0; r0 < p.rows && ok; r0 += 16)
      for (int c0 = 0; c0 < kTileCols && ok; c0 += 16) {
        int addr[32];
        for (int l = 0; l < 32; ++l) {
          RowCol rc = p.addr(l);
          addr[l] = 2 * tile_off(r0 + rc.row, c0 + rc.col);
        }
        ok = phases16_conflict_free(addr, &why);
        if (!ok) why += " at block (" + std::to_string(r0) + ", " + std::to_string(c0) + ")";
      }
    check(std::string(p.name) + " conflict-free", ok, why);
  }
  // cp.async stores of a tile by 256 or 128 threads (K, V, Q; the kernel's two shapes), each warp's
  // 32 chunks; the O epilogue's 16-byte reads by one warp (32 threads) of its 16 rows.
  for (int threads : {256, 128, 32}) {
    std::string why;
    bool ok = true;
    for (int i = 0; i < 2048 / threads && ok; ++i)  // Q's 2048 chunks (K, V: the first 1024; a warp's epilogue: 256)
      for (int w = 0; w < threads / 32 && ok; ++w) {
        int addr[32];
        for (int l = 0; l < 32; ++l) {
          RowCol rc = copy_chunk(32 * w + l, i, threads);
          addr[l] = 2 * tile_off(rc.row, rc.col * kChunkElems);
        }
        ok = phases16_conflict_free(addr, &why);
      }
    check(threads > 32 ? "cp.async tile stores by " + std::to_string(threads) + " threads conflict-free"
                       : "epilogue 16-byte reads conflict-free",
          ok, why);
  }
  // The O epilogue's 4-byte writes: lane (row, 2 cols) of each 8-dim n-tile, rows g and g + 8.
  {
    std::string why;
    bool ok = true;
    for (int nt = 0; nt < kTileCols / 8 && ok; ++nt)
      for (int e = 0; e < 4 && ok; e += 2) {
        int addr[32];
        for (int l = 0; l < 32; ++l) {
          RowCol rc = c_map(l, e);
          addr[l] = 2 * tile_off(rc.row, nt * 8 + rc.col);
        }
        ok = words_conflict_free(addr, &why);
      }
    check("epilogue 4-byte O writes conflict-free", ok, why);
  }
}

// One warp of the kernel on the CPU: Q (16 x 128), K and V (64 x 128) in swizzled tiles; S = Q K^T
// through ldmatrix (A map for Q, K map), mma; P = S reused in registers as the A operand; O = P V
// through ldmatrix.trans (V map), mma; O scattered by the C map. Values are small integers, so the
// products are exact and must equal the plain loops exactly.
void check_warp_products() {
  using namespace ul::mma;
  const int M = 16, N = 64, Dm = kTileCols;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<float> Q(M * Dm), K(N * Dm), V(N * Dm), qs(M * Dm), ks(N * Dm), vs(N * Dm);
  for (int i = 0; i < M * Dm; ++i) Q[i] = static_cast<float>(small(rng));
  for (int i = 0; i < N * Dm; ++i) K[i] = static_cast<float>(small(rng)), V[i] = static_cast<float>(small(rng));
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < Dm; ++c) qs[tile_off(r, c)] = Q[r * Dm + c];
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < Dm; ++c) ks[tile_off(r, c)] = K[r * Dm + c], vs[tile_off(r, c)] = V[r * Dm + c];

  auto addrs = [](RowCol (*map)(int), int r0, int c0, int* out) {
    for (int l = 0; l < 32; ++l) {
      RowCol rc = map(l);
      out[l] = tile_off(r0 + rc.row, c0 + rc.col);
    }
  };
  int addr[32];
  static float qa[Dm / 16][32][4][2];
  for (int kk = 0; kk < Dm / 16; ++kk) {
    addrs([](int l) { return ul::mma::ldsm_a_x4(l); }, 0, 16 * kk, addr);
    Regs r = ldmatrix_x4(qs, addr, false);
    std::memcpy(qa[kk], r.v, sizeof r.v);
  }
  static float s[N / 8][32][4];
  std::memset(s, 0, sizeof s);
  for (int np = 0; np < N / 16; ++np)
    for (int kk = 0; kk < Dm / 16; ++kk) {
      addrs(k_addr, 16 * np, 16 * kk, addr);
      Regs r = ldmatrix_x4(ks, addr, false);
      for (int half = 0; half < 2; ++half) mma_m16n8k16(qa[kk], b_pair(r, half).v, s[2 * np + half]);
    }
  // S against the plain product through the header's C map (the kernel's masking and softmax read
  // each S element's (row, key) this way).
  std::string bad;
  for (int nt = 0; nt < N / 8 && bad.empty(); ++nt)
    for (int l = 0; l < 32 && bad.empty(); ++l)
      for (int e = 0; e < 4; ++e) {
        RowCol rc = c_map(l, e);
        double want = 0;
        for (int d = 0; d < Dm; ++d) want += static_cast<double>(Q[rc.row * Dm + d]) * K[(nt * 8 + rc.col) * Dm + d];
        if (s[nt][l][e] != want) {
          bad = "S n-tile " + std::to_string(nt) + " lane " + std::to_string(l) + " element " + std::to_string(e);
          break;
        }
      }
  check("warp S = Q K^T (ldmatrix Q, K + mma) == plain product", bad.empty(), bad);

  static float o[Dm / 8][32][4];
  std::memset(o, 0, sizeof o);
  for (int kk = 0; kk < N / 16; ++kk) {
    float pa[32][4][2];
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 4; ++r)
        for (int h = 0; h < 2; ++h) pa[l][r][h] = s[p_tile(kk, r)][l][p_elem(r) + h];
    for (int dp = 0; dp < Dm / 16; ++dp) {
      addrs(v_addr, 16 * kk, 16 * dp, addr);
      Regs r = ldmatrix_x4(vs, addr, true);
      for (int half = 0; half < 2; ++half) mma_m16n8k16(pa, b_pair(r, half).v, o[2 * dp + half]);
    }
  }
  bad.clear();
  for (int nt = 0; nt < Dm / 8 && bad.empty(); ++nt)
    for (int l = 0; l < 32 && bad.empty(); ++l)
      for (int e = 0; e < 4; ++e) {
        RowCol rc = c_map(l, e);
        double want = 0;
        for (int k = 0; k < N; ++k) {
          double sk = 0;
          for (int d = 0; d < Dm; ++d) sk += static_cast<double>(Q[rc.row * Dm + d]) * K[k * Dm + d];
          want += sk * V[k * Dm + nt * 8 + rc.col];
        }
        if (o[nt][l][e] != want) {
          bad = "O n-tile " + std::to_string(nt) + " lane " + std::to_string(l) + " element " + std::to_string(e);
          break;
        }
      }
  check("warp O = (Q K^T) V (P in registers, ldmatrix.trans V + mma) == plain product", bad.empty(), bad);

  // P reuse stated directly: A element (lane, 2r + h) of k-step kk is S n-tile p_tile's C element
  // p_elem + h, i.e. the same (row, key).
  bad.clear();
  for (int kk = 0; kk < N / 16 && bad.empty(); ++kk)
    for (int l = 0; l < 32 && bad.empty(); ++l)
      for (int e = 0; e < 8; ++e) {
        RowCol a = ptx_isa::isa_a(l, e), c = c_map(l, p_elem(e / 2) + e % 2);
        int key_a = 16 * kk + a.col, key_c = 8 * p_tile(kk, e / 2) + c.col;
        if (a.row != c.row || key_a != key_c) {
          bad = at(l, e, {c.row, key_c}, {a.row, key_a});
          break;
        }
      }
  check("P.V A fragment == the S accumulators it reuses", bad.empty(), bad);
}

void json_string(const std::string& s) {
  std::putchar('"');
  for (char ch : s) {
    if (ch == '"' || ch == '\\') std::putchar('\\');
    std::putchar(ch);
  }
  std::putchar('"');
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--break") == 0) {
    broken = argv[2];
    const std::set<std::string> known = {"a", "b", "c", "k", "v", "p", "swizzle"};
    if (!known.count(broken)) {
      std::fprintf(stderr, "mma_layout_check: --break takes a, b, c, k, v, p or swizzle\n");
      return 2;
    }
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: mma_layout_check [--break a|b|c|k|v|p|swizzle]\n");
    return 2;
  }
  check_map("mma m16n8k16 A", 8, 16, 16, a_map, ptx_isa::isa_a);
  check_map("mma m16n8k16 B", 4, 16, 8, b_map, ptx_isa::isa_b);
  check_map("mma m16n8k16 C/D", 4, 16, 8, c_map, ptx_isa::isa_c);
  {
    std::string bad;
    for (int col = 0; col < 16; ++col) {
      const int* w0 = kIsaARow0[col];
      const int* w8 = kIsaARow8[col];
      RowCol g0 = a_map(w0[0], w0[1]), g8 = a_map(w8[0], w8[1]);
      if (g0.row != 0 || g0.col != col || g8.row != 8 || g8.col != col) bad = "column " + std::to_string(col);
    }
    check("mma A rows 0 and 8 == the ISA figure's literal cells", bad.empty(), bad);
  }
  check_swizzle();
  check_warp_products();

  bool all = true;
  std::printf("{\"broken\": ");
  json_string(broken);
  std::printf(", \"checks\": [");
  for (size_t i = 0; i < checks.size(); ++i) {
    all = all && checks[i].ok;
    std::printf("%s\n  {\"name\": ", i ? "," : "");
    json_string(checks[i].name);
    std::printf(", \"ok\": %s, \"detail\": ", checks[i].ok ? "true" : "false");
    json_string(checks[i].detail);
    std::printf("}");
  }
  std::printf("\n], \"ok\": %s}\n", all ? "true" : "false");
  return all ? 0 : 1;
}
