// Portable forward, stage 1 ("prepare"): everything of a chunk that does not depend on the state.
//
// Grid (max_chunks, Hv); 128 threads = 4 warps; one CTA per (chunk, value head), ~73 KB of shared
// memory so that 3 CTAs (12 warps) share an SM. For value head h (q/k head h / group) it writes
//   aux[c, h] = (gamma, rq, rk)                   fp32 (64 each): chunk cumsum of g, l2norm factors (1 if off)
//   Pm[c, h]  = scale * Gamma o tril(Q̂ K̂ᵀ)        T, 64 x 64
// (W, U and Pm as padded images of the recurrence's shared-memory tiles, params.hpp)
//   W[c, h]   = (Gamma o A) diag(beta) diag(e^gamma) K̂  T, 64 x K   (A = T⁻¹, T = I + StrictLower(diag(beta) K̂ K̂ᵀ))
//   U[c, h]   = (Gamma o A) diag(beta) V          T, 64 x V
// and, on the backward's recompute, the Ab = (Gamma o A) diag(beta) image and a bf16 image of Gamma o A (FwdArgs).
// With a.a_only (the sm_90a head form) it writes aux and the gate-free A diag(beta) as a bf16 image in Pm's
// layout instead, and skips V, Q Kᵀ, W and U.
// with Gamma_ij = exp(gamma_i - gamma_j) for i >= j (exponent <= 0; the exp(gamma_i) on W is <= 1 too),
// zero above the diagonal and in rows/columns past the chunk's length L. Q̂ = diag(rq) Q, K̂ = diag(rk) K.
// The q/k head's Q Kᵀ and K Kᵀ are recomputed by each of its value heads (two 64 x 64 x K products on
// tensor cores, far cheaper than the occupancy a shared-q/k CTA loses).
//
// Phases (all 4 warps, __syncthreads between them):
//   0  cp.async Q, K (q/k head) and V rows (zero past L); warp 0 scans g into gamma, warp 1 reads beta
//   1  rq, rk per row (l2norm or 1; 0 past L)
//   2  Q Kᵀ and K Kᵀ (16 rows per warp, mma.sync): Pm straight from the accumulators to global memory,
//      T into sTm (aliases sQ, after a barrier)
//   3  T⁻¹ by 16 x 16 blocks (blocked_solve.hpp): diagonal blocks on warps 0-1, three levels on all warps
//   4  Aw, Ab (T) into sProd (aliases sTm: the last level reads only X and Y)
//   5  W = Aw K and U = Ab V (16 rows per warp) straight from the accumulators to global memory
//
// Shared memory (K = V = 128): sQ | sTm | sProd 18 KB, sX 17 KB, sK 17 KB, sV 17 KB, Y scratch 3 KB,
// four 64-float vectors 1 KB: ~73 KB.
#pragma once

#include <type_traits>

#include "device/warp_mma.cuh"
#include "kernels/portable/fwd/blocked_solve.hpp"
#include "kernels/portable/fwd/blocked_solve_mma.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

// LATE_V: V shares its space with X and is loaded after the solve (its latency hidden behind W = Aw K),
// for ~56 KB and 4 CTAs per SM; the products are then done in 64-column halves to fit 128 registers.
// NOTE: an A/B variant (FLASHGDN_PORTABLE_PREPARE=4), not yet measured; the default is LATE_V = false.
template <class T, int KD, int VD, bool LATE_V = false>
struct PrepareSmem {
  static constexpr int kLd = KD + 8;  // NOTE: +16 bytes per row keeps ldmatrix conflict-free
  static constexpr int kLdV = VD + 8;
  static constexpr int kLdF = blocked_solve::kLd;  // fp32 rows
  static constexpr int kLdA = kChunk + 8;
  union {
    T q[kChunk * kLd];        // (64, K) phases 0-2
    float tm[kChunk * kLdF];  // (64, 64) T, phase 3
    struct {
      T aw[kChunk * kLdA];  // (64, 64)
      T ab[kChunk * kLdA];  // (64, 64)
    } prod;                 // phases 4-5
  } a;
  struct Separate {
    float x[kChunk * kLdF];  // (64, 64) X = T⁻¹
    T v[kChunk * kLdV];      // (64, V)
  };
  union Shared {
    float x[kChunk * kLdF];  // phases 3-4
    T v[kChunk * kLdV];      // phase 5
  };
  std::conditional_t<LATE_V, Shared, Separate> xv;
  T k[kChunk * kLd];  // (64, K)
  float yb[blocked_solve::kScratch];
  float rq[kChunk], rk[kChunk], gam[kChunk], beta[kChunk];
};

