// Portable forward, stage 2 ("recurrence"): the inter-chunk state recurrence fused with the output.
//
// Grid (N, Hv, V / BV); 128 threads = 4 warps. One CTA per (sequence, value head, V slice of width BV)
// walks the sequence's chunks in order and keeps its state slice S (K, BV) in fp32 registers for the
// whole sequence (warp w owns rows w*K/4 .. w*K/4 + K/4 - 1). Per chunk (gamma, Ab, Pm from stage 1):
//   1. KS = K S, QS = Q S                     (64, BV) each; warp w owns rows 16w..16w+15
//   2. W  = V - exp(gamma) o (rk o KS)  -> sW  (rk: l2norm factor of k, 1 if off)
//   3. vn = Ab W                        -> sVn, and Vd = exp(gamma_L - gamma) o rk o vn -> sVd
//   4. O  = scale exp(gamma) o (rq o QS) + Pm vn  -> staged through sW, 16-byte stores to o
//   5. S  = exp(gamma_L) S + Kᵀ Vd      -> bf16/fp16 copy in sS for the next chunk's step 1
// Every exponent is <= 0. The state operand of steps 1 (sS) is in the input dtype, as in FLA/FlashQLA;
// S itself stays fp32.
//
// Pipeline: chunk c + 1 (Q, K, V slice, Ab, Pm, aux) is prefetched with cp.async into the other of two
// stages while chunk c computes. Barriers (__syncthreads): top of chunk (stage c landed, chunk c - 1
// done everywhere, so stage (c + 1) & 1 and sS are free/ready), after step 2 (sW complete), after step 3
// (sVn, sVd complete).
//
// Shared memory (K = 128, BV = 64): per stage Q, K (64, 136) T, V (64, 72) T, Ab, Pm (64, 72) T, aux
// 768 B = 63.5 KB; two stages 127 KB; sS (128, 72) T 18 KB; sW, sVn, sVd (64, 72) T 27.6 KB: ~173 KB.
#pragma once

#include "device/warp_mma.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

template <class T, int KD, int BV>
struct RecurrenceSmem {
  static constexpr int kLdK = KD + 8;  // NOTE: +16 bytes per row: conflict-free ldmatrix
  static constexpr int kLdV = BV + 8;
  static constexpr int kLdA = kChunk + 8;
  struct Stage {
    T q[kChunk * kLdK];
    T k[kChunk * kLdK];
    T v[kChunk * kLdV];
    T ab[kChunk * kLdA];
    T pm[kChunk * kLdA];
    float aux[3 * kChunk];  // gamma, rq, rk
  };
  Stage st[2];
  T s[KD * kLdV];
  T w[kChunk * kLdV];
  T vn[kChunk * kLdV];
  T vd[kChunk * kLdV];
};

// Offset of state element (i over K, j over V) inside one head block.
__device__ __forceinline__ int64_t state_elem(int v_first, int K, int V, int i, int j) {
  return v_first ? static_cast<int64_t>(j) * K + i : static_cast<int64_t>(i) * V + j;
}

