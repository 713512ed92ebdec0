// Host side of TMA: validating and encoding 2-D tiled tensor maps (CUtensorMap) without linking libcuda:
// cuTensorMapEncodeTiled is fetched through cudaGetDriverEntryPointByVersion at first use.
#pragma once

#include <cstdint>

#include "device/smem_desc.hpp"
#include "flashgdn/flashgdn.h"

struct CUtensorMap_st;

namespace flashgdn {

struct TmaTile2d {
  const void* base = nullptr;  // global address of element (0, 0)
  int32_t dtype = FLASHGDN_DTYPE_BFLOAT16;
  uint64_t dim0 = 0, dim1 = 0;  // elements: dim0 innermost (contiguous), dim1 rows
  uint64_t row_stride_bytes = 0;
  uint32_t box0 = 0, box1 = 0;  // tile extent in elements
  device::Swizzle swizzle = device::Swizzle::kNone;
};

// Checks what cuTensorMapEncodeTiled requires (16-byte aligned base and row stride, stride < 2^40,
// box extents in [1, 256], an inner box of at most the swizzle span, ...). Host-only, unit-tested.
flashgdn_status_t validate_tma_tile_2d(const TmaTile2d& t, const char* fn, const char* name);

// Encodes a CUtensorMap (128 bytes, 64-byte aligned) into `out`. GPU builds only.
flashgdn_status_t encode_tma_tile_2d(void* out_tensor_map, const TmaTile2d& t, const char* fn, const char* name);

}  // namespace flashgdn
