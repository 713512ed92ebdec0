// sm_90a forward, stage 2, fused form (EXPERIMENTAL, FLASHGDN_EXPERIMENTAL_SM90=2): the gated delta rule of a
// (sequence, value head, 64-column V slice) with W, U and Pm never stored. Stage 1 is the portable prepare
// in its "A only" mode: per (chunk, value head) the gate-free A diag(β), A = (I + StrictLower(diag(β) K̂K̂ᵀ))⁻¹,
// as a bf16 (64, 72) image (zero above the diagonal, past L and in the pads), and aux (γ, rq, rk).
// The gates only scale (docs/design.md §6.1): with Γ_ij = e^{γ_i - γ_j} (i >= j, exponent <= 0),
//   Ag = Γ o (A diag(β)),  Pg = scale diag(rq) (Γ o tril(Q Kᵀ)) diag(rk),
//   W§ = V - e^γ o rk o (K S),  vn = Ag W§,  O = scale e^γ o rq o (Q S) + Pg vn,
//   S' = e^{γL} S + K̂ᵀ (e^{γL - γ} o rk o vn)      (K̂ = diag(rk) K; every exponent <= 0)
// K = V = 128, BV = 64, bf16.
//
// Grid N * Hv * 2 (sequence rank slowest, head fastest); 512 threads = 4 warpgroups:
//   WG0 (warps 0-3), state [setmaxnreg 232]: S (128 x 64 fp32) in wgmma accumulators. Per chunk: KS = K S
//       (8 wgmma m64n64k16, K K-major over two swizzle atoms, S MN-major), W§ -> sW (swizzled generic stores,
//       fence.proxy.async), vn = Ag W§ (4 wgmma, Ag K-major, W§ MN-major), vn -> sVn[c & 1],
//       Vd = e^{γL-γ} rk o vn -> sVd, S = e^{γL} S + Kᵀ Vd (2 x 4 wgmma), the bf16 copy -> sS[(c + 1) & 1].
//   WG1 (warps 4-7), output, one chunk behind [128]: O = scale e^γ rq o (Q S_c) + Pg vn_c, stored from
//       registers (rows < L).
//   WG2 (warps 8-11), gates [setmaxnreg 112]: per stage, P = Q Kᵀ (8 wgmma, both K-major), then
//       Pg -> sPg[s] and Ag (from the stage's A tile) -> sAg[s] (one exp per element, shared by both).
//   WG3 (warps 12-15), producer [setmaxnreg 40]: lane 0 of warp 12 issues per stage Q, K (3-D maps over the
//       user tensors, (K, heads, tokens)), the V slice (3-D map over v), A (map over the workspace images,
//       the 16-byte row pads skipped by the box) and aux (bulk copy), on mbarrier full[s] (transaction
//       bytes); refills stage s after mbarrier empty[s] (384 arrivals: WG0-WG2). Warps 13-15 exit.
// mbarriers: full[2] (1 + tx), prepped[2] (128: WG2 -> WG0, WG1), empty[2] (384).
// Named barriers (ids 1-5; 0 is __syncthreads): kState (1, 128: WG0 internal), kHandoff + (c & 1) (2-3, 256:
// WG0 arrives with vn_c and S_c, WG1 syncs), kRelease + (c & 1) (4-5, 256: WG1 arrives when done with sS / sVn
// of that parity, WG0 syncs before overwriting them).
// Rows past a chunk's length L: TMA brings the next sequence's (finite) rows or zeros past the tensor; Ag and Pg
// are zero there (rows and columns >= L), so vn and Vd rows >= L are zero and O rows >= L are not stored —
// provided the rows read past L are finite (0 x NaN), as in the W/U form (recurrence_sm90.cuh).
//
// Shared memory (1024-aligned): 2 stages x (Q 16 KB, K 16 KB, V 8 KB, A 8 KB, aux 768 B; 49 KB) = 98 KB;
// sAg, sPg 2 x 2 x 8 KB; sS 2 x 16 KB; sW, sVd 8 KB each; sVn 2 x 8 KB: ~194 KB.
#pragma once

#include <cuda.h>

#include "device/sm90.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"
#include "kernels/sm90/fwd/recurrence_sm90.cuh"

