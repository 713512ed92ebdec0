// Portable backward, stage 2 ("reverse state recurrence", docs/design.md §4.1-4.2): per (sequence, value
// head, V slice of width BV) the chunks in reverse, the state gradient dS (K, BV) in fp32 registers.
// Per chunk c, with dS' = dS on entry (the gradient w.r.t. the state after chunk c), K̂ = diag(rk) K,
// Q̂ = diag(rq) Q, and Pm, Ab, gamma, rq, rk from prepare (Ab: the recompute's extra image):
//   dvn = Pmᵀ dO + e^{gamma_L - gamma} o (K̂ dS')                      (64, BV)
//   dV  = Abᵀ dvn                                                      (64, BV)  -> dv
//   dS  = e^{gamma_L} dS' + scale Q̂ᵀ (e^{gamma} o dO) - K̂ᵀ (e^{gamma} o dV)   (K, BV)
// dS' is also stored per chunk (input dtype, [chunks, Hv, K, V]) for stage 3; after chunk 0 dS is the
// gradient of the initial state. Every exponent is <= 0.
//
// 128 threads = 4 warps, no warp specialisation. Chunk c's tiles are loaded with STAGES = 2 into one of two
// stages while chunk c + 1 (the previous in the reverse walk) is computed (for grids of at most one CTA per
// SM), with STAGES = 1 (two CTAs per SM hide each other's loads) at the top of its step. Two load paths:
//   cp.async (sm_80+; TMA = false): every tile, 16 bytes per thread and copy, zero-filled past L;
//   TMA (sm_90a; TMA = true): thread 0 issues Q and K by tensor maps (two 64-column boxes each, 128-byte
//     swizzle), Pm, Ab and aux by bulk copies, completing on the stage's mbarrier; dO (BV columns) stays
//     on cp.async. Q's and K's rows past L (later tokens) are cleared after the wait.
//   NOTE: cp.async moved the ~59 KB per chunk at ~21 B/cycle per SM (the forward recurrence's measurement),
//   which set the chunk period; the TMA path issues 5 instructions per chunk for 55 KB of it.
// Then four phases separated by __syncthreads:
//   1  dS' -> sdS (operand copy) and to the dstates buffer
//   2  warp w, rows 16 w ..: X = K sdS, P = Pmᵀ dO; dvn = P + e^{gamma_L - gamma} rk o X -> sdvn;
//      sdo = scale e^{gamma} rq o dO (rows of this warp)
//   3  warp w, rows 16 w ..: dV = Abᵀ dvn -> dv (rows < L), sdw = -e^{gamma} rk o dV
//   4  warp w, state rows w K/4 ..: dS = e^{gamma_L} dS + Qᵀ sdo + Kᵀ sdw
// Shared memory (K = 128): STAGES x (Q, K (64, 136) T (TMA: (64, 128) swizzled, 1024-byte aligned stages),
// Pm, Ab (64, 72) T, dO (64, BV + 8) T, aux); dvn, sdo, sdw (64, BV + 8) T, sdS (128, BV + 8) T; TMA:
// STAGES mbarriers: two stages ~127 KB at BV = 16, ~141 KB at BV = 32; one stage at BV = 32 ~83 KB.
// (No named barriers.)
#pragma once

#include "device/warp_mma.cuh"
#include "kernels/portable/bwd/params.hpp"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/recurrence.cuh"  // RecMaps, kSm90aBuild
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

// TMA: Q and K as TMA writes them (column halves of (64, 64), 128-byte swizzle; 1024-byte aligned stages),
// else padded rows (cp.async).
template <class T, int KD, int BV, int STAGES, bool TMA = false>
struct DStateSmem {
  static constexpr int kLdK = KD + 8;  // NOTE: +16 bytes per row keeps ldmatrix conflict-free
  static constexpr int kLdV = BV + 8;
  static constexpr int kLdA = kChunk + 8;
  static constexpr int kLdQK = TMA ? kChunk : kLdK;  // warp_gemm's ld for Q/K (the row count when swizzled)
  static constexpr device::Major kMK = TMA ? device::Major::kMKSw128 : device::Major::kMK;
  static constexpr device::Major kKM = TMA ? device::Major::kKMSw128 : device::Major::kKM;
  struct alignas(TMA ? 1024 : 16) Stage {  // one chunk's loads (double-buffered: chunk c - 1 lands while c is computed)
    T q[TMA ? kChunk * KD : kChunk * kLdK];  // (64, K)
    T k[TMA ? kChunk * KD : kChunk * kLdK];  // (64, K)
    T pm[kChunk * kLdA];    // (64, 64)
    T ab[kChunk * kLdA];    // (64, 64)
    T d_o[kChunk * kLdV];   // (64, BV)
    float aux[3 * kChunk];  // gamma, rq, rk
  } st[STAGES];
  T dvn[kChunk * kLdV];    // (64, BV)
  T sdo[kChunk * kLdV];    // (64, BV)
  T sdw[kChunk * kLdV];    // (64, BV)
  T ds[KD * kLdV];         // (K, BV)
  uint64_t bar[STAGES];    // TMA: full[s] (count 1: thread 0's arrive.expect_tx; the copies' complete_tx)
};