template <class T>
__device__ __forceinline__ float load_beta(const FwdArgs& a, int64_t off) {
  return a.beta_f32 ? static_cast<const float*>(a.beta)[off] : device::to_float(static_cast<const T*>(a.beta)[off]);
}

// Helpers shared by prepare_kernel and prepare_group_kernel (prepare_group.cuh); 128 threads = 4 warps.

// Q (when need_q) and K rows of q/k head hk by cp.async, zero past L (not committed).
template <class T, int KD, class Smem>
__device__ __forceinline__ void load_qk_rows(const FwdArgs& a, Smem& sm, int tid, int hk, int64_t brow, int64_t t0,
                                             int L, bool need_q) {
  constexpr int kVK = KD * sizeof(T) / 16, kE = 16 / sizeof(T);
  const T* qg = static_cast<const T*>(a.q) + brow * a.q_s[0] + hk * a.q_s[2];
  const T* kg = static_cast<const T*>(a.k) + brow * a.k_s[0] + hk * a.k_s[2];
  for (int i = tid; i < kChunk * kVK; i += 128) {
    const int r = i / kVK, cv = (i % kVK) * kE;
    const bool ok = r < L;
    const int64_t t = ok ? t0 + r : t0;
    if (need_q) device::cp_async_16(&sm.a.q[r * Smem::kLd + cv], qg + t * a.q_s[1] + cv, ok);
    device::cp_async_16(&sm.k[r * Smem::kLd + cv], kg + t * a.k_s[1] + cv, ok);
  }
}

// Warp 0: gamma = inclusive cumsum of g over the chunk (rows past L: gamma[L - 1]); warp 1: beta (0 past L).
template <class T>
__device__ __forceinline__ void load_gamma_beta(const FwdArgs& a, float* gam, float* beta, int warp, int lane,
                                                int64_t brow, int h, int64_t t0, int L) {
  if (warp == 0) {
    const float* gg = a.g + brow * a.g_s[0] + h * a.g_s[2];
    const float x0 = 2 * lane < L ? gg[(t0 + 2 * lane) * a.g_s[1]] : 0.f;
    const float x1 = 2 * lane + 1 < L ? gg[(t0 + 2 * lane + 1) * a.g_s[1]] : 0.f;
    gamma_scan(x0, x1, lane, gam);
  } else if (warp == 1) {
    const int64_t boff = brow * a.beta_s[0] + h * a.beta_s[2];
    for (int i = lane; i < kChunk; i += 32) beta[i] = i < L ? load_beta<T>(a, boff + (t0 + i) * a.beta_s[1]) : 0.f;
  }
}

// rq, rk: the l2norm factors rsqrt(sum x^2 + 1e-6) (1 when off), 0 past L; warp w: rows 16 w .. 16 w + 15.
template <int KD, class Smem>
__device__ __forceinline__ void row_factors(const FwdArgs& a, Smem& sm, int tid, int warp, int lane, int L) {
  using device::to_float;
  if (a.l2norm) {
    for (int r = warp * 16; r < warp * 16 + 16; ++r) {
      float sq = 0.f, sk = 0.f;
      for (int e = lane; e < KD; e += 32) {
        const float xq = to_float(sm.a.q[r * Smem::kLd + e]), xk = to_float(sm.k[r * Smem::kLd + e]);
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
}

// T = StrictLower(diag(beta rk) K Kᵀ diag(rk)) into tm (row stride ldt) from warp w's K Kᵀ rows 16 w .. 16 w + 15
// (mma.sync accumulators), zero on and above the diagonal.
__device__ __forceinline__ void write_t_tile(float* tm, int ldt, const float (&kk)[1][8][4], const float* beta,
                                             const float* rk, int warp, int lane) {
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = warp * 16 + (lane >> 2) + hf * 8;
    const float fi = beta[i] * rk[i];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int j = nt * 8 + ((lane & 3) << 1);
      tm[i * ldt + j] = j < i ? fi * rk[j] * kk[0][nt][2 * hf] : 0.f;
      tm[i * ldt + j + 1] = j + 1 < i ? fi * rk[j + 1] * kk[0][nt][2 * hf + 1] : 0.f;
    }
  }
}

// The diagonal of K Kᵀ (||k_i||², from the same accumulators) times f(i) into dst[i * stride].
// NOTE: selects, not kk[..][2 hf + (j + 1 == i)]: a dynamic index would put kk in local memory.
template <class F>
__device__ __forceinline__ void write_kk_diag(float* dst, int stride, const float (&kk)[1][8][4], int warp, int lane,
                                              F&& f) {
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = warp * 16 + (lane >> 2) + hf * 8;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int j = nt * 8 + ((lane & 3) << 1);
      if (j == i) dst[i * stride] = f(i) * kk[0][nt][2 * hf];
      if (j + 1 == i) dst[i * stride] = f(i) * kk[0][nt][2 * hf + 1];
    }
  }
}

