// Portable forward, context parallelism: the scan over a sequence's segments (between the recurrence's
// transition pass and its final pass).
//
// Pass 1 left, for every segment g that is not its sequence's last, the end state of the augmented
// recurrence started from [0 | I]: cp_end[g] = [S_loc_g | M_g] (K x (V + K), fp32), so that the segment
// maps a start state S to M_g S + S_loc_g exactly (the chunk map is affine, docs/design.md §3). This
// kernel walks the segments of one sequence in order:
//     S = initial state (h0, the pool slot, or zeros: as the sequential recurrence reads it)
//     for each segment g of the sequence:  cp_h0[g] = S;  if g is not the last:  S = M_g S + S_loc_g
// in fp32, fixed summation order (deterministic). The final pass then starts every segment from cp_h0.
//
// Grid N * Hv * (V / 32) (head fastest); 256 threads; thread t owns column t % 32 of rows t / 32 + 8 r.
// Shared memory: M_g (K, K + 4) fp32 (rows read as float4 broadcasts), S (K, 32) fp32: 83.5 KB for K = 128.
// Barriers: __syncthreads only.
#pragma once

#include <cuda_bf16.h>

#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

inline constexpr int kScanBV = 32;

template <int KD>
struct ScanSmem {
  static constexpr int kLdM = KD + 4;
  float m[KD * kLdM];   // (K, K) M_g
  float s[KD * kScanBV];  // (K, 32) S
};

template <int KD>
__global__ void __launch_bounds__(256) cp_scan_kernel(FwdArgs a) {
  using Sm = ScanSmem<KD>;
  constexpr int kRows = KD / 8;  // rows per thread
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const int tid = threadIdx.x, jc = tid % kScanBV, r0 = tid / kScanBV;
  const int tiles = a.V / kScanBV;
  const int h = static_cast<int>(blockIdx.x % a.Hv);
  const int v0 = static_cast<int>((blockIdx.x / a.Hv) % tiles) * kScanBV;
  const int64_t n = blockIdx.x / (static_cast<int64_t>(tiles) * a.Hv);

  // The sequence's initial state, exactly as the sequential recurrence would read it.
  const StateIO io = state_io(a, n);
  for (int e = tid; e < KD * kScanBV; e += 256) {
    const int i = e / kScanBV, j = e % kScanBV;
    sm.s[e] = io.src != nullptr ? load_state(a, io.src, io.src_row, h, i, v0 + j) : 0.f;
  }
  __syncthreads();

  const int64_t g0 = a.seg_offsets[n], ns = a.seg_offsets[n + 1] - g0;
  const int ldE = a.V + a.K;
  for (int64_t j = 0; j < ns; ++j) {
    const int64_t g = g0 + j;
    float* start = a.cp_h0 + (g * a.Hv + h) * int64_t(a.K) * a.V;
    for (int e = tid; e < KD * kScanBV; e += 256)
      start[static_cast<int64_t>(e / kScanBV) * a.V + v0 + e % kScanBV] = sm.s[e];
    if (j == ns - 1) break;
    const float* E = a.cp_end + (g * a.Hv + h) * int64_t(a.K) * ldE;
    for (int e = tid; e < KD * KD / 4; e += 256) {
      const int i = e / (KD / 4), k4 = (e % (KD / 4)) * 4;
      *reinterpret_cast<float4*>(&sm.m[i * Sm::kLdM + k4]) =
          *reinterpret_cast<const float4*>(&E[static_cast<int64_t>(i) * ldE + a.V + k4]);
    }
    __syncthreads();
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = E[static_cast<int64_t>(r0 + 8 * r) * ldE + v0 + jc];  // S_loc
#pragma unroll 4
    for (int k4 = 0; k4 < KD; k4 += 4) {
      const float s0 = sm.s[(k4 + 0) * kScanBV + jc], s1 = sm.s[(k4 + 1) * kScanBV + jc];
      const float s2 = sm.s[(k4 + 2) * kScanBV + jc], s3 = sm.s[(k4 + 3) * kScanBV + jc];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 m = *reinterpret_cast<const float4*>(&sm.m[(r0 + 8 * r) * Sm::kLdM + k4]);
        acc[r] = fmaf(m.x, s0, fmaf(m.y, s1, fmaf(m.z, s2, fmaf(m.w, s3, acc[r]))));
      }
    }
    __syncthreads();  // every thread is done reading S and M
#pragma unroll
    for (int r = 0; r < kRows; ++r) sm.s[(r0 + 8 * r) * kScanBV + jc] = acc[r];
    __syncthreads();
  }
}

}  // namespace flashgdn::portable
