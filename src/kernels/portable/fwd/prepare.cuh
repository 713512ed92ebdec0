// Portable forward, stage 1 ("prepare"): everything of a chunk that does not depend on the state.
//
// Grid (max_chunks, Hqk); 128 threads = 4 warps. One CTA per (chunk, q/k head): Q Kᵀ and K Kᵀ are
// computed once and reused by the Hv / Hqk value heads of the group. For each value head h it writes
//   aux[c, h]  = (gamma, rq, rk)            fp32 (64 each): chunk cumsum of g, l2norm factors (1 if off)
//   Ab[c, h]   = (Gamma o A) diag(beta)     T, 64 x 64, A = (I + StrictLower(diag(beta) K Kᵀ))⁻¹ (fp32 solve)
//   Pm[c, h]   = scale * Gamma o tril(Q Kᵀ) T, 64 x 64
// with Gamma_ij = exp(gamma_i - gamma_j) for i >= j (exponent <= 0), zero above the diagonal and in
// rows/columns past the chunk's length L.
//
// Warp roles: all 4 warps compute Q Kᵀ / K Kᵀ (16 rows each, mma.sync). Per value head, warps 0-1 solve
// (one thread per column j of A, forward substitution in fp32) and write Ab; warps 2-3 write Pm and aux.
//
// Shared memory (K = 128): sQ, sK (64, K + 8) T = 2 x 17 KB; sQK, sL (64, 68) fp32 = 2 x 17 KB; small
// vectors. Barriers: __syncthreads only.
#pragma once

#include <type_traits>

#include "device/warp_mma.cuh"
#include "kernels/portable/fwd/blocked_solve.hpp"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

template <class T, int KD, int VD>
struct PrepareSmem {
  static constexpr int kLd = KD + 8;  // NOTE: +16 bytes per row keeps ldmatrix conflict-free
  static constexpr int kLdV = VD + 8;
  static constexpr int kLdF = 68;     // fp32 rows, 16-byte aligned for float4 broadcasts
  static constexpr int kLdA = kChunk + 8;
  union {
    T q[kChunk * (kLd > kLdV ? kLd : kLdV)];  // Q, later the staging buffer of W and U
#ifdef FLASHGDN_BLOCKED_SOLVE
    float x[kChunk * kLdF];  // blocked solve: A = T⁻¹ (Q is no longer needed then)
#endif
  };
#ifdef FLASHGDN_BLOCKED_SOLVE
  float yb[blocked_solve::kScratch];
#endif
  T k[kChunk * kLd];
  T v[kChunk * kLdV];
  float qk[kChunk * kLdF];  // rq_i rk_j (Q Kᵀ)_ij
  float kk[kChunk * kLdF];  // rk_i rk_j (K Kᵀ)_ij
  union {
    float lm[kChunk * kLdF];  // beta_i (K̂ K̂ᵀ)_ij for j < i (solve phase)
    struct {
      T aw[kChunk * kLdA];
      T ab[kChunk * kLdA];
    } prod;  // product phase
  } u;
  float rq[kChunk], rk[kChunk], gam[kChunk], beta[kChunk];
};

template <class T>
__device__ __forceinline__ float load_beta(const FwdArgs& a, int64_t off) {
  return a.beta_f32 ? static_cast<const float*>(a.beta)[off] : device::to_float(static_cast<const T*>(a.beta)[off]);
}

