// Portable backward, stage 3 ("per-chunk gradients", docs/design.md §4.2): one CTA per (chunk, value head),
// grid max_chunks x Hv (head fastest), 256 threads = 8 warps, no warp specialisation.
//
// Inputs per chunk c and value head h (K̂ = diag(rk) K, Q̂ = diag(rq) Q, L valid rows, zero past L):
//   K, Q (q/k head), V, dO, dW = dv (stage 2's output), S_c (the state at the chunk's start, stage 1),
//   dS' (the gradient of the state after the chunk, stage 2), Ã = Γ o A (a bf16 (64, 72) image, prepare on the
//   recompute), the Pm = scale Γ o tril(Q̂K̂ᵀ) image, aux (γ, rq, rk), β.
// The chunk's forward, in the form differentiated here (γ enters Ã through L̃):
//   L̃ = StrictLower(diag(β) Γ o K̂K̂ᵀ),  Ã = (I + L̃)⁻¹,  Ab = Ã diag(β),  W§ = V - e^γ o (K̂ S)
//   vn = Ab W§,  O = scale e^γ o (Q̂ S) + Pm vn,  S' = e^{γL} S + K̂ᵀ (e^{γL-γ} o vn)
// Gradients (every exponent <= 0):
//   dvn = Pmᵀ dO + e^{γL-γ} o (K̂ dS'),  dP = dO vnᵀ,  dAb = dvn W§ᵀ,  dÃ = dAb diag(β)
//   dQ̂  = scale e^γ o (dO Sᵀ) + (scale Γ o dP) K̂
//   dK̂  = e^{γL-γ} o (vn dS'ᵀ) - e^γ o (dW Sᵀ) + (scale Γ o dP)ᵀ Q̂ + β o (G K̂) + Gᵀ (β o K̂)
//   G   = Γ o dL̃,  dL̃ = StrictLower(-Ãᵀ dÃ Ãᵀ)   (tensor cores, bf16 operands, fp32 accumulation)
//   dβ_j = Σ_i dAb_ij Ã_ij + k̂_j·(G K̂)_j
//   dγ_i = -e^γ_i dW_i·(K̂S)_i + scale e^γ_i q̂_i·(dO Sᵀ)_i - e^{γL-γ_i} (K̂dS')_i·vn_i
//          + Σ_j (dP o Pm)_ij - Σ_j (dP o Pm)_ji + β_i k̂_i·(G K̂)_i - k̂_i·(Gᵀ(β o K̂))_i
//   dγ_{L-1} += Σ_i e^{γL-γ_i} (K̂dS')_i·vn_i + e^{γL} <dS', S>;   dg = the chunk's reverse cumsum of dγ.
// dQ̂, dK̂ go to [B·T, Hv, K] buffers in the input dtype (stage 4 sums each group and applies the l2norm backward), dg
// (fp32) and dβ (β's dtype) to the outputs; rows past L are not written.
//
// Warp w owns rows 16 (w % 4) .. of every 64-row result and its column half w / 4 (K/2, V/2 or 32
// columns), so each thread accumulates the row terms of the same two rows in every phase (registers; the
// two halves meet in shared memory at the end, in a fixed order: deterministic).
// Phases (__syncthreads between them):
//   A  cp.async in two groups: K, V, dW (zero past L), S_c, aux; then dS', dO, Ã, Pm; β by plain loads
//   B  (first group only) KS = K S_c: W§ = V - e^γ rk o KS over V (in place); dγ row term;
//      dW <- -e^γ dW (in place); then the second group, Ab = Ã diag(β) (T) from Ã's image,
//      <dS', S_c> partial sums
//   C  vn = Ab W§ -> sVn; KdS = K dS' (dγ terms); dvn = e^{γL-γ} rk o KdS + Pmᵀ dO -> sDvn
//   D  dP = dO vnᵀ, dAb = dvn W§ᵀ (registers; dγ row terms, column partials); barrier; dÃ (bf16 image)
//      over dvn, scale Γ o dP (two bf16/fp16 operand copies, columns scaled by rk / rows by rq) over the
//      images, column partials over W§
//   E  column partials reduced; Y = Ãᵀ dÃ (mma, bf16 operands) -> bf16 image; barrier; Q load issued
//      (over the partials); R = Y Ãᵀ (mma), G = -Γ o R (strictly lower) -> G diag(rk) and diag(β rk) G
//      (operand copies)
//   F  dQ̂ = (dO S_cᵀ) [q̂-dot for dγ] x scale e^γ + (scale Γ o dP diag(rk)) K -> dqh
//   G  dK̂ = (vn dS'ᵀ) x e^{γL-γ} + (-e^γ dW) S_cᵀ + (scale diag(rq) Γ o dP)ᵀ Q + G-terms [k̂-dots] -> dkh
//   H  row halves combined, dγ -> reverse cumsum -> dg; dβ
// NOTE: phase E's operands are bf16 whatever T is (the range of Ã, dÃ and Y); its two 64 x 64 x 64
// products on the tensor cores replaced fp32 4 x 4 outer products on the CUDA cores (~20% of the
// kernel's instructions, with 8-way bank conflicts on the transposed stores).
// Shared memory (K = V = 128): K, dO, dW, vn (64, 136) T; S_c, dS' (128, 136) T; Ã bf16 (64, 72); the G
// copies; three unions of ~18 KB (V/W§/Q, dvn/dÃ+Y, Ab+Pm/dP copies); 64-float vectors: 223,776 bytes
// (one CTA per SM; sm_90's 227 KB limit; K or V = 64 is smaller). No named barriers.
#pragma once