namespace flashgdn::sm90fwd {

namespace fused {

inline constexpr int kThreads = 512;
inline constexpr uint32_t kQ = 0, kK = 16384, kV = 32768, kA = 40960, kAux = 49152;
inline constexpr uint32_t kStageBytes = 50176;  // 49 KB (a multiple of 1024: the tiles stay 1024-aligned)
inline constexpr uint32_t kTxBytes = 2 * 16384 + 8192 + 8192 + 768;
inline constexpr uint32_t kAg0 = 2 * kStageBytes;        // sAg[s] = kAg0 + 16384 s, sPg[s] = + 8192
inline constexpr uint32_t kS0 = kAg0 + 2 * 16384;        // sS[b] = kS0 + 16384 b
inline constexpr uint32_t kW = kS0 + 2 * 16384;          // W§ (64, 64) MN-major B operand
inline constexpr uint32_t kVd = kW + 8192;
inline constexpr uint32_t kVn0 = kVd + 8192;             // sVn[b] = kVn0 + 8192 b
inline constexpr uint32_t kBars = kVn0 + 2 * 8192;
inline constexpr uint32_t kSmemBytes = kBars + 64 + 1024;  // + 6 mbarriers + alignment slack

struct FusedMaps {
  CUtensorMap q, k, v, a;
};

__global__ void __launch_bounds__(kThreads, 1) fused_sm90_kernel(const __grid_constant__ FusedMaps maps, FwdArgs a) {
  using namespace device;
  using portable::Seq;
  enum : int { kBarState = 1, kBarHandoff = 2, kBarRelease = 4 };
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  const uint32_t base = smem_u32(smem);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kBars);
  uint64_t* prepped = full + 2;
  uint64_t* empty = full + 4;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int h = static_cast<int>(blockIdx.x % a.Hv);
  const int slice = static_cast<int>((blockIdx.x / a.Hv) % 2);
  const int64_t n = a.seq_order[blockIdx.x / (2 * static_cast<int64_t>(a.Hv))];
  const int v0 = slice * kBv, hk = h / a.group;
  const Seq s = portable::seq_range(a, n);
  const int64_t nchunks = (s.eos - s.bos + kChunk - 1) / kChunk;
  const int64_t c_base = a.chunk_offsets[n];
  if (tid == 0) {
    for (int i = 0; i < 2; ++i) {
      sm90::mbar_init(&full[i], 1);
      sm90::mbar_init(&prepped[i], 128);
      sm90::mbar_init(&empty[i], 384);
    }
    cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
  }
  __syncthreads();

  if (warp >= 12) {
    // ================= producer =================
    sm90::setmaxnreg_dec<40>();
    if (warp == 12 && (tid & 31) == 0) {
      const int64_t tok0 = s.b * a.T + s.bos;  // token row of the sequence's first token in the 3-D maps
      for (int64_t c = 0; c < nchunks; ++c) {
        const int st = static_cast<int>(c & 1);
        if (c >= 2) sm90::mbar_wait(&empty[st], static_cast<uint32_t>((c / 2 - 1) & 1));
        unsigned char* X = smem + st * kStageBytes;
        const int64_t ch = (c_base + c) * a.Hv + h;
        const int32_t tok = static_cast<int32_t>(tok0 + c * kChunk);
        sm90::mbar_expect_tx(&full[st], kTxBytes);
        for (int atom = 0; atom < 2; ++atom) {
          sm90::tma_load_3d(X + kQ + 8192 * atom, &maps.q, 64 * atom, hk, tok, &full[st]);
          sm90::tma_load_3d(X + kK + 8192 * atom, &maps.k, 64 * atom, hk, tok, &full[st]);
        }
        sm90::tma_load_3d(X + kV, &maps.v, v0, h, tok, &full[st]);
        sm90::tma_load_2d(X + kA, &maps.a, 0, static_cast<int32_t>(ch * kChunk), &full[st]);
        sm90::bulk_load(X + kAux, a.aux + ch * 3 * kChunk, 3 * kChunk * sizeof(float), &full[st]);
      }
    }
    return;
  }

  const int t = tid & 127;  // thread in the warpgroup
  const int row = 16 * (t / 32) + (t % 32) / 4, col = 2 * (t % 4);  // accumulator coordinates

