// cuBLASLt's candidate list and loader (library_search.h).
#include "library_search.h"

#include <dlfcn.h>
#include <glob.h>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>

namespace ul {
namespace {

std::string env_or_empty(const char* name) {
  const char* v = getenv(name);
  return v ? v : "";
}

/** The major version after ".so." (libcublasLt.so.13.1.0 -> 13), -1 for a bare ".so". */
int soname_major(const std::string& path) {
  size_t at = path.rfind(".so.");
  if (at == std::string::npos) return -1;
  return std::atoi(path.c_str() + at + 4);
}

/** Files matching a glob pattern: highest soname major first, then the path, descending (so
 *  /usr/local/cuda/ comes before /usr/local/cuda-12.4/, its usual symlink target). */
std::vector<std::string> glob_files(const std::string& pattern) {
  std::vector<std::string> out;
  glob_t g{};
  if (glob(pattern.c_str(), 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    int va = soname_major(a), vb = soname_major(b);
    return va != vb ? va > vb : a > b;
  });
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

LibrarySearchEnv LibrarySearchEnv::from_process() {
  LibrarySearchEnv e;
  e.explicit_path = env_or_empty("UL_CUBLASLT_PATH");
  e.cuda_home = env_or_empty("CUDA_HOME");
  if (e.cuda_home.empty()) e.cuda_home = env_or_empty("CUDA_PATH");
  e.python_site = env_or_empty("UL_PYTHON_SITE");
  e.virtual_env = env_or_empty("VIRTUAL_ENV");
  e.conda_prefix = env_or_empty("CONDA_PREFIX");
  e.home = env_or_empty("HOME");
  return e;
}

std::vector<std::string> cublaslt_candidates(const LibrarySearchEnv& env) {
  const std::string lib = "libcublasLt.so*";
  std::vector<std::string> out;
  std::set<std::string> seen;  // real paths: a symlink and its target are one candidate
  auto add_file = [&](const std::string& path) {
    char real[PATH_MAX];
    std::string key = realpath(path.c_str(), real) ? std::string(real) : path;
    if (seen.insert(key).second) out.push_back(path);
  };
  auto add_glob = [&](const std::string& dir_pattern) {
    for (const std::string& f : glob_files(dir_pattern + "/" + lib)) add_file(f);
  };

  if (!env.explicit_path.empty()) out.push_back(env.explicit_path);  // tried even if missing: its error is reported
  for (const char* soname : {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}) out.push_back(soname);

  if (!env.cuda_home.empty()) {
    for (const char* sub : {"/lib64", "/lib", "/targets/*/lib"}) add_glob(env.cuda_home + sub);
  }
  add_glob("/usr/local/cuda*/lib64");
  add_glob("/usr/local/cuda*/targets/*/lib");

  std::vector<std::string> sites = split(env.python_site, ':');
  std::vector<std::string> prefixes;
  for (const std::string& p : {env.virtual_env, env.conda_prefix}) {
    if (!p.empty()) prefixes.push_back(p);
  }
  if (!env.home.empty()) prefixes.push_back(env.home + "/.local");
  for (const char* p : {"/usr/local", "/usr", "/opt/conda"}) prefixes.push_back(p);
  for (const std::string& p : prefixes) {
    for (const char* kind : {"site-packages", "dist-packages"}) {
      for (const std::string& d : glob_files(p + "/lib/python3*/" + kind)) sites.push_back(d);
    }
  }
  sites.push_back("/usr/lib/python3/dist-packages");  // Debian's unversioned folder
  for (const std::string& site : sites) {
    add_glob(site + "/nvidia/*/lib");
    add_glob(site + "/torch/lib");
  }
  return out;
}

LoadedLibrary load_first(const std::vector<std::string>& candidates, const char* symbol) {
  LoadedLibrary r;
  for (const std::string& path : candidates) {
    dlerror();
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* why = dlerror();
      r.tried.push_back({path, why ? why : "dlopen failed"});
      continue;
    }
    if (!dlsym(h, symbol)) {
      r.tried.push_back({path, std::string("loaded but has no ") + symbol});
      dlclose(h);
      continue;
    }
    r.handle = h;
    r.path = path;
    return r;
  }
  return r;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string library_json_members(const LoadedLibrary& lib) {
  std::string s = "\"cublaslt\":" + (lib.handle ? json_quote(lib.path) : std::string("null")) + ",\"cublaslt_tried\":[";
  for (size_t i = 0; i < lib.tried.size(); ++i) {
    s += (i ? "," : "") + std::string("{\"path\":") + json_quote(lib.tried[i].path) +
         ",\"error\":" + json_quote(lib.tried[i].error) + "}";
  }
  return s + "]";
}

}  // namespace ul
