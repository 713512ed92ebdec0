// Portable forward, stage 1 in the sm_90a head form's "A only" mode, one CTA per (chunk, q/k head) for all value heads
// of the head group (FLASHGDN_PREPARE_GROUP=1; A/B against prepare_kernel's one CTA per (chunk, value head)).
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
  {
    constexpr int kVK = KD * sizeof(T) / 16, kE = 16 / sizeof(T);
    const T* qg = static_cast<const T*>(a.q) + brow * a.q_s[0] + hk * a.q_s[2];
    const T* kg = static_cast<const T*>(a.k) + brow * a.k_s[0] + hk * a.k_s[2];
    for (int i = tid; i < kChunk * kVK; i += 128) {
      const int r = i / kVK, cv = (i % kVK) * kE;
      const bool ok = r < L;
      const int64_t t = ok ? t0 + r : t0;
      if (a.l2norm) cp_async_16(&sm.a.q[r * S::kLd + cv], qg + t * a.q_s[1] + cv, ok);
      cp_async_16(&sm.k[r * S::kLd + cv], kg + t * a.k_s[1] + cv, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
  }
  __syncthreads();

  // ---- phase 1: rq, rk = rsqrt(sum x^2 + 1e-6) under l2norm, else 1; 0 past L (warp w: rows 16 w ..) ----
  if (a.l2norm) {
    for (int r = warp * 16; r < warp * 16 + 16; ++r) {
      float sq = 0.f, sk = 0.f;
      for (int e = lane; e < KD; e += 32) {
        const float xq = to_float(sm.a.q[r * S::kLd + e]), xk = to_float(sm.k[r * S::kLd + e]);
        sq += xq * xq;
        sk += xk * xk;
      }
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) {
        sq += __shfl_xor_sync(0xffffffffu, sq, d);
        sk += __shfl_xor_sync(0xffffffffu, sk, d);
      }
      if (lane == 0) {
        sm.rq[r] = r < L ? rsqrtf(sq + 1e-6f) : 0.f;
        sm.rk[r] = r < L ? rsqrtf(sk + 1e-6f) : 0.f;
      }
    }
  } else if (tid < kChunk) {
    sm.rq[tid] = sm.rk[tid] = tid < L ? 1.f : 0.f;
  }
  __syncthreads();  // rq, rk written; Q is dead (T may overwrite it)

  // ---- phase 2: K Kᵀ (16, 64) per warp, in registers for the head loop; rk_i² ||k_i||² -> T's pad column ----
  float kk[1][8][4];
  zero(kk);
  warp_gemm<1, 8, KD / 16, Major::kMK, BMajor::kNK>(kk, sm.k, S::kLd, warp * 16, sm.k, S::kLd, 0, lane);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = warp * 16 + (lane >> 2) + hf * 8;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int j = nt * 8 + ((lane & 3) << 1);
      // NOTE: selects, not kk[..][2 hf + (j + 1 == i)]: a dynamic index would put kk in local memory.
      if (j == i) sm.a.tm[i * S::kLdF + kChunk] = sm.rk[i] * sm.rk[i] * kk[0][nt][2 * hf];
      if (j + 1 == i) sm.a.tm[i * S::kLdF + kChunk] = sm.rk[i] * sm.rk[i] * kk[0][nt][2 * hf + 1];
    }
  }

  const float* gbase = a.g + brow * a.g_s[0];
  for (int gi = 0; gi < a.group; ++gi) {
    const int h = hk * a.group + gi;
    const int64_t ch = c * a.Hv + h;
    // ---- phase 3: gamma (inclusive cumsum of g; rows past L: gamma[L - 1]) and beta (0 past L) ----
    if (warp == 0) {
      const float* gg = gbase + h * a.g_s[2];
      const float x0 = 2 * lane < L ? gg[(t0 + 2 * lane) * a.g_s[1]] : 0.f;
      const float x1 = 2 * lane + 1 < L ? gg[(t0 + 2 * lane + 1) * a.g_s[1]] : 0.f;
      float incl = x0 + x1;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += y;
      }
      sm.gam[2 * lane] = incl - x1;
      sm.gam[2 * lane + 1] = incl;
    } else if (warp == 1) {
      const int64_t boff = brow * a.beta_s[0] + h * a.beta_s[2];
      for (int i = lane; i < kChunk; i += 32) sm.beta[i] = i < L ? load_beta<T>(a, boff + (t0 + i) * a.beta_s[1]) : 0.f;
    }
    __syncthreads();  // gamma, beta of head h (and, the first time, the key norms)

    // ---- phase 4: T (strictly lower) from the registers; aux ----
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = warp * 16 + (lane >> 2) + hf * 8;
      const float fi = sm.beta[i] * sm.rk[i];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int j = nt * 8 + ((lane & 3) << 1);
        sm.a.tm[i * S::kLdF + j] = j < i ? fi * sm.rk[j] * kk[0][nt][2 * hf] : 0.f;
        sm.a.tm[i * S::kLdF + j + 1] = j + 1 < i ? fi * sm.rk[j + 1] * kk[0][nt][2 * hf + 1] : 0.f;
      }
    }
    if (tid < kChunk) {
      float* aux = a.aux + ch * 3 * kChunk;
      aux[tid] = sm.gam[tid];
      aux[kChunk + tid] = sm.rq[tid];
      aux[2 * kChunk + tid] = sm.rk[tid];
    }
    __syncthreads();

    // ---- phase 5: X = T⁻¹; the warm-up bound on the warp the diagonal blocks leave idle ----
    if (tid < 64) {
      if (a.solve_diag8)
        blocked_solve::diag8(tid, sm.a.tm, sm.xv.x);
      else
        blocked_solve::diag(tid, sm.a.tm, sm.xv.x);
    } else if (warp == 3 && a.cdecay != nullptr) {
      float s = 0.f;
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int i = lane + 32 * u;
        if (i < L) s += logf(fmaxf(1.f, fabsf(1.f - sm.beta[i] * sm.a.tm[i * S::kLdF + kChunk])));
      }
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
      if (lane == 0) a.cdecay[ch] = sm.gam[L - 1] + s;
    }
    __syncthreads();
    if (a.solve_diag8) {  // warp w merges the 8 x 8 pair of 16 x 16 block w
      for (int e = lane; e < 64; e += 32) blocked_solve::merge8_y(warp, e, sm.a.tm, sm.xv.x, sm.yb + 64 * warp);
      __syncwarp();
      for (int e = lane; e < 64; e += 32) blocked_solve::merge8_x(warp, e, sm.xv.x, sm.yb + 64 * warp);
      __syncthreads();
    }
    if constexpr (MMA) {
      blocked_solve::levels_mma(warp, lane, sm.a.tm, sm.xv.x, S::kLdF, sm.yb, [] { __syncthreads(); });
    } else {
#pragma unroll 1
      for (int d = 1; d < blocked_solve::kNB; ++d) {
        blocked_solve::level_y(tid, 128, d, sm.a.tm, sm.xv.x, sm.yb);
        __syncthreads();
        blocked_solve::level_x(tid, 128, d, sm.xv.x, sm.yb);
        __syncthreads();
      }
    }

    // ---- phase 6: A diag(beta) as a bf16 (64, 72) image, pads included, by 16-byte stores ----
    T* dst = static_cast<T*>(a.Pm) + ch * pm_image_elems();
    constexpr int kPieces = (kChunk + 8) / 8;
    for (int e = tid; e < kChunk * kPieces; e += 128) {
      const int i = e / kPieces, j = (e % kPieces) * 8;
      uint32_t w[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float x[2];
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const int jj = j + 2 * u + b;
          x[b] = jj <= i && i < L ? sm.xv.x[i * S::kLdF + jj] * sm.beta[jj] : 0.f;
        }
        w[u] = pack2<T>(x[0], x[1]);
      }
      *reinterpret_cast<uint4*>(&dst[i * (kChunk + 8) + j]) = make_uint4(w[0], w[1], w[2], w[3]);
    }
    __syncthreads();  // X and beta read: the next head may overwrite gamma, beta, T and X
  }
}

}  // namespace flashgdn::portable
