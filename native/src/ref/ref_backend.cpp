// The reference kernel set: plain loops in f32 (double where a sum is long), the oracle every other
// kernel is checked against. Host memory; weights f32; activations f32; KV in any supported dtype.
// Also what the emscripten build runs (tests on machines with no GPU).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../backend.h"
#include "../dtype.h"

namespace ul {
namespace {

class RefBackend final : public Backend {
 public:
  const char* name() const override { return "reference"; }
  ul_dtype act_dtype() const override { return UL_DTYPE_F32; }
  ul_dtype weight_dtype() const override { return UL_DTYPE_F32; }
  bool supports_kv(ul_dtype) const override { return true; }

  Status alloc(size_t bytes, void** out) override {
    *out = std::calloc(bytes ? bytes : 1, 1);
    if (!*out) return Err(UL_ERR_OUT_OF_MEMORY, "reference: cannot allocate " + std::to_string(bytes) + " bytes");
    return Status::Ok();
  }
  void release(void* p) override { std::free(p); }
  Status upload(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status download(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status download_2d(void* dst, const void* src, size_t pitch, size_t width, size_t height) override {
    for (size_t r = 0; r < height; ++r)
      std::memcpy(static_cast<char*>(dst) + r * width, static_cast<const char*>(src) + r * pitch, width);
    return Status::Ok();
  }
  Status upload_2d(void* dst, size_t pitch, const void* src, size_t width, size_t height) override {
    for (size_t r = 0; r < height; ++r)
      std::memcpy(static_cast<char*>(dst) + r * pitch, static_cast<const char*>(src) + r * width, width);
    return Status::Ok();
  }
  Status memory_info(uint64_t* free_bytes, uint64_t* total_bytes) override {
    *free_bytes = 0;
    *total_bytes = 0;
    return Status::Ok();
  }

  Status embed(const void* table, const int32_t* tokens, int rows, int dim, float* out) override {
    const float* t = static_cast<const float*>(table);
    for (int r = 0; r < rows; ++r)
      std::memcpy(out + static_cast<size_t>(r) * dim, t + static_cast<size_t>(tokens[r]) * dim, dim * sizeof(float));
    return Status::Ok();
  }

  Status rmsnorm(const float* x, const void* w, int rows, int dim, float eps, void* out) override {
    const float* wf = static_cast<const float*>(w);
    float* o = static_cast<float*>(out);
    for (int r = 0; r < rows; ++r) {
      const float* xr = x + static_cast<size_t>(r) * dim;
      double ss = 0;
      for (int i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      // HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) in f32, then times the weight.
      float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
      for (int i = 0; i < dim; ++i) o[static_cast<size_t>(r) * dim + i] = wf[i] * (xr[i] * inv);
    }
    return Status::Ok();
  }

  Status matmul(const void* x, const void* w, int rows, int in_dim, int out_dim, void* y,
                bool y_f32) override {
    (void)y_f32;  // act dtype is f32 here: accumulate vs write is the only difference
    const float* xf = static_cast<const float*>(x);
    const float* wf = static_cast<const float*>(w);
    float* yf = static_cast<float*>(y);
    for (int r = 0; r < rows; ++r) {
      const float* xr = xf + static_cast<size_t>(r) * in_dim;
      for (int o = 0; o < out_dim; ++o) {
        const float* wr = wf + static_cast<size_t>(o) * in_dim;
        // Four partial sums: deterministic, and lets the compiler vectorise the loop.
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 4 <= in_dim; i += 4) {
          s0 += xr[i] * wr[i];
          s1 += xr[i + 1] * wr[i + 1];
          s2 += xr[i + 2] * wr[i + 2];
          s3 += xr[i + 3] * wr[i + 3];
        }
        for (; i < in_dim; ++i) s0 += xr[i] * wr[i];
        float s = (s0 + s1) + (s2 + s3);
        size_t at = static_cast<size_t>(r) * out_dim + o;
        yf[at] = y_f32 ? yf[at] + s : s;
      }
    }
    return Status::Ok();
  }

  Status rope(void* x, int rows, int heads, int head_dim, int rot_dim, int pos0,
              const double* inv_freq, float scaling) override {
    float* xf = static_cast<float*>(x);
    int half = rot_dim / 2;
    std::vector<float> cs(half), sn(half);
    for (int r = 0; r < rows; ++r) {
      // Angle in f64 as core/model/rope.ts does (HF uses f32, off by up to 0.25 rad at 4M).
      double pos = static_cast<double>(pos0 + r);
      for (int i = 0; i < half; ++i) {
        double a = pos * inv_freq[i];
        cs[i] = static_cast<float>(std::cos(a) * scaling);
        sn[i] = static_cast<float>(std::sin(a) * scaling);
      }
      for (int h = 0; h < heads; ++h) {
        float* v = xf + (static_cast<size_t>(r) * heads + h) * head_dim;
        for (int i = 0; i < half; ++i) {
          float a = v[i], b = v[i + half];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = b * cs[i] + a * sn[i];
        }
      }
    }
    return Status::Ok();
  }

  Status swiglu(const void* gate, const void* up, size_t n, void* out) override {
    const float* g = static_cast<const float*>(gate);
    const float* u = static_cast<const float*>(up);
    float* o = static_cast<float*>(out);
    for (size_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    return Status::Ok();
  }

  Status kv_store(const KvStoreArgs& a) override {
    const float* src = static_cast<const float*>(a.src);
    auto in = [&](int r, int h, int d) { return src[(static_cast<size_t>(r) * a.kv_heads + h) * a.head_dim + d]; };
    // Element index of (kv head h, slot p) from the base of p's tier (kv_row: resident or staged).
    size_t es = dtype_size(a.kv_dtype), row = static_cast<size_t>(a.head_dim) * es;
    auto base = [&](int h, int p) {
      return kv_row(static_cast<unsigned char*>(a.cache), static_cast<unsigned char*>(a.stage), a.max_pos, a.stage_slots, h, p,
                    static_cast<int>(row));
    };
    if (a.kv_dtype != UL_DTYPE_FP8_E4M3) {
      for (int h = 0; h < a.kv_heads; ++h)
        for (int r = 0; r < a.rows; ++r)
          for (int d = 0; d < a.head_dim; ++d) store_from_f32(base(h, a.pos0 + r), a.kv_dtype, d, in(r, h, d));
      return Status::Ok();
    }
    // fp8: block by block (blocks of kFp8Block slots; a block lies in one tier), see fp8_block_scale.
    int end = a.pos0 + a.rows;
    for (int h = 0; h < a.kv_heads; ++h) {
      for (int b = a.pos0 / kFp8Block; b * kFp8Block < end; ++b) {
        int first = b * kFp8Block, lo = std::max(a.pos0, first), hi = std::min(end, first + kFp8Block);
        uint8_t* cache = base(h, first);  // the block's first row; its rows follow
        auto at = [&](int p) { return static_cast<size_t>(p - first) * a.head_dim; };
        float amax = 0;
        for (int p = lo; p < hi; ++p)
          for (int d = 0; d < a.head_dim; ++d) amax = std::max(amax, std::fabs(in(p - a.pos0, h, d)));
        float& scale = *kv_scale_at(a.scale, a.stage_scale, a.max_pos, a.stage_slots, h, first);
        float requant = 1.0f;
        scale = fp8_block_scale(scale, lo == first, amax, &requant);
        if (requant != 1.0f)
          for (size_t i = 0; i < at(lo); ++i) cache[i] = f32_to_fp8_e4m3(fp8_e4m3_to_f32(cache[i]) * requant);
        for (int p = lo; p < hi; ++p)
          for (int d = 0; d < a.head_dim; ++d)
            cache[at(p) + d] = f32_to_fp8_e4m3(fp8_quantize_input(in(p - a.pos0, h, d), scale));
      }
    }
    return Status::Ok();
  }

  Status attention(const AttentionArgs& a) override {
    // Without a plan: one item at pos0 whose slots are its positions.
    StepItemPlan one{0, a.rows, a.pos0, 0};
    const StepItemPlan* items = a.plan ? a.plan->items : &one;
    int n_items = a.plan ? a.plan->n_items : 1;
    const int32_t* tables = a.plan ? a.plan->tables : nullptr;  // nullptr: slot = position
    for (int i = 0; i < n_items; ++i) attend_item(a, items[i], tables ? tables + items[i].table_off : nullptr);
    return Status::Ok();
  }

  /** One item's rows over its block table (nullptr: slot = position). */
  void attend_item(const AttentionArgs& a, const StepItemPlan& it, const int32_t* table) const {
    const float* q = static_cast<const float*>(a.q);
    float* out = static_cast<float*>(a.out);
    int group = a.heads / a.kv_heads, bt = a.plan ? a.plan->block_tokens : 1;
    int len = it.pos0 + it.rows;
    std::vector<float> scores(len);
    std::vector<int> slot(len);
    for (int p = 0; p < len; ++p) slot[p] = table ? slot_of(table, bt, p) : p;
    size_t row = static_cast<size_t>(a.head_dim) * dtype_size(a.kv_dtype);
    // K / V row of (kv head, slot) by kv_row, the rule every kernel reads the two tiers with.
    auto k_row = [&](int kvh, int s) {
      return kv_row(static_cast<const unsigned char*>(a.k_cache), static_cast<const unsigned char*>(a.k_stage), a.max_pos,
                    a.stage_slots, kvh, s, static_cast<int>(row));
    };
    auto v_row = [&](int kvh, int s) {
      return kv_row(static_cast<const unsigned char*>(a.v_cache), static_cast<const unsigned char*>(a.v_stage), a.max_pos,
                    a.stage_slots, kvh, s, static_cast<int>(row));
    };
    std::vector<double> acc(a.head_dim);
    for (int r = it.row0; r < it.row0 + it.rows; ++r) {
      int visible = it.pos0 + (r - it.row0) + 1;  // causal: keys at positions <= this query's
      for (int h = 0; h < a.heads; ++h) {
        int kvh = h / group;
        // fp8: x = value * scale of (kvh, the slot's block); other dtypes: scale 1.
        auto k_scale = [&](int s) { return a.k_scale ? *kv_scale_at(a.k_scale, a.k_stage_scale, a.max_pos, a.stage_slots, kvh, s) : 1.0f; };
        auto v_scale = [&](int s) { return a.v_scale ? *kv_scale_at(a.v_scale, a.v_stage_scale, a.max_pos, a.stage_slots, kvh, s) : 1.0f; };
        const float* qr = q + (static_cast<size_t>(r) * a.heads + h) * a.head_dim;
        float m = -std::numeric_limits<float>::infinity();
        for (int p = 0; p < visible; ++p) {
          const unsigned char* kr = k_row(kvh, slot[p]);
          double s = 0;
          for (int d = 0; d < a.head_dim; ++d) s += static_cast<double>(qr[d]) * load_as_f32(kr, a.kv_dtype, d);
          scores[p] = static_cast<float>(s * k_scale(slot[p])) * a.softmax_scale;
          m = std::max(m, scores[p]);
        }
        double denom = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int p = 0; p < visible; ++p) {
          double e = std::exp(static_cast<double>(scores[p] - m));
          denom += e;
          double ev = e * v_scale(slot[p]);
          const unsigned char* vr = v_row(kvh, slot[p]);
          for (int d = 0; d < a.head_dim; ++d) acc[d] += ev * load_as_f32(vr, a.kv_dtype, d);
        }
        float* o = out + (static_cast<size_t>(r) * a.heads + h) * a.head_dim;
        for (int d = 0; d < a.head_dim; ++d) o[d] = static_cast<float>(acc[d] / denom);
      }
    }
  }

  Status zero(void* p, size_t bytes) override {
    std::memset(p, 0, bytes);
    return Status::Ok();
  }
  Status copy_device(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }

  Status sample(const float* logits, int vocab, float temperature, uint64_t seed, uint64_t counter,
                int32_t* token) override {
    int best = 0;
    float best_v = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < vocab; ++i) {
      float v = logits[i];
      if (temperature > 0) {
        // Gumbel-max: argmax(logit / T + G) is an exact sample of softmax(logit / T).
        v = static_cast<float>(v / temperature + gumbel_noise(seed, counter, static_cast<uint64_t>(i)));
      }
      if (v > best_v) {
        best_v = v;
        best = i;
      }
    }
    *token = best;
    return Status::Ok();
  }

  Status sync() override { return Status::Ok(); }

  // The host tier is plain memory and a copy happens when it is queued: the engine's code path
  // (stage in, fences, write back) is the one CUDA runs, minus the overlap.
  Status alloc_host(size_t bytes, void** out) override { return alloc(bytes, out); }
  void release_host(void* p) override { std::free(p); }
  Status copy_async(void* dst, const void* src, size_t width, size_t height, size_t pitch, bool) override {
    for (size_t r = 0; r < height; ++r)
      std::memcpy(static_cast<char*>(dst) + r * pitch, static_cast<const char*>(src) + r * pitch, width);
    return Status::Ok();
  }
  Status copy_waits_compute() override { return Status::Ok(); }
  Status compute_waits_copy() override { return Status::Ok(); }
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend() { return std::make_unique<RefBackend>(); }

}  // namespace ul
