// Host-side element conversions shared by the engine and the reference kernels. bf16 rounds to
// nearest even (as torch does); fp8 e4m3 is the OCP "fn" variant (max 448, no inf, NaN = 0x7f).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ul_engine.h"

namespace ul {

inline size_t dtype_size(ul_dtype dt) {
  switch (dt) {
    case UL_DTYPE_F32:
      return 4;
    case UL_DTYPE_BF16:
    case UL_DTYPE_F16:
      return 2;
    case UL_DTYPE_FP8_E4M3:
      return 1;
  }
  return 0;
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    v = man ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7e00u);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24, round to nearest even
    float q = std::nearbyint(a * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(q));
  }
  int e;
  float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  float q = std::nearbyint(m * 2048.0f);  // 11 significant bits
  if (q >= 2048.0f) {
    q /= 2;
    e += 1;
  }
  uint32_t exp = static_cast<uint32_t>(e - 1 + 15);
  return static_cast<uint16_t>(sign | (exp << 10) | (static_cast<uint32_t>(q) & 0x3ffu));
}

inline float fp8_e4m3_to_f32(uint8_t b) {
  uint32_t sign = b >> 7, exp = (b >> 3) & 0xfu, man = b & 0x7u;
  if (exp == 15 && man == 7) return NAN;
  float v = exp == 0 ? std::ldexp(static_cast<float>(man), -9)
                     : std::ldexp(static_cast<float>(man | 8u), static_cast<int>(exp) - 10);
  return sign ? -v : v;
}

inline uint8_t f32_to_fp8_e4m3(float f) {
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (std::isnan(f)) return 0x7f;
  if (a >= 448.0f) return sign | 0x7e;  // saturate
  if (a < 0.015625f) {                  // subnormal: multiples of 2^-9
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  int e;
  float m = std::frexp(a, &e);
  float q = std::nearbyint(m * 16.0f);  // 4 significant bits
  if (q >= 16.0f) {
    q /= 2;
    e += 1;
  }
  uint32_t exp = static_cast<uint32_t>(e - 1 + 7);
  if (exp > 15 || (exp == 15 && (static_cast<uint32_t>(q) & 7u) == 7u)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((exp << 3) | (static_cast<uint32_t>(q) & 7u));
}

inline float load_as_f32(const void* p, ul_dtype dt, size_t i) {
  switch (dt) {
    case UL_DTYPE_F32:
      return static_cast<const float*>(p)[i];
    case UL_DTYPE_BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case UL_DTYPE_F16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case UL_DTYPE_FP8_E4M3:
      return fp8_e4m3_to_f32(static_cast<const uint8_t*>(p)[i]);
  }
  return 0;
}

inline void store_from_f32(void* p, ul_dtype dt, size_t i, float v) {
  switch (dt) {
    case UL_DTYPE_F32:
      static_cast<float*>(p)[i] = v;
      break;
    case UL_DTYPE_BF16:
      static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
      break;
    case UL_DTYPE_F16:
      static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
      break;
    case UL_DTYPE_FP8_E4M3:
      static_cast<uint8_t*>(p)[i] = f32_to_fp8_e4m3(v);
      break;
  }
}

/** n elements from src (src_dt) to dst (dst_dt); plain copy when the types agree. */
inline void convert(const void* src, ul_dtype src_dt, void* dst, ul_dtype dst_dt, size_t n) {
  if (src_dt == dst_dt) {
    std::memcpy(dst, src, n * dtype_size(src_dt));
    return;
  }
  for (size_t i = 0; i < n; ++i) store_from_f32(dst, dst_dt, i, load_as_f32(src, src_dt, i));
}

}  // namespace ul