#include "device/warp_mma.cuh"
#include "kernels/portable/bwd/params.hpp"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/prepare.cuh"

namespace flashgdn::portable {

inline constexpr int kGradThreads = 256;

template <class T, int KD, int VD>
struct ChunkGradSmem {
  using Tb = __nv_bfloat16;  // phase E's operands (bf16 whatever T is: Ã, dÃ and Y need the exponent range)
  static constexpr int kLdK = KD + 8;  // NOTE: +16 bytes per row keeps ldmatrix conflict-free
  static constexpr int kLdV = VD + 8;
  static constexpr int kLdA = kChunk + 8;
  T k[kChunk * kLdK];   // (64, K)
  T sc[KD * kLdV];      // (K, V) S_c
  T ds[KD * kLdV];      // (K, V) dS'
  T d_o[kChunk * kLdV]; // (64, V)
  T dw[kChunk * kLdV];  // (64, V) dW, then -e^γ dW
  T vn[kChunk * kLdV];  // (64, V)
  union {
    T v[kChunk * kLdV];            // (64, V) V, then W§ (A-D)
    float part[2][4][kChunk];      // column partials of dγ, dβ (D-E)
    T q[kChunk * kLdK];            // (64, K) Q (E-G)
  } r1;
  union {
    T dvn[kChunk * kLdV];          // (64, V) (C-D)
    struct {
      Tb da[kChunk * kLdA];        // (64, 64) dÃ (bf16 operand) (D-E)
      Tb y[kChunk * kLdA];         // (64, 64) Y = Ãᵀ dÃ (bf16 operand) (E)
    } e;
  } r2;
  Tb atb[kChunk * kLdA];           // (64, 64) Ã, bf16 image from prepare (A-E)
  struct {
    T g1[kChunk * kLdA];           // (64, 64) G diag(rk)
    T g2[kChunk * kLdA];           // (64, 64) diag(β rk) G
  } gg;                            // (E-G)
  union {
    struct {
      T ab[kChunk * kLdA];         // (64, 64) Ab image
      T pm[kChunk * kLdA];         // (64, 64) Pm image
    } img;                         // (A-D)
    struct {
      T p1[kChunk * kLdA];         // (64, 64) scale Γ o dP diag(rk)
      T p2[kChunk * kLdA];         // (64, 64) diag(rq) scale Γ o dP
    } dps;                         // (D-G)
  } r5;
  float gam[kChunk], rq[kChunk], rk[kChunk];  // aux image order
  float beta[kChunk];
  float rowg[2][kChunk], rowb[2][kChunk], colg[kChunk], colb[kChunk];
  float red[kGradThreads / 32];
};

template <class T>
__device__ __forceinline__ void store_beta(const FwdArgs& a, void* p, int64_t off, float x) {
  if (a.beta_f32) static_cast<float*>(p)[off] = x;
  else static_cast<T*>(p)[off] = device::from_float<T>(x);
}

template <class T, int KD, int VD>
__global__ void __launch_bounds__(kGradThreads, 1) chunk_grads_kernel(FwdArgs a, BwdArgs bw) {
  using namespace device;
  using Sm = ChunkGradSmem<T, KD, VD>;
  constexpr int kNV = VD / 16;  // n-tiles of a warp's (16, V / 2) accumulator
  constexpr int kNK = KD / 16;  // (16, K / 2)
  constexpr int kE = 16 / sizeof(T);
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m0 = (warp & 3) * 16, half = warp >> 2;
  const int64_t c = blockIdx.x / a.Hv;
  const int h = static_cast<int>(blockIdx.x % a.Hv);
  const int hk = h / a.group;
  const FwdArgs::ChunkInfo ci = a.chunk_info[c];
  if (ci.L < 0) return;  // past the last chunk (the grid is sized from shapes)
  const int64_t t0 = ci.t0, brow = ci.b;
  const int L = ci.L;
  const int64_t ch = c * a.Hv + h;

  // ---- A: loads ----
  const T* qg = static_cast<const T*>(a.q) + brow * a.q_s[0] + hk * a.q_s[2];
  auto load_rows = [&](T* dst, int ld, const T* src, int64_t tstride, int width) {
    const int vecs = width / kE;
    for (int e = tid; e < kChunk * vecs; e += kGradThreads) {
      const int r = e / vecs, cv = (e % vecs) * kE;
      const bool ok = r < L;
      cp_async_16(dst + r * ld + cv, src + (ok ? t0 + r : t0) * tstride + cv, ok);
    }
  };
  auto load_linear = [&](void* dst, const void* src, int bytes) {
    for (int o = tid * 16; o < bytes; o += 16 * kGradThreads)
      cp_async_16(static_cast<char*>(dst) + o, static_cast<const char*>(src) + o, true);
  };
  // NOTE: two cp.async groups: what phase B needs (K, S_c, V, dW, aux) first; dS', dO, Ã and the images
  // land while B computes.
  {
    load_rows(sm.k, Sm::kLdK, static_cast<const T*>(a.k) + brow * a.k_s[0] + hk * a.k_s[2], a.k_s[1], KD);
    load_rows(sm.dw, Sm::kLdV, static_cast<const T*>(bw.dv) + brow * bw.dv_s[0] + h * bw.dv_s[2], bw.dv_s[1], VD);
    load_rows(sm.r1.v, Sm::kLdV, static_cast<const T*>(a.v) + brow * a.v_s[0] + h * a.v_s[2], a.v_s[1], VD);
    const T* scg = static_cast<const T*>(a.h_states) + ch * int64_t(KD) * VD;
    const T* dsg = static_cast<const T*>(bw.dstates) + ch * int64_t(KD) * VD;
    for (int e = tid; e < KD * (VD / kE); e += kGradThreads) {
      const int r = e / (VD / kE), cv = (e % (VD / kE)) * kE;
      cp_async_16(&sm.sc[r * Sm::kLdV + cv], scg + r * VD + cv, true);
    }
    load_linear(sm.gam, a.aux + ch * 3 * kChunk, int(sizeof(float)) * 3 * kChunk);
    cp_async_commit();
    for (int e = tid; e < KD * (VD / kE); e += kGradThreads) {
      const int r = e / (VD / kE), cv = (e % (VD / kE)) * kE;
      cp_async_16(&sm.ds[r * Sm::kLdV + cv], dsg + r * VD + cv, true);
    }
    load_rows(sm.d_o, Sm::kLdV, static_cast<const T*>(bw.d_o) + brow * bw.do_s[0] + h * bw.do_s[2], bw.do_s[1], VD);
    constexpr int kImg = int(sizeof(T)) * kChunk * Sm::kLdA;
    static_assert(sizeof(T) == sizeof(typename Sm::Tb), "Ã's image has the Pm image's size");
    load_linear(sm.atb, static_cast<const typename Sm::Tb*>(bw.at) + ch * pm_image_elems(), kImg);
    load_linear(sm.r5.img.pm, static_cast<const T*>(a.Pm) + ch * pm_image_elems(), kImg);
    cp_async_commit();
    if (warp == 0) {
      const int64_t boff = brow * a.beta_s[0] + h * a.beta_s[2];
      for (int i = lane; i < kChunk; i += 32) sm.beta[i] = i < L ? load_beta<T>(a, boff + (t0 + i) * a.beta_s[1]) : 0.f;
    }
    cp_async_wait<1>();
  }
  __syncthreads();

  const float* gam = sm.gam;
  const float* rq = sm.rq;
  const float* rk = sm.rk;
  const float gl = gam[kChunk - 1];  // = γ[L - 1] (prepare pads γ)
  // The two rows this thread accumulates row terms for (after a reduction over the 4 lanes of a quad).
  const int ri0 = m0 + (lane >> 2);
  float rg[2] = {0.f, 0.f}, rbeta[2] = {0.f, 0.f};
  float last = 0.f;  // this thread's share of the terms added to dγ[L - 1]
  // x[hf]: per-thread partial dots of the two rows -> quad totals (every lane of the quad gets them).
  auto quad_sum = [&](float (&x)[2]) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      x[hf] += __shfl_xor_sync(0xffffffffu, x[hf], 1);
      x[hf] += __shfl_xor_sync(0xffffffffu, x[hf], 2);
    }
  };

  // ---- B: KS = K S_c; W§ = V - e^γ rk o KS (in place); dγ -= e^γ rk dW·KS; dW <- -e^γ dW ----
  {
    float ks[1][kNV][4];
    zero(ks);
    warp_gemm<1, kNV, KD / 16, Major::kMK, BMajor::kKN>(ks, sm.k, Sm::kLdK, m0, sm.sc, Sm::kLdV, half * (VD / 2), lane);
    float dot[2] = {0.f, 0.f};
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = ri0 + hf * 8;
      const float eg = __expf(fminf(gam[i], 0.f)), f = eg * rk[i];
#pragma unroll
      for (int nt = 0; nt < kNV; ++nt) {  // packed pairs (u = 0, 1)
        const int j = half * (VD / 2) + nt * 8 + ((lane & 3) << 1);
        const float x0 = ks[0][nt][2 * hf], x1 = ks[0][nt][2 * hf + 1];
        uint32_t& vv = *reinterpret_cast<uint32_t*>(&sm.r1.v[i * Sm::kLdV + j]);
        const float2 vf = unpack2<T>(vv);
        vv = pack2<T>(vf.x - f * x0, vf.y - f * x1);
        uint32_t& dw = *reinterpret_cast<uint32_t*>(&sm.dw[i * Sm::kLdV + j]);
        const float2 dwf = unpack2<T>(dw);
        dot[hf] += dwf.x * x0 + dwf.y * x1;
        dw = pack2<T>(-eg * dwf.x, -eg * dwf.y);
      }
      dot[hf] *= -f;
    }
    quad_sum(dot);
    rg[0] += dot[0];
    rg[1] += dot[1];
  }
  cp_async_wait<0>();
  __syncthreads();
  // Ab = Ã diag(β) (the operand of vn = Ab W§), from Ã's image rather than another 9 KB image load.
  for (int e = tid; e < kChunk * kChunk / 2; e += kGradThreads) {
    const int i = e >> 5, j = (e & 31) * 2;
    const float2 x = unpack2<typename Sm::Tb>(*reinterpret_cast<const uint32_t*>(&sm.atb[i * Sm::kLdA + j]));
    *reinterpret_cast<uint32_t*>(&sm.r5.img.ab[i * Sm::kLdA + j]) = pack2<T>(x.x * sm.beta[j], x.y * sm.beta[j + 1]);
  }
  __syncthreads();
  {
    // <dS', S_c> (this thread's share; times e^{γL} at the end)
    float sdot = 0.f;
    for (int e = tid; e < KD * (VD / kE); e += kGradThreads) {  // 16-byte vectors
      const int r = e / (VD / kE), cc = (e % (VD / kE)) * kE;
      const uint4 x = *reinterpret_cast<const uint4*>(&sm.ds[r * Sm::kLdV + cc]);
      const uint4 y = *reinterpret_cast<const uint4*>(&sm.sc[r * Sm::kLdV + cc]);
      const T* xa = reinterpret_cast<const T*>(&x);
      const T* ya = reinterpret_cast<const T*>(&y);
#pragma unroll
      for (int u = 0; u < kE; ++u) sdot += to_float(xa[u]) * to_float(ya[u]);
    }
    last += __expf(fminf(gl, 0.f)) * sdot;
  }

  // ---- C: vn = Ab W§; KdS = K dS'; dvn = e^{γL-γ} rk o KdS + Pmᵀ dO ----
  {
    float vn[1][kNV][4], dv[1][kNV][4];
    zero(vn);
    zero(dv);
    warp_gemm<1, kNV, kChunk / 16, Major::kMK, BMajor::kKN>(vn, sm.r5.img.ab, Sm::kLdA, m0, sm.r1.v, Sm::kLdV,
                                                            half * (VD / 2), lane);
    warp_gemm<1, kNV, KD / 16, Major::kMK, BMajor::kKN>(dv, sm.k, Sm::kLdK, m0, sm.ds, Sm::kLdV, half * (VD / 2), lane);
    float dot[2] = {0.f, 0.f};
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = ri0 + hf * 8;
      const float f = __expf(fminf(gl - gam[i], 0.f)) * rk[i];
#pragma unroll
      for (int nt = 0; nt < kNV; ++nt)
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          dot[hf] += dv[0][nt][2 * hf + u] * vn[0][nt][2 * hf + u];
          dv[0][nt][2 * hf + u] *= f;
        }
      dot[hf] *= f;
    }
    quad_sum(dot);
    if ((lane & 3) == 0) last += dot[0] + dot[1];  // once per row
    rg[0] -= dot[0];
    rg[1] -= dot[1];
    store_acc(vn, sm.vn + half * (VD / 2), Sm::kLdV, m0, lane);
    warp_gemm<1, kNV, kChunk / 16, Major::kKM, BMajor::kKN>(dv, sm.r5.img.pm, Sm::kLdA, m0, sm.d_o, Sm::kLdV,
                                                            half * (VD / 2), lane);
    store_acc(dv, sm.r2.dvn + half * (VD / 2), Sm::kLdV, m0, lane);
  }
  __syncthreads();

  // ---- D: dP = dO vnᵀ, dAb = dvn W§ᵀ (16 rows x 32 columns per warp) ----
  {
    const int n0 = half * 32;
    float dp[1][4][4], dab[1][4][4];
    zero(dp);
    zero(dab);
    warp_gemm<1, 4, VD / 16, Major::kMK, BMajor::kNK>(dp, sm.d_o, Sm::kLdV, m0, sm.vn, Sm::kLdV, n0, lane);
    warp_gemm<1, 4, VD / 16, Major::kMK, BMajor::kNK>(dab, sm.r2.dvn, Sm::kLdV, m0, sm.r1.v, Sm::kLdV, n0, lane);
    // Row terms (dP o Pm) and column partials over this warp's 16 rows: dγ (dP o Pm), dβ (dAb o Ã).
    float row[2] = {0.f, 0.f}, colg[4][2], colb[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        colg[nt][u] = colb[nt][u] = 0.f;
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = ri0 + hf * 8, j = n0 + nt * 8 + ((lane & 3) << 1) + u;
          const float mp = dp[0][nt][2 * hf + u] * to_float(sm.r5.img.pm[i * Sm::kLdA + j]);
          row[hf] += mp;
          colg[nt][u] += mp;
          colb[nt][u] += j <= i ? dab[0][nt][2 * hf + u] * to_float(sm.atb[i * Sm::kLdA + j]) : 0.f;
        }
      }
    quad_sum(row);
    rg[0] += row[0];
    rg[1] += row[1];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int d = 4; d < 32; d <<= 1) {
          colg[nt][u] += __shfl_xor_sync(0xffffffffu, colg[nt][u], d);
          colb[nt][u] += __shfl_xor_sync(0xffffffffu, colb[nt][u], d);
        }
    __syncthreads();  // every warp is done with dvn, W§ and the images
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = ri0 + hf * 8, j = n0 + nt * 8 + ((lane & 3) << 1);
        const float gi = gam[i];
        float p1[2], p2[2], da[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int jj = j + u;
          const bool in = jj <= i;
          const float s = in ? a.scale * __expf(fminf(gi - gam[jj], 0.f)) * dp[0][nt][2 * hf + u] : 0.f;
          p1[u] = s * rk[jj];
          p2[u] = s * rq[i];
          da[u] = in ? dab[0][nt][2 * hf + u] * sm.beta[jj] : 0.f;
        }
        *reinterpret_cast<uint32_t*>(&sm.r2.e.da[i * Sm::kLdA + j]) = pack2<typename Sm::Tb>(da[0], da[1]);
        *reinterpret_cast<uint32_t*>(&sm.r5.dps.p1[i * Sm::kLdA + j]) = pack2<T>(p1[0], p1[1]);
        *reinterpret_cast<uint32_t*>(&sm.r5.dps.p2[i * Sm::kLdA + j]) = pack2<T>(p2[0], p2[1]);
      }
    if (lane < 4) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int j = n0 + nt * 8 + (lane << 1) + u;
          sm.r1.part[0][warp & 3][j] = colg[nt][u];
          sm.r1.part[1][warp & 3][j] = colb[nt][u];
        }
    }
  }
  __syncthreads();

  // ---- E: dL̃ = -Ãᵀ dÃ Ãᵀ (strictly lower); G = Γ o dL̃ (bf16 operands, fp32 accumulators) ----
  if (tid < kChunk) {
    sm.colg[tid] = sm.r1.part[0][0][tid] + sm.r1.part[0][1][tid] + sm.r1.part[0][2][tid] + sm.r1.part[0][3][tid];
  } else if (tid < 2 * kChunk) {
    const int j = tid - kChunk;
    sm.colb[j] = sm.r1.part[1][0][j] + sm.r1.part[1][1][j] + sm.r1.part[1][2][j] + sm.r1.part[1][3][j];
  }
  {
    // Y = Ãᵀ dÃ (64, 64); warp tile rows m0 .., columns 32 half .. . The full product: the zero upper
    // triangles of Ã and dÃ make it the triangular sums exactly.
    const int n0 = half * 32;
    float y[1][4][4];
    zero(y);
    warp_gemm<1, 4, kChunk / 16, Major::kKM, BMajor::kKN>(y, sm.atb, Sm::kLdA, m0, sm.r2.e.da, Sm::kLdA, n0, lane);
    store_acc(y, sm.r2.e.y + n0, Sm::kLdA, m0, lane);
  }
  __syncthreads();  // Y complete; the column partials are read
  // Q for F and G, over the column partials, its latency behind the rest of E.
  load_rows(sm.r1.q, Sm::kLdK, qg, a.q_s[1], KD);
  cp_async_commit();
  {
    // R = Y Ãᵀ; G_ij = -e^{γi-γj} R_ij (j < i) -> G diag(rk), diag(β rk) G.
    const int n0 = half * 32;
    float r[1][4][4];
    zero(r);
    warp_gemm<1, 4, kChunk / 16, Major::kMK, BMajor::kNK>(r, sm.r2.e.y, Sm::kLdA, m0, sm.atb, Sm::kLdA, n0, lane);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = ri0 + hf * 8, j = n0 + nt * 8 + ((lane & 3) << 1);
        float g1[2], g2[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int jj = j + u;
          const float gg = jj < i ? -__expf(fminf(gam[i] - gam[jj], 0.f)) * r[0][nt][2 * hf + u] : 0.f;
          g1[u] = gg * rk[jj];
          g2[u] = gg * sm.beta[i] * rk[i];
        }
        *reinterpret_cast<uint32_t*>(&sm.gg.g1[i * Sm::kLdA + j]) = pack2<T>(g1[0], g1[1]);
        *reinterpret_cast<uint32_t*>(&sm.gg.g2[i * Sm::kLdA + j]) = pack2<T>(g2[0], g2[1]);
      }
  }
  cp_async_wait<0>();
  __syncthreads();

  // NOTE: through a per-warp (16, K/2) staging tile over the dead dvn / dÃ union, so that rows leave in
  // 16-byte vectors (the accumulator's own layout writes 4 bytes per lane: half-used sectors).
  auto store_rows = [&](void* out, const int64_t (&os)[3], const float (&acc)[1][kNK][4]) {
    constexpr int kLdS = KD / 2 + 8;
    static_assert(sizeof(sm.r2) >= sizeof(T) * 8 * 16 * kLdS, "staging tiles fit the dvn / dÃ union");
    T* stg = reinterpret_cast<T*>(&sm.r2) + warp * 16 * kLdS;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
#pragma unroll
      for (int nt = 0; nt < kNK; ++nt)
        *reinterpret_cast<uint32_t*>(&stg[((lane >> 2) + hf * 8) * kLdS + nt * 8 + ((lane & 3) << 1)]) =
            pack2<T>(acc[0][nt][2 * hf], acc[0][nt][2 * hf + 1]);
    __syncwarp();
    constexpr int kVecs = KD / 2 / kE;  // 16-byte vectors per row
#pragma unroll
    for (int e = lane; e < 16 * kVecs; e += 32) {
      const int r = e / kVecs, cv = (e % kVecs) * kE, i = m0 + r;
      if (i < L)
        *reinterpret_cast<uint4*>(static_cast<T*>(out) + brow * os[0] + (t0 + i) * os[1] + h * os[2] + half * (KD / 2) +
                                  cv) = *reinterpret_cast<const uint4*>(&stg[r * kLdS + cv]);
    }
    __syncwarp();
  };
  // Per-thread dots of the accumulator's two rows with rows of a (64, K) tile, over this warp's half.
  auto row_dots = [&](const float (&acc)[1][kNK][4], const T* x, float (&dot)[2]) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = ri0 + hf * 8;
      dot[hf] = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNK; ++nt) {
        const int j = half * (KD / 2) + nt * 8 + ((lane & 3) << 1);
        const float2 xv = unpack2<T>(*reinterpret_cast<const uint32_t*>(&x[i * Sm::kLdK + j]));
        dot[hf] += acc[0][nt][2 * hf] * xv.x + acc[0][nt][2 * hf + 1] * xv.y;
      }
    }
    quad_sum(dot);
  };
  auto scale_rows = [&](float (&acc)[1][kNK][4], float f0, float f1) {
#pragma unroll
    for (int nt = 0; nt < kNK; ++nt) {
      acc[0][nt][0] *= f0;
      acc[0][nt][1] *= f0;
      acc[0][nt][2] *= f1;
      acc[0][nt][3] *= f1;
    }
  };
  const int n0k = half * (KD / 2);

  // ---- F: dQ̂ = scale e^γ o (dO S_cᵀ) + (scale Γ o dP diag(rk)) K ----
  {
    float acc[1][kNK][4];
    zero(acc);
    warp_gemm<1, kNK, VD / 16, Major::kMK, BMajor::kNK>(acc, sm.d_o, Sm::kLdV, m0, sm.sc, Sm::kLdV, n0k, lane);
    float f[2], dot[2];
    row_dots(acc, sm.r1.q, dot);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = ri0 + hf * 8;
      f[hf] = a.scale * __expf(fminf(gam[i], 0.f));
      rg[hf] += f[hf] * rq[i] * dot[hf];
    }
    scale_rows(acc, f[0], f[1]);
    warp_gemm<1, kNK, kChunk / 16, Major::kMK, BMajor::kKN>(acc, sm.r5.dps.p1, Sm::kLdA, m0, sm.k, Sm::kLdK, n0k, lane);
    store_rows(bw.dqh, bw.dqh_s, acc);
  }

  // ---- G: dK̂ ----
  {
    float acc[1][kNK][4];
    zero(acc);
    warp_gemm<1, kNK, VD / 16, Major::kMK, BMajor::kNK>(acc, sm.vn, Sm::kLdV, m0, sm.ds, Sm::kLdV, n0k, lane);
    scale_rows(acc, __expf(fminf(gl - gam[ri0], 0.f)), __expf(fminf(gl - gam[ri0 + 8], 0.f)));
    warp_gemm<1, kNK, VD / 16, Major::kMK, BMajor::kNK>(acc, sm.dw, Sm::kLdV, m0, sm.sc, Sm::kLdV, n0k, lane);
    warp_gemm<1, kNK, kChunk / 16, Major::kKM, BMajor::kKN>(acc, sm.r5.dps.p2, Sm::kLdA, m0, sm.r1.q, Sm::kLdK, n0k,
                                                            lane);
    float x[1][kNK][4], dot[2];
    // β o (G K̂): X1 = G diag(rk) K; dβ_i += rk_i k_i·X1_i, dγ_i += β_i rk_i k_i·X1_i
    zero(x);
    warp_gemm<1, kNK, kChunk / 16, Major::kMK, BMajor::kKN>(x, sm.gg.g1, Sm::kLdA, m0, sm.k, Sm::kLdK, n0k, lane);
    row_dots(x, sm.k, dot);
    float bi[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = ri0 + hf * 8;
      bi[hf] = sm.beta[i];
      rbeta[hf] += rk[i] * dot[hf];
      rg[hf] += bi[hf] * rk[i] * dot[hf];
    }
#pragma unroll
    for (int nt = 0; nt < kNK; ++nt) {
      acc[0][nt][0] += bi[0] * x[0][nt][0];
      acc[0][nt][1] += bi[0] * x[0][nt][1];
      acc[0][nt][2] += bi[1] * x[0][nt][2];
      acc[0][nt][3] += bi[1] * x[0][nt][3];
    }
    // Gᵀ (β o K̂) = (diag(β rk) G)ᵀ K; dγ_i -= rk_i k_i·X2_i
    zero(x);
    warp_gemm<1, kNK, kChunk / 16, Major::kKM, BMajor::kKN>(x, sm.gg.g2, Sm::kLdA, m0, sm.k, Sm::kLdK, n0k, lane);
    row_dots(x, sm.k, dot);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) rg[hf] -= rk[ri0 + hf * 8] * dot[hf];
