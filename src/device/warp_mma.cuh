// Warp-level tile products on shared memory (mma.sync m16n8k16), the building block of the portable
// kernels. Operands are T (bf16/fp16) tiles in shared memory with a leading dimension `ld` (elements);
// rows must be 16-byte aligned and `ld * sizeof(T)` should be 16 mod 128 to keep ldmatrix conflict-free.
//
// Storage names say which index is contiguous:
//   A "mk": A[m][k] row-major (ldmatrix)       A "km": A stored transposed, [k][m] (ldmatrix.trans)
//   A "mk_sw128" / "km_sw128": the same, stored as TMA writes a tile with SWIZZLE_128B: column halves of
//     64 elements, each (ld rows, 64) with 128-byte rows whose 16-byte chunks are XOR-permuted by
//     row % 8 (1024-byte aligned); `ld` is the tile's row count.
//   B "kn": B[k][n], n contiguous (ldmatrix.trans)   B "nk": B stored as [n][k] (ldmatrix)
#pragma once

#include "device/ptx.cuh"

namespace flashgdn::device {

enum class Major { kMK, kKM, kMKSw128, kKMSw128 };  // for A

// Element (r, c) of a 2-byte tile of `rows` rows stored with the 128-byte swizzle (see above): half c / 64,
// row r, 16-byte chunk (c % 64) / 8 ^ r % 8. `c` is a multiple of 8 here (an ldmatrix row start).
template <class T>
__device__ __forceinline__ const T* sw128_at(const T* A, int rows, int r, int c) {
  static_assert(sizeof(T) == 2, "64 elements per 128-byte row");
  return A + (c >> 6) * rows * 64 + r * 64 + ((((c & 63) >> 3) ^ (r & 7)) << 3);
}
enum class BMajor { kKN, kNK };  // for B

// A fragment of the 16x16 block at (m0, k0).
template <Major M, class T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* A, int ld, int m0, int k0, int lane) {
  if constexpr (M == Major::kMK) {
    ldmatrix_x4(a, A + (m0 + (lane & 15)) * ld + k0 + ((lane >> 4) << 3));
  } else if constexpr (M == Major::kKM) {
    ldmatrix_x4_trans(a, A + (k0 + (lane & 7) + ((lane >> 4) << 3)) * ld + m0 + (((lane >> 3) & 1) << 3));
  } else if constexpr (M == Major::kMKSw128) {
    ldmatrix_x4(a, sw128_at(A, ld, m0 + (lane & 15), k0 + ((lane >> 4) << 3)));
  } else {
    ldmatrix_x4_trans(a, sw128_at(A, ld, k0 + (lane & 7) + ((lane >> 4) << 3), m0 + (((lane >> 3) & 1) << 3)));
  }
}

// B fragments of two adjacent n-tiles (n0..n0+15) for k0..k0+15: b[0], b[1] for tile n0, b[2], b[3] for n0+8.
template <BMajor M, class T>
__device__ __forceinline__ void load_b2(uint32_t (&b)[4], const T* B, int ld, int k0, int n0, int lane) {
  if constexpr (M == BMajor::kKN) {
    ldmatrix_x4_trans(b, B + (k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ld + n0 + ((lane >> 4) << 3));
  } else {
    ldmatrix_x4(b, B + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + (((lane >> 3) & 1) << 3));
  }
}

// acc[MT][NT] += A[m0 : m0 + 16*MT, 0 : KSTEPS*16] * B[0 : KSTEPS*16, n0 : n0 + 8*NT]   (NT even)
// NOTE: software-pipelined: the fragments of k-step ks + 1 are loaded (ldmatrix) before the mma of k-step
// ks are issued, so ldmatrix latency overlaps tensor-core work (the asm is volatile, so the compiler
// keeps source order and will not do this by itself).
template <int MT, int NT, int KSTEPS, Major AM, BMajor BM, class T>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], const T* A, int lda, int m0, const T* B, int ldb,
                                          int n0, int lane) {
  static_assert(NT % 2 == 0, "NT must be even");
  uint32_t a[2][MT][4];
  uint32_t b[2][NT / 2][4];
  auto load = [&](int ks, int buf) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) load_a<AM>(a[buf][mt], A, lda, m0 + mt * 16, ks * 16, lane);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) load_b2<BM>(b[buf][np], B, ldb, ks * 16, n0 + np * 16, lane);
  };
  load(0, 0);
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
    const int cur = ks & 1;
    if (ks + 1 < KSTEPS) load(ks + 1, cur ^ 1);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816<T>(acc[mt][2 * np], a[cur][mt], b[cur][np][0], b[cur][np][1]);
        mma_16816<T>(acc[mt][2 * np + 1], a[cur][mt], b[cur][np][2], b[cur][np][3]);
      }
  }
}

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

template <int MT, int NT>
__device__ __forceinline__ void scale(float (&acc)[MT][NT][4], float f) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] *= f;
}

// Accumulator element coordinates inside its 16x8 tile: e = 0..3 -> (row, col).
__device__ __forceinline__ int acc_row(int lane, int e) { return (lane >> 2) + ((e >> 1) << 3); }
__device__ __forceinline__ int acc_col(int lane, int e) { return ((lane & 3) << 1) + (e & 1); }

// Stores acc (rows row0 + 16 mt .., columns 8 nt ..) as packed pairs of T at dst[row * ld + col], shared or
// global memory (4-byte stores; dst and ld even).
template <class T, int MT, int NT>
__device__ __forceinline__ void store_acc(const float (&acc)[MT][NT][4], T* dst, int64_t ld, int row0, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = row0 + mt * 16 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
        *reinterpret_cast<uint32_t*>(&dst[i * ld + j]) = pack2<T>(acc[mt][nt][2 * hf], acc[mt][nt][2 * hf + 1]);
      }
}

}  // namespace flashgdn::device
