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
// column-by-column substitution. Used by the prepare kernel when FLASHGDN_BLOCKED_SOLVE is defined.
#pragma once

#if defined(__CUDACC__)
#define FLASHGDN_HD_SOLVE __host__ __device__ __forceinline__
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

// Diagonal blocks; valid for tid in [0, 64).
FLASHGDN_HD_SOLVE void diag(int tid, const float* T, float* X) {
  const int b = tid / kB, c = tid % kB, o = b * kB;
  float x[kB];
FLASHGDN_SOLVE_UNROLL
  for (int r = 0; r < kB; ++r) {
    float acc = (r == c) ? 1.f : 0.f;
FLASHGDN_SOLVE_UNROLL
    for (int m = 0; m < r; ++m) acc -= T[(o + r) * kLd + o + m] * x[m];
    x[r] = acc;
  }
FLASHGDN_SOLVE_UNROLL
  for (int r = 0; r < kB; ++r) X[(o + r) * kLd + o + c] = x[r];
}

// Level d, first half: Y_ij = sum_{m=j}^{i-1} T_im X_mj for the 4 - d blocks (j + d, j).
FLASHGDN_HD_SOLVE void level_y(int tid, int nthreads, int d, const float* T, const float* X, float* Y) {
  const int nb = kNB - d;
  for (int e = tid; e < nb * kB * kB; e += nthreads) {
    const int j = e / (kB * kB), r = (e / kB) % kB, c = e % kB, i = j + d;
    float acc = 0.f;
    for (int m = j; m < i; ++m)
FLASHGDN_SOLVE_UNROLL
      for (int t = 0; t < kB; ++t) acc += T[(i * kB + r) * kLd + m * kB + t] * X[(m * kB + t) * kLd + j * kB + c];
    Y[e] = acc;
  }
}

// Level d, second half: X_ij = -D_i Y_ij (D_i = X_ii).
FLASHGDN_HD_SOLVE void level_x(int tid, int nthreads, int d, float* X, const float* Y) {
  const int nb = kNB - d;
  for (int e = tid; e < nb * kB * kB; e += nthreads) {
    const int j = e / (kB * kB), r = (e / kB) % kB, c = e % kB, i = j + d;
    float acc = 0.f;
FLASHGDN_SOLVE_UNROLL
    for (int s = 0; s < kB; ++s) acc += X[(i * kB + r) * kLd + i * kB + s] * Y[j * kB * kB + s * kB + c];
    X[(i * kB + r) * kLd + j * kB + c] = -acc;
  }
}

}  // namespace flashgdn::portable::blocked_solve