template <class T, int KD, int VD>
__global__ void __launch_bounds__(128) prepare_kernel(FwdArgs a) {
  using namespace device;
  using S = PrepareSmem<T, KD, VD>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  S& sm = *reinterpret_cast<S*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t c = blockIdx.x;
  const int hk = blockIdx.y;
  if (c >= a.chunk_offsets[a.N]) return;
  const int64_t n = find_sequence(a.chunk_offsets, a.N, c);
  const Seq s = seq_range(a, n);
  const int64_t t0 = s.bos + (c - a.chunk_offsets[n]) * kChunk;
  const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);

  // Q and K rows of the chunk (zero past L).
  const T* qg = static_cast<const T*>(a.q) + s.b * a.q_s[0] + hk * a.q_s[2];
  const T* kg = static_cast<const T*>(a.k) + s.b * a.k_s[0] + hk * a.k_s[2];
  constexpr int kVecPerRow = KD * sizeof(T) / 16;
  for (int i = tid; i < kChunk * kVecPerRow; i += 128) {
    const int r = i / kVecPerRow, cv = (i % kVecPerRow) * (16 / sizeof(T));
    const bool ok = r < L;
    const int64_t t = ok ? t0 + r : t0;
    cp_async_16(&sm.q[r * S::kLd + cv], qg + t * a.q_s[1] + cv, ok);
    cp_async_16(&sm.k[r * S::kLd + cv], kg + t * a.k_s[1] + cv, ok);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // l2norm factors rsqrt(sum x^2 + 1e-6): warp w handles rows 16w..16w+15 (two lanes... one row per
  // half-warp pass). Rows past L get 0.
  for (int r = warp * 16; r < warp * 16 + 16; ++r) {
    float sq = 0.f, sk = 0.f;
    for (int e = lane; e < KD; e += 32) {
      const float xq = to_float(sm.q[r * S::kLd + e]), xk = to_float(sm.k[r * S::kLd + e]);
      sq += xq * xq;
      sk += xk * xk;
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      sq += __shfl_xor_sync(0xffffffffu, sq, d);
      sk += __shfl_xor_sync(0xffffffffu, sk, d);
    }
    if (lane == 0) {
      sm.rq[r] = r < L ? (a.l2norm ? rsqrtf(sq + 1e-6f) : 1.f) : 0.f;
      sm.rk[r] = r < L ? (a.l2norm ? rsqrtf(sk + 1e-6f) : 1.f) : 0.f;
    }
  }
  __syncthreads();

  // Q Kᵀ and K Kᵀ, 16 rows per warp: (16, 64) each.
  {
    float qk[1][8][4], kk[1][8][4];
    zero(qk);
    zero(kk);
    warp_gemm<1, 8, KD / 16, Major::kMK, BMajor::kNK>(qk, sm.q, S::kLd, warp * 16, sm.k, S::kLd, 0, lane);
    warp_gemm<1, 8, KD / 16, Major::kMK, BMajor::kNK>(kk, sm.k, S::kLd, warp * 16, sm.k, S::kLd, 0, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = warp * 16 + acc_row(lane, e), j = nt * 8 + acc_col(lane, e);
        sm.qk[i * S::kLdF + j] = qk[0][nt][e] * sm.rq[i] * sm.rk[j];
        sm.kk[i * S::kLdF + j] = kk[0][nt][e] * sm.rk[i] * sm.rk[j];
      }
  }
  __syncthreads();

  const T* vbase = static_cast<const T*>(a.v) + s.b * a.v_s[0];
  for (int r = 0; r < a.group; ++r) {
    const int h = hk * a.group + r;
    const int64_t ch = c * a.Hv + h;
    // V rows of this value head (zero past L), in flight during the solve.
    {
      constexpr int kVV = VD * sizeof(T) / 16;
      const T* vg = vbase + h * a.v_s[2];
      for (int i = tid; i < kChunk * kVV; i += 128) {
        const int rr = i / kVV, cv = (i % kVV) * (16 / sizeof(T));
        const bool ok = rr < L;
        cp_async_16(&sm.v[rr * S::kLdV + cv], vg + (ok ? t0 + rr : t0) * a.v_s[1] + cv, ok);
      }
      cp_async_commit();
    }
    // gamma (chunk cumsum of g) and beta; rows past L: gamma = gamma[L-1], beta = 0.
    if (warp == 0) {
      const float* gg = a.g + s.b * a.g_s[0] + h * a.g_s[2];
      float x0 = 0.f, x1 = 0.f;
      if (2 * lane < L) x0 = gg[(t0 + 2 * lane) * a.g_s[1]];
      if (2 * lane + 1 < L) x1 = gg[(t0 + 2 * lane + 1) * a.g_s[1]];
      float incl = x0 + x1;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += y;
      }
      sm.gam[2 * lane] = incl - x1;
      sm.gam[2 * lane + 1] = incl;
    } else if (warp == 1) {
      const int64_t boff = s.b * a.beta_s[0] + h * a.beta_s[2];
      for (int i = lane; i < kChunk; i += 32) sm.beta[i] = i < L ? load_beta<T>(a, boff + (t0 + i) * a.beta_s[1]) : 0.f;
    }
    __syncthreads();
    // L = StrictLower(diag(beta) K̂ K̂ᵀ), fp32.
    for (int e = tid; e < kChunk * kChunk; e += 128) {
      const int i = e >> 6, j = e & 63;
#ifdef FLASHGDN_BLOCKED_SOLVE
      sm.u.lm[i * S::kLdF + j] = j < i ? sm.beta[i] * sm.kk[i * S::kLdF + j] : (i == j ? 1.f : 0.f);  // T = I + L
#else
      sm.u.lm[i * S::kLdF + j] = j < i ? sm.beta[i] * sm.kk[i * S::kLdF + j] : 0.f;
#endif
    }
    __syncthreads();
    const float gl = sm.gam[L - 1];
#ifdef FLASHGDN_BLOCKED_SOLVE
    static_assert(S::kLdF == blocked_solve::kLd, "blocked solve stride");
    if (tid < 64) blocked_solve::diag(tid, sm.u.lm, sm.x);
#else
    float x[kChunk];  // warps 0-1: column j of A
#endif
    if (tid < 64) {
#ifndef FLASHGDN_BLOCKED_SOLVE
      // x_i = delta_ij - sum_{m<i} L_im x_m.
      // NOTE: fully unrolled so x stays in registers; L rows are read as float4 broadcasts.
      const int j = tid;
      // NOTE: four independent partial sums per row: the only serial dependency left is on the last
      // few x_m, so the unrolled rows overlap instead of forming one 2016-FMA latency chain.
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        float p0 = (i == j) ? 1.f : 0.f, p1 = 0.f, p2 = 0.f, p3 = 0.f;
        const float4* row = reinterpret_cast<const float4*>(&sm.u.lm[i * S::kLdF]);
#pragma unroll
        for (int m4 = 0; m4 < i / 4; ++m4) {
          const float4 l4 = row[m4];
          p0 = fmaf(-l4.x, x[4 * m4], p0);
          p1 = fmaf(-l4.y, x[4 * m4 + 1], p1);
          p2 = fmaf(-l4.z, x[4 * m4 + 2], p2);
          p3 = fmaf(-l4.w, x[4 * m4 + 3], p3);
        }
#pragma unroll
        for (int m = (i / 4) * 4; m < i; ++m) p0 = fmaf(-sm.u.lm[i * S::kLdF + m], x[m], p0);
        x[i] = (p0 + p1) + (p2 + p3);
      }
#endif
    } else {
      const int j = tid - 64;
      const float gj = sm.gam[j];
      T* pm = static_cast<T*>(a.Pm) + ch * kChunk * kChunk;
      for (int i = 0; i < kChunk; ++i) {
        const float v =
            (i >= j && i < L) ? a.scale * __expf(fminf(sm.gam[i] - gj, 0.f)) * sm.qk[i * S::kLdF + j] : 0.f;
        pm[i * kChunk + j] = from_float<T>(v);
      }
      float* aux = a.aux + ch * 3 * kChunk;
      aux[j] = j < L ? sm.gam[j] : gl;
      aux[kChunk + j] = sm.rq[j];
      aux[2 * kChunk + j] = sm.rk[j];
    }
    __syncthreads();