// X = T⁻¹ (blocked_solve.hpp; tm and x of row stride blocked_solve::kLd): the diagonal blocks on warps 0-1 while warp
// 3 runs warm_up() (the warm-up bound, when a.cdecay is set), the diag8 merge, then the levels (tf32 tensor cores with
// MMA). Ends after a barrier; afterwards tm is dead.
template <bool MMA, class WarmUp>
__device__ __forceinline__ void invert_t(const FwdArgs& a, int tid, int warp, int lane, float* tm, float* x, float* yb,
                                         WarmUp warm_up) {
  if (tid < 64) {
    if (a.solve_diag8)
      blocked_solve::diag8(tid, tm, x);
    else
      blocked_solve::diag(tid, tm, x);
  } else if (warp == 3 && a.cdecay != nullptr) {
    warm_up();  // NOTE: on the warp the diagonal blocks leave idle
  }
  __syncthreads();
  if (a.solve_diag8) {  // Y: the warp's 64 floats of scratch
    blocked_solve::merge8_warp(warp, lane, tm, x, yb);
    __syncthreads();
  }
  if constexpr (MMA) {  // the A image is bf16: the levels on tf32 tensor cores
    blocked_solve::levels_mma(warp, lane, tm, x, blocked_solve::kLd, yb, [] { __syncthreads(); });
  } else {
#pragma unroll 1
    for (int d = 1; d < blocked_solve::kNB; ++d) {
      blocked_solve::level_y(tid, 128, d, tm, x, yb);
      __syncthreads();
      blocked_solve::level_x(tid, 128, d, x, yb);
      __syncthreads();
    }
  }
}

// aux[ch] = (gamma, rq, rk), 64 floats each (threads 0 .. 63).
__device__ __forceinline__ void write_aux(const FwdArgs& a, int64_t ch, const float* gam, const float* rq,
                                          const float* rk, int tid) {
  if (tid >= kChunk) return;
  float* aux = a.aux + ch * 3 * kChunk;
  aux[tid] = gam[tid];
  aux[kChunk + tid] = rq[tid];
  aux[2 * kChunk + tid] = rk[tid];
}

// One warp: the chunk's warm-up bound (params.hpp, warmup_chunks) gamma_L + sum_t log max(1, |1 - beta_t ||k̂_t||²|)
// into a.cdecay[ch], with bk2(t) = beta_t ||k̂_t||² for the rows t < L.
template <class F>
__device__ __forceinline__ void write_warmup_bound(const FwdArgs& a, int64_t ch, int lane, int L, float gamma_last,
                                                   F&& bk2) {
  float s = 0.f;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int i = lane + 32 * u;
    if (i < L) s += logf(fmaxf(1.f, fabsf(1.f - bk2(i))));
  }
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
  if (lane == 0) a.cdecay[ch] = gamma_last + s;
}

// The head form's image of A diag(beta): bf16 (64, 72), zero above the diagonal, past L and in the pads, from X
// (row stride ldx) by 16-byte stores (64 rows of nine 8-element pieces).
template <class T>
__device__ __forceinline__ void write_a_image(T* dst, const float* X, int ldx, const float* beta, int L, int tid) {
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
        x[b] = jj <= i && i < L ? X[i * ldx + jj] * beta[jj] : 0.f;
      }
      w[u] = device::pack2<T>(x[0], x[1]);
    }
    *reinterpret_cast<uint4*>(&dst[i * (kChunk + 8) + j]) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// MMA: the solve's off-diagonal levels on tf32 tensor cores (a_only only; the default, FLASHGDN_SOLVE_MMA=0 not). A template
