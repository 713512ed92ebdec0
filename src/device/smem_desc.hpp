// Shared-memory matrix descriptor of wgmma (sm_90a), host- and device-callable so that its encoding is
// unit-tested on the CPU (tests/cpp/test_sm90_host.cpp).
//
// PTX ISA, "Asynchronous Warpgroup Level Matrix Instructions: Matrix Descriptor Format" (64 bits):
//   bits  0-13  matrix start address        (byte address & 0x3FFFF) >> 4
//   bits 16-29  leading dimension byte offset   >> 4
//   bits 32-45  stride dimension byte offset    >> 4
//   bits 49-51  matrix base offset (swizzle pattern phase of the start address; 0 for aligned tiles)
//   bits 62-63  swizzle mode: 0 none (interleaved 8x16-byte core matrices), 1 128-byte, 2 64-byte, 3 32-byte
// Bit layout read from the PTX ISA and cross-checked against CUTLASS's cute/arch/mma_sm90_desc.hpp
// (reading reference only; this is our own code).
#pragma once

#include <cstdint>

#include "device/hd.hpp"

namespace flashgdn::device {

enum class Swizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

FLASHGDN_HD constexpr uint64_t encode14(uint32_t bytes) { return static_cast<uint64_t>((bytes & 0x3FFFFu) >> 4); }

// smem_addr: shared-window byte address (what cvta.to.shared gives); lbo / sbo in bytes.
FLASHGDN_HD constexpr uint64_t make_smem_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                              Swizzle swizzle, uint32_t base_offset = 0) {
  return encode14(smem_addr) | (encode14(lbo_bytes) << 16) | (encode14(sbo_bytes) << 32) |
         (static_cast<uint64_t>(base_offset & 0x7u) << 49) | (static_cast<uint64_t>(swizzle) << 62);
}

// Advancing a descriptor along K by `bytes` (16-byte aligned) only moves its start address field.
FLASHGDN_HD constexpr uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

}  // namespace flashgdn::device
