// Minimal safetensors reader for the C++ hosts (check programs, addon): header = u64 LE length +
// JSON {name: {dtype, shape, data_offsets}}, then raw little-endian data. Each tensor is read and
// handed to ul_engine_set_tensor, so at most one tensor is in host memory at a time. The TypeScript
// hosts do not use this: they read through core/model/load.ts and pass tensors in.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "ul_engine.h"

namespace ul {
namespace {

struct TensorEntry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

// A JSON subset parser: objects, arrays, strings (no \u escapes needed for tensor names, handled
// as raw bytes), numbers (integers). Enough for safetensors headers; anything else is a format error.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& s) : s_(s) {}

  bool parse(std::vector<TensorEntry>* out) {
    ws();
    if (!eat('{')) return false;
    ws();
    if (eat('}')) return true;
    for (;;) {
      std::string key;
      ws();
      if (!str(&key)) return false;
      ws();
      if (!eat(':')) return false;
      ws();
      if (key == "__metadata__") {
        if (!skip_value()) return false;
      } else {
        TensorEntry t;
        t.name = key;
        if (!tensor(&t)) return false;
        out->push_back(t);
      }
      ws();
      if (eat(',')) continue;
      return eat('}');
    }
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool str(std::string* out) {
    if (!eat('"')) return false;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\') {
        if (++i_ >= s_.size()) return false;
      }
      out->push_back(s_[i_++]);
    }
    return eat('"');
  }
  bool integer(int64_t* v) {
    size_t start = i_;
    bool neg = eat('-');
    int64_t x = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') x = x * 10 + (s_[i_++] - '0');
    if (i_ == start + (neg ? 1 : 0)) return false;
    *v = neg ? -x : x;
    return true;
  }
  bool int_array(std::vector<int64_t>* out) {
    if (!eat('[')) return false;
    ws();
    if (eat(']')) return true;
    for (;;) {
      ws();
      int64_t v;
      if (!integer(&v)) return false;
      out->push_back(v);
      ws();
      if (eat(',')) continue;
      return eat(']');
    }
  }
  bool tensor(TensorEntry* t) {
    if (!eat('{')) return false;
    std::vector<int64_t> offsets;
    for (;;) {
      ws();
      std::string key;
      if (!str(&key)) return false;
      ws();
      if (!eat(':')) return false;
      ws();
      if (key == "dtype") {
        if (!str(&t->dtype)) return false;
      } else if (key == "shape") {
        if (!int_array(&t->shape)) return false;
      } else if (key == "data_offsets") {
        if (!int_array(&offsets) || offsets.size() != 2) return false;
      } else if (!skip_value()) {
        return false;
      }
      ws();
      if (eat(',')) continue;
      if (!eat('}')) return false;
      break;
    }
    if (offsets.size() != 2 || offsets[0] < 0 || offsets[1] < offsets[0]) return false;
    t->begin = static_cast<uint64_t>(offsets[0]);
    t->end = static_cast<uint64_t>(offsets[1]);
    return true;
  }
  bool skip_value() {
    ws();
    if (i_ >= s_.size()) return false;
    char c = s_[i_];
    if (c == '"') {
      std::string tmp;
      return str(&tmp);
    }
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++i_;
      ws();
      if (eat(close)) return true;
      for (;;) {
        ws();
        if (c == '{') {
          std::string k;
          if (!str(&k)) return false;
          ws();
          if (!eat(':')) return false;
        }
        if (!skip_value()) return false;
        ws();
        if (eat(',')) continue;
        return eat(close);
      }
    }
    while (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ']') ++i_;  // number, literal
    return true;
  }
};

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

}  // namespace

Status load_safetensors(ul_engine* e, const char* path) {
  if (!path) return Err(UL_ERR_INVALID_ARGUMENT, "load_safetensors: null path");
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path, "rb"));
  if (!f) return Err(UL_ERR_IO, std::string("cannot open ") + path);
  unsigned char len_bytes[8];
  if (std::fread(len_bytes, 1, 8, f.get()) != 8) return Err(UL_ERR_FORMAT, std::string(path) + ": shorter than 8 bytes");
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | len_bytes[i];
  if (len > (uint64_t{100} << 20)) return Err(UL_ERR_FORMAT, std::string(path) + ": header length " + std::to_string(len) + " is implausible");
  std::string header(len, '\0');
  if (std::fread(&header[0], 1, len, f.get()) != len) return Err(UL_ERR_FORMAT, std::string(path) + ": truncated header");
  std::vector<TensorEntry> tensors;
  if (!HeaderParser(header).parse(&tensors)) return Err(UL_ERR_FORMAT, std::string(path) + ": malformed JSON header");
  std::vector<unsigned char> buf;
  for (const TensorEntry& t : tensors) {
    ul_dtype dt;
    size_t es;
    if (t.dtype == "F32") {
      dt = UL_DTYPE_F32;
      es = 4;
    } else if (t.dtype == "BF16") {
      dt = UL_DTYPE_BF16;
      es = 2;
    } else if (t.dtype == "F16") {
      dt = UL_DTYPE_F16;
      es = 2;
    } else {
      return Err(UL_ERR_FORMAT, std::string(path) + ": tensor " + t.name + " has unsupported dtype " + t.dtype);
    }
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    if (n * es != t.end - t.begin) return Err(UL_ERR_FORMAT, std::string(path) + ": tensor " + t.name + " byte size disagrees with its shape");
    buf.resize(t.end - t.begin);
    if (std::fseek(f.get(), static_cast<long>(8 + len + t.begin), SEEK_SET) != 0 ||
        std::fread(buf.data(), 1, buf.size(), f.get()) != buf.size())
      return Err(UL_ERR_FORMAT, std::string(path) + ": tensor " + t.name + " data is truncated");
    ul_status st = ul_engine_set_tensor(e, t.name.c_str(), dt, t.shape.data(), static_cast<int32_t>(t.shape.size()), buf.data());
    if (st != UL_OK) return Err(st, ul_engine_last_error(e));
  }
  return Status::Ok();
}

}  // namespace ul
