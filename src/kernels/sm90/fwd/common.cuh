// What the sm_90a forward kernels share: the portable forward's argument block and chunk size, and the byte offset
// of an element in a 128-byte-swizzled tile (the layout TMA writes with CU_TENSOR_MAP_SWIZZLE_128B and wgmma reads
// with the 128-byte swizzle mode).
#pragma once

#include <cstdint>

#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::sm90fwd {

using portable::FwdArgs;
using portable::kChunk;

// Byte offset of bf16 element (row, col) in a 128-byte-swizzled tile of 128-byte rows (1024-aligned base).
__device__ __forceinline__ uint32_t sw128(int row, int col) {
  return static_cast<uint32_t>(row * 128 + ((((col * 2) >> 4) ^ (row & 7)) << 4) + ((col * 2) & 15));
}

}  // namespace flashgdn::sm90fwd
