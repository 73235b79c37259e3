// cuBLASLt loaded at run time with dlopen, so the build needs only nvcc and cudart. Where the
// library is found (library_search.h: explicit path, loader path, CUDA toolkit, NVIDIA's pip wheels)
// the projections use it; where it is not, cublaslt_open returns nullptr and the backend uses our
// own kernel (gemm.cu). UL_GEMM=own forces our kernel, UL_GEMM=cublaslt makes a missing cuBLASLt
// an error (the GPU check uses both).
//
// Plans: the matmul descriptor, the three layouts and the heuristic's algorithm are built once per
// (m, n, k, output dtype, transposes) and reused. Rebuilding them per call cost tens of
// microseconds, 224 times per decoded token (7 projections x 32 layers). The map is capped: chunked
// prefill with arbitrary tail sizes would otherwise grow it without bound, so at kMaxPlans it is
// emptied and refilled (a rebuild costs one heuristic call per shape, not a correctness issue).
//
// The declarations below mirror cublasLt.h (not on the build machine); the values are the documented
// ABI: CUBLASLT_MATMUL_DESC_TRANSA = 3, TRANSB = 4, CUBLAS_COMPUTE_32F = 68, CUBLAS_OP_N = 0,
// CUBLAS_OP_T = 1, CUDA_R_32F = 0, CUDA_R_16BF = 14 (library_types.h),
// CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1 (uint64_t); cublasLtMatmulHeuristicResult_t is
// { cublasLtMatmulAlgo_t algo (8 x uint64_t); size_t workspaceSize; cublasStatus_t state;
//   float wavesCount; int reserved[4]; } = 96 bytes.
#include <dlfcn.h>

#include <cstdlib>
#include <unordered_map>

#include "../library_search.h"
#include "common.cuh"

