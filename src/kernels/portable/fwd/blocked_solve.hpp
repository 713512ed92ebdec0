// Blocked inverse of the unit lower-triangular T = I + StrictLower(diag(beta) K Kᵀ) (64 x 64, fp32), split
// into the phases one CTA runs between barriers. Host- and device-callable: tests/cpp/test_reference.cpp
// runs the phases on the CPU, thread by thread, against the plain forward substitution.
//
//   diag      (threads 0..63, thread t = column t % 16 of diagonal block t / 16): D_b = T_bb⁻¹ by forward
//             substitution, a 16-step chain in registers.
//   level d   (d = 1, 2, 3; all threads): blocks (i, j) with i - j = d:
//             Y_ij = sum_{m=j}^{i-1} T_im X_mj   -> scratch Y (4 - d blocks of 16 x 16), barrier,
//             X_ij = -D_i Y_ij                   -> X, barrier.
// ~530 multiply-adds per thread for 128 threads, against 2016 per thread on 64 threads for the
// column-by-column substitution, with rows of the left factor read as float4 and a 2 x 2 output tile per
// thread (6 shared loads per 16 multiply-adds). Used by the prepare kernel.
#pragma once

#include "device/hd.hpp"

#if defined(__CUDACC__)
#define FLASHGDN_HD_SOLVE FLASHGDN_HD __forceinline__
#else
#define FLASHGDN_HD_SOLVE inline
#endif
#if defined(__CUDA_ARCH__)
#define FLASHGDN_SOLVE_UNROLL _Pragma("unroll")
#else
#define FLASHGDN_SOLVE_UNROLL
#endif