#pragma unroll
    for (int nt = 0; nt < kNK; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[0][nt][e] += x[0][nt][e];
    store_rows(bw.dkh, bw.dkh_s, acc);
  }

  // ---- H: dγ, dg (reverse cumsum), dβ ----
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) last += __shfl_xor_sync(0xffffffffu, last, d);
  if (lane == 0) sm.red[warp] = last;
  if ((lane & 3) == 0) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      sm.rowg[half][ri0 + hf * 8] = rg[hf];
      sm.rowb[half][ri0 + hf * 8] = rbeta[hf];
    }
  }
  __syncthreads();
  if (warp == 0) {
    float tail = 0.f;
#pragma unroll
    for (int w = 0; w < kGradThreads / 32; ++w) tail += sm.red[w];
    // Lane l holds rows 2l, 2l + 1; suffix sums over rows < L by a reversed inclusive scan.
    float x[2], db[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int i = 2 * lane + u;
      x[u] = i < L ? sm.rowg[0][i] + sm.rowg[1][i] - sm.colg[i] + (i == L - 1 ? tail : 0.f) : 0.f;
      db[u] = sm.rowb[0][i] + sm.rowb[1][i] + sm.colb[i];
    }
    // suffix: s(i) = Σ_{m >= i} x_m. Scan from the top lane down.
    float pair = x[0] + x[1];
    float incl = pair;  // Σ over lanes >= this lane of pair
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const float y = __shfl_down_sync(0xffffffffu, incl, d);
      if (lane + d < 32) incl += y;
    }
    const float s1 = incl - x[0];  // rows >= 2 lane + 1
    const float s0 = incl;         // rows >= 2 lane
    float* dgp = bw.dg + brow * bw.dg_s[0] + h * bw.dg_s[2];
    const int64_t dbo = brow * bw.dbeta_s[0] + h * bw.dbeta_s[2];
    if (2 * lane < L) {
      dgp[(t0 + 2 * lane) * bw.dg_s[1]] = s0;
      store_beta<T>(a, bw.dbeta, dbo + (t0 + 2 * lane) * bw.dbeta_s[1], db[0]);
    }
    if (2 * lane + 1 < L) {
      dgp[(t0 + 2 * lane + 1) * bw.dg_s[1]] = s1;
      store_beta<T>(a, bw.dbeta, dbo + (t0 + 2 * lane + 1) * bw.dbeta_s[1], db[1]);
    }
  }
}

}  // namespace flashgdn::portable
