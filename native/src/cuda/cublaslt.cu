// cuBLASLt loaded at run time with dlopen, so the build needs only nvcc and cudart: where the
// library is installed (every CUDA image with PyTorch has it) the projections use it; where it is
// not, cublaslt_open returns nullptr and the backend uses our own kernel (gemm.cu).
//
// The few declarations below mirror cublasLt.h (not on the build machine); the values are the
// documented ABI: CUBLASLT_MATMUL_DESC_TRANSA = 3, TRANSB = 4, CUBLAS_COMPUTE_32F = 68,
// CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUDA_R_32F = 0, CUDA_R_16BF = 14 (library_types.h).
#include <dlfcn.h>

#include "common.cuh"

namespace ul {
namespace cuda {

namespace {
using LtHandle = void*;
using LtDesc = void*;
using LtLayout = void*;
using Fn_Create = int (*)(LtHandle*);
using Fn_Destroy = int (*)(LtHandle);
using Fn_DescCreate = int (*)(LtDesc*, int compute, int scale_type);
using Fn_DescDestroy = int (*)(LtDesc);
using Fn_DescSet = int (*)(LtDesc, int attr, const void* buf, size_t size);
using Fn_LayoutCreate = int (*)(LtLayout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
using Fn_LayoutDestroy = int (*)(LtLayout);
using Fn_Matmul = int (*)(LtHandle, LtDesc, const void* alpha, const void* A, LtLayout, const void* B, LtLayout,
                          const void* beta, const void* C, LtLayout, void* D, LtLayout, const void* algo,
                          void* workspace, size_t workspace_bytes, cudaStream_t);
constexpr int kTransA = 3, kTransB = 4, kCompute32F = 68, kOpN = 0, kOpT = 1, kR32F = 0, kR16BF = 14;
constexpr size_t kWorkspaceBytes = size_t{32} << 20;
}  // namespace

struct CublasLt {
  void* lib = nullptr;
  LtHandle handle = nullptr;
  void* workspace = nullptr;
  Fn_Create create;
  Fn_Destroy destroy;
  Fn_DescCreate desc_create;
  Fn_DescDestroy desc_destroy;
  Fn_DescSet desc_set;
  Fn_LayoutCreate layout_create;
  Fn_LayoutDestroy layout_destroy;
  Fn_Matmul matmul;
};

CublasLt* cublaslt_open() {
  if (const char* pref = getenv("UL_GEMM")) {
    if (std::string(pref) == "own") return nullptr;  // benchmarks: force our kernel
  }
  const char* names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  void* lib = nullptr;
  for (const char* n : names)
    if ((lib = dlopen(n, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  if (!lib) return nullptr;
  auto* lt = new CublasLt();
  lt->lib = lib;
  bool ok = true;
  auto sym = [&](const char* name) {
    void* p = dlsym(lib, name);
    ok = ok && p != nullptr;
    return p;
  };
  lt->create = reinterpret_cast<Fn_Create>(sym("cublasLtCreate"));
  lt->destroy = reinterpret_cast<Fn_Destroy>(sym("cublasLtDestroy"));
  lt->desc_create = reinterpret_cast<Fn_DescCreate>(sym("cublasLtMatmulDescCreate"));
  lt->desc_destroy = reinterpret_cast<Fn_DescDestroy>(sym("cublasLtMatmulDescDestroy"));
  lt->desc_set = reinterpret_cast<Fn_DescSet>(sym("cublasLtMatmulDescSetAttribute"));
  lt->layout_create = reinterpret_cast<Fn_LayoutCreate>(sym("cublasLtMatrixLayoutCreate"));
  lt->layout_destroy = reinterpret_cast<Fn_LayoutDestroy>(sym("cublasLtMatrixLayoutDestroy"));
  lt->matmul = reinterpret_cast<Fn_Matmul>(sym("cublasLtMatmul"));
  if (!ok || lt->create(&lt->handle) != 0 || cudaMalloc(&lt->workspace, kWorkspaceBytes) != cudaSuccess) {
    cublaslt_close(lt);
    return nullptr;
  }
  return lt;
}

void cublaslt_close(CublasLt* lt) {
  if (!lt) return;
  if (lt->workspace) cudaFree(lt->workspace);
  if (lt->handle) lt->destroy(lt->handle);
  if (lt->lib) dlclose(lt->lib);
  delete lt;
}

// Row-major y (M, N) = x (M, K) w (N, K)^T is, in cuBLAS's column-major terms,
// y^T (N x M) = op_T(W stored K x N, ld K) * op_N(X stored K x M, ld K).
Status cublaslt_gemm(CublasLt* lt, const bf16* x, const bf16* w, int M, int K, int N, void* y,
                     bool y_f32_accumulate, cudaStream_t s) {
  LtDesc desc = nullptr;
  LtLayout la = nullptr, lb = nullptr, lc = nullptr;
  int st = lt->desc_create(&desc, kCompute32F, kR32F);
  int opT = kOpT, opN = kOpN;
  if (st == 0) st = lt->desc_set(desc, kTransA, &opT, sizeof(opT));
  if (st == 0) st = lt->desc_set(desc, kTransB, &opN, sizeof(opN));
  if (st == 0) st = lt->layout_create(&la, kR16BF, K, N, K);
  if (st == 0) st = lt->layout_create(&lb, kR16BF, K, M, K);
  if (st == 0) st = lt->layout_create(&lc, y_f32_accumulate ? kR32F : kR16BF, N, M, N);
  float alpha = 1.0f, beta = y_f32_accumulate ? 1.0f : 0.0f;
  if (st == 0)
    st = lt->matmul(lt->handle, desc, &alpha, w, la, x, lb, &beta, y, lc, y, lc, nullptr, lt->workspace,
                    kWorkspaceBytes, s);
  if (lc) lt->layout_destroy(lc);
  if (lb) lt->layout_destroy(lb);
  if (la) lt->layout_destroy(la);
  if (desc) lt->desc_destroy(desc);
  if (st != 0) return Err(UL_ERR_DEVICE, "cublasLtMatmul failed with cublasStatus " + std::to_string(st));
  return Status::Ok();
}

}  // namespace cuda
}  // namespace ul