#ifdef FLASHGDN_BLOCKED_SOLVE
    for (int d = 1; d < blocked_solve::kNB; ++d) {
      blocked_solve::level_y(tid, 128, d, sm.u.lm, sm.x, sm.yb);
      __syncthreads();
      blocked_solve::level_x(tid, 128, d, sm.x, sm.yb);
      __syncthreads();
    }
    // The solve is done with sL: its space becomes sAw / sAb.
    for (int e = tid; e < kChunk * kChunk; e += 128) {
      const int i = e >> 6, j = e & 63;
      const bool in = i >= j && i < L;
      const float a = in ? sm.x[i * S::kLdF + j] * sm.beta[j] : 0.f;
      // exp(gamma_i - gamma_j) <= 1 and exp(gamma_i) <= 1: no positive exponent.
      sm.u.prod.ab[i * S::kLdA + j] = from_float<T>(in ? __expf(fminf(sm.gam[i] - sm.gam[j], 0.f)) * a : 0.f);
      sm.u.prod.aw[i * S::kLdA + j] = from_float<T>(in ? __expf(fminf(sm.gam[i], 0.f)) * a * sm.rk[j] : 0.f);
    }
#else
    // The solve is done with sL: its space becomes sAw / sAb.
    if (tid < 64) {
      const int j = tid;
      const float gj = sm.gam[j], bj = sm.beta[j], wj = bj * sm.rk[j];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const bool in = i >= j && i < L;
        // exp(gamma_i - gamma_j) <= 1 and exp(gamma_i) <= 1: no positive exponent.
        sm.u.prod.ab[i * S::kLdA + j] = from_float<T>(in ? __expf(fminf(sm.gam[i] - gj, 0.f)) * x[i] * bj : 0.f);
        sm.u.prod.aw[i * S::kLdA + j] = from_float<T>(in ? __expf(fminf(sm.gam[i], 0.f)) * x[i] * wj : 0.f);
      }
    }
