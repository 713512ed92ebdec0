// Portable forward, stage 2 ("recurrence"): the inter-chunk state recurrence fused with the output.
//
// Grid (N, Hv, V / BV); 256 threads = 8 warps in two roles. One CTA per (sequence, value head, V slice
// of width BV) walks the sequence's chunks in order. Per chunk c (W, U, Pm, aux from stage 1):
//   state warps 0-3  (own the fp32 state slice S (K, BV) in registers; warp w has rows w*K/4 ..):
//     vn = U - W S_c                        (64, BV), 16 rows per warp   -> sVn (T), signal BAR_VN
//     Vd = exp(gamma_L - gamma) o rk o vn                                -> sVd (T), BAR_STATE
//     S  = exp(gamma_L) S + Kᵀ Vd          (raw K; rk folded into Vd)  -> sS[(c + 1) & 1] (T copy)
//   output warps 4-7 (16 rows of the chunk each):
//     O  = scale exp(gamma) o rq o (Q S_c)  (reads sS[c & 1] while the state warps work)
//     wait BAR_VN;  O += Pm vn;  staged through sO, 16-byte stores to o
// The critical path per chunk is two products (W S, Kᵀ Vd); the output products run beside it.
// Every exponent is <= 0. The state operand copy sS is in the input dtype, as in FLA/FlashQLA.
//
// Pipeline: STAGES input stages (2 by default; 3 with FLASHGDN_DEEP_PIPELINE where the tile fits, BV = 16):
// chunk c + STAGES - 1 (Q, K, W, U slice, Pm, aux) is prefetched with cp.async while chunk c computes.
// Barriers:
//   0 (__syncthreads, 256): top of each chunk: stage c landed, chunk c - 1 finished by everyone, so
//                           stage (c + 1) & 1, sVn, sVd, sO and sS[c & 1]'s readers are free.
//   BAR_VN    (1, 256): state warps arrive after writing sVn; output warps sync before reading it.
//   BAR_STATE (2, 128): state warps only: sVd complete before Kᵀ Vd.
//
// Shared memory (K = 128, BV = 64): per stage Q, K, W (64, 136) T = 52 KB, U (64, 72) T 9 KB, Pm
// (64, 72) T 9 KB, aux 768 B = 71 KB; two stages 142 KB; sS x2 (128, 72) T 37 KB; sVn, sVd, sO
// (64, 72) T 28 KB: ~207 KB (sm_90). Narrower BV for smaller GPUs (the launcher checks the limit).
#pragma once

#include "device/warp_mma.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

enum RecurrenceBarrier : int { kBarVn = 1, kBarState = 2 };

template <class T, int KD, int BV, int STAGES = 2>
struct RecurrenceSmem {
  static constexpr int kLdK = KD + 8;  // NOTE: +16 bytes per row: conflict-free ldmatrix
  static constexpr int kLdV = BV + 8;
  static constexpr int kLdA = kChunk + 8;
  struct Stage {
    T q[kChunk * kLdK];
    T k[kChunk * kLdK];
    T w[kChunk * kLdK];
    T u[kChunk * kLdV];
    T pm[kChunk * kLdA];
    float aux[3 * kChunk];  // gamma, rq, rk
  };
  Stage st[STAGES];
  T s[2][KD * kLdV];
  T vn[kChunk * kLdV];
  T vd[kChunk * kLdV];
  T o[kChunk * kLdV];
};

// Offset of state element (i over K, j over V) inside one head block.
__device__ __forceinline__ int64_t state_elem(int v_first, int K, int V, int i, int j) {
  return v_first ? static_cast<int64_t>(j) * K + i : static_cast<int64_t>(i) * V + j;
}

