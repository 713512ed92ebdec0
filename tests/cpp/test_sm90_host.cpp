// Host-side encodings of the sm_90a layer, checked against hand-computed constants (runs in CI).
#include <gtest/gtest.h>

#include <string>

#include "api/tensor_map.hpp"
#include "device/smem_desc.hpp"
#include "flashgdn/flashgdn.h"

using flashgdn::device::desc_advance;
using flashgdn::device::make_smem_desc;
using flashgdn::device::Swizzle;

TEST(Sm90Descriptor, FieldsAreWhereThePtxIsaPutsThem) {
  // start 0x400 -> 0x40 (bits 0-13); LBO 128 B -> 8 (bits 16-29); SBO 256 B -> 16 (bits 32-45).
  EXPECT_EQ(make_smem_desc(0x400, 128, 256, Swizzle::kNone), 0x0000001000080040ull);
  // 128-byte swizzle: mode 1 in bits 62-63; SBO 1024 B (8 rows of 128 B) -> 64.
  EXPECT_EQ(make_smem_desc(0x400, 16, 1024, Swizzle::k128B), 0x4000004000010040ull);
  EXPECT_EQ(make_smem_desc(0, 0, 0, Swizzle::k64B), 0x8000000000000000ull);
  EXPECT_EQ(make_smem_desc(0, 0, 0, Swizzle::k32B), 0xC000000000000000ull);
  // Base offset in bits 49-51.
  EXPECT_EQ(make_smem_desc(0, 0, 0, Swizzle::kNone, 5), 5ull << 49);
  // The address field keeps 18 bits of the byte address (shared window), in 16-byte units.
  EXPECT_EQ(make_smem_desc(0x40400, 0, 0, Swizzle::kNone), 0x40ull);
  EXPECT_EQ(make_smem_desc(0x3FFF0, 0, 0, Swizzle::kNone), 0x3FFFull);
  // Advancing along K moves only the address field.
  EXPECT_EQ(desc_advance(make_smem_desc(0x400, 128, 256, Swizzle::kNone), 32),
            make_smem_desc(0x420, 128, 256, Swizzle::kNone));
  static_assert(make_smem_desc(0x800, 128, 256, Swizzle::kNone) == 0x0000001000080080ull, "constexpr");
}

namespace {
alignas(256) unsigned char g_buf[1024];

flashgdn::TmaTile tile() {
  flashgdn::TmaTile t;
  t.base = g_buf;
  t.dtype = FLASHGDN_DTYPE_BFLOAT16;
  t.dim0 = 128;
  t.dim1 = 1000;
  t.row_stride_bytes = 256 * 2;
  t.box0 = 64;
  t.box1 = 64;
  t.swizzle = Swizzle::k128B;
  return t;
}

void expect_error(const flashgdn::TmaTile& t, flashgdn_status_t status, const char* msg) {
  EXPECT_EQ(flashgdn::validate_tma_tile(t, "test", "k"), status);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find(msg), std::string::npos) << flashgdn_get_last_error();
}
}  // namespace

TEST(Sm90TensorMap, ValidationFollowsCuTensorMapEncodeTiledRules) {
  EXPECT_EQ(flashgdn::validate_tma_tile(tile(), "test", "k"), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  auto t = tile();
  t.base = g_buf + 8;
  expect_error(t, FLASHGDN_ERROR_INVALID_ARGUMENT, "argument 'k' must be 16-byte aligned for TMA");
  t = tile();
  t.row_stride_bytes = 520;
  expect_error(t, FLASHGDN_ERROR_INVALID_ARGUMENT, "row stride 520 bytes");
  t = tile();
  t.row_stride_bytes = 128;  // below the 256-byte row
  expect_error(t, FLASHGDN_ERROR_INVALID_ARGUMENT, "row stride 128 bytes");
  t = tile();
  t.box1 = 300;
  expect_error(t, FLASHGDN_ERROR_INTERNAL, "outside [1, 256]");
  t = tile();
  t.box0 = 128;  // 256 bytes > 128-byte swizzle span
  expect_error(t, FLASHGDN_ERROR_INTERNAL, "exceeds the 128-byte swizzle");
  t.swizzle = Swizzle::kNone;
  EXPECT_EQ(flashgdn::validate_tma_tile(t, "test", "k"), FLASHGDN_SUCCESS);
  t = tile();
  t.dim1 = 0;
  expect_error(t, FLASHGDN_ERROR_INVALID_ARGUMENT, "TMA extents 128 x 0");
}

// Rank 3 (e.g. q [T, H, K] viewed as (K, H, T): one map for every head).
TEST(Sm90TensorMap, ThirdDimensionValidation) {
  auto t = tile();
  t.dim1 = 4;          // heads
  t.box1 = 1;
  t.dim2 = 1000;       // tokens
  t.stride2_bytes = 4 * 256 * 2;
  t.box2 = 64;
  EXPECT_EQ(t.rank(), 3);
  EXPECT_EQ(flashgdn::validate_tma_tile(t, "test", "k"), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  auto u = t;
  u.stride2_bytes = 1000;  // not a multiple of 16
  expect_error(u, FLASHGDN_ERROR_INVALID_ARGUMENT, "outer stride 1000 bytes");
  u = t;
  u.box2 = 512;
  expect_error(u, FLASHGDN_ERROR_INTERNAL, "TMA third extent 1000 / box 512");
  EXPECT_EQ(tile().rank(), 2);
}


// Rank 4 (q [B, T, H, K] viewed as (K, H, T, B): the recurrence's TMA producer).
TEST(Sm90TensorMap, FourthDimensionValidation) {
  auto t = tile();
  t.dim1 = 4;
  t.box1 = 1;
  t.dim2 = 1000;
  t.stride2_bytes = 4 * 256 * 2;
  t.box2 = 64;
  t.dim3 = 3;                       // batch rows
  t.stride3_bytes = 1000 * 4 * 256 * 2;
  EXPECT_EQ(t.rank(), 4);
  EXPECT_EQ(flashgdn::validate_tma_tile(t, "test", "k"), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  auto u = t;
  u.stride3_bytes = 24;  // not a multiple of 16
  expect_error(u, FLASHGDN_ERROR_INVALID_ARGUMENT, "outermost stride 24 bytes");
  u = t;
  u.box3 = 4;  // more than the 3 batch rows
  expect_error(u, FLASHGDN_ERROR_INTERNAL, "TMA fourth extent 3 / box 4");
  u = t;
  u.dim3 = 1;  // one batch row still makes rank 4 when its stride is given
  EXPECT_EQ(u.rank(), 4);
  EXPECT_EQ(flashgdn::validate_tma_tile(u, "test", "k"), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
}