// Dynamic shared memory of a stage-2 variant (the TMA path aligns its base to 1024 bytes itself).
template <class T, int KD, int BV, int STAGES, bool TMA>
constexpr size_t dstate_smem_bytes() {
  return sizeof(DStateSmem<T, KD, BV, STAGES, TMA>) + (TMA ? 1024 : 0);
}

inline constexpr int kDStateThreads = 128;

// Grid N * Hv * (V / BV): h fastest, then the slice, then the sequence.
// TMA: Q and K by tensor maps (two 64-column boxes each, 128-byte swizzle), Pm, Ab and aux by bulk copies,
// completing on the stage's mbarrier; dO by cp.async. Its instantiation has an empty body in non-sm_90a
// passes; the launcher takes it only for an sm_90a binary.
template <class T, int KD, int BV, int STAGES, bool TMA>
__global__ void __launch_bounds__(kDStateThreads) dstate_kernel(const __grid_constant__ RecMaps maps, FwdArgs a,
                                                                BwdArgs bw) {
 if constexpr (TMA && !kSm90aBuild) {
  return;
 } else {
  using namespace device;
  using Sm = DStateSmem<T, KD, BV, STAGES, TMA>;
  constexpr int kNT = BV / 8;   // n-tiles of a (., BV) accumulator
  constexpr int kSM = KD / 64;  // m-tiles of dS per warp (K/4 rows)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(TMA ? smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023) : smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tiles = a.V / BV;
  const int h = static_cast<int>(blockIdx.x % a.Hv);
  const int slice = static_cast<int>((blockIdx.x / a.Hv) % tiles);
  const int64_t n = blockIdx.x / (static_cast<int64_t>(tiles) * a.Hv);
  const int v0 = slice * BV, hk = h / a.group;
  const Seq s = seq_range(a, n);
  const int64_t nchunks = (s.eos - s.bos + kChunk - 1) / kChunk;
  const int64_t c_base = a.chunk_offsets[n];
  const int m0 = warp * 16, srow0 = warp * (KD / 4);
  const T* qg = static_cast<const T*>(a.q) + s.b * a.q_s[0] + hk * a.q_s[2];
  const T* kg = static_cast<const T*>(a.k) + s.b * a.k_s[0] + hk * a.k_s[2];
  const T* dog = static_cast<const T*>(bw.d_o) + s.b * bw.do_s[0] + h * bw.do_s[2] + v0;
  T* dvg = static_cast<T*>(bw.dv) + s.b * bw.dv_s[0] + h * bw.dv_s[2] + v0;
  float dS[kSM][kNT][4];
  // f(x, offset) for every dS element this thread holds, with its offset in dht / dh0 ([N, Hv, K, V] or
  // [.., V, K], fp32, rows `srow_stride` apart).
  auto for_each_ds = [&](int64_t srow_stride, auto f) {
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          f(dS[mt][nt][e], state_offset(a, n, srow_stride, h, srow0 + mt * 16 + acc_row(lane, e),
                                        v0 + nt * 8 + acc_col(lane, e)));
  };
  for_each_ds(bw.dht_row_stride, [&](float& x, int64_t off) { x = bw.dht != nullptr ? bw.dht[off] : 0.f; });

  if constexpr (TMA) {
    if (tid == 0) {
      for (int st = 0; st < STAGES; ++st) sm90::mbar_init(&sm.bar[st], 1);
      sm90::fence_mbarrier_init_cluster();
    }
    __syncthreads();
  }
  // Issues chunk c's loads into stage `buf`: one cp.async group (TMA: dO only; thread 0 issues the rest on
  // the stage's mbarrier).
  auto load_chunk = [&](int64_t c, int buf) {
    typename Sm::Stage& g = sm.st[buf];
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    const int64_t ch = (c_base + c) * a.Hv + h;
    constexpr int kE = 16 / sizeof(T);
    const char* pmg = reinterpret_cast<const char*>(static_cast<const T*>(a.Pm) + ch * pm_image_elems());
    const char* abg = reinterpret_cast<const char*>(static_cast<const T*>(bw.ab) + ch * pm_image_elems());
    const char* auxg = reinterpret_cast<const char*>(a.aux + ch * 3 * kChunk);
    constexpr int kImg = int(sizeof(T)) * kChunk * Sm::kLdA;
    constexpr int kAux = int(sizeof(float)) * 3 * kChunk;
    if constexpr (TMA) {
      if (tid == 0) {
        // Whole boxes count (rows past T are zero-filled; rows past L are cleared after the wait).
        constexpr uint32_t kQK = sizeof(T) * kChunk * KD;
        uint64_t* full = &sm.bar[buf];
        sm90::mbar_expect_tx(full, 2 * kQK + 2 * kImg + kAux);
#pragma unroll
        for (int half = 0; half < KD / 64; ++half) {
          sm90::tma_load_4d(g.q + half * kChunk * 64, &maps.q, half * 64, hk, static_cast<int32_t>(t0),
                            static_cast<int32_t>(s.b), full);
          sm90::tma_load_4d(g.k + half * kChunk * 64, &maps.k, half * 64, hk, static_cast<int32_t>(t0),
                            static_cast<int32_t>(s.b), full);
        }
        sm90::bulk_load(g.pm, pmg, kImg, full);
        sm90::bulk_load(g.ab, abg, kImg, full);
        sm90::bulk_load(g.aux, auxg, kAux, full);
      }
    } else {
      for (int e = tid; e < kChunk * (KD / kE); e += kDStateThreads) {
        const int r = e / (KD / kE), cv = (e % (KD / kE)) * kE;
        const bool ok = r < L;
        const int64_t tr = ok ? t0 + r : t0;
        cp_async_16(&g.q[r * Sm::kLdK + cv], qg + tr * a.q_s[1] + cv, ok);
        cp_async_16(&g.k[r * Sm::kLdK + cv], kg + tr * a.k_s[1] + cv, ok);
      }
      for (int o = tid * 16; o < kImg; o += 16 * kDStateThreads) {
        cp_async_16(reinterpret_cast<char*>(g.pm) + o, pmg + o, true);
        cp_async_16(reinterpret_cast<char*>(g.ab) + o, abg + o, true);
      }
      for (int o = tid * 16; o < kAux; o += 16 * kDStateThreads)
        cp_async_16(reinterpret_cast<char*>(g.aux) + o, auxg + o, true);
    }
    for (int e = tid; e < kChunk * (BV / kE); e += kDStateThreads) {
      const int r = e / (BV / kE), cv = (e % (BV / kE)) * kE;
      const bool ok = r < L;
      cp_async_16(&g.d_o[r * Sm::kLdV + cv], dog + (ok ? t0 + r : t0) * bw.do_s[1] + cv, ok);
    }
    cp_async_commit();
  };
  if (nchunks > 0) load_chunk(nchunks - 1, 0);

  for (int64_t c = nchunks - 1; c >= 0; --c) {
    const int buf = STAGES == 2 ? static_cast<int>((nchunks - 1 - c) & 1) : 0;
    typename Sm::Stage& g = sm.st[buf];
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    const int64_t ch = (c_base + c) * a.Hv + h;
    if constexpr (STAGES == 2) {
      // NOTE: the next chunk's loads go out before this one is waited for (the other stage is free: the
      // barrier that ended the previous iteration is behind us).
      if (c > 0) {
        load_chunk(c - 1, buf ^ 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      if (c < nchunks - 1) load_chunk(c, 0);  // the first chunk's loads went out before the loop
      cp_async_wait<0>();
    }
    if constexpr (TMA) {
      // The stage's n-th fill completes phase n & 1 of its mbarrier.
      const int64_t it = nchunks - 1 - c;
      sm90::mbar_wait(&sm.bar[buf], static_cast<uint32_t>((STAGES == 2 ? it >> 1 : it) & 1));
      // A chunk shorter than 64: Q's and K's rows past L hold later tokens (or TMA's zeros); clear them as
      // the cp.async path's zero fill does (this CTA's copy; phase 1's barrier orders it before any use).
      if (L < kChunk) {
        constexpr int kRowVecs = 64 * int(sizeof(T)) / 16;  // 16-byte chunks per 64-column row
        const int n_vecs = (kChunk - L) * kRowVecs;
        for (int i = tid; i < 2 * (KD / 64) * n_vecs; i += kDStateThreads) {
          const int which = i / ((KD / 64) * n_vecs), rest = i % ((KD / 64) * n_vecs);
          const int half = rest / n_vecs, r = L + (rest % n_vecs) / kRowVecs, v = rest % kRowVecs;
          uint4* base = reinterpret_cast<uint4*>(which == 0 ? g.q : g.k);
          base[(half * kChunk + r) * kRowVecs + v] = make_uint4(0, 0, 0, 0);  // any chunk order: all zeros
        }
        sm90::fence_proxy_async_smem();  // before the stage is refilled by the async proxy
      }
    }
    // ---- 1: dS' -> sdS and the dstates buffer ----
    store_acc(dS, sm.ds, Sm::kLdV, srow0, lane);
    store_acc(dS, static_cast<T*>(bw.dstates) + ch * int64_t(KD) * a.V + v0, a.V, srow0, lane);
    __syncthreads();
    const float* gam = g.aux;
    const float* rq = g.aux + kChunk;
    const float* rk = g.aux + 2 * kChunk;
    const float gl = gam[kChunk - 1];  // = gamma[L - 1] (prepare pads gamma)
    // ---- 2: dvn = Pmᵀ dO + e^{gamma_L - gamma} rk o (K sdS); sdo = scale e^{gamma} rq o dO ----
    {
      float x[1][kNT][4], p[1][kNT][4];
      zero(x);
      zero(p);
      warp_gemm<1, kNT, KD / 16, Sm::kMK, BMajor::kKN>(x, g.k, Sm::kLdQK, m0, sm.ds, Sm::kLdV, 0, lane);
      warp_gemm<1, kNT, kChunk / 16, Major::kKM, BMajor::kKN>(p, g.pm, Sm::kLdA, m0, g.d_o, Sm::kLdV, 0, lane);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = m0 + (lane >> 2) + hf * 8;
        const float fx = __expf(gl - gam[i]) * rk[i], fo = a.scale * __expf(gam[i]) * rq[i];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const int j = nt * 8 + ((lane & 3) << 1);
          const float d0 = p[0][nt][2 * hf] + fx * x[0][nt][2 * hf];
          const float d1 = p[0][nt][2 * hf + 1] + fx * x[0][nt][2 * hf + 1];
          *reinterpret_cast<uint32_t*>(&sm.dvn[i * Sm::kLdV + j]) = pack2<T>(d0, d1);
          const float o0 = to_float(g.d_o[i * Sm::kLdV + j]), o1 = to_float(g.d_o[i * Sm::kLdV + j + 1]);
          *reinterpret_cast<uint32_t*>(&sm.sdo[i * Sm::kLdV + j]) = pack2<T>(fo * o0, fo * o1);
        }
      }
    }
    __syncthreads();
    // ---- 3: dV = Abᵀ dvn -> dv (rows < L); sdw = -e^{gamma} rk o dV ----
    {
      float dvv[1][kNT][4];
      zero(dvv);
      warp_gemm<1, kNT, kChunk / 16, Major::kKM, BMajor::kKN>(dvv, g.ab, Sm::kLdA, m0, sm.dvn, Sm::kLdV, 0, lane);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = m0 + (lane >> 2) + hf * 8;
        const float fw = -__expf(gam[i]) * rk[i];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const int j = nt * 8 + ((lane & 3) << 1);
          const float w0 = dvv[0][nt][2 * hf], w1 = dvv[0][nt][2 * hf + 1];
          *reinterpret_cast<uint32_t*>(&sm.sdw[i * Sm::kLdV + j]) = pack2<T>(fw * w0, fw * w1);
          if (i < L) *reinterpret_cast<uint32_t*>(&dvg[(t0 + i) * bw.dv_s[1] + j]) = pack2<T>(w0, w1);
        }
      }
    }
    __syncthreads();
    // ---- 4: dS = e^{gamma_L} dS' + Qᵀ sdo + Kᵀ sdw ----
    {
      scale(dS, __expf(gl));
      warp_gemm<kSM, kNT, kChunk / 16, Sm::kKM, BMajor::kKN>(dS, g.q, Sm::kLdQK, srow0, sm.sdo, Sm::kLdV, 0, lane);
      warp_gemm<kSM, kNT, kChunk / 16, Sm::kKM, BMajor::kKN>(dS, g.k, Sm::kLdQK, srow0, sm.sdw, Sm::kLdV, 0, lane);
    }
    __syncthreads();  // the loads issued next iteration overwrite this stage
  }
  // The initial state's gradient (fp32), when the forward had one.
  if (bw.dh0 != nullptr) for_each_ds(bw.dh0_row_stride, [&](float& x, int64_t off) { bw.dh0[off] = x; });
 }
}

}  // namespace flashgdn::portable
