// Portable backward, stage 1b ("states pass", docs/design.md §4.2): the recompute's state at the start of
// every chunk. Per (sequence, value head, V slice of width BV) the chunks in order, the state S (K, BV) in
// fp32 registers. Per chunk c, with W, U, aux (gamma, rq, rk) from prepare (K̂ = diag(rk) K folded into Vd):
//   S_c -> h_states                          (input dtype, [chunks, Hv, K, V]; stage 3 reads it)
//   vn = U - W S_c                           (64, BV)
//   Vd = e^{gamma_L - gamma} rk o vn         (64, BV)
//   S  = e^{gamma_L} S + Kᵀ Vd               (K, BV)
// Every exponent is <= 0. K's rows past L are zero-filled, and so are W's and U's (prepare), so vn and Vd
// are zero there.
//
// This pass and stage 2 (dstate.cuh) are independent (both read only prepare's images and the inputs), so
// they co-run: this grid is launched to start during prepare's last wave and lets stage 2 start at once
// (programmatic dependent launch, sm_90+); both acquire each (chunk, head)'s images through prepare's ready
// flags. Its shared memory is sized so that one CTA sits beside stage 2's CTA(s) on an SM (the launcher,
// fwd_portable.cu, picks the stages).
//
// 128 threads = 4 warps, no warp specialisation. Per chunk, __syncthreads between phases:
//   0  wait for chunk c's loads (cp.async; zero-filled past L)
//   1  S -> sS (operand copy) and to h_states;                                     barrier
//      (STAGES = 2: chunk c + 1's loads issued into the other stage)
//   2  warp w, rows 16 w ..: acc = W sS; vn = U - acc; Vd -> sVd;                  barrier
//   3  warp w, state rows w K/4 ..: S = e^{gamma_L} S + Kᵀ sVd
//      (STAGES = 1: barrier, then chunk c + 1's loads)
// Shared memory (K = 128): STAGES x (K, W (64, 136) T, U (64, BV + 8) T, aux 768 B); sS (128, BV + 8) T;
// sVd (64, BV + 8) T: one stage ~49 KB at BV = 16, ~56 KB at BV = 32; two stages ~88 / ~98 KB.
// (No named barriers.)
#pragma once

#include "device/warp_mma.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

template <class T, int KD, int BV, int STAGES>
struct StatesSmem {
  static constexpr int kLdK = KD + 8;  // NOTE: +16 bytes per row keeps ldmatrix conflict-free
  static constexpr int kLdV = BV + 8;
  struct Stage {             // one chunk's loads
    T k[kChunk * kLdK];      // (64, K)
    T w[kChunk * kLdK];      // (64, K): prepare's W image, copied whole (its pad columns are zeros)
    T u[kChunk * kLdV];      // (64, BV): this slice of prepare's U image
    float aux[3 * kChunk];   // gamma, rq, rk
  } st[STAGES];
  T s[KD * kLdV];            // (K, BV) operand copy of S_c
  T vd[kChunk * kLdV];       // (64, BV)
};

inline constexpr int kStatesThreads = 128;

// Acquires (chunk, head) ch's prepare images (prepare may still run: programmatic launch). Once every
// prepare CTA that does work has finished (the counter), no more acquires. Every calling thread acquires
// for itself (its own cp.async copies follow).
struct PrepareGate {
  const FwdArgs& a;
  int32_t prepare_ctas;
  bool all = false;
  __device__ explicit PrepareGate(const FwdArgs& args)
      : a(args), prepare_ctas(static_cast<int32_t>(args.chunk_offsets[args.N] * args.Hv)) {}
  __device__ __forceinline__ void acquire(int64_t ch) {
    if (all) return;
    if (device::load_acquire_gpu(a.prepared) == prepare_ctas) all = true;
    else while (device::load_acquire_gpu(&a.ready[ch]) == 0) __nanosleep(100);
  }
};