namespace ul {
namespace cuda {

namespace {
using LtHandle = void*;
using LtDesc = void*;
using LtLayout = void*;
using LtPref = void*;
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristic {
  LtAlgo algo;
  size_t workspace_size;
  int state;
  float waves_count;
  int reserved[4];
};
static_assert(sizeof(LtHeuristic) == 96, "cublasLtMatmulHeuristicResult_t is 96 bytes");
using Fn_Create = int (*)(LtHandle*);
using Fn_Destroy = int (*)(LtHandle);
using Fn_DescCreate = int (*)(LtDesc*, int compute, int scale_type);
using Fn_DescDestroy = int (*)(LtDesc);
using Fn_DescSet = int (*)(LtDesc, int attr, const void* buf, size_t size);
using Fn_LayoutCreate = int (*)(LtLayout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
using Fn_LayoutDestroy = int (*)(LtLayout);
using Fn_PrefCreate = int (*)(LtPref*);
using Fn_PrefDestroy = int (*)(LtPref);
using Fn_PrefSet = int (*)(LtPref, int attr, const void* buf, size_t size);
using Fn_Heuristic = int (*)(LtHandle, LtDesc, LtLayout a, LtLayout b, LtLayout c, LtLayout d, LtPref,
                             int requested, LtHeuristic* results, int* returned);
using Fn_Matmul = int (*)(LtHandle, LtDesc, const void* alpha, const void* A, LtLayout, const void* B, LtLayout,
                          const void* beta, const void* C, LtLayout, void* D, LtLayout, const LtAlgo* algo,
                          void* workspace, size_t workspace_bytes, cudaStream_t);
constexpr int kTransA = 3, kTransB = 4, kCompute32F = 68, kOpN = 0, kOpT = 1, kR32F = 0, kR16BF = 14;
constexpr int kPrefMaxWorkspace = 1;
constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr size_t kMaxPlans = 256;

struct PlanKey {
  int m, n, k, out_dtype, trans_a, trans_b;
  bool operator==(const PlanKey& o) const {
    return m == o.m && n == o.n && k == o.k && out_dtype == o.out_dtype && trans_a == o.trans_a && trans_b == o.trans_b;
  }
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& p) const {
    uint64_t h = 1469598103934665603ull;
    for (int v : {p.m, p.n, p.k, p.out_dtype, p.trans_a, p.trans_b}) h = (h ^ static_cast<uint32_t>(v)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};
/** Everything cublasLtMatmul needs for one shape except the pointers. */
struct Plan {
  LtDesc desc = nullptr;
  LtLayout a = nullptr, b = nullptr, c = nullptr;  // a: W (K x N), b: X (K x M), c = d: Y (N x M)
  LtAlgo algo{};
};
}  // namespace

struct CublasLt {
  LoadedLibrary lib;
  LtHandle handle = nullptr;
  LtPref pref = nullptr;
  void* workspace = nullptr;
  std::unordered_map<PlanKey, Plan, PlanKeyHash> plans;
  size_t plans_built = 0;  // over the handle's life (a figure for the GPU check)
  Fn_Create create;
  Fn_Destroy destroy;
  Fn_DescCreate desc_create;
  Fn_DescDestroy desc_destroy;
  Fn_DescSet desc_set;
  Fn_LayoutCreate layout_create;
  Fn_LayoutDestroy layout_destroy;
  Fn_PrefCreate pref_create;
  Fn_PrefDestroy pref_destroy;
  Fn_PrefSet pref_set;
  Fn_Heuristic heuristic;
  Fn_Matmul matmul;

  void free_plan(Plan& p) {
    if (p.c) layout_destroy(p.c);
    if (p.b) layout_destroy(p.b);
    if (p.a) layout_destroy(p.a);
    if (p.desc) desc_destroy(p.desc);
    p = Plan{};
  }
  void clear_plans() {
    for (auto& kv : plans) free_plan(kv.second);
    plans.clear();
  }
};

namespace {

/** Binds the entry points of a loaded library and starts it; "" when usable, else why not. */
std::string start(CublasLt* lt) {
  bool ok = true;
  auto sym = [&](const char* name) {
    void* p = dlsym(lt->lib.handle, name);
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
  lt->pref_create = reinterpret_cast<Fn_PrefCreate>(sym("cublasLtMatmulPreferenceCreate"));
  lt->pref_destroy = reinterpret_cast<Fn_PrefDestroy>(sym("cublasLtMatmulPreferenceDestroy"));
  lt->pref_set = reinterpret_cast<Fn_PrefSet>(sym("cublasLtMatmulPreferenceSetAttribute"));
  lt->heuristic = reinterpret_cast<Fn_Heuristic>(sym("cublasLtMatmulAlgoGetHeuristic"));
  lt->matmul = reinterpret_cast<Fn_Matmul>(sym("cublasLtMatmul"));
  if (!ok) return "a cuBLASLt entry point is missing";
  int st = lt->create(&lt->handle);
  if (st != 0) {
    lt->handle = nullptr;
    return "cublasLtCreate: cublasStatus " + std::to_string(st);
  }
  uint64_t ws = kWorkspaceBytes;
  if ((st = lt->pref_create(&lt->pref)) != 0 || (st = lt->pref_set(lt->pref, kPrefMaxWorkspace, &ws, sizeof ws)) != 0)
    return "cublasLt preference: cublasStatus " + std::to_string(st);
  if (cudaMalloc(&lt->workspace, kWorkspaceBytes) != cudaSuccess) {
    cudaGetLastError();
    lt->workspace = nullptr;
    return "cudaMalloc of the 32 MiB cuBLASLt workspace failed";
  }
  return "";
}

}  // namespace

Status cublaslt_open(CublasLt** out, std::string* report) {
  *out = nullptr;
  const char* pref = getenv("UL_GEMM");
  std::string mode = pref ? pref : "";
  if (mode == "own") {  // benchmarks and the GPU check: force our kernel
    *report = "\"gemm_forced\":\"own\",\"cublaslt\":null,\"cublaslt_tried\":[]";
    return Status::Ok();
  }
  // The first candidate that loads AND starts: an old toolkit's library on the loader path that
  // cannot start (driver too old for it) must not hide a working pip wheel later in the list.
  std::vector<std::string> cands = cublaslt_candidates(LibrarySearchEnv::from_process());
  std::vector<LibraryAttempt> tried;
  std::string unusable;  // the last candidate that loaded but could not start, and why
  for (size_t from = 0; from < cands.size();) {
    LoadedLibrary lib = load_first(std::vector<std::string>(cands.begin() + from, cands.end()), "cublasLtMatmul");
    tried.insert(tried.end(), lib.tried.begin(), lib.tried.end());
    if (!lib.handle) break;
    from += lib.tried.size() + 1;
    auto* lt = new CublasLt();
    lt->lib = lib;
    std::string why = start(lt);
    if (why.empty()) {
      lt->lib.tried = tried;
      *report = library_json_members(lt->lib);
      *out = lt;
      return Status::Ok();
    }
    tried.push_back({lib.path, "loaded but unusable: " + why});
    unusable = lib.path + ": " + why;
    cublaslt_close(lt);
  }
  LoadedLibrary none;
  none.tried = tried;
  *report = library_json_members(none);
  // Loaded but unusable: a device error, not a quiet fallback to our GEMM (the check must see it).
  if (!unusable.empty()) return Err(UL_ERR_DEVICE, "cuBLASLt found but unusable: " + unusable);
  if (mode == "cublaslt")
    return Err(UL_ERR_NOT_AVAILABLE, "UL_GEMM=cublaslt but no cuBLASLt loaded: {" + *report + "}");
  return Status::Ok();
}

void cublaslt_close(CublasLt* lt) {
  if (!lt) return;
  lt->clear_plans();
  if (lt->workspace) cudaFree(lt->workspace);
  if (lt->pref) lt->pref_destroy(lt->pref);
  if (lt->handle) lt->destroy(lt->handle);
  if (lt->lib.handle) dlclose(lt->lib.handle);
  delete lt;
}

size_t cublaslt_plans_built(const CublasLt* lt) { return lt ? lt->plans_built : 0; }

namespace {

/** Builds the plan of one shape: descriptor, layouts, and the heuristic's best algorithm. */
Status build_plan(CublasLt* lt, const PlanKey& key, Plan* p) {
  int st = lt->desc_create(&p->desc, kCompute32F, kR32F);
  if (st == 0) st = lt->desc_set(p->desc, kTransA, &key.trans_a, sizeof(int));
  if (st == 0) st = lt->desc_set(p->desc, kTransB, &key.trans_b, sizeof(int));
  if (st == 0) st = lt->layout_create(&p->a, kR16BF, key.k, key.n, key.k);
  if (st == 0) st = lt->layout_create(&p->b, kR16BF, key.k, key.m, key.k);
  if (st == 0) st = lt->layout_create(&p->c, key.out_dtype, key.n, key.m, key.n);
  LtHeuristic h{};
  int found = 0;
  if (st == 0) st = lt->heuristic(lt->handle, p->desc, p->a, p->b, p->c, p->c, lt->pref, 1, &h, &found);
  if (st == 0 && found > 0 && h.state != 0) st = h.state;  // the algorithm's own status
  if (st != 0 || found == 0) {
    lt->free_plan(*p);
    return Err(UL_ERR_DEVICE, "cuBLASLt has no algorithm for y (" + std::to_string(key.m) + ", " + std::to_string(key.n) +
                                  ") = x . w^T, K " + std::to_string(key.k) + " (cublasStatus " + std::to_string(st) + ")");
  }
  p->algo = h.algo;
  ++lt->plans_built;
  return Status::Ok();
}

}  // namespace

// Row-major y (M, N) = x (M, K) w (N, K)^T is, in cuBLAS's column-major terms,
// y^T (N x M) = op_T(W stored K x N, ld K) * op_N(X stored K x M, ld K).
Status cublaslt_gemm(CublasLt* lt, const bf16* x, const bf16* w, int M, int K, int N, void* y,
                     bool y_f32_accumulate, cudaStream_t s) {
  PlanKey key{M, N, K, y_f32_accumulate ? kR32F : kR16BF, kOpT, kOpN};
  auto it = lt->plans.find(key);
  if (it == lt->plans.end()) {
    if (lt->plans.size() >= kMaxPlans) lt->clear_plans();
    Plan p;
    UL_TRY(build_plan(lt, key, &p));
    it = lt->plans.emplace(key, p).first;
  }
  const Plan& p = it->second;
  float alpha = 1.0f, beta = y_f32_accumulate ? 1.0f : 0.0f;
  int st = lt->matmul(lt->handle, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo, lt->workspace,
                      kWorkspaceBytes, s);
  if (st != 0) return Err(UL_ERR_DEVICE, "cublasLtMatmul failed with cublasStatus " + std::to_string(st));
  return Status::Ok();
}

}  // namespace cuda
}  // namespace ul
