// Fragment-to-thread maps of the tensor-core instructions attention_fa2.cu uses, as plain host +
// device functions, so that the CPU test (native/programs/mma_layout_check.cpp) checks them against
// the PTX ISA's tables before any GPU runs them, and the kernel computes every lane's row, column and
// shared-memory address through these same functions.
//
//   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32   D (16x8 f32) = A (16x16) . B (16x8) + C
//   ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16      four 8x8 b16 matrices, one register each
//   a 128-dim bf16 tile row in shared memory: 16 chunks of 16 bytes, chunk index XOR-swizzled
//
// Conventions: `lane` is the lane in the warp (0..31); groupID = lane >> 2 and threadID_in_group =
// lane & 3 as the ISA names them. An "element" e numbers the 16-bit values a lane holds in ISA order
// (register e / 2, low half for even e): A has 8 (a0..a7), B 4 (b0..b3); C/D has 4 f32 (c0..c3).
// Written with shifts and masks; the test transcribes the ISA's own formulas and conditions
// separately and compares every (lane, element).
#pragma once

#ifdef __CUDACC__
#define UL_MMA_HD __host__ __device__ __forceinline__
#else
#define UL_MMA_HD inline
#endif

namespace ul {
namespace mma {

struct RowCol {
  int row, col;
};

// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type", figure "MMA .m16n8k16
// fragment layout for matrix A with .f16/.bf16 type": row = groupID (+8 for a2, a3, a6, a7),
// col = threadID_in_group * 2 + (e & 1) (+8 for a4..a7).
UL_MMA_HD RowCol a_elem(int lane, int e) { return {(lane >> 2) | (e & 2) << 2, (lane & 3) << 1 | (e & 1) | (e & 4) << 1}; }

// Same section, figure "... fragment layout for matrix B with .f16/.bf16 type": (row = k, col = n):
// k = threadID_in_group * 2 + (e & 1) (+8 for b2, b3), n = groupID.
UL_MMA_HD RowCol b_elem(int lane, int e) { return {(lane & 3) << 1 | (e & 1) | (e & 2) << 2, lane >> 2}; }

// Same section, figure "... fragment layout for accumulator matrix C/D": row = groupID (+8 for
// c2, c3), col = threadID_in_group * 2 + (e & 1).
UL_MMA_HD RowCol c_elem(int lane, int e) { return {(lane >> 2) | (e & 2) << 2, (lane & 3) << 1 | (e & 1)}; }

// PTX ISA, "Warp-level matrix load instruction: ldmatrix", figure "ldmatrix fragment layout" (one
// 8x8 b16 matrix, non-transposed): lane holds row lane / 4, columns 2 * (lane % 4) + half; with
// .trans the matrix is transposed on the way, so it holds (row 2 * (lane % 4) + half, col lane / 4)
// of the matrix as addressed. For .x4, lanes 8j..8j+7 give the addresses of matrix j's rows 0..7
// and matrix j lands in destination register j.
UL_MMA_HD RowCol ldmatrix_elem(int lane, int half, bool trans) {
  return trans ? RowCol{(lane & 3) << 1 | half, lane >> 2} : RowCol{lane >> 2, (lane & 3) << 1 | half};
}

// ---- the kernel's ldmatrix .x4 address maps: lane -> (row, col) in a 16x16 block of a row-major
// shared tile whose row lane's 16-byte read starts at --------------------------------------------

// A operand (Q rows x dims, or any row-major 16x16 A): registers a0a1 | a2a3 | a4a5 | a6a7 are the
// quadrants (rows 0-7, cols 0-7) | (8-15, 0-7) | (0-7, 8-15) | (8-15, 8-15).
// Also V for the P.V product with .trans (rows = 16 keys, cols = 16 dims): b0b1 of dims 0-7 is keys
// 0-7 | keys 8-15, then the same for dims 8-15; so one map serves both.
UL_MMA_HD RowCol ldsm_a_x4(int lane) { return {lane & 15, (lane >> 4) << 3}; }
UL_MMA_HD RowCol ldsm_v_trans_x4(int lane) { return ldsm_a_x4(lane); }

// B operand of S = Q K^T from K stored row-major (rows = 16 keys, cols = 16 dims): registers are
// (b0b1, b2b3) of the n-tile of keys 0-7, then of keys 8-15: quadrants (keys 0-7, dims 0-7) |
// (keys 0-7, dims 8-15) | (keys 8-15, dims 0-7) | (keys 8-15, dims 8-15).
UL_MMA_HD RowCol ldsm_k_x4(int lane) { return {(lane & 7) | (lane >> 4) << 3, (lane & 8)}; }

// ---- P in registers: the S accumulators of two 8-key n-tiles are the A operand of P.V -----------
// For the P.V k-step kk (keys 16kk..16kk+15) A register r (elements 2r, 2r+1) is the bf16 pair of
// S n-tile s_tile(kk, r) accumulators c[s_elem(r)], c[s_elem(r) + 1]: the A map of (lane, 2r) and
// the C map of (lane, s_elem(r)) name the same (row, key) once the n-tile's 8-key offset is added.
UL_MMA_HD int p_s_tile(int kk, int r) { return 2 * kk + (r >> 1); }
UL_MMA_HD int p_s_elem(int r) { return (r & 1) << 1; }

// ---- shared-memory tiles ------------------------------------------------------------------------
// A row of a K, V, Q or O tile: 128 bf16 = 256 bytes = 16 chunks of 16 bytes, rows packed (no
// padding). Every access of the kernel moves whole 16-byte chunks (cp.async, ldmatrix) or 4 bytes
// within one (the O epilogue), and the hardware serves 16-byte accesses in phases of 8 lanes, each
// phase conflict-free when its 8 chunks fall in 8 different 128-byte bank lines' positions. The
// patterns are 8 rows at one logical chunk (ldmatrix) and 8 consecutive chunks of one row (cp.async,
// the epilogue's reads): XOR-ing the chunk's low 3 bits with row % 8 makes both hit 8 distinct
// positions. A bijection on each row's 16 chunks (XOR with a constant). Rejected: padding rows to
// 136 bf16 (the old kernel): 6% more shared memory, and cp.async / ldmatrix rows stop being
// 128-byte aligned.
constexpr int kTileCols = 128;                 // bf16 per tile row
constexpr int kChunkElems = 8;                 // bf16 per 16-byte chunk
constexpr int kRowChunks = kTileCols / kChunkElems;

UL_MMA_HD int swizzle_chunk(int row, int chunk) { return chunk ^ (row & 7); }

/** The kernel's copy loops: with `threads` threads moving a tile's 16-byte chunks, thread `tid`'s
 *  i-th chunk is (row, chunk) of the tile; consecutive threads take consecutive chunks of a row. */
UL_MMA_HD RowCol copy_chunk(int tid, int i, int threads) {
  return {(tid + i * threads) / kRowChunks, (tid + i * threads) % kRowChunks};
}
/** bf16 offset of (row, col) in a swizzled tile; col may be anywhere inside its chunk. */
UL_MMA_HD int tile_offset(int row, int col) {
  return row * kTileCols + swizzle_chunk(row, col / kChunkElems) * kChunkElems + col % kChunkElems;
}

}  // namespace mma
}  // namespace ul
