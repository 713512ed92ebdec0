#include "api/error.hpp"
#include "api/tensor.hpp"
#include "api/tensor_map.hpp"

namespace flashgdn {

flashgdn_status_t validate_tma_tile(const TmaTile& t, const char* fn, const char* name) {
  const int64_t es = dtype_size(t.dtype);
  if (es == 0) return fail(FLASHGDN_ERROR_INTERNAL, "%s: TMA map for '%s': unknown dtype %d", fn, name, t.dtype);
  if (reinterpret_cast<uintptr_t>(t.base) % 16 != 0)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' must be 16-byte aligned for TMA", fn, name);
  if (t.dim0 == 0 || t.dim1 == 0 || t.dim0 > (uint64_t(1) << 32) || t.dim1 > (uint64_t(1) << 32))
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument '%s' has TMA extents %llu x %llu outside [1, 2^32]", fn,
                name, (unsigned long long)t.dim0, (unsigned long long)t.dim1);
  if (t.row_stride_bytes % 16 != 0 || t.row_stride_bytes >= (uint64_t(1) << 40) ||
      t.row_stride_bytes < t.dim0 * static_cast<uint64_t>(es))
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                "%s: argument '%s' row stride %llu bytes is not a multiple of 16, below the row size or >= 2^40", fn,
                name, (unsigned long long)t.row_stride_bytes);
  if (t.box0 == 0 || t.box1 == 0 || t.box0 > 256 || t.box1 > 256)
    return fail(FLASHGDN_ERROR_INTERNAL, "%s: TMA box %u x %u for '%s' outside [1, 256]", fn, t.box0, t.box1, name);
  if (t.rank() >= 3) {
    if (t.dim2 == 0 || t.dim2 > (uint64_t(1) << 32) || t.box2 == 0 || t.box2 > 256 || t.box2 > t.dim2)
      return fail(FLASHGDN_ERROR_INTERNAL, "%s: TMA third extent %llu / box %u for '%s' outside [1, 2^32] / [1, 256]",
                  fn, (unsigned long long)t.dim2, t.box2, name);
    if (t.stride2_bytes % 16 != 0 || t.stride2_bytes >= (uint64_t(1) << 40) || t.stride2_bytes == 0)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument '%s' outer stride %llu bytes is not a positive multiple of 16 below 2^40", fn, name,
                  (unsigned long long)t.stride2_bytes);
  }
  if (t.rank() == 4) {
    if (t.dim3 == 0 || t.dim3 > (uint64_t(1) << 32) || t.box3 == 0 || t.box3 > 256 || t.box3 > t.dim3)
      return fail(FLASHGDN_ERROR_INTERNAL, "%s: TMA fourth extent %llu / box %u for '%s' outside [1, 2^32] / [1, 256]",
                  fn, (unsigned long long)t.dim3, t.box3, name);
    if (t.stride3_bytes % 16 != 0 || t.stride3_bytes >= (uint64_t(1) << 40) || t.stride3_bytes == 0)
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument '%s' outermost stride %llu bytes is not a positive multiple of 16 below 2^40", fn,
                  name, (unsigned long long)t.stride3_bytes);
  }
  const uint64_t inner_bytes = t.box0 * static_cast<uint64_t>(es);
  if (inner_bytes % 16 != 0)
    return fail(FLASHGDN_ERROR_INTERNAL, "%s: TMA box inner extent of '%s' is %llu bytes, not a multiple of 16", fn,
                name, (unsigned long long)inner_bytes);
  const uint64_t span = t.swizzle == device::Swizzle::k128B ? 128
                        : t.swizzle == device::Swizzle::k64B ? 64
                        : t.swizzle == device::Swizzle::k32B ? 32
                                                             : 0;
  if (span && inner_bytes > span)
    return fail(FLASHGDN_ERROR_INTERNAL, "%s: TMA box inner extent of '%s' (%llu bytes) exceeds the %llu-byte swizzle",
                fn, name, (unsigned long long)inner_bytes, (unsigned long long)span);
  return FLASHGDN_SUCCESS;
}

}  // namespace flashgdn
