// Portable backward, stage 4 (docs/design.md §4.2): per token and q/k head, the gradients w.r.t. the
// normalised q̂, k̂ that stage 3 leaves per value head (input dtype, [B·T, Hv, K]) summed over the head's group in
// head order (deterministic), then, with in-kernel l2norm, its backward
//   dx = (dx̂ − x̂ (x̂·dx̂)) · r,   x̂ = x r,   r = rsqrt(|x|² + 1e-6)   (the forward's factor),
// written as dq, dk in the input dtype. One warp per (token, q/k head, q or k); lanes hold K / 32 columns.
// (No shared memory, no barriers.)
#pragma once

#include "device/ptx.cuh"
#include "kernels/portable/bwd/params.hpp"

namespace flashgdn::portable {

inline constexpr int kQkGradThreads = 256;

template <class T, int KD>
__global__ void __launch_bounds__(kQkGradThreads) qk_grads_kernel(QkGradArgs g) {
  using namespace device;
  constexpr int kPer = KD / 32;  // columns per lane
  const int64_t wid = (static_cast<int64_t>(blockIdx.x) * kQkGradThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  const int64_t rows = static_cast<int64_t>(g.B) * g.T * g.Hqk;
  if (wid >= 2 * rows) return;
  const int which = static_cast<int>(wid / rows);  // 0: q, 1: k
  const int64_t r = wid % rows;
  const int hk = static_cast<int>(r % g.Hqk);
  const int64_t bt = r / g.Hqk, b = bt / g.T, t = bt % g.T;
  const T* dh = static_cast<const T*>(which == 0 ? g.dqh : g.dkh) + (bt * g.Hv + int64_t(hk) * g.group) * KD;
  float d[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) d[e] = 0.f;
  for (int j = 0; j < g.group; ++j)  // the group's value heads in order
#pragma unroll
    for (int e = 0; e < kPer; ++e) d[e] += to_float(dh[int64_t(j) * KD + lane + 32 * e]);
  const int64_t* xs = which == 0 ? g.q_s : g.k_s;
  const int64_t* ds = which == 0 ? g.dq_s : g.dk_s;
  if (g.l2norm) {
    const T* x = static_cast<const T*>(which == 0 ? g.q : g.k) + b * xs[0] + t * xs[1] + hk * xs[2];
    float xv[kPer], ss = 0.f, dot = 0.f;
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      xv[e] = to_float(x[lane + 32 * e]);
      ss += xv[e] * xv[e];
      dot += xv[e] * d[e];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      ss += __shfl_xor_sync(0xffffffffu, ss, o);
      dot += __shfl_xor_sync(0xffffffffu, dot, o);
    }
    const float rn = rsqrtf(ss + 1e-6f);
    // x̂·dx̂ = rn (x·dx̂); dx = (dx̂ − x rn · rn (x·dx̂)) rn
#pragma unroll
    for (int e = 0; e < kPer; ++e) d[e] = (d[e] - xv[e] * rn * rn * dot) * rn;
  }
  T* out = static_cast<T*>(which == 0 ? g.dq : g.dk) + b * ds[0] + t * ds[1] + hk * ds[2];
#pragma unroll
  for (int e = 0; e < kPer; ++e) out[lane + 32 * e] = from_float<T>(d[e]);
}

}  // namespace flashgdn::portable
