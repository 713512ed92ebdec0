// The off-diagonal levels of the blocked solve (blocked_solve.hpp) on tensor cores: after the diagonal blocks
// D_i = T_ii⁻¹ (blocked_solve::diag, fp32), level d = 1, 2, 3 computes the blocks (i, j = i - d) as
//   Y = sum_{m=j}^{i-1} T_im X_mj,   X_ij = -D_i Y
// with warp w of a 4-warp group owning block row i = w + d (warps 0 .. 3 - d busy): 4d + 4 mma.sync m16n8k8 tf32 per
// level and warp, Y through the warp's 1 KB of scratch, one barrier per level (the caller's: `sync`) instead of the
// two of the CUDA-core levels. Operands are rounded to tf32 (10-bit mantissa) on the way in, accumulation is fp32; the
// diagonal blocks stay fp32. Device only (sm_80+).
// NOTE: for the A images the sm_90a head form reads (bf16, a 3x coarser rounding than tf32's): the default there
// (FLASHGDN_SOLVE_MMA=0: the fp32 levels); H100, 031f29b: 16/64 8192x4 1.393 -> 1.301 ms.
#pragma once

#include "device/ptx.cuh"
#include "kernels/portable/fwd/blocked_solve.hpp"

namespace flashgdn::portable::blocked_solve {

// T: row stride kLd; X: row stride ldx (diagonal blocks already written); Y: 4 x 256 floats of scratch (kScratch
// floats suffice: level 1, the widest, uses warps 0-2). warp in [0, 4) of the group, lane its lane.
template <class Sync>
__device__ __forceinline__ void levels_mma(int warp, int lane, const float* T, float* X, int ldx, float* Y, Sync&& sync) {
  using device::mma_1688_tf32;
  using device::to_tf32;
  const int g = lane / 4, c = lane % 4;
#pragma unroll 1
  for (int d = 1; d < kNB; ++d) {
    if (warp < kNB - d) {
      const int i = warp + d, j = warp;
      float y[2][4] = {};  // (16, 16): two n8 tiles
#pragma unroll 1
      for (int m = j; m < i; ++m)
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const float* tb = T + (kB * i) * kLd + kB * m + 8 * kk;
          const uint32_t a[4] = {to_tf32(tb[g * kLd + c]), to_tf32(tb[(g + 8) * kLd + c]), to_tf32(tb[g * kLd + c + 4]),
                                 to_tf32(tb[(g + 8) * kLd + c + 4])};
          const float* xb = X + (kB * m + 8 * kk) * ldx + kB * j;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
            mma_1688_tf32(y[nt], a, to_tf32(xb[c * ldx + 8 * nt + g]), to_tf32(xb[(c + 4) * ldx + 8 * nt + g]));
        }
      float* yw = Y + 256 * warp;  // (16, 16), row stride 16
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        yw[g * kB + 8 * nt + 2 * c] = y[nt][0];
        yw[g * kB + 8 * nt + 2 * c + 1] = y[nt][1];
        yw[(g + 8) * kB + 8 * nt + 2 * c] = y[nt][2];
        yw[(g + 8) * kB + 8 * nt + 2 * c + 1] = y[nt][3];
      }
      __syncwarp();
      float x[2][4] = {};
      const float* db = X + (kB * i) * ldx + kB * i;  // D_i
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const uint32_t a[4] = {to_tf32(db[g * ldx + 8 * kk + c]), to_tf32(db[(g + 8) * ldx + 8 * kk + c]),
                               to_tf32(db[g * ldx + 8 * kk + c + 4]), to_tf32(db[(g + 8) * ldx + 8 * kk + c + 4])};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
          mma_1688_tf32(x[nt], a, to_tf32(yw[(8 * kk + c) * kB + 8 * nt + g]), to_tf32(yw[(8 * kk + c + 4) * kB + 8 * nt + g]));
      }
      float* xo = X + (kB * i) * ldx + kB * j;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        xo[g * ldx + 8 * nt + 2 * c] = -x[nt][0];
        xo[g * ldx + 8 * nt + 2 * c + 1] = -x[nt][1];
        xo[(g + 8) * ldx + 8 * nt + 2 * c] = -x[nt][2];
        xo[(g + 8) * ldx + 8 * nt + 2 * c + 1] = -x[nt][3];
      }
    }
    sync();  // level d's blocks before level d + 1 reads them
  }
}

}  // namespace flashgdn::portable::blocked_solve