template <class T, int KD, int BV>
__global__ void __launch_bounds__(128, 1) recurrence_kernel(FwdArgs a) {
  using namespace device;
  using Sm = RecurrenceSmem<T, KD, BV>;
  constexpr int kNT = BV / 8;           // n-tiles of a (., BV) accumulator
  constexpr int kSM = KD / 64;          // m-tiles of the state per warp (K/4 rows)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n = blockIdx.x;
  const int h = blockIdx.y, v0 = blockIdx.z * BV;
  const int hk = h / a.group;
  const Seq s = seq_range(a, n);
  const int64_t nchunks = (s.eos - s.bos + kChunk - 1) / kChunk;
  const int64_t c_base = a.chunk_offsets[n];

  // ---- where the state comes from and goes to ----
  const void* src = a.h0;
  int64_t src_row = n, dst_row = n;
  void* dst = a.ht;
  if (a.state_indices != nullptr) {
    const int64_t slot = a.idx_i64 ? static_cast<const int64_t*>(a.state_indices)[n]
                                   : static_cast<const int32_t*>(a.state_indices)[n];
    const bool ok = slot >= 0 && slot < a.P;
    src_row = dst_row = slot;
    if (!ok) src = dst = nullptr;  // out of range or -1: zeros in, nothing written back
  }
  if (a.has_initial_state != nullptr && a.has_initial_state[n * a.mask_stride] == 0) src = nullptr;

  // ---- initial state -> registers (fp32) ----
  float S[kSM][kNT][4];
  const int srow0 = warp * (KD / 4);
#pragma unroll
  for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = 0.f;
        if (src != nullptr) {
          const int i = srow0 + mt * 16 + acc_row(lane, e), j = v0 + nt * 8 + acc_col(lane, e);
          const int64_t off = src_row * a.h0_row_stride + static_cast<int64_t>(h) * a.K * a.V +
                              state_elem(a.v_first, a.K, a.V, i, j);
          x = a.h0_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(src)[off])
                        : static_cast<const float*>(src)[off];
        }
        S[mt][nt][e] = x;
      }
  auto store_s_operand = [&]() {
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = srow0 + mt * 16 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
          *reinterpret_cast<uint32_t*>(&sm.s[i * Sm::kLdV + j]) = pack2<T>(S[mt][nt][2 * hf], S[mt][nt][2 * hf + 1]);
        }
  };
  store_s_operand();

  // ---- chunk loader (cp.async into stage st) ----
  const T* qg = static_cast<const T*>(a.q) + s.b * a.q_s[0] + hk * a.q_s[2];
  const T* kg = static_cast<const T*>(a.k) + s.b * a.k_s[0] + hk * a.k_s[2];
  const T* vg = static_cast<const T*>(a.v) + s.b * a.v_s[0] + h * a.v_s[2] + v0;
  auto load_chunk = [&](int64_t c, int st) {
    typename Sm::Stage& S_ = sm.st[st];
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    constexpr int kVK = KD * sizeof(T) / 16, kVV = BV * sizeof(T) / 16, kVA = kChunk * sizeof(T) / 16;
    for (int i = tid; i < kChunk * kVK; i += 128) {
      const int r = i / kVK, cv = (i % kVK) * (16 / sizeof(T));
      const bool ok = r < L;
      const int64_t t = ok ? t0 + r : t0;
      cp_async_16(&S_.q[r * Sm::kLdK + cv], qg + t * a.q_s[1] + cv, ok);
      cp_async_16(&S_.k[r * Sm::kLdK + cv], kg + t * a.k_s[1] + cv, ok);
    }
    for (int i = tid; i < kChunk * kVV; i += 128) {
      const int r = i / kVV, cv = (i % kVV) * (16 / sizeof(T));
      const bool ok = r < L;
      cp_async_16(&S_.v[r * Sm::kLdV + cv], vg + (ok ? t0 + r : t0) * a.v_s[1] + cv, ok);
    }
    const int64_t ch = (c_base + c) * a.Hv + h;
    const T* ab = static_cast<const T*>(a.Ab) + ch * kChunk * kChunk;
    const T* pm = static_cast<const T*>(a.Pm) + ch * kChunk * kChunk;
    for (int i = tid; i < kChunk * kVA; i += 128) {
      const int r = i / kVA, cv = (i % kVA) * (16 / sizeof(T));
      cp_async_16(&S_.ab[r * Sm::kLdA + cv], ab + r * kChunk + cv, true);
      cp_async_16(&S_.pm[r * Sm::kLdA + cv], pm + r * kChunk + cv, true);
    }
    const float* aux = a.aux + ch * 3 * kChunk;
    for (int i = tid; i < 3 * kChunk / 4; i += 128) cp_async_16(&S_.aux[i * 4], aux + i * 4, true);
  };

  if (nchunks > 0) load_chunk(0, 0);
  cp_async_commit();
  const int m0 = warp * 16;  // this warp's rows of every (64, .) tile
  for (int64_t c = 0; c < nchunks; ++c) {
    cp_async_wait<0>();
    __syncthreads();
    const int st = static_cast<int>(c & 1);
    if (c + 1 < nchunks) load_chunk(c + 1, st ^ 1);
    cp_async_commit();
    const typename Sm::Stage& X = sm.st[st];
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    const float* gam = X.aux;
    const float* rq = X.aux + kChunk;
    const float* rk = X.aux + 2 * kChunk;
    const float gl = gam[kChunk - 1];  // = gamma[L - 1] (stage 1 pads gamma)

    // 1. KS, QS: (16, BV) per warp.
    float ks[1][kNT][4], qs[1][kNT][4];
    zero(ks);
    zero(qs);
    warp_gemm<1, kNT, KD / 16, Major::kMK, BMajor::kKN>(ks, X.k, Sm::kLdK, m0, sm.s, Sm::kLdV, 0, lane);
    warp_gemm<1, kNT, KD / 16, Major::kMK, BMajor::kKN>(qs, X.q, Sm::kLdK, m0, sm.s, Sm::kLdV, 0, lane);
    // 2. W = V - exp(gamma) o rk o KS.
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = m0 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
        const float f = __expf(gam[i]) * rk[i];
        const float w0 = to_float(X.v[i * Sm::kLdV + j]) - f * ks[0][nt][2 * hf];
        const float w1 = to_float(X.v[i * Sm::kLdV + j + 1]) - f * ks[0][nt][2 * hf + 1];
        *reinterpret_cast<uint32_t*>(&sm.w[i * Sm::kLdV + j]) = pack2<T>(w0, w1);
      }
    __syncthreads();
    // 3. vn = Ab W; Vd = exp(gamma_L - gamma) o rk o vn.
    float vn[1][kNT][4];
    zero(vn);
    warp_gemm<1, kNT, kChunk / 16, Major::kMK, BMajor::kKN>(vn, X.ab, Sm::kLdA, m0, sm.w, Sm::kLdV, 0, lane);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = m0 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
        const float f = __expf(gl - gam[i]) * rk[i];
        *reinterpret_cast<uint32_t*>(&sm.vn[i * Sm::kLdV + j]) = pack2<T>(vn[0][nt][2 * hf], vn[0][nt][2 * hf + 1]);
        *reinterpret_cast<uint32_t*>(&sm.vd[i * Sm::kLdV + j]) =
            pack2<T>(f * vn[0][nt][2 * hf], f * vn[0][nt][2 * hf + 1]);
      }
    __syncthreads();
    // 4. O = scale exp(gamma) o rq o QS + Pm vn.
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = m0 + acc_row(lane, e);
        qs[0][nt][e] *= a.scale * __expf(gam[i]) * rq[i];
      }
    warp_gemm<1, kNT, kChunk / 16, Major::kMK, BMajor::kKN>(qs, X.pm, Sm::kLdA, m0, sm.vn, Sm::kLdV, 0, lane);
    // Stage O through this warp's rows of sW (free: every warp finished step 3), then 16-byte stores.
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = m0 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
        *reinterpret_cast<uint32_t*>(&sm.w[i * Sm::kLdV + j]) = pack2<T>(qs[0][nt][2 * hf], qs[0][nt][2 * hf + 1]);
      }
    __syncwarp();
    {
      constexpr int kVec = BV * sizeof(T) / 16;  // 16-byte vectors per row
      T* og = static_cast<T*>(a.o) + s.b * a.o_s[0] + h * a.o_s[2] + v0;
      for (int i = lane; i < 16 * kVec; i += 32) {
        const int r = m0 + i / kVec, cv = (i % kVec) * (16 / sizeof(T));
        if (r < L) *reinterpret_cast<uint4*>(og + (t0 + r) * a.o_s[1] + cv) =
            *reinterpret_cast<const uint4*>(&sm.w[r * Sm::kLdV + cv]);
      }
    }
    // 5. S = exp(gamma_L) S + Kᵀ Vd; then refresh the operand copy sS (read by step 1 of the next
    // chunk, after the barrier at its top; every warp is past this chunk's step 1).
    const float egl = __expf(gl);
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[mt][nt][e] *= egl;
    warp_gemm<kSM, kNT, kChunk / 16, Major::kKM, BMajor::kKN>(S, X.k, Sm::kLdK, srow0, sm.vd, Sm::kLdV, 0, lane);
    store_s_operand();
  }
  cp_async_wait<0>();

  // ---- final state ----
  if (dst != nullptr) {
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = srow0 + mt * 16 + acc_row(lane, e), j = v0 + nt * 8 + acc_col(lane, e);
          const int64_t off = dst_row * a.ht_row_stride + static_cast<int64_t>(h) * a.K * a.V +
                              state_elem(a.v_first, a.K, a.V, i, j);
          if (a.ht_bf16) {
            static_cast<__nv_bfloat16*>(dst)[off] = __float2bfloat16_rn(S[mt][nt][e]);
          } else {
            static_cast<float*>(dst)[off] = S[mt][nt][e];
          }
        }
  }
}

}  // namespace flashgdn::portable
