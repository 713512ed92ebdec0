// Portable forward, stage 1 in the sm_90a head form's "A only" mode, one CTA per (chunk, q/k head) for all value heads
// of the head group (the default for the head form; FLASHGDN_PREPARE_GROUP=0 takes prepare_kernel's one CTA per
// (chunk, value head)).
//
// What it writes is prepare_kernel's a_only output, per (chunk, value head h): aux (gamma, rq, rk), the bf16 (64, 72)
// image of the gate-free A diag(beta) in Pm's slot, and (head-form CP) the warm-up bound cdecay (params.hpp). A =
// (I + StrictLower(diag(beta) K̂ K̂ᵀ))⁻¹ depends on the value head only through beta, so K, rq / rk and K Kᵀ are formed
// once per (chunk, q/k head) and each of the `group` value heads only rescales K Kᵀ and solves. Grid max_chunks * Hqk
// (q/k head fastest with prep_head_fastest); 128 threads = 4 warps; prepare_kernel's 56 KB LATE_V layout (4 CTAs per
// SM; V is never loaded).
//
// Phases (__syncthreads between them):
//   0  cp.async K (and Q under l2norm, for rq) rows (zero past L)
//   1  rq, rk per row (l2norm or 1; 0 past L)
//   2  K Kᵀ (16 rows per warp, mma.sync) kept in registers for the whole head loop; rk_i² ||k_i||² into the T tile's
//      pad column 64 (read by the warm-up bound; the solve reads columns < 64 only)
//   per value head of the group:
//   3  warp 0 scans g into gamma, warp 1 reads beta
//   4  T = StrictLower(diag(beta rk) K Kᵀ diag(rk)) from the registers; aux
//   5  diagonal blocks (warps 0-1) and the warm-up bound (warp 3); the three levels (tf32 tensor cores with MMA)
//   6  the A diag(beta) image by 16-byte stores
// NOTE: not yet GPU-run (compiled for sm_90a); the default stays prepare_kernel.
#pragma once

#include "device/warp_mma.cuh"
#include "kernels/portable/fwd/blocked_solve.hpp"
#include "kernels/portable/fwd/blocked_solve_mma.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/prepare.cuh"

namespace flashgdn::portable {

template <class T, int KD, int VD, bool MMA>
__global__ void __launch_bounds__(128, 4) prepare_group_kernel(FwdArgs a) {
  using namespace device;
  using S = PrepareSmem<T, KD, VD, true>;
  static_assert(S::kLdF > kChunk, "the T tile's pad column holds the key norms");
  static_assert(S::kLdF == blocked_solve::kLd, "blocked solve stride");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  S& sm = *reinterpret_cast<S*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t c = a.prep_head_fastest ? blockIdx.x / a.Hqk : blockIdx.x % a.max_chunks;
  const int hk = static_cast<int>(a.prep_head_fastest ? blockIdx.x % a.Hqk : blockIdx.x / a.max_chunks);
  const FwdArgs::ChunkInfo ci = a.chunk_info[c];
  if (ci.L < 0) return;  // past the last chunk (the grid is sized from shapes)
  const int64_t t0 = ci.t0;
  const int L = ci.L;
  const int64_t brow = ci.b;

  // ---- phase 0: K (and Q for its l2norm factors) rows, zero past L ----
  load_qk_rows<T, KD>(a, sm, tid, hk, brow, t0, L, a.l2norm);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // ---- phase 1: rq, rk ----
  row_factors<KD>(a, sm, tid, warp, lane, L);
  __syncthreads();  // rq, rk written; Q is dead (T may overwrite it)

  // ---- phase 2: K Kᵀ (16, 64) per warp, in registers for the head loop; rk_i² ||k_i||² -> T's pad column ----
  float kk[1][8][4];
  zero(kk);
  warp_gemm<1, 8, KD / 16, Major::kMK, BMajor::kNK>(kk, sm.k, S::kLd, warp * 16, sm.k, S::kLd, 0, lane);
  write_kk_diag(sm.a.tm + kChunk, S::kLdF, kk, warp, lane, [&](int i) { return sm.rk[i] * sm.rk[i]; });

  for (int gi = 0; gi < a.group; ++gi) {
    const int h = hk * a.group + gi;
    const int64_t ch = c * a.Hv + h;
    // ---- phase 3: gamma and beta of value head h ----
    load_gamma_beta<T>(a, sm.gam, sm.beta, warp, lane, brow, h, t0, L);
    __syncthreads();  // gamma, beta of head h (and, the first time, the key norms)

    // ---- phase 4: T (strictly lower) from the registers; aux ----
    write_t_tile(sm.a.tm, S::kLdF, kk, sm.beta, sm.rk, warp, lane);
    write_aux(a, ch, sm.gam, sm.rq, sm.rk, tid);
    __syncthreads();

    // ---- phase 5: X = T⁻¹; the warm-up bound on the warp the diagonal blocks leave idle ----
    invert_t<MMA>(a, tid, warp, lane, sm.a.tm, sm.xv.x, sm.yb, [&] {
      write_warmup_bound(a, ch, lane, L, sm.gam[L - 1], [&](int i) { return sm.beta[i] * sm.a.tm[i * S::kLdF + kChunk]; });
    });

    // ---- phase 6: A diag(beta) as a bf16 (64, 72) image ----
    write_a_image<T>(static_cast<T*>(a.Pm) + ch * pm_image_elems(), sm.xv.x, S::kLdF, sm.beta, L, tid);
    __syncthreads();  // X and beta read: the next head may overwrite gamma, beta, T and X
  }
}

}  // namespace flashgdn::portable
