// The PTX ISA's mma.m16n8k16 fragment tables, transcribed in the ISA's own form for the CPU tests
// (mma_layout_check.cpp, fa2_emulate.cpp): independent of native/src/cuda/mma_layout.h, which the
// kernel uses and these tests check.
#pragma once

#include "cuda/mma_layout.h"  // RowCol only

namespace ptx_isa {

using ul::mma::RowCol;

// "Matrix Fragments for mma.m16n8k16 with floating point type":
// Matrix A (.f16/.bf16): "row = groupID for ai where i < 2 || 4 <= i < 6; groupID + 8 otherwise;
// col = (threadID_in_group * 2) + (i & 0x1) for ai where i < 4; (threadID_in_group * 2) + (i & 0x1)
// + 8 for ai where i >= 4".
inline RowCol isa_a(int laneid, int i) {
  int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  int row, col;
  if (i < 2 || (4 <= i && i < 6)) row = groupID;
  else row = groupID + 8;
  if (i < 4) col = (threadID_in_group * 2) + (i & 0x1);
  else col = (threadID_in_group * 2) + (i & 0x1) + 8;
  return {row, col};
}
// Matrix B (.f16/.bf16): "row = (threadID_in_group * 2) + (i & 0x1) for bi where i < 2;
// (threadID_in_group * 2) + (i & 0x1) + 8 for bi where i >= 2; col = groupID".
inline RowCol isa_b(int laneid, int i) {
  int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  int row = i < 2 ? (threadID_in_group * 2) + (i & 0x1) : (threadID_in_group * 2) + (i & 0x1) + 8;
  return {row, groupID};
}
// Accumulators C/D (.f32): "row = groupID for ci where i < 2; groupID + 8 for ci where i >= 2;
// col = (threadID_in_group * 2) + (i & 0x1) for ci where i = {0,..,3}".
inline RowCol isa_c(int laneid, int i) {
  int groupID = laneid >> 2, threadID_in_group = laneid % 4;
  return {i < 2 ? groupID : groupID + 8, (threadID_in_group * 2) + (i & 0x1)};
}

}  // namespace ptx_isa
