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
// A segment whose head-form transition took the gate-driven warm-up (a.cp_warm, params.hpp) has no M: S = S_loc_g.
//
// Grid N * Hv * (V / 8) (head fastest); 256 threads; thread t owns column t % 8 of rows t / 8 + 32 r.
// Shared memory: BUFS x M_g (K, K + 4) fp32 (rows read as float4 broadcasts), S (K, 8) fp32: 136 KB for
// K = 128 and two buffers (M_{g+1} is fetched by cp.async while M_g S is formed), 70 KB with one.
// S_loc of the next segment is loaded into registers during the current step.
// Barriers: __syncthreads only.
// NOTE: H100, 2/8 1x8192, 8 segments: the first form (32 columns per CTA, M loaded by plain loads, one
// buffer) took 82 us, ~10 us a segment, most of it the serialised 64 KB load of M per step; 16 columns
// with M by cp.async, double-buffered: 42 us.
#pragma once

#include <cuda_bf16.h>

#include "device/ptx.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

inline constexpr int kScanBV = 8;

template <int KD, int BUFS>
struct ScanSmem {
  static constexpr int kLdM = KD + 4;
  float m[BUFS][KD * kLdM];  // (K, K) M_g
  float s[KD * kScanBV];     // (K, 8) S
};

// A scan CTA's place: sequence n (segments g0 .. g0 + ns - 1), head h, columns v0 .. v0 + 7 (head fastest in the grid);
// thread tid owns column v0 + jc of rows r0 + 32 r.
struct ScanCta {
  int tid, jc, r0, h, v0, ldE;
  int64_t n, g0, ns;
  __device__ explicit ScanCta(const FwdArgs& a) {
    tid = threadIdx.x;
    jc = tid % kScanBV;
    r0 = tid / kScanBV;
    const int tiles = a.V / kScanBV;
    h = static_cast<int>(blockIdx.x % a.Hv);
    v0 = static_cast<int>((blockIdx.x / a.Hv) % tiles) * kScanBV;
    n = blockIdx.x / (static_cast<int64_t>(tiles) * a.Hv);
    g0 = a.seg_offsets[n];
    ns = a.seg_offsets[n + 1] - g0;
    ldE = a.V + a.K;
  }
  // Pass 1's end state [S_loc | M] of the sequence's segment j (K rows of V + K floats).
  __device__ const float* end_state(const FwdArgs& a, int64_t j) const {
    return a.cp_end + ((g0 + j) * a.Hv + h) * int64_t(a.K) * ldE;
  }
};

template <int KD, int BUFS>
__global__ void __launch_bounds__(256) cp_scan_kernel(FwdArgs a) {
  using Sm = ScanSmem<KD, BUFS>;
  constexpr int kGroups = 256 / kScanBV;  // row groups
  constexpr int kRows = KD / kGroups;     // rows per thread
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const ScanCta cta(a);
  const int tid = cta.tid, jc = cta.jc, r0 = cta.r0, h = cta.h, v0 = cta.v0, ldE = cta.ldE;
  const int64_t n = cta.n, g0 = cta.g0, ns = cta.ns;
  auto end_state = [&](int64_t j) { return cta.end_state(a, j); };
  // Segment j took the gate-driven warm-up (its transition has no M: S = S_loc; head-form passes only).
  auto warm = [&](int64_t j) { return a.cp_warm != nullptr && a.cp_warm[(g0 + j) * a.Hv + h] != 0; };
  // M of segment j into buffer b (asynchronous: one commit group, empty when the segment has no M).
  auto fetch_m = [&](int64_t j, int b) {
    const float* E = end_state(j);
    if (!warm(j))
      for (int e = tid; e < KD * KD / 4; e += 256) {
        const int i = e / (KD / 4), k4 = (e % (KD / 4)) * 4;
        device::cp_async_16(&sm.m[b][i * Sm::kLdM + k4], &E[static_cast<int64_t>(i) * ldE + a.V + k4], true);
      }
    device::cp_async_commit();
  };
  if (ns > 1) fetch_m(0, 0);

  // The sequence's initial state, exactly as the sequential recurrence would read it.
  const StateIO io = state_io(a, n);
  for (int e = tid; e < KD * kScanBV; e += 256) {
    const int i = e / kScanBV, j = e % kScanBV;
    sm.s[e] = io.src != nullptr ? load_state(a, io.src, io.src_row, h, i, v0 + j) : 0.f;
  }
  __syncthreads();

  // S_loc of segment j, this thread's elements.
  auto load_sloc = [&](int64_t j, float (&x)[kRows]) {
    const float* E = end_state(j);
#pragma unroll
    for (int r = 0; r < kRows; ++r) x[r] = E[static_cast<int64_t>(r0 + kGroups * r) * ldE + v0 + jc];
  };
  float next[kRows];
  if (ns > 1) load_sloc(0, next);
  for (int64_t j = 0; j < ns; ++j) {
    float* start = a.cp_h0 + ((g0 + j) * a.Hv + h) * int64_t(a.K) * a.V;
    for (int e = tid; e < KD * kScanBV; e += 256)
      start[static_cast<int64_t>(e / kScanBV) * a.V + v0 + e % kScanBV] = sm.s[e];
    if (j == ns - 1) break;
    const int b = BUFS == 2 ? static_cast<int>(j & 1) : 0;
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = next[r];
    if (j + 2 < ns) load_sloc(j + 1, next);  // in flight during this step
    if (BUFS == 2 && j + 2 < ns) {
      fetch_m(j + 1, b ^ 1);  // in flight during this step (its buffer was released by the last barrier)
      device::cp_async_wait<1>();
    } else {
      device::cp_async_wait<0>();
    }
    __syncthreads();  // M_j visible to every thread
    const bool no_m = warm(j);
#pragma unroll 4
    for (int k4 = 0; k4 < (no_m ? 0 : KD); k4 += 4) {
      const float s0 = sm.s[(k4 + 0) * kScanBV + jc], s1 = sm.s[(k4 + 1) * kScanBV + jc];
      const float s2 = sm.s[(k4 + 2) * kScanBV + jc], s3 = sm.s[(k4 + 3) * kScanBV + jc];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 m = *reinterpret_cast<const float4*>(&sm.m[b][(r0 + kGroups * r) * Sm::kLdM + k4]);
        acc[r] = fmaf(m.x, s0, fmaf(m.y, s1, fmaf(m.z, s2, fmaf(m.w, s3, acc[r]))));
      }
    }
    __syncthreads();  // every thread is done reading S and M_j
#pragma unroll
    for (int r = 0; r < kRows; ++r) sm.s[(r0 + kGroups * r) * kScanBV + jc] = acc[r];
    if (BUFS == 1 && j + 2 < ns) fetch_m(j + 1, 0);  // one buffer: M_{j+1} only now
    __syncthreads();
  }
}

}  // namespace flashgdn::portable