namespace flashgdn::portable::blocked_solve {

inline constexpr int kN = 64, kB = 16, kNB = kN / kB;
inline constexpr int kLd = 68;         // row stride of T and X (floats)
inline constexpr int kScratch = 3 * kB * kB;  // Y for the widest level (3 blocks)

// Four consecutive floats (16-byte aligned on the device: every row and block offset used here is).
FLASHGDN_HD_SOLVE void load4(const float* p, float (&v)[4]) {
#if defined(__CUDA_ARCH__)
  const float4 x = *reinterpret_cast<const float4*>(p);
  v[0] = x.x;
  v[1] = x.y;
  v[2] = x.z;
  v[3] = x.w;
#else
  for (int i = 0; i < 4; ++i) v[i] = p[i];
#endif
}

// Diagonal B x B blocks by forward substitution; valid for tid in [0, 64): thread t = column t % B of block t / B.
// T has row stride kLd, X row stride ldx (every phase takes it). Zeros above each block's diagonal.
template <int B>
FLASHGDN_HD_SOLVE void diag_blocks(int tid, const float* T, float* X, int ldx) {
  const int b = tid / B, c = tid % B, o = b * B;
  float x[B];
FLASHGDN_SOLVE_UNROLL
  for (int r = 0; r < B; ++r) {
    float acc = (r == c) ? 1.f : 0.f;
    // NOTE: the row of T is read 4 floats at a time (a broadcast: the B threads of a block share it).
FLASHGDN_SOLVE_UNROLL
    for (int m4 = 0; m4 < r; m4 += 4) {
      float t[4];
      load4(&T[(o + r) * kLd + o + m4], t);
FLASHGDN_SOLVE_UNROLL
      for (int u = 0; u < 4; ++u)
        if (m4 + u < r) acc -= t[u] * x[m4 + u];
    }
    x[r] = acc;
  }
FLASHGDN_SOLVE_UNROLL
  for (int r = 0; r < B; ++r) X[(o + r) * ldx + o + c] = x[r];
}

// The diagonal 16 x 16 blocks D_b = T_bb⁻¹ (a 15-step chain of 120 multiply-adds per thread).
FLASHGDN_HD_SOLVE void diag(int tid, const float* T, float* X, int ldx = kLd) { diag_blocks<kB>(tid, T, X, ldx); }

// The diagonal 16 x 16 blocks in two steps with 4x shorter dependent chains than diag (FLASHGDN_SOLVE_DIAG8=1, A/B;
// as FlashInfer builds its inverse from 8 x 8 blocks):
//   diag8       (threads 0..63, thread t = column t % 8 of 8 x 8 block t / 8): E_b = T_bb⁻¹ by forward substitution,
//               a 7-step chain (28 multiply-adds) instead of diag's 15-step one (120).
//   merge8_y/x  (block q of the 16 x 16 diagonal blocks, item e in [0, 64): row e / 8, column e % 8): with the block's
//               8 x 8 parts T = [[T11, 0], [T21, T22]], X21 = -E22 (T21 E11): Y = T21 E11 into 64 floats of scratch,
//               then X21 = -E22 Y and X12 = 0 (the levels read the whole 16 x 16 diagonal block).
// A warp per 16 x 16 block (two items per lane, __syncwarp between y and x) after a barrier behind diag8.
FLASHGDN_HD_SOLVE void diag8(int tid, const float* T, float* X, int ldx = kLd) { diag_blocks<8>(tid, T, X, ldx); }

FLASHGDN_HD_SOLVE void merge8_y(int q, int e, const float* T, const float* X, float* Y, int ldx = kLd) {
  const int r = e / 8, c = e % 8, o = 16 * q;
  float acc = 0.f;
FLASHGDN_SOLVE_UNROLL
  for (int m = 0; m < 8; ++m) acc += T[(o + 8 + r) * kLd + o + m] * X[(o + m) * ldx + o + c];  // T21 E11 (E11 lower)
  Y[e] = acc;
}

FLASHGDN_HD_SOLVE void merge8_x(int q, int e, float* X, const float* Y, int ldx = kLd) {
  const int r = e / 8, c = e % 8, o = 16 * q;
  float acc = 0.f;
FLASHGDN_SOLVE_UNROLL
  for (int m = 0; m < 8; ++m) acc += X[(o + 8 + r) * ldx + o + 8 + m] * Y[m * 8 + c];  // E22 Y (E22 lower)
  X[(o + 8 + r) * ldx + o + c] = -acc;
  X[(o + r) * ldx + o + 8 + c] = 0.f;
}

// Two consecutive floats (8-byte aligned on the device).
FLASHGDN_HD_SOLVE void load2(const float* p, float (&v)[2]) {
#if defined(__CUDA_ARCH__)
  const float2 x = *reinterpret_cast<const float2*>(p);
  v[0] = x.x;
  v[1] = x.y;
#else
  v[0] = p[0];
  v[1] = p[1];
#endif
}

// C[r + 8 a][c + b] (a, b in {0, 1}) of a 16 x 16 product A B: rows r and r + 8 of A read 4 at a time,
// columns c, c + 1 of B read as a pair. A has row stride lda, B row stride ldb.
// NOTE: a 2 x 2 micro-tile: 6 shared loads per 16 multiply-adds (a 1 x 1 tile needs 32).
FLASHGDN_HD_SOLVE void tile2x2(const float* A, int lda, const float* B, int ldb, int r, int c, float (&acc)[2][2]) {
FLASHGDN_SOLVE_UNROLL
  for (int t4 = 0; t4 < kB; t4 += 4) {
    float a0[4], a1[4];
    load4(&A[r * lda + t4], a0);
    load4(&A[(r + 8) * lda + t4], a1);
FLASHGDN_SOLVE_UNROLL
    for (int u = 0; u < 4; ++u) {
      float b[2];
      load2(&B[(t4 + u) * ldb + c], b);
      acc[0][0] += a0[u] * b[0];
      acc[0][1] += a0[u] * b[1];
      acc[1][0] += a1[u] * b[0];
      acc[1][1] += a1[u] * b[1];
    }
  }
}

// Work item e of a level: block j = e / 64 of the level, rows r, r + 8 (r = (e / 8) % 8), columns
// c, c + 1 (c = 2 (e % 8)).
constexpr int kItems = kB * kB / 4;

// Level d, first half: Y_ij = sum_{m=j}^{i-1} T_im X_mj for the 4 - d blocks (j + d, j).
FLASHGDN_HD_SOLVE void level_y(int tid, int nthreads, int d, const float* T, const float* X, float* Y, int ldx = kLd) {
  const int nb = kNB - d;
  for (int e = tid; e < nb * kItems; e += nthreads) {
    const int j = e / kItems, r = (e / 8) % 8, c = 2 * (e % 8), i = j + d;
    float acc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    for (int m = j; m < i; ++m) tile2x2(&T[(i * kB) * kLd + m * kB], kLd, &X[(m * kB) * ldx + j * kB], ldx, r, c, acc);
    float* y = &Y[j * kB * kB];
    y[r * kB + c] = acc[0][0];
    y[r * kB + c + 1] = acc[0][1];
    y[(r + 8) * kB + c] = acc[1][0];
    y[(r + 8) * kB + c + 1] = acc[1][1];
  }
}

// Level d, second half: X_ij = -D_i Y_ij (D_i = X_ii).
FLASHGDN_HD_SOLVE void level_x(int tid, int nthreads, int d, float* X, const float* Y, int ldx = kLd) {
  const int nb = kNB - d;
  for (int e = tid; e < nb * kItems; e += nthreads) {
    const int j = e / kItems, r = (e / 8) % 8, c = 2 * (e % 8), i = j + d;
    float acc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    tile2x2(&X[(i * kB) * ldx + i * kB], ldx, &Y[j * kB * kB], kB, r, c, acc);
    float* x = &X[(i * kB) * ldx + j * kB];
    x[r * ldx + c] = -acc[0][0];
    x[r * ldx + c + 1] = -acc[0][1];
    x[(r + 8) * ldx + c] = -acc[1][0];
    x[(r + 8) * ldx + c + 1] = -acc[1][1];
  }
}

#if defined(__CUDACC__)
// The merge after diag8 (and a barrier): warp w of a 4-warp group merges the 8 x 8 pair of 16 x 16 block w, with the
// 64 floats of scratch at Y + 64 w.
__device__ __forceinline__ void merge8_warp(int warp, int lane, const float* T, float* X, float* Y, int ldx = kLd) {
  for (int e = lane; e < 64; e += 32) merge8_y(warp, e, T, X, Y + 64 * warp, ldx);
  __syncwarp();
  for (int e = lane; e < 64; e += 32) merge8_x(warp, e, X, Y + 64 * warp, ldx);
}
#endif

}  // namespace flashgdn::portable::blocked_solve
