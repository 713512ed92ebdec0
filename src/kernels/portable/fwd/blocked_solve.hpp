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
// column-by-column substitution, with rows of the left factor read as float4 and two output rows per
// thread (6 shared loads per 8 multiply-adds). Used by the prepare kernel.
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

// Diagonal blocks; valid for tid in [0, 64).
FLASHGDN_HD_SOLVE void diag(int tid, const float* T, float* X) {
  const int b = tid / kB, c = tid % kB, o = b * kB;
  float x[kB];
FLASHGDN_SOLVE_UNROLL
  for (int r = 0; r < kB; ++r) {
    float acc = (r == c) ? 1.f : 0.f;
    // NOTE: the row of T is read 4 floats at a time (a broadcast: the 16 threads of a block share it).
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
  for (int r = 0; r < kB; ++r) X[(o + r) * kLd + o + c] = x[r];
}

// C[r][c] and C[r + 8][c] of a 16 x 16 product A B, A rows read 4 at a time, B column c: one thread per
// (r < 8, c). A has row stride kLd, B row stride ldb.
FLASHGDN_HD_SOLVE void two_rows(const float* A, const float* B, int ldb, int r, int c, float& c0, float& c1) {
FLASHGDN_SOLVE_UNROLL
  for (int t4 = 0; t4 < kB; t4 += 4) {
    float a0[4], a1[4];
    load4(&A[r * kLd + t4], a0);
    load4(&A[(r + 8) * kLd + t4], a1);
FLASHGDN_SOLVE_UNROLL
    for (int u = 0; u < 4; ++u) {
      const float bv = B[(t4 + u) * ldb + c];
      c0 += a0[u] * bv;
      c1 += a1[u] * bv;
    }
  }
}

// Level d, first half: Y_ij = sum_{m=j}^{i-1} T_im X_mj for the 4 - d blocks (j + d, j).
// NOTE: each thread owns rows r and r + 8 of one column (X loads shared, T rows as float4).
FLASHGDN_HD_SOLVE void level_y(int tid, int nthreads, int d, const float* T, const float* X, float* Y) {
  const int nb = kNB - d;
  for (int e = tid; e < nb * kB * kB / 2; e += nthreads) {
    const int j = e / (kB * kB / 2), r = (e / kB) % (kB / 2), c = e % kB, i = j + d;
    float c0 = 0.f, c1 = 0.f;
    for (int m = j; m < i; ++m) two_rows(&T[(i * kB) * kLd + m * kB], &X[(m * kB) * kLd + j * kB], kLd, r, c, c0, c1);
    Y[j * kB * kB + r * kB + c] = c0;
    Y[j * kB * kB + (r + 8) * kB + c] = c1;
  }
}

// Level d, second half: X_ij = -D_i Y_ij (D_i = X_ii).
FLASHGDN_HD_SOLVE void level_x(int tid, int nthreads, int d, float* X, const float* Y) {
  const int nb = kNB - d;
  for (int e = tid; e < nb * kB * kB / 2; e += nthreads) {
    const int j = e / (kB * kB / 2), r = (e / kB) % (kB / 2), c = e % kB, i = j + d;
    float c0 = 0.f, c1 = 0.f;
    two_rows(&X[(i * kB) * kLd + i * kB], &Y[j * kB * kB], kB, r, c, c0, c1);
    X[(i * kB + r) * kLd + j * kB + c] = -c0;
    X[(i * kB + r + 8) * kLd + j * kB + c] = -c1;
  }
}

}  // namespace flashgdn::portable::blocked_solve
