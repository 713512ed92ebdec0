// Device helpers of the portable forward: clamped sequence ranges (cu_seqlens lives on the device and
// is never trusted) and where a sequence's state comes from and goes to. The kernels: scheduler_kernels.cuh.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::portable {

// One warp: gam = the inclusive cumsum of a chunk's 64 gates, lane l holding g[2 l] = x0 and g[2 l + 1] = x1 (the
// callers pass 0 past the chunk's length, so rows past it repeat gamma[L - 1]).
__device__ __forceinline__ void gamma_scan(float x0, float x1, int lane, float* gam) {
  float incl = x0 + x1;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += y;
  }
  gam[2 * lane] = incl - x1;
  gam[2 * lane + 1] = incl;
}

struct Seq {
  int64_t b, bos, eos;  // batch row, tokens [bos, eos) of that row
};

// Never out of bounds, whatever cu_seqlens holds: bos in [0, T], eos in [bos, T].
__device__ __forceinline__ Seq seq_range(const FwdArgs& a, int64_t n) {
  if (a.cu_seqlens == nullptr) return Seq{n, 0, a.T};
  auto at = [&](int64_t i) -> int64_t {
    return a.cu_i64 ? static_cast<const int64_t*>(a.cu_seqlens)[i] : static_cast<const int32_t*>(a.cu_seqlens)[i];
  };
  int64_t bos = at(n), eos = at(n + 1);
  bos = bos < 0 ? 0 : (bos > a.T ? a.T : bos);
  eos = eos < bos ? bos : (eos > a.T ? a.T : eos);
  return Seq{0, bos, eos};
}

// Where sequence n's state comes from and goes to: the initial state (or the pool slot; null = zeros)
// and the final state (or the same pool slot; null = not written).
struct StateIO {
  const void* src;
  int64_t src_row;
  void* dst;
  int64_t dst_row;
};
__device__ __forceinline__ StateIO state_io(const FwdArgs& a, int64_t n) {
  StateIO io{a.h0, n, a.ht, n};
  if (a.state_indices != nullptr) {
    const int64_t slot = a.idx_i64 ? static_cast<const int64_t*>(a.state_indices)[n]
                                   : static_cast<const int32_t*>(a.state_indices)[n];
    io.src_row = io.dst_row = slot;
    if (slot < 0 || slot >= a.P) io.src = io.dst = nullptr;  // -1 or out of range: zeros in, nothing back
  }
  if (a.has_initial_state != nullptr && a.has_initial_state[n * a.mask_stride] == 0) io.src = nullptr;
  return io;
}

// Offset of state element (i over K, j over V) of head h in row `row` of a state tensor.
__device__ __forceinline__ int64_t state_offset(const FwdArgs& a, int64_t row, int64_t row_stride, int h, int i, int j) {
  return row * row_stride + static_cast<int64_t>(h) * a.K * a.V +
         (a.v_first ? static_cast<int64_t>(j) * a.K + i : static_cast<int64_t>(i) * a.V + j);
}

// Element (i, j) of head h in row `row` of the initial state (fp32 or bf16 storage, either layout).
__device__ __forceinline__ float load_state(const FwdArgs& a, const void* src, int64_t row, int h, int i, int j) {
  const int64_t off = state_offset(a, row, a.h0_row_stride, h, i, j);
  return a.h0_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(src)[off]) : static_cast<const float*>(src)[off];
}
// The same element of the final state.
__device__ __forceinline__ void store_state(const FwdArgs& a, void* dst, int64_t row, int h, int i, int j, float x) {
  const int64_t off = state_offset(a, row, a.ht_row_stride, h, i, j);
  if (a.ht_bf16) static_cast<__nv_bfloat16*>(dst)[off] = __float2bfloat16_rn(x);
  else static_cast<float*>(dst)[off] = x;
}

}  // namespace flashgdn::portable