  if (warp >= 8) {
    // ================= gates: Pg, Ag per stage =================
    sm90::setmaxnreg_dec<112>();
    for (int64_t c = 0; c < nchunks; ++c) {
      const int st = static_cast<int>(c & 1);
      sm90::mbar_wait(&full[st], static_cast<uint32_t>((c / 2) & 1));
      const uint32_t X = base + st * kStageBytes;
      const unsigned char* Xp = smem + st * kStageBytes;
      const float* gam = reinterpret_cast<const float*>(Xp + kAux);
      const float* rq = gam + kChunk;
      const float* rk = gam + 2 * kChunk;
      const int64_t t0 = s.bos + c * kChunk;
      const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
      float p[32];  // (64, 64) Q Kᵀ
#pragma unroll
      for (int i = 0; i < 32; ++i) p[i] = 0.f;
      sm90::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 8; ++ks)
        sm90::wgmma_m64n64k16<0, 0>(p, make_smem_desc(X + kQ + 8192 * (ks / 4) + 32 * (ks % 4), 16, 1024, Swizzle::k128B),
                                    make_smem_desc(X + kK + 8192 * (ks / 4) + 32 * (ks % 4), 16, 1024, Swizzle::k128B), 1);
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::fence_regs(p);
      unsigned char* ag = smem + kAg0 + 16384 * st;
      unsigned char* pg = ag + 8192;
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int r = row + 8 * hf, cc = 8 * j + col;
          const float gi = gam[r], fq = a.scale * rq[r];
          const __nv_bfloat162 av = *reinterpret_cast<const __nv_bfloat162*>(Xp + kA + sw128(r, cc));
          float gv[2], pv[2];
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const int jj = cc + u;
            const bool in = jj <= r && r < L;
            const float G = in ? __expf(fminf(gi - gam[jj], 0.f)) : 0.f;  // exponent <= 0
            gv[u] = G * (u == 0 ? __low2float(av) : __high2float(av));
            pv[u] = G * fq * rk[jj] * p[4 * j + 2 * hf + u];
          }
          *reinterpret_cast<__nv_bfloat162*>(ag + sw128(r, cc)) = __floats2bfloat162_rn(gv[0], gv[1]);
          *reinterpret_cast<__nv_bfloat162*>(pg + sw128(r, cc)) = __floats2bfloat162_rn(pv[0], pv[1]);
        }
      sm90::fence_proxy_async_smem();
      sm90::mbar_arrive(&prepped[st]);  // sAg[st], sPg[st] written
      sm90::mbar_arrive(&empty[st]);    // done with the stage's Q, K, A, aux
    }
    return;
  }

  if (warp < 4) {
    // ================= state warpgroup =================
    sm90::setmaxnreg_inc<232>();
    const portable::StateIO io = portable::state_io(a, n);
    float S[2][32];  // rows 64 mt + row (+8), cols 8 j + col (+1) of the slice
    for_each_state(S, row, col, [&](float& x, int i, int j) {
      x = io.src != nullptr ? portable::load_state(a, io.src, io.src_row, h, i, v0 + j) : 0.f;
    });
    store_state_copy(S, smem + kS0, row, col);
    named_bar_sync(kBarState, 128);
    for (int64_t c = 0; c < nchunks; ++c) {
      const int st = static_cast<int>(c & 1), b = st;
      const uint32_t ph = static_cast<uint32_t>((c / 2) & 1);
      sm90::mbar_wait(&full[st], ph);
      const uint32_t X = base + st * kStageBytes;
      const unsigned char* Xp = smem + st * kStageBytes;
      const float* gam = reinterpret_cast<const float*>(Xp + kAux);
      const float* rk = gam + 2 * kChunk;
      const float gl = gam[kChunk - 1];
      float acc[32];
      tile_times_s(acc, X + kK, base + kS0 + 16384 * b);  // (64, 64) K S
      // NOTE: the row factors once per row (this thread holds rows `row` and `row + 8`), not per element; formed
      // after the wgmma (before it, ptxas injects a warpgroup.arrive to keep their registers apart, C7519).
      const float fw[2] = {__expf(fminf(gam[row], 0.f)) * rk[row], __expf(fminf(gam[row + 8], 0.f)) * rk[row + 8]};
      const float fd[2] = {__expf(fminf(gl - gam[row], 0.f)) * rk[row], __expf(fminf(gl - gam[row + 8], 0.f)) * rk[row + 8]};
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int r = row + 8 * hf, cc = 8 * j + col;
          const __nv_bfloat162 vv = *reinterpret_cast<const __nv_bfloat162*>(Xp + kV + sw128(r, cc));
          const float f = fw[hf];
          *reinterpret_cast<__nv_bfloat162*>(smem + kW + sw128(r, cc)) = __floats2bfloat162_rn(
              __low2float(vv) - f * acc[4 * j + 2 * hf], __high2float(vv) - f * acc[4 * j + 2 * hf + 1]);
        }
      sm90::fence_proxy_async_smem();
      named_bar_sync(kBarState, 128);  // sW complete
      sm90::mbar_wait(&prepped[st], ph);
#pragma unroll
      for (int i = 0; i < 32; ++i) acc[i] = 0.f;
      sm90::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)  // vn = Ag W§ (64, 64) x (64, 64)
        sm90::wgmma_m64n64k16<0, 1>(acc, make_smem_desc(base + kAg0 + 16384 * st + 32 * ks, 16, 1024, Swizzle::k128B),
                                    make_smem_desc(base + kW + 2048 * ks, 8192, 1024, Swizzle::k128B), 1);
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::fence_regs(acc);
      unsigned char* vn = smem + kVn0 + 8192 * b;
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int r = row + 8 * hf, cc = 8 * j + col;
          const float n0 = acc[4 * j + 2 * hf], n1 = acc[4 * j + 2 * hf + 1];
          const float f = fd[hf];
          *reinterpret_cast<__nv_bfloat162*>(vn + sw128(r, cc)) = __floats2bfloat162_rn(n0, n1);
          *reinterpret_cast<__nv_bfloat162*>(smem + kVd + sw128(r, cc)) = __floats2bfloat162_rn(f * n0, f * n1);
        }
      sm90::fence_proxy_async_smem();
      named_bar_sync(kBarState, 128);  // sVd complete; every thread's vn wgmma (reading sW, sAg) done
      const float egl = __expf(fminf(gl, 0.f));
      update_state(S, egl, X + kK, base + kVd);
      if (c >= 1) named_bar_sync(kBarRelease + (b ^ 1), 256);  // output done with chunk c - 1
      store_state_copy(S, smem + kS0 + 16384 * (b ^ 1), row, col);
      named_bar_sync(kBarState, 128);         // S_{c+1} complete; sVd, sW free
      named_bar_arrive(kBarHandoff + b, 256);  // vn_c, S_c to the output warpgroup
      sm90::mbar_arrive(&empty[st]);          // done with stage st (K, V, aux) and sAg[st]
    }
    if (nchunks > 0) named_bar_sync(kBarRelease + static_cast<int>((nchunks - 1) & 1), 256);
    if (io.dst != nullptr)
      for_each_state(S, row, col,
                     [&](float& x, int i, int j) { portable::store_state(a, io.dst, io.dst_row, h, i, v0 + j, x); });
    return;
  }

  // ================= output warpgroup =================
  __nv_bfloat16* og = static_cast<__nv_bfloat16*>(a.o) + s.b * a.o_s[0] + h * a.o_s[2] + v0;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int st = static_cast<int>(c & 1), b = st;
    const uint32_t ph = static_cast<uint32_t>((c / 2) & 1);
    named_bar_sync(kBarHandoff + b, 256);
    sm90::mbar_wait(&full[st], ph);     // the stage's TMA data, seen directly
    sm90::mbar_wait(&prepped[st], ph);  // sPg[st]
    const uint32_t X = base + st * kStageBytes;
    const float* gam = reinterpret_cast<const float*>(smem + st * kStageBytes + kAux);
    const float* rq = gam + kChunk;
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    float o[32];
    tile_times_s(o, X + kQ, base + kS0 + 16384 * b);
    const float fo[2] = {a.scale * __expf(fminf(gam[row], 0.f)) * rq[row],
                         a.scale * __expf(fminf(gam[row + 8], 0.f)) * rq[row + 8]};  // once per row
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * j + e] *= fo[e / 2];
    sm90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      sm90::wgmma_m64n64k16<0, 1>(o, make_smem_desc(base + kAg0 + 16384 * st + 8192 + 32 * ks, 16, 1024, Swizzle::k128B),
                                  make_smem_desc(base + kVn0 + 8192 * b + 2048 * ks, 8192, 1024, Swizzle::k128B), 1);
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(o);
    named_bar_arrive(kBarRelease + b, 256);  // sS[b], sVn[b] free
    sm90::mbar_arrive(&empty[st]);           // Q, aux and sPg of stage st read
    store_output_rows(o, og, a.o_s[1], t0, L, row, col);
  }
}

}  // namespace fused

}  // namespace flashgdn::sm90fwd