namespace flashgdn::portable {

// The head-form CP default (FLASHGDN_CP_DIRECT=0 takes cp_scan_kernel): the scan without the copies the gate-driven warm-up
// makes unnecessary. A segment whose predecessor took the warm-up starts from that predecessor's S_loc, which the
// final pass then reads from cp_end itself (fused_head_sm90.cuh), so cp_h0 is written only for a sequence's first
// segment and after exact transitions, and S_loc is loaded only where an exact transition follows. Same grid, thread
// layout and fixed summation order as cp_scan_kernel; one M buffer, fetched when needed (no prefetch).
template <int KD>
__global__ void __launch_bounds__(256) cp_scan_direct_kernel(FwdArgs a) {
  using Sm = ScanSmem<KD, 1>;
  constexpr int kGroups = 256 / kScanBV;
  constexpr int kRows = KD / kGroups;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const ScanCta cta(a);
  const int tid = cta.tid, jc = cta.jc, r0 = cta.r0, h = cta.h, v0 = cta.v0, ldE = cta.ldE;
  const int64_t n = cta.n, g0 = cta.g0, ns = cta.ns;
  auto end_state = [&](int64_t j) { return cta.end_state(a, j); };
  auto warm = [&](int64_t j) { return a.cp_warm[(g0 + j) * a.Hv + h] != 0; };
  // This thread's elements of S: rows r0 + 32 r, column v0 + jc (as in cp_scan_kernel).
  float s[kRows];
  const StateIO io = state_io(a, n);
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    s[r] = io.src != nullptr ? load_state(a, io.src, io.src_row, h, r0 + kGroups * r, v0 + jc) : 0.f;
  for (int64_t j = 0; j < ns; ++j) {
    if (j == 0 || !warm(j - 1)) {  // the final pass reads cp_h0 here (elsewhere the predecessor's S_loc)
      float* start = a.cp_h0 + ((g0 + j) * a.Hv + h) * int64_t(a.K) * a.V;
#pragma unroll
      for (int r = 0; r < kRows; ++r) start[static_cast<int64_t>(r0 + kGroups * r) * a.V + v0 + jc] = s[r];
    }
    if (j == ns - 1) break;
    const float* E = end_state(j);
    if (warm(j)) {  // S_{j+1} = S_loc_j, needed only by an exact transition j + 1
      if (j + 1 < ns - 1 && !warm(j + 1))
#pragma unroll
        for (int r = 0; r < kRows; ++r) s[r] = E[static_cast<int64_t>(r0 + kGroups * r) * ldE + v0 + jc];
      continue;
    }
    // Exact transition: S_{j+1} = M_j S_j + S_loc_j.
    for (int e = tid; e < KD * KD / 4; e += 256) {
      const int i = e / (KD / 4), k4 = (e % (KD / 4)) * 4;
      device::cp_async_16(&sm.m[0][i * Sm::kLdM + k4], &E[static_cast<int64_t>(i) * ldE + a.V + k4], true);
    }
    device::cp_async_commit();
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      sm.s[(r0 + kGroups * r) * kScanBV + jc] = s[r];
      acc[r] = E[static_cast<int64_t>(r0 + kGroups * r) * ldE + v0 + jc];
    }
    device::cp_async_wait<0>();
    __syncthreads();  // M_j and S visible to every thread
#pragma unroll 4
    for (int k4 = 0; k4 < KD; k4 += 4) {
      const float s0 = sm.s[(k4 + 0) * kScanBV + jc], s1 = sm.s[(k4 + 1) * kScanBV + jc];
      const float s2 = sm.s[(k4 + 2) * kScanBV + jc], s3 = sm.s[(k4 + 3) * kScanBV + jc];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 m = *reinterpret_cast<const float4*>(&sm.m[0][(r0 + kGroups * r) * Sm::kLdM + k4]);
        acc[r] = fmaf(m.x, s0, fmaf(m.y, s1, fmaf(m.z, s2, fmaf(m.w, s3, acc[r]))));
      }
    }
    __syncthreads();  // every thread is done reading S and M_j before the next step overwrites them
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r] = acc[r];
  }
}

}  // namespace flashgdn::portable