template <class T, int KD, int BV, int STAGES>
__global__ void __launch_bounds__(256, 1) recurrence_kernel(FwdArgs a) {
  using namespace device;
  using Sm = RecurrenceSmem<T, KD, BV, STAGES>;
  static_assert(STAGES >= 2, "at least double buffering");
  constexpr int kNT = BV / 8;   // n-tiles of a (., BV) accumulator
  constexpr int kSM = KD / 64;  // m-tiles of the state per state warp (K/4 rows)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool state_role = warp < 4;
  const int m0 = (warp & 3) * 16;  // this warp's rows of every (64, .) tile
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

  // ---- state warps: initial state -> registers (fp32) and its operand copy sS[0] ----
  float S[kSM][kNT][4];
  const int srow0 = (warp & 3) * (KD / 4);
  // Global offset of this thread's state element (mt, nt, e) in row `row` of a state tensor.
  auto state_offset = [&](int64_t row, int64_t row_stride, int mt, int nt, int e) {
    const int i = srow0 + mt * 16 + acc_row(lane, e), j = v0 + nt * 8 + acc_col(lane, e);
    return row * row_stride + static_cast<int64_t>(h) * a.K * a.V + state_elem(a.v_first, a.K, a.V, i, j);
  };
  auto store_s_operand = [&](T* dstS) {
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = srow0 + mt * 16 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
          *reinterpret_cast<uint32_t*>(&dstS[i * Sm::kLdV + j]) = pack2<T>(S[mt][nt][2 * hf], S[mt][nt][2 * hf + 1]);
        }
  };
  if (state_role) {
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = 0.f;
          if (src != nullptr) {
            const int64_t off = state_offset(src_row, a.h0_row_stride, mt, nt, e);
            x = a.h0_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(src)[off])
                          : static_cast<const float*>(src)[off];
          }
          S[mt][nt][e] = x;
        }
    store_s_operand(sm.s[0]);
  }

  // ---- chunk loader (cp.async into stage st, all 256 threads) ----
  const T* qg = static_cast<const T*>(a.q) + s.b * a.q_s[0] + hk * a.q_s[2];
  const T* kg = static_cast<const T*>(a.k) + s.b * a.k_s[0] + hk * a.k_s[2];
  auto load_chunk = [&](int64_t c, int st) {
    typename Sm::Stage& X = sm.st[st];
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    constexpr int kVK = KD * sizeof(T) / 16, kVV = BV * sizeof(T) / 16, kVA = kChunk * sizeof(T) / 16;
    const int64_t ch = (c_base + c) * a.Hv + h;
    const T* wg = static_cast<const T*>(a.W) + ch * kChunk * KD;
    const T* ug = static_cast<const T*>(a.U) + ch * kChunk * a.V + v0;
    const T* pg = static_cast<const T*>(a.Pm) + ch * kChunk * kChunk;
    for (int i = tid; i < kChunk * kVK; i += 256) {
      const int r = i / kVK, cv = (i % kVK) * (16 / sizeof(T));
      const bool ok = r < L;
      const int64_t t = ok ? t0 + r : t0;
      cp_async_16(&X.q[r * Sm::kLdK + cv], qg + t * a.q_s[1] + cv, ok);
      cp_async_16(&X.k[r * Sm::kLdK + cv], kg + t * a.k_s[1] + cv, ok);
      cp_async_16(&X.w[r * Sm::kLdK + cv], wg + r * KD + cv, true);
    }
    for (int i = tid; i < kChunk * kVV; i += 256) {
      const int r = i / kVV, cv = (i % kVV) * (16 / sizeof(T));
      cp_async_16(&X.u[r * Sm::kLdV + cv], ug + r * a.V + cv, true);
    }
    for (int i = tid; i < kChunk * kVA; i += 256) {
      const int r = i / kVA, cv = (i % kVA) * (16 / sizeof(T));
      cp_async_16(&X.pm[r * Sm::kLdA + cv], pg + r * kChunk + cv, true);
    }
    const float* aux = a.aux + ch * 3 * kChunk;
    for (int i = tid; i < 3 * kChunk / 4; i += 256) cp_async_16(&X.aux[i * 4], aux + i * 4, true);
  };

  // Prologue: chunks 0 .. STAGES - 2 in flight, one commit group each (empty groups keep the count).
