// Host helpers for flashgdn_tensor_t: dtype sizes and names, element addressing, and scalar
// conversions (fp16/bf16 bit patterns <-> float) used by the CPU reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "flashgdn/flashgdn.h"

namespace flashgdn {

// The (b, t, h) strides of a 3-d or 4-d tensor description, in elements.
inline void strides3(const flashgdn_tensor_t& t, int64_t (&s)[3]) {
  for (int i = 0; i < 3; ++i) s[i] = t.stride[i];
}

inline int64_t dtype_size(int32_t d) {
  switch (d) {
    case FLASHGDN_DTYPE_FLOAT32: return 4;
    case FLASHGDN_DTYPE_FLOAT16: return 2;
    case FLASHGDN_DTYPE_BFLOAT16: return 2;
    case FLASHGDN_DTYPE_FLOAT64: return 8;
    case FLASHGDN_DTYPE_INT32: return 4;
    case FLASHGDN_DTYPE_INT64: return 8;
    case FLASHGDN_DTYPE_BOOL: return 1;
    default: return 0;
  }
}

inline const char* dtype_name(int32_t d) {
  switch (d) {
    case FLASHGDN_DTYPE_FLOAT32: return "float32";
    case FLASHGDN_DTYPE_FLOAT16: return "float16";
    case FLASHGDN_DTYPE_BFLOAT16: return "bfloat16";
    case FLASHGDN_DTYPE_FLOAT64: return "float64";
    case FLASHGDN_DTYPE_INT32: return "int32";
    case FLASHGDN_DTYPE_INT64: return "int64";
    case FLASHGDN_DTYPE_BOOL: return "bool";
    default: return "unknown";
  }
}

inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

// Round to nearest even via the float's bits.
inline uint16_t float_to_half_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (a < 0x38800000u) {                                               // subnormal or zero
    float af;
    std::memcpy(&af, &a, 4);
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(std::ldexp(af, 24)));
    return static_cast<uint16_t>(sign | m);
  }
  a += 0xfffu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((a - 0x38000000u) >> 13));
}

inline double load_scalar(const void* base, int32_t dtype, int64_t offset) {
  switch (dtype) {
    case FLASHGDN_DTYPE_FLOAT32: return static_cast<const float*>(base)[offset];
    case FLASHGDN_DTYPE_FLOAT64: return static_cast<const double*>(base)[offset];
    case FLASHGDN_DTYPE_FLOAT16: return half_bits_to_float(static_cast<const uint16_t*>(base)[offset]);
    case FLASHGDN_DTYPE_BFLOAT16: return bf16_bits_to_float(static_cast<const uint16_t*>(base)[offset]);
    case FLASHGDN_DTYPE_INT32: return static_cast<const int32_t*>(base)[offset];
    case FLASHGDN_DTYPE_INT64: return static_cast<double>(static_cast<const int64_t*>(base)[offset]);
    case FLASHGDN_DTYPE_BOOL: return static_cast<const uint8_t*>(base)[offset] ? 1.0 : 0.0;
    default: return NAN;
  }
}

inline void store_scalar(void* base, int32_t dtype, int64_t offset, double v) {
  switch (dtype) {
    case FLASHGDN_DTYPE_FLOAT32: static_cast<float*>(base)[offset] = static_cast<float>(v); break;
    case FLASHGDN_DTYPE_FLOAT64: static_cast<double*>(base)[offset] = v; break;
    case FLASHGDN_DTYPE_FLOAT16: static_cast<uint16_t*>(base)[offset] = float_to_half_bits(static_cast<float>(v)); break;
    case FLASHGDN_DTYPE_BFLOAT16: static_cast<uint16_t*>(base)[offset] = float_to_bf16_bits(static_cast<float>(v)); break;
    default: break;
  }
}

inline int64_t load_index(const flashgdn_tensor_t& t, int64_t i) {
  return t.dtype == FLASHGDN_DTYPE_INT64 ? static_cast<const int64_t*>(t.data)[i * t.stride[0]]
                                         : static_cast<const int32_t*>(t.data)[i * t.stride[0]];
}

// Strided element access (host memory).
struct HostView {
  const flashgdn_tensor_t* t;
  int64_t off(int64_t a, int64_t b = 0, int64_t c = 0, int64_t d = 0) const {
    return a * t->stride[0] + (t->ndim > 1 ? b * t->stride[1] : 0) + (t->ndim > 2 ? c * t->stride[2] : 0) +
           (t->ndim > 3 ? d * t->stride[3] : 0);
  }
  double get(int64_t a, int64_t b = 0, int64_t c = 0, int64_t d = 0) const {
    return load_scalar(t->data, t->dtype, off(a, b, c, d));
  }
  void set(double v, int64_t a, int64_t b = 0, int64_t c = 0, int64_t d = 0) const {
    store_scalar(t->data, t->dtype, off(a, b, c, d), v);
  }
};

}  // namespace flashgdn