#endif
    cp_async_wait<0>();
    __syncthreads();
    // W = Aw K (64, K) and U = Ab V (64, V): 16 rows per warp, staged through sQ, then 16-byte stores.
    auto product = [&](const T* amat, const T* bmat, int ldb, auto dim_tag, T* out) {
      constexpr int D = decltype(dim_tag)::value;
      constexpr int kLdS = D + 8;
      float acc[1][D / 8][4];
      zero(acc);
      warp_gemm<1, D / 8, kChunk / 16, Major::kMK, BMajor::kKN>(acc, amat, S::kLdA, warp * 16, bmat, ldb, 0, lane);
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = warp * 16 + (lane >> 2) + hf * 8, jj = nt * 8 + ((lane & 3) << 1);
          *reinterpret_cast<uint32_t*>(&sm.q[i * kLdS + jj]) = pack2<T>(acc[0][nt][2 * hf], acc[0][nt][2 * hf + 1]);
        }
      __syncwarp();
      constexpr int kVec = D * sizeof(T) / 16;
      for (int i = lane; i < 16 * kVec; i += 32) {
        const int rr = warp * 16 + i / kVec, cv = (i % kVec) * (16 / sizeof(T));
        *reinterpret_cast<uint4*>(out + rr * D + cv) = *reinterpret_cast<const uint4*>(&sm.q[rr * kLdS + cv]);
      }
      __syncwarp();
    };
    product(sm.u.prod.aw, sm.k, S::kLd, std::integral_constant<int, KD>{},
            static_cast<T*>(a.W) + ch * kChunk * KD);
    product(sm.u.prod.ab, sm.v, S::kLdV, std::integral_constant<int, VD>{},
            static_cast<T*>(a.U) + ch * kChunk * VD);
    __syncthreads();
  }
}

}  // namespace flashgdn::portable