// Grid N * Hv * (V / BV): h fastest, then the slice, then the sequence (longest first, a.seq_order).
template <class T, int KD, int BV, int STAGES>
__global__ void __launch_bounds__(kStatesThreads) states_kernel(FwdArgs a) {
  using namespace device;
  using Sm = StatesSmem<T, KD, BV, STAGES>;
  static_assert(STAGES == 1 || STAGES == 2, "one or two stages");
  constexpr int kNT = BV / 8;   // n-tiles of a (., BV) accumulator
  constexpr int kSM = KD / 64;  // m-tiles of S per warp (K/4 rows)
  // NOTE: stage 2 (the next grid, programmatic launch) may start now: it does not depend on this grid.
  launch_dependents();
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tiles = a.V / BV;
  const int h = static_cast<int>(blockIdx.x % a.Hv);
  const int slice = static_cast<int>((blockIdx.x / a.Hv) % tiles);
  const int64_t n = a.seq_order[blockIdx.x / (static_cast<int64_t>(tiles) * a.Hv)];
  const int v0 = slice * BV, hk = h / a.group;
  const Seq s = seq_range(a, n);
  const int64_t nchunks = (s.eos - s.bos + kChunk - 1) / kChunk;
  const int64_t c_base = a.chunk_offsets[n];
  const int m0 = warp * 16, srow0 = warp * (KD / 4);
  const T* kg = static_cast<const T*>(a.k) + s.b * a.k_s[0] + hk * a.k_s[2];
  PrepareGate gate(a);

  float S[kSM][kNT][4];  // (K/4, BV) per warp
  {
    const StateIO io = state_io(a, n);
#pragma unroll
    for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          S[mt][nt][e] = io.src != nullptr ? load_state(a, io.src, io.src_row, h, srow0 + mt * 16 + acc_row(lane, e),
                                                        v0 + nt * 8 + acc_col(lane, e))
                                           : 0.f;
  }

  // Issues chunk c's loads into stage `buf` (one cp.async group).
  auto load_chunk = [&](int64_t c, int buf) {
    typename Sm::Stage& g = sm.st[buf];
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    const int64_t ch = (c_base + c) * a.Hv + h;
    gate.acquire(ch);
    constexpr int kE = 16 / sizeof(T);
    for (int e = tid; e < kChunk * (KD / kE); e += kStatesThreads) {
      const int r = e / (KD / kE), cv = (e % (KD / kE)) * kE;
      const bool ok = r < L;
      cp_async_16(&g.k[r * Sm::kLdK + cv], kg + (ok ? t0 + r : t0) * a.k_s[1] + cv, ok);
    }
    auto image = [&](void* dst, const void* src, int bytes) {
      for (int o = tid * 16; o < bytes; o += 16 * kStatesThreads)
        cp_async_16(static_cast<char*>(dst) + o, static_cast<const char*>(src) + o, true);
    };
    image(g.w, static_cast<const T*>(a.W) + ch * w_image_elems(KD), int(sizeof(T)) * kChunk * Sm::kLdK);
    image(g.u, static_cast<const T*>(a.U) + ch * a.u_stride + slice * u_slice_elems(BV),
          int(sizeof(T)) * kChunk * Sm::kLdV);
    image(g.aux, a.aux + ch * 3 * kChunk, int(sizeof(float)) * 3 * kChunk);
    cp_async_commit();
  };
  if (nchunks > 0) load_chunk(0, 0);

  for (int64_t c = 0; c < nchunks; ++c) {
    const int buf = STAGES == 2 ? static_cast<int>(c & 1) : 0;
    const typename Sm::Stage& g = sm.st[buf];
    const int64_t ch = (c_base + c) * a.Hv + h;
    if (STAGES == 1 && c > 0) load_chunk(c, 0);  // the first chunk's loads went out before the loop
    cp_async_wait<0>();
    // ---- 1: S_c -> sS and h_states ----
    store_acc(S, sm.s, Sm::kLdV, srow0, lane);
    store_acc(S, static_cast<T*>(a.h_states) + ch * int64_t(KD) * a.V + v0, a.V, srow0, lane);
    __syncthreads();
    // NOTE: the next chunk's loads go into the other stage, free since the barrier above (its last reader,
    // phase 3 of chunk c - 1, is behind it); they overlap phases 2 and 3.
    if (STAGES == 2 && c + 1 < nchunks) load_chunk(c + 1, buf ^ 1);
    const float* gam = g.aux;
    const float* rk = g.aux + 2 * kChunk;
    const float gl = gam[kChunk - 1];  // = gamma[L - 1] (prepare pads gamma)
    // ---- 2: vn = U - W S_c; Vd = e^{gamma_L - gamma} rk o vn -> sVd ----
    {
      float acc[1][kNT][4];
      zero(acc);
      warp_gemm<1, kNT, KD / 16, Major::kMK, BMajor::kKN>(acc, g.w, Sm::kLdK, m0, sm.s, Sm::kLdV, 0, lane);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = m0 + (lane >> 2) + hf * 8;
        const float f = __expf(gl - gam[i]) * rk[i];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const int j = nt * 8 + ((lane & 3) << 1);
          const float2 u = unpack2<T>(*reinterpret_cast<const uint32_t*>(&g.u[i * Sm::kLdV + j]));
          *reinterpret_cast<uint32_t*>(&sm.vd[i * Sm::kLdV + j]) =
              pack2<T>(f * (u.x - acc[0][nt][2 * hf]), f * (u.y - acc[0][nt][2 * hf + 1]));
        }
      }
    }
    __syncthreads();
    // ---- 3: S = e^{gamma_L} S + Kᵀ Vd ----
    scale(S, __expf(gl));
    warp_gemm<kSM, kNT, kChunk / 16, Major::kKM, BMajor::kKN>(S, g.k, Sm::kLdK, srow0, sm.vd, Sm::kLdV, 0, lane);
    if constexpr (STAGES == 1) __syncthreads();  // the next chunk's loads overwrite this stage
  }
  // This grid may have started while prepare ran. Its completion must imply prepare's: stage 2 waits for
  // this grid before it exits, and the next call's offsets kernel clears the ready flags and the counter.
  grid_dependency_wait();
}

}  // namespace flashgdn::portable