// parameter, not a runtime branch, so that the default kernel's registers are untouched.
template <class T, int KD, int VD, bool LATE_V = false, bool MMA = false>
__global__ void __launch_bounds__(128, LATE_V ? 4 : 3) prepare_kernel(FwdArgs a) {
  using namespace device;
  using S = PrepareSmem<T, KD, VD, LATE_V>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  S& sm = *reinterpret_cast<S*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // NOTE: the recurrence is launched to start during this grid's last wave (programmatic dependent
  // launch, sm_90+); it waits per (chunk, head) on a.ready, never on the whole grid.
  launch_dependents();
  // 1-D grid, head fastest: the last wave holds the last chunks of every head, the ones the recurrence
  // needs last.
  const int64_t c = a.prep_head_fastest ? blockIdx.x / a.Hv : blockIdx.x % a.max_chunks;
  const int h = static_cast<int>(a.prep_head_fastest ? blockIdx.x % a.Hv : blockIdx.x / a.max_chunks);
  const int hk = h / a.group;
  const FwdArgs::ChunkInfo ci = a.chunk_info[c];
  if (ci.L < 0) return;  // past the last chunk (the grid is sized from shapes): not counted
  const int64_t t0 = ci.t0;
  const int L = ci.L;
  const int64_t brow = ci.b;
  const int64_t ch = c * a.Hv + h;

  // ---- phase 0: Q, K, V rows (zero past L); gamma and beta ----
  const T* vg = static_cast<const T*>(a.v) + brow * a.v_s[0] + h * a.v_s[2];
  constexpr int kVV = VD * sizeof(T) / 16, kE = 16 / sizeof(T);
  auto load_v = [&] {
    for (int i = tid; i < kChunk * kVV; i += 128) {
      const int r = i / kVV, cv = (i % kVV) * kE;
      const bool ok = r < L;
      cp_async_16(&sm.xv.v[r * S::kLdV + cv], vg + (ok ? t0 + r : t0) * a.v_s[1] + cv, ok);
    }
  };
  {
    load_qk_rows<T, KD>(a, sm, tid, hk, brow, t0, L, !a.a_only || a.l2norm);  // a_only reads Q only for l2norm
    if constexpr (!LATE_V)
      if (!a.a_only) load_v();
    cp_async_commit();
  }
  load_gamma_beta<T>(a, sm.gam, sm.beta, warp, lane, brow, h, t0, L);
  cp_async_wait<0>();
  __syncthreads();

  // ---- phase 1: l2norm factors rsqrt(sum x^2 + 1e-6) (1 when off), 0 past L; warp w: rows 16w .. 16w + 15 ----
  row_factors<KD>(a, sm, tid, warp, lane, L);
  __syncthreads();

  // ---- phase 2: Q Kᵀ -> Pm (global), K Kᵀ -> T (shared); 16 rows per warp ----
  {
    float qk[1][8][4], kk[1][8][4];  // (16, 64) each
    zero(qk);
    zero(kk);
    if (!a.a_only)
      warp_gemm<1, 8, KD / 16, Major::kMK, BMajor::kNK>(qk, sm.a.q, S::kLd, warp * 16, sm.k, S::kLd, 0, lane);
    if constexpr (!LATE_V)
      warp_gemm<1, 8, KD / 16, Major::kMK, BMajor::kNK>(kk, sm.k, S::kLd, warp * 16, sm.k, S::kLd, 0, lane);
    T* pm = static_cast<T*>(a.Pm) + ch * pm_image_elems();  // (64, 72) image
    if (!a.a_only) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = warp * 16 + (lane >> 2) + hf * 8;
        const float gi = sm.gam[i], fq = a.scale * sm.rq[i];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const int j = nt * 8 + ((lane & 3) << 1);
          // exp(gamma_i - gamma_j) <= 1 for i >= j; masked elsewhere.
          const float p0 = (j <= i) ? fq * sm.rk[j] * __expf(fminf(gi - sm.gam[j], 0.f)) * qk[0][nt][2 * hf] : 0.f;
          const float p1 = (j + 1 <= i) ? fq * sm.rk[j + 1] * __expf(fminf(gi - sm.gam[j + 1], 0.f)) * qk[0][nt][2 * hf + 1] : 0.f;
          *reinterpret_cast<uint32_t*>(pm + i * (kChunk + 8) + j) = pack2<T>(p0, p1);
        }
      }
    }
    // NOTE: LATE_V (128 registers) forms K Kᵀ after Pm so that the two accumulators are not live together.
    if constexpr (LATE_V)
      warp_gemm<1, 8, KD / 16, Major::kMK, BMajor::kNK>(kk, sm.k, S::kLd, warp * 16, sm.k, S::kLd, 0, lane);
    __syncthreads();  // every warp is done reading sQ: sTm may overwrite it
    write_t_tile(sm.a.tm, S::kLdF, kk, sm.beta, sm.rk, warp, lane);
    // ||k_i||² (the diagonal of K Kᵀ) for the warm-up bound; Y's scratch is free until the solve's levels.
    if (a.cdecay != nullptr) write_kk_diag(sm.yb, 1, kk, warp, lane, [](int) { return 1.f; });
  }
  if (tid < kChunk) write_aux(a, ch, sm.gam, sm.rq, sm.rk, tid);  // gamma past L already holds gamma[L - 1]
  __syncthreads();

  // ---- phase 3: X = T⁻¹ ----
  static_assert(S::kLdF == blocked_solve::kLd, "blocked solve stride");
  // ||k̂_t||² = rk_t² ||k_t||² (the diagonal of K Kᵀ in Y's scratch). After the last level sTm is dead: sProd may
  // overwrite it.
  invert_t<MMA>(a, tid, warp, lane, sm.a.tm, sm.xv.x, sm.yb, [&] {
    write_warmup_bound(a, ch, lane, L, sm.gam[L - 1], [&](int i) { return sm.beta[i] * sm.rk[i] * sm.rk[i] * sm.yb[i]; });
  });

  if (a.a_only) {  // the sm_90a head form: A diag(beta) as a bf16 image in Pm's layout, pads included
    write_a_image<T>(static_cast<T*>(a.Pm) + ch * pm_image_elems(), sm.xv.x, S::kLdF, sm.beta, L, tid);
    // NOTE: no release of a.ready / a.prepared here: the head form is launched after prepare in stream order (only the
    // portable recurrence, which never takes a_only images, overlaps prepare and acquires them).
    return;
  }

  // ---- phase 4: Ab = Gamma o X diag(beta), Aw = diag(e^gamma) Gamma o X diag(beta rk) (T) ----
  // NOTE: keep this loop in the flat form. The form with each thread's column factors hoisted out of a
  // row loop (`for (i = tid / 32; i < 64; i += 4)`, ee672ff) is miscompiled by CUDA 13.0's NVVM: in the
  // 4x-unrolled body the third and fourth X loads are displaced by +9216 bytes (the aw -> ab distance),
  // already in the PTX; on H100 every output was wrong (rel L2 ~5, inf in the demo).
  for (int e = tid; e < kChunk * kChunk / 2; e += 128) {
    const int i = e >> 5, j = (e & 31) * 2;
    const float gi = sm.gam[i], egi = __expf(fminf(gi, 0.f));
    float ab[2], aw[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int jj = j + u;
      const bool in = jj <= i && i < L;
      const float xb = in ? sm.xv.x[i * S::kLdF + jj] * sm.beta[jj] : 0.f;
      ab[u] = xb * __expf(fminf(gi - sm.gam[jj], 0.f));  // (Gamma o A)_ij beta_j
      aw[u] = xb * egi * sm.rk[jj];                       // e^{gamma_i} A_ij beta_j rk_j = (Gamma o A)_ij beta_j e^{gamma_j} rk_j
    }
    *reinterpret_cast<uint32_t*>(&sm.a.prod.ab[i * S::kLdA + j]) = pack2<T>(ab[0], ab[1]);
    *reinterpret_cast<uint32_t*>(&sm.a.prod.aw[i * S::kLdA + j]) = pack2<T>(aw[0], aw[1]);
  }
  if (a.At != nullptr) {  // the backward's recompute: Γ o A as a bf16 image (stage 3 differentiates through it)
    __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(a.At) + ch * pm_image_elems();
    for (int e = tid; e < kChunk * (kChunk + 8) / 2; e += 128) {  // pairs, pads included
      const int i = e / ((kChunk + 8) / 2), j = (e % ((kChunk + 8) / 2)) * 2;
      float x[2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int jj = j + u;
        x[u] = jj <= i && i < L ? sm.xv.x[i * S::kLdF + jj] * __expf(fminf(sm.gam[i] - sm.gam[jj], 0.f)) : 0.f;
      }
      *reinterpret_cast<uint32_t*>(&dst[i * (kChunk + 8) + j]) = pack2<__nv_bfloat16>(x[0], x[1]);
    }
  }
  __syncthreads();

  // ---- phase 5: W = Aw K (64, K), U = Ab V (64, V); 16 rows per warp, accumulators -> global images ----
  // Element (i, j) of the product goes to out + (j / slice) * slice_elems + i * (slice + 8) + j % slice.
  T* wimg = static_cast<T*>(a.W) + ch * w_image_elems(KD);
  T* uimg = static_cast<T*>(a.U) + ch * a.u_stride;
  auto product = [&](const T* amat, const T* bmat, int ldb, auto dim_tag, T* out, int slice) {
    constexpr int D = decltype(dim_tag)::value;
    // NOTE: LATE_V runs at 128 registers: 64-column halves keep the accumulator at 32 floats.
    constexpr int kCols = LATE_V && D > 64 ? 64 : D;
    const int64_t slice_elems = u_slice_elems(slice);
    const int sh = 31 - __clz(slice);  // slice is a power of two
#pragma unroll
    for (int n0 = 0; n0 < D; n0 += kCols) {
      float acc[1][kCols / 8][4];
      zero(acc);
      warp_gemm<1, kCols / 8, kChunk / 16, Major::kMK, BMajor::kKN>(acc, amat, S::kLdA, warp * 16, bmat, ldb, n0, lane);
#pragma unroll
      for (int nt = 0; nt < kCols / 8; ++nt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = warp * 16 + (lane >> 2) + hf * 8, j = n0 + nt * 8 + ((lane & 3) << 1);
          T* dst = out + (j >> sh) * slice_elems + i * (slice + 8) + (j & (slice - 1));
          *reinterpret_cast<uint32_t*>(dst) = pack2<T>(acc[0][nt][2 * hf], acc[0][nt][2 * hf + 1]);
        }
    }
  };
  if constexpr (LATE_V) {  // X is dead (phase 4 is behind a barrier): V goes into its space
    load_v();
    cp_async_commit();
  }
  product(sm.a.prod.aw, sm.k, S::kLd, std::integral_constant<int, KD>{}, wimg, KD);
  if constexpr (LATE_V) {
    cp_async_wait<0>();
    __syncthreads();
  }
  product(sm.a.prod.ab, sm.xv.v, S::kLdV, std::integral_constant<int, VD>{}, uimg, a.bv);
  if (a.Ab != nullptr) {  // the backward's recompute: the Ab image as well (pads included)
    const uint4* src = reinterpret_cast<const uint4*>(sm.a.prod.ab);
    uint4* dst = reinterpret_cast<uint4*>(static_cast<T*>(a.Ab) + ch * pm_image_elems());
    constexpr int kRowVecs = S::kLdA * int(sizeof(T)) / 16;  // 16-byte vectors per row, the last one the pad
    static_assert(S::kLdA == kChunk + 8, "the Ab tile has the Pm image's layout");
    for (int e = tid; e < kChunk * kRowVecs; e += 128)
      dst[e] = e % kRowVecs == kRowVecs - 1 ? make_uint4(0u, 0u, 0u, 0u) : src[e];
  }
  // Zero pads (16 bytes per image row) so the recurrence's linear copies never read uninitialised memory.
  T* pmimg = static_cast<T*>(a.Pm) + ch * pm_image_elems();
  const int u_slices = VD / a.bv;
  for (int e = tid; e < kChunk * (2 + u_slices); e += 128) {
    const int r = e % kChunk, which = e / kChunk;
    T* dst = which == 0 ? wimg + r * (KD + 8) + KD
           : which == 1 ? pmimg + r * (kChunk + 8) + kChunk
                        : uimg + (which - 2) * u_slice_elems(a.bv) + r * (a.bv + 8) + a.bv;
    *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
  }
  __syncthreads();  // every image write of this CTA happens before the release below
  // NOTE: the count before the flag: a recurrence that has seen every flag has also seen every count, so
  // no increment of this call can land after the next call's offsets kernel has zeroed the counter.
  if (tid == 0) {
    __threadfence();
    atomic_add_release_gpu(a.prepared, 1);
    store_release_gpu(&a.ready[ch], 1);
  }
}

}  // namespace flashgdn::portable