#pragma unroll
  for (int p = 0; p < STAGES - 1; ++p) {
    if (p < nchunks) load_chunk(p, p);
    cp_async_commit();
  }
  T* og = static_cast<T*>(a.o) + s.b * a.o_s[0] + h * a.o_s[2] + v0;
  for (int64_t c = 0; c < nchunks; ++c) {
    cp_async_wait<STAGES - 2>();  // chunk c's group is complete
    __syncthreads();
    const int64_t next = c + STAGES - 1;  // its stage was last read by chunk c - 1, finished by all
    if (next < nchunks) load_chunk(next, static_cast<int>(next % STAGES));
    cp_async_commit();
    const int st = static_cast<int>(c & 1);  // state operand double buffer sS[c & 1]
    const typename Sm::Stage& X = sm.st[static_cast<int>(c % STAGES)];
    const float* gam = X.aux;
    const float* rq = X.aux + kChunk;
    const float* rk = X.aux + 2 * kChunk;
    const float gl = gam[kChunk - 1];  // = gamma[L - 1] (stage 1 pads gamma)
    const T* s_cur = sm.s[st];

    if (state_role) {
      // vn = U - W S_c  (16, BV) per warp.
      float acc[1][kNT][4];
      zero(acc);
      warp_gemm<1, kNT, KD / 16, Major::kMK, BMajor::kKN>(acc, X.w, Sm::kLdK, m0, s_cur, Sm::kLdV, 0, lane);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = m0 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
          const float vn0 = to_float(X.u[i * Sm::kLdV + j]) - acc[0][nt][2 * hf];
          const float vn1 = to_float(X.u[i * Sm::kLdV + j + 1]) - acc[0][nt][2 * hf + 1];
          const float f = __expf(gl - gam[i]) * rk[i];
          *reinterpret_cast<uint32_t*>(&sm.vn[i * Sm::kLdV + j]) = pack2<T>(vn0, vn1);
          *reinterpret_cast<uint32_t*>(&sm.vd[i * Sm::kLdV + j]) = pack2<T>(f * vn0, f * vn1);
        }
      named_bar_arrive(kBarVn, 256);
      named_bar_sync(kBarState, 128);
      // S = exp(gamma_L) S + Kᵀ Vd.
      const float egl = __expf(gl);
#pragma unroll
      for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) S[mt][nt][e] *= egl;
      warp_gemm<kSM, kNT, kChunk / 16, Major::kKM, BMajor::kKN>(S, X.k, Sm::kLdK, srow0, sm.vd, Sm::kLdV, 0, lane);
      store_s_operand(sm.s[st ^ 1]);
    } else {
      const int64_t t0 = s.bos + c * kChunk;
      const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
      // O = scale exp(gamma) o rq o (Q S_c) + Pm vn.
      float acc[1][kNT][4];
      zero(acc);
      warp_gemm<1, kNT, KD / 16, Major::kMK, BMajor::kKN>(acc, X.q, Sm::kLdK, m0, s_cur, Sm::kLdV, 0, lane);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = m0 + acc_row(lane, e);
          acc[0][nt][e] *= a.scale * __expf(gam[i]) * rq[i];
        }
      named_bar_sync(kBarVn, 256);
      warp_gemm<1, kNT, kChunk / 16, Major::kMK, BMajor::kKN>(acc, X.pm, Sm::kLdA, m0, sm.vn, Sm::kLdV, 0, lane);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = m0 + (lane >> 2) + hf * 8, j = nt * 8 + ((lane & 3) << 1);
          *reinterpret_cast<uint32_t*>(&sm.o[i * Sm::kLdV + j]) = pack2<T>(acc[0][nt][2 * hf], acc[0][nt][2 * hf + 1]);
        }
      __syncwarp();
      constexpr int kVec = BV * sizeof(T) / 16;  // 16-byte vectors per row
      for (int i = lane; i < 16 * kVec; i += 32) {
        const int r = m0 + i / kVec, cv = (i % kVec) * (16 / sizeof(T));
        if (r < L)
          *reinterpret_cast<uint4*>(og + (t0 + r) * a.o_s[1] + cv) = *reinterpret_cast<const uint4*>(&sm.o[r * Sm::kLdV + cv]);
      }
    }
  }
  cp_async_wait<0>();

  // ---- final state (state warps) ----
  if (state_role && dst != nullptr) {
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t off = state_offset(dst_row, a.ht_row_stride, mt, nt, e);
          if (a.ht_bf16) {
            static_cast<__nv_bfloat16*>(dst)[off] = __float2bfloat16_rn(S[mt][nt][e]);
          } else {
            static_cast<float*>(dst)[off] = S[mt][nt][e];
          }
        }
  }
}

}  // namespace flashgdn::portable
