// Finding cuBLASLt at run time. The build links cudart only; cuBLASLt is dlopen'ed wherever it is
// installed: an explicit file, the loader path, a CUDA toolkit, or NVIDIA's pip wheels under a
// Python site-packages (where PyTorch's CUDA builds keep it, outside the loader path). Pure C++ (no
// CUDA), so the candidate list and the load report are tested on machines without a GPU
// (`ul_check cublaslt-search`).
#pragma once
#include <string>
#include <vector>

namespace ul {

/** The environment the search reads; from_process() takes it from getenv. */
struct LibrarySearchEnv {
  std::string explicit_path;  // UL_CUBLASLT_PATH: a library file, tried first
  std::string cuda_home;      // CUDA_HOME (else CUDA_PATH)
  std::string python_site;    // UL_PYTHON_SITE: site-packages folders, ':'-separated
  std::string virtual_env;    // VIRTUAL_ENV
  std::string conda_prefix;   // CONDA_PREFIX
  std::string home;           // HOME (~/.local/lib/python3*/site-packages)
  static LibrarySearchEnv from_process();
};

/**
 * Every place cuBLASLt may be, in the order tried:
 *   1. env.explicit_path
 *   2. sonames for the loader path: libcublasLt.so.13, .so.12, .so
 *   3. $CUDA_HOME/{lib64,lib,targets/<any>/lib}, then /usr/local/cuda*\/{lib64,targets/<any>/lib}
 *   4. under each site-packages (UL_PYTHON_SITE, $VIRTUAL_ENV, $CONDA_PREFIX, ~/.local, /usr/local,
 *      /usr, /opt/conda; lib/python3.* with site- and dist-packages): nvidia/<any>/lib (the cuBLAS
 *      wheel's nvidia/cublas/lib, CUDA 13's nvidia/cu13/lib) and torch/lib
 * Within one folder pattern the highest soname version comes first. Files that exist only; each
 * real file once.
 */
std::vector<std::string> cublaslt_candidates(const LibrarySearchEnv& env);

struct LibraryAttempt {
  std::string path;
  std::string error;  // dlerror(), or the missing symbol
};

struct LoadedLibrary {
  void* handle = nullptr;             // dlopen handle, nullptr when nothing loaded
  std::string path;                   // the candidate that loaded
  std::vector<LibraryAttempt> tried;  // the candidates that failed before it (all when none loaded)
};

/** dlopen's each candidate (RTLD_NOW | RTLD_LOCAL) until one loads and exports `symbol`. */
LoadedLibrary load_first(const std::vector<std::string>& candidates, const char* symbol);

/** A JSON string literal (quotes, backslash and control characters escaped). */
std::string json_quote(const std::string& s);

/** JSON members "cublaslt":"path"|null,"cublaslt_tried":[{"path":..,"error":..},...]. */
std::string library_json_members(const LoadedLibrary& lib);

}  // namespace ul
