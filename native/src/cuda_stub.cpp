// Linked into builds without CUDA (emscripten, reference-only hosts): the CUDA backend exists with
// its real signature and fails with a typed NOT_AVAILABLE, so no other file needs a feature check.
#include "backend.h"

namespace ul {

Status make_cuda_backend(std::unique_ptr<Backend>* out) {
  out->reset();
  return Err(UL_ERR_NOT_AVAILABLE, "this build of the native core has no CUDA backend (built without nvcc)");
}

bool cuda_compiled() { return false; }

}  // namespace ul
