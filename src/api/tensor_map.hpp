// Host side of TMA: validating and encoding 2-D / 3-D tiled tensor maps (CUtensorMap) without linking libcuda:
// cuTensorMapEncodeTiled is fetched through cudaGetDriverEntryPointByVersion at first use.
#pragma once

#include <cstdint>

#include "device/smem_desc.hpp"
#include "flashgdn/flashgdn.h"

struct CUtensorMap_st;

namespace flashgdn {

struct TmaTile {
  const void* base = nullptr;  // global address of element (0, 0[, 0])
  int32_t dtype = FLASHGDN_DTYPE_BFLOAT16;
  uint64_t dim0 = 0, dim1 = 0;  // elements: dim0 innermost (contiguous), dim1 rows
  uint64_t row_stride_bytes = 0;
  uint32_t box0 = 0, box1 = 0;  // tile extent in elements
  device::Swizzle swizzle = device::Swizzle::kNone;
  // Optional third dimension (rank 3 when dim2 > 1): e.g. q [T, H, K] as (K, H, T) with the token stride
  // here, so one map serves every head and a box (64, 1, 64) is one chunk of one head.
  uint64_t dim2 = 1;
  uint64_t stride2_bytes = 0;
  uint32_t box2 = 1;
  // Optional fourth dimension (rank 4 when stride3_bytes != 0): e.g. q [B, T, H, K] as (K, H, T, B).
  uint64_t dim3 = 1;
  uint64_t stride3_bytes = 0;
  uint32_t box3 = 1;
  int rank() const {
    if (dim3 > 1 || box3 > 1 || stride3_bytes != 0) return 4;
    return dim2 > 1 || box2 > 1 || stride2_bytes != 0 ? 3 : 2;  // set stride2 to force 3
  }
};

// Checks what cuTensorMapEncodeTiled requires (16-byte aligned base and row stride, stride < 2^40,
// box extents in [1, 256], an inner box of at most the swizzle span, ...). Host-only, unit-tested.
flashgdn_status_t validate_tma_tile(const TmaTile& t, const char* fn, const char* name);

// The driver entry point behind encode_tma_tile, fetched now (once per process; flashgdn_init).
flashgdn_status_t fetch_tensor_map_encoder(const char* fn);

// Encodes a CUtensorMap (128 bytes, 64-byte aligned) into `out`. GPU builds only.
flashgdn_status_t encode_tma_tile(void* out_tensor_map, const TmaTile& t, const char* fn, const char* name);

}  // namespace flashgdn
