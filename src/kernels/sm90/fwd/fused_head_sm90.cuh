// sm_90a forward, stage 2, head form (the default on Hopper where planned): the gated delta rule of one
// (sequence, value head) per CTA, the whole V = 128 on chip, with the state transposed (Sᵀ, V rows x K columns) so
// that it is the register A operand of its products. Stage 1 is the portable prepare in its "A only" mode (aux and
// the gate-free A diag(β) as a bf16 (64, 72) image per (chunk, head)); the SOLVE variant (below) has no stage 1.
// Per chunk, with the gate factors of docs/design.md §6.1 (every exponent <= 0) and f = e^γ rk, fo = scale e^γ rq,
// fd = e^{γL - γ} rk per token (zero past the chunk's length L):
//   X  = Sᵀ Kᵀ,  O = Sᵀ Qᵀ                                  (V x tokens; Sᵀ in bf16 from the registers)
//   W§ᵀ = Vᵀ - X diag(f)                                     (Vᵀ through ldmatrix.trans)
//   vnᵀ = W§ᵀ Agᵀ,  Ag = Γ o (A diag(β))
//   Oᵀ = O diag(fo) + vnᵀ Pgᵀ,  Pg = Γ o tril(Q Kᵀ)
//   Sᵀ = e^{γL} Sᵀ + (vnᵀ diag(fd)) K
// K = V = 128, bf16.
//
// Grid N * Hv (sequence rank slowest, head fastest); 512 threads = 4 warpgroups:
//   WG0, WG1 (warps 0-7), state [setmaxnreg 208]: WG w owns value rows 64 w .. 64 w + 63 of Sᵀ (64 x 128 fp32, two
//       m64n64 accumulators, 64 registers) and does every product above for them on register-A wgmma (m64n64k16;
//       32 per chunk), then O: stmatrix.trans into its own columns of the stage's V tile (which it has finished
//       reading), and 16-byte stores of the rows < L by each warp.
//   (Register budgets 208 / 72 / 24; the SOLVE variant's gates warpgroup needs more: 200 / 88 / 24, ptxas then
//   spills 8-16 bytes.)
//   WG2 (warps 8-11), gates [setmaxnreg 72]: per stage, P = Q Kᵀ (8 wgmma, both K-major), Pg -> sPg, Ag in place
//       over the stage's A tile (one exp per element, shared by both), and the token factors f, fo, fd -> sF.
//   WG3 (warps 12-15), producer [setmaxnreg 24]: lane 0 of warp 12 issues per stage Q, K, V (3-D maps over the user
//       tensors (width, heads, tokens), two 64-column atoms each), A (map over the workspace images, row pads
//       skipped by the box) and aux (bulk copy), on mbarrier full[s]; refills stage s after empty[s]. Warps 13-15
//       exit.
// Pipelines: 3 stages. mbarriers: full[3] (1 + tx), prepped[3] (128: WG2 -> WG0, WG1), empty[3] (256: WG0, WG1,
// which arrive after prepped, so after WG2 is done with the stage). Named barriers 1-2 (kTurn, PINGPONG: the default,
// below) order the two state warpgroups' wgmma batches; 3 (kGates) is the SOLVE gates warpgroup's own. The two state
// warpgroups share only read-only stage data, and each warp stages and stores its
// own output columns (__syncwarp).
// Rows past L: TMA brings the next sequence's (finite) rows or zeros past the tensor; Ag, Pg rows and columns >= L and
// f, fo, fd past L are zero, so vn and the state update see no row >= L and O rows >= L are not stored.
//
// Shared memory (1024-aligned), per stage: Q, K, V 16 KB each (two 128-byte-swizzled 64-column atoms), A / Ag 8 KB,
// Pg 8 KB, aux 768 B, F 768 B = 66 KB; 3 stages + mbarriers: ~199 KB.
#pragma once

#include <cuda.h>

#include "device/sm90.cuh"
#include "kernels/portable/fwd/blocked_solve.hpp"
#include "kernels/portable/fwd/blocked_solve_mma.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"
#include "kernels/sm90/fwd/common.cuh"

namespace flashgdn::sm90fwd {

namespace head {

inline constexpr int kThreads = 512;
inline constexpr int kStages = 3;
inline constexpr uint32_t kQ = 0, kK = 16384, kV = 32768, kA = 49152, kPg = 57344, kAux = 65536, kF = kAux + 768;
inline constexpr uint32_t kStageBytes = 67584;  // 66 KB (a multiple of 1024: the tiles stay 1024-aligned)
inline constexpr uint32_t kTxBytes = 3 * 16384 + 8192 + 768;
// SOLVE: the gates warpgroup's scratch after the stages: T (64 x kLd fp32), the solve's Y, beta (64 fp32).
inline constexpr uint32_t kT = kStages * kStageBytes;
inline constexpr uint32_t kY = kT + 64 * portable::blocked_solve::kLd * 4;
inline constexpr uint32_t kBeta = kY + portable::blocked_solve::kScratch * 4;
inline constexpr uint32_t bars(bool solve) { return solve ? kBeta + 256 : kStages * kStageBytes; }
inline constexpr uint32_t smem_bytes(bool solve) { return bars(solve) + 3 * kStages * 8 + 1024; }  // + mbarriers, slack
inline constexpr uint32_t kSmemBytes = smem_bytes(false);

struct Maps {
  CUtensorMap q, k, v, a;
};

__device__ __forceinline__ uint64_t kmajor(uint32_t addr) {  // K-major operand, 128-byte swizzle
  return device::make_smem_desc(addr, 16, 1024, device::Swizzle::k128B);
}
__device__ __forceinline__ uint64_t mnmajor(uint32_t addr) {  // MN-major operand, 64-wide atoms
  return device::make_smem_desc(addr, 8192, 1024, device::Swizzle::k128B);
}

// acc (64 x 64) = A Bᵀ issued (committed, not waited for): A and B (64, 128) K-major tiles of two 64-wide swizzle
// atoms (Q Kᵀ, K Kᵀ).
__device__ __forceinline__ void issue_abt(float (&acc)[32], uint32_t a, uint32_t b) {
  using namespace device;
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;
  sm90::fence_regs(acc);  // NOTE: the zeros materialised before wgmma.fence (else ptxas serialises, C7519)
  sm90::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks)
    sm90::wgmma_m64n64k16<0, 0>(acc, kmajor(a + 8192 * (ks / 4) + 32 * (ks % 4)),
                                kmajor(b + 8192 * (ks / 4) + 32 * (ks % 4)), 1);
  sm90::wgmma_commit();
}

// The SOLVE variant's gates warpgroup (see the kernel): t its thread, (row, col) its accumulator coordinates.
__device__ __forceinline__ void gates_solve(unsigned char* smem, uint32_t base, const FwdArgs& a, const portable::Seq& s,
                                            int64_t t_first, int h, int64_t nchunks, uint64_t* full,
                                            uint64_t* prepped, int t, int row, int col) {
  using namespace device;
  namespace bs = portable::blocked_solve;
  enum : int { kGates = 3 };  // named barrier of this warpgroup (128 threads)
  float* sT = reinterpret_cast<float*>(smem + kT);
  float* sY = reinterpret_cast<float*>(smem + kY);
  float* sBeta = reinterpret_cast<float*>(smem + kBeta);
  const int lane = t & 31;
  // g (threads 0-31) and β (32-63) of chunk c: two values per thread, zero past L, loaded one chunk ahead.
  // NOTE: prefetched so that their global-memory latency overlaps the previous chunk's solve.
  const float* gg = a.g + s.b * a.g_s[0] + h * a.g_s[2];
  const int64_t boff = s.b * a.beta_s[0] + h * a.beta_s[2];
  auto load_gb = [&](int64_t c, float (&v)[2]) {
    const int64_t t0 = t_first + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int i = t < 32 ? 2 * lane + u : lane + 32 * u;  // g: adjacent pairs (the scan's layout); β: strided
      v[u] = 0.f;
      if (c < nchunks && i < L) {
        if (t < 32) {
          v[u] = gg[(t0 + i) * a.g_s[1]];
        } else if (t < 64) {
          const int64_t off = boff + (t0 + i) * a.beta_s[1];
          v[u] = a.beta_f32 ? static_cast<const float*>(a.beta)[off]
                            : __bfloat162float(static_cast<const __nv_bfloat16*>(a.beta)[off]);
        }
      }
    }
  };
  float gb[2];
  load_gb(0, gb);
  int st = 0;
  uint32_t ph = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    sm90::mbar_wait(&full[st], ph);
    const uint32_t X = base + st * kStageBytes;
    unsigned char* Xp = smem + st * kStageBytes;
    float* gam = reinterpret_cast<float*>(Xp + kAux);
    float* rq = gam + kChunk;
    float* rk = gam + 2 * kChunk;
    const int64_t t0 = t_first + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);

    // (a) γ = inclusive cumsum of g (rows past L: γ[L - 1]), β, rq, rk (0 past L)
    if (t < 32) {
      portable::gamma_scan(gb[0], gb[1], lane, gam);
    } else if (t < 64) {
      sBeta[lane] = gb[0];
      sBeta[lane + 32] = gb[1];
    } else {
      const int r = t - 64;  // one row of Q and of K per thread
      float fq = 1.f, fk = 1.f;
      if (a.l2norm) {
        float sq = 0.f, sk = 0.f;
#pragma unroll 2
        for (int q16 = 0; q16 < 16; ++q16) {  // 16-byte pieces of the row, two 64-column atoms
          const uint32_t off = 8192 * (q16 / 8) + r * 128 + (((q16 % 8) ^ (r & 7)) << 4);
          const uint4 vq = *reinterpret_cast<const uint4*>(Xp + kQ + off);
          const uint4 vk = *reinterpret_cast<const uint4*>(Xp + kK + off);
          const uint32_t wq[4] = {vq.x, vq.y, vq.z, vq.w}, wk[4] = {vk.x, vk.y, vk.z, vk.w};
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const float2 a2 = unpack2<__nv_bfloat16>(wq[u]), b2 = unpack2<__nv_bfloat16>(wk[u]);
            sq += a2.x * a2.x + a2.y * a2.y;
            sk += b2.x * b2.x + b2.y * b2.y;
          }
        }
        fq = rsqrtf(sq + 1e-6f);
        fk = rsqrtf(sk + 1e-6f);
      }
      rq[r] = r < L ? fq : 0.f;
      rk[r] = r < L ? fk : 0.f;
    }
    named_bar_sync(kGates, 128);
    load_gb(c + 1, gb);  // the next chunk's g, β (none past the last chunk)

    // (b) T = StrictLower(diag(β rk) K Kᵀ diag(rk)) -> sT (the solve reads only its strictly lower part)
    {
      float kk[32];
      issue_abt(kk, X + kK, X + kK);
      sm90::wgmma_wait<0>();
      sm90::fence_regs(kk);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = row + 8 * hf;
        const float fi = sBeta[i] * rk[i];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const int jj = 8 * j + col + u;
            sT[i * bs::kLd + jj] = jj < i ? fi * rk[jj] * kk[4 * j + 2 * hf + u] : 0.f;
          }
      }
    }
    named_bar_sync(kGates, 128);

    // (c) X = T⁻¹ (unit lower triangular, fp32) over the stage's A and Pg tiles (16 KB, row stride 64)
    float* sX = reinterpret_cast<float*>(Xp + kA);
    static_assert(kPg == kA + 8192, "X spans the adjacent A and Pg tiles");
    if (t < 64) {
      if (a.solve_diag8)
        bs::diag8(t, sT, sX, 64);
      else
        bs::diag(t, sT, sX, 64);
    }
    named_bar_sync(kGates, 128);
    if (a.solve_diag8) {
      bs::merge8_warp(t / 32, lane, sT, sX, sY, 64);
      named_bar_sync(kGates, 128);
    }
    if (a.solve_mma) {  // the levels on tf32 tensor cores (A/B)
      bs::levels_mma(t / 32, lane, sT, sX, 64, sY, [] { named_bar_sync(kGates, 128); });
    } else {
#pragma unroll 1
      for (int d = 1; d < bs::kNB; ++d) {
        bs::level_y(t, 128, d, sT, sX, sY, 64);
        named_bar_sync(kGates, 128);
        bs::level_x(t, 128, d, sX, sY, 64);
        named_bar_sync(kGates, 128);
      }
    }

    // (d) Ag = Γ o X diag(β) into registers; P = Q Kᵀ and F meanwhile; once every X read is done, Ag -> the A tile
    // and Pg = scale diag(rq) (Γ o P) diag(rk) -> the Pg tile. NOTE: in this order (Ag held, then P) the warpgroup
    // fits its 72 registers.
    uint32_t agp[16];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = row + 8 * hf;
      const float gi = gam[i];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float gv[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int jj = 8 * j + col + u;
          const bool in = jj <= i && i < L;
          // exponent <= 0; X past the diagonal is stale, hence the select
          gv[u] = in ? __expf(fminf(gi - gam[jj], 0.f)) * sX[i * 64 + jj] * sBeta[jj] : 0.f;
        }
        agp[2 * j + hf] = pack2<__nv_bfloat16>(gv[0], gv[1]);
      }
    }
    float p[32];
    issue_abt(p, X + kQ, X + kK);
    float* F = reinterpret_cast<float*>(Xp + kF);
    if (t < kChunk) {  // the token factors, while the product runs
      const bool in = t < L;
      const float e = __expf(fminf(gam[t], 0.f));
      F[t] = in ? e * rk[t] : 0.f;
      F[kChunk + t] = in ? a.scale * e * rq[t] : 0.f;
      F[2 * kChunk + t] = in ? __expf(fminf(gam[kChunk - 1] - gam[t], 0.f)) * rk[t] : 0.f;
    }
    named_bar_sync(kGates, 128);  // every X read is done: the A and Pg tiles take Ag and Pg
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        *reinterpret_cast<uint32_t*>(Xp + kA + sw128(row + 8 * hf, 8 * j + col)) = agp[2 * j + hf];
    sm90::wgmma_wait<0>();
    sm90::fence_regs(p);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = row + 8 * hf;
      const float gi = gam[i], fq = a.scale * rq[i];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float pv[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int jj = 8 * j + col + u;
          const bool in = jj <= i && i < L;
          pv[u] = in ? __expf(fminf(gi - gam[jj], 0.f)) * fq * rk[jj] * p[4 * j + 2 * hf + u] : 0.f;
        }
        *reinterpret_cast<uint32_t*>(Xp + kPg + sw128(i, 8 * j + col)) = pack2<__nv_bfloat16>(pv[0], pv[1]);
      }
    }
    sm90::fence_proxy_async_smem();
    sm90::mbar_arrive(&prepped[st]);  // Ag, Pg, F, aux of stage st written
    if (++st == kStages) st = 0, ph ^= 1;
  }
}

// PINGPONG (the default; FLASHGDN_SM90_PINGPONG=0 not): the two state warpgroups issue their wgmma batches in strict alternation
// (named barriers kTurn + w, 256 threads: WG w syncs on its own before a batch, arrives on the other's after issuing
// it), so that one's FMA / conversion work overlaps the other's products instead of both contending at once.
// SOLVE (FLASHGDN_EXPERIMENTAL_SM90=4, A/B): no prepare launch; the gates warpgroup also computes, per chunk, γ (scan
// of g), β, rq / rk (row norms of the Q / K tiles when l2norm, else 1), T = I + StrictLower(diag(β rk) K Kᵀ diag(rk))
// (K Kᵀ on wgmma) into sT, X = T⁻¹ by the blocked solve of the prepare kernel (blocked_solve.hpp, fp32, 16 x 16
// blocks, named barrier kGates) into the stage's A and Pg tiles (64 x 64 fp32, the two tiles are adjacent), then
// Ag = Γ o X diag(β) and Pg from registers once every X read is done. The stage then carries only Q, K, V by TMA;
// aux (γ, rq, rk) is written by the gates warpgroup.
// CP (the default where CP is planned; FLASHGDN_SM90_CP=0 not): the passes of context parallelism (docs/design.md §5.1) over segments (a.seg[rank])
// instead of sequences, on prepare's A images (or with SOLVE, FLASHGDN_EXPERIMENTAL_SM90=4, without them). CP = 1, the transition pass: grid g_max * 2 * Hv, part 0 runs the segment from
// S = 0 (S_loc), part 1 the K identity columns from S = I with V = 0 (M); no output; the end state goes to
// cp_end[rank, h] (K x (V + K) fp32) for the portable scan. CP = 3, the final pass: each segment starts from the
// scan's cp_h0[rank, h]; the sequence's last segment writes the final state.
template <bool PINGPONG, bool SOLVE, int CP = 0>
__global__ void __launch_bounds__(kThreads, 1) fused_head_sm90_kernel(const __grid_constant__ Maps maps, FwdArgs a) {

  constexpr bool kPass1 = CP == 1;
  constexpr bool kNoQ = kPass1 && !SOLVE;  // pass 1 on prepare's images: no Q, no P
  // Register budgets: 2 x state + gates + producer (24) = 512 (64 K registers over 4 warpgroups of 128).
  constexpr int kStateRegs = SOLVE ? 200 : 208, kGatesRegs = 512 - 24 - 2 * kStateRegs;
  using namespace device;
  using portable::Seq;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  const uint32_t base = smem_u32(smem);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + bars(SOLVE));
  uint64_t* prepped = full + kStages;
  uint64_t* empty = full + 2 * kStages;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int h = static_cast<int>(blockIdx.x % a.Hv);
  int64_t rank = blockIdx.x / a.Hv, n, c_first = 0, nchunks;
  const int part = kPass1 ? static_cast<int>(rank % 2) : 0;  // pass 1: 0 = S_loc, 1 = M
  if constexpr (kPass1) rank /= 2;
  bool last_seg = true;
  bool from_prev = false;  // pass 3 with cp_direct: start from the predecessor's S_loc (it took the warm-up)
  if constexpr (CP != 0) {
    const FwdArgs::SegInfo si = a.seg[rank];
    // No such segment, or pass 1 of a last segment (its transition is never used): the CTA leaves at once.
    if (si.nch < 0 || (kPass1 && si.last)) return;
    n = si.n;
    c_first = si.c0;
    nchunks = si.nch;
    last_seg = si.last != 0;
    if constexpr (CP == 3) from_prev = a.cp_direct && si.c0 > 0 && a.cp_warm[(rank - 1) * a.Hv + h] != 0;
    if constexpr (kPass1 && !SOLVE) {
      // Gate-driven warm-up (params.hpp, warmup_chunks): the bounds of the segment's last (up to 256) chunks into
      // shared memory, then every thread walks them in the same order: S_loc over the last `warm` chunks only, and
      // no M (the M part leaves; the scan skips its product).
      __shared__ float s_decay[portable::kWarmupMaxChunks];
      const int m = static_cast<int>(nchunks < portable::kWarmupMaxChunks ? nchunks : portable::kWarmupMaxChunks);
      const float* d = a.cdecay + (a.chunk_offsets[n] + c_first + nchunks - m) * a.Hv + h;
      if (threadIdx.x < m) s_decay[threadIdx.x] = d[static_cast<int64_t>(threadIdx.x) * a.Hv];
      __syncthreads();
      const int warm = portable::warmup_chunks(s_decay, 1, m);
      if (part == 0 && threadIdx.x == 0) a.cp_warm[rank * a.Hv + h] = warm;
      if (warm > 0) {
        if (part == 1) return;
        c_first += nchunks - warm;
        nchunks = warm;
      }
    } else if constexpr (kPass1) {
      if (part == 0 && threadIdx.x == 0 && a.cp_warm != nullptr) a.cp_warm[rank * a.Hv + h] = 0;
    }
  } else {
    n = a.seq_order[rank];
  }
  const int hk = h / a.group;
  const Seq s = portable::seq_range(a, n);
  if constexpr (CP == 0) nchunks = (s.eos - s.bos + kChunk - 1) / kChunk;
  const int64_t c_base = a.chunk_offsets[n] + c_first;  // the A images' chunk (not SOLVE)
  const int64_t t_first = s.bos + c_first * kChunk;     // the first token of this CTA's first chunk
  const bool zero_v = kPass1 && part == 1;               // M: V = 0
  if (tid == 0) {
    for (int i = 0; i < kStages; ++i) {
      sm90::mbar_init(&full[i], 1);
      sm90::mbar_init(&prepped[i], 128);
      sm90::mbar_init(&empty[i], 256);
    }
    cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
  }
  __syncthreads();

  if (warp >= 12) {
    // ================= producer =================
    sm90::setmaxnreg_dec<24>();
    if (warp == 12 && lane == 0) {
      const int64_t tok0 = s.b * a.T + t_first;  // token row of the first chunk's first token in the 3-D maps
      int st = 0;
      uint32_t ph = 0;
      for (int64_t c = 0; c < nchunks; ++c) {
        if (c >= kStages) sm90::mbar_wait(&empty[st], ph ^ 1);
        unsigned char* X = smem + st * kStageBytes;
        const int64_t ch = (c_base + c) * a.Hv + h;
        const int32_t tok = static_cast<int32_t>(tok0 + c * kChunk);
        // NOTE: pass 1 on prepare's images needs no Q (no output; rq comes with aux).
        sm90::mbar_expect_tx(&full[st], (SOLVE ? 2 * 16384 : kTxBytes - 16384) + (zero_v ? 0 : 16384) -
                                            (kNoQ ? 16384 : 0));
        for (int atom = 0; atom < 2; ++atom) {
          if (!kNoQ) sm90::tma_load_3d(X + kQ + 8192 * atom, &maps.q, 64 * atom, hk, tok, &full[st]);
          sm90::tma_load_3d(X + kK + 8192 * atom, &maps.k, 64 * atom, hk, tok, &full[st]);
          if (!zero_v) sm90::tma_load_3d(X + kV + 8192 * atom, &maps.v, 64 * atom, h, tok, &full[st]);
        }
        if constexpr (!SOLVE) {
          sm90::tma_load_2d(X + kA, &maps.a, 0, static_cast<int32_t>(ch * kChunk), &full[st]);
          sm90::bulk_load(X + kAux, a.aux + ch * 3 * kChunk, 3 * kChunk * sizeof(float), &full[st]);
        }
        if (++st == kStages) st = 0, ph ^= 1;
      }
    }
    return;
  }

  const int t = tid & 127;  // thread in the warpgroup
  const int row = 16 * (t / 32) + (t % 32) / 4, col = 2 * (t % 4);  // accumulator coordinates

  if (warp >= 8) {
    // ================= gates: Pg, Ag (in place), F per stage =================
    if constexpr (SOLVE) {
      sm90::setmaxnreg_dec<kGatesRegs>();
      gates_solve(smem, base, a, s, t_first, h, nchunks, full, prepped, t, row, col);
      return;
    }
    sm90::setmaxnreg_dec<kGatesRegs>();
    int st = 0;
    uint32_t ph = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      sm90::mbar_wait(&full[st], ph);
      const uint32_t X = base + st * kStageBytes;
      unsigned char* Xp = smem + st * kStageBytes;
      const float* gam = reinterpret_cast<const float*>(Xp + kAux);
      const float* rq = gam + kChunk;
      const float* rk = gam + 2 * kChunk;
      const int64_t t0 = t_first + c * kChunk;
      const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
      float p[32];  // (64, 64) Q Kᵀ
      if constexpr (!kNoQ) issue_abt(p, X + kQ, X + kK);
      if (t < kChunk) {  // the token factors, while the product runs
        float* F = reinterpret_cast<float*>(Xp + kF);
        const bool in = t < L;
        const float e = __expf(fminf(gam[t], 0.f));
        F[t] = in ? e * rk[t] : 0.f;
        F[kChunk + t] = in ? a.scale * e * rq[t] : 0.f;
        F[2 * kChunk + t] = in ? __expf(fminf(gam[kChunk - 1] - gam[t], 0.f)) * rk[t] : 0.f;
      }
      float gr[2], fq[2];  // row factors (rows row, row + 8)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        gr[hf] = gam[row + 8 * hf];
        fq[hf] = a.scale * rq[row + 8 * hf];
      }
      if constexpr (!kNoQ) {
        sm90::wgmma_wait<0>();
        sm90::fence_regs(p);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int cc = 8 * j + col;
        const float gc[2] = {gam[cc], gam[cc + 1]}, kc[2] = {rk[cc], rk[cc + 1]};
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int r = row + 8 * hf;
          __nv_bfloat162* av = reinterpret_cast<__nv_bfloat162*>(Xp + kA + sw128(r, cc));
          const __nv_bfloat162 a2 = *av;
          float gv[2], pv[2];
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const bool in = cc + u <= r && r < L;
            const float G = in ? __expf(fminf(gr[hf] - gc[u], 0.f)) : 0.f;  // exponent <= 0
            gv[u] = G * (u == 0 ? __low2float(a2) : __high2float(a2));
            if constexpr (!kNoQ) pv[u] = G * fq[hf] * kc[u] * p[4 * j + 2 * hf + u];
          }
          *av = __floats2bfloat162_rn(gv[0], gv[1]);
          if constexpr (!kNoQ)
            *reinterpret_cast<__nv_bfloat162*>(Xp + kPg + sw128(r, cc)) = __floats2bfloat162_rn(pv[0], pv[1]);
        }
      }
      sm90::fence_proxy_async_smem();
      sm90::mbar_arrive(&prepped[st]);  // Ag, Pg, F of stage st written; Q, K, A, aux read
      if (++st == kStages) st = 0, ph ^= 1;
    }
    return;
  }

  // ================= state warpgroups (value rows 64 w .. 64 w + 63) =================
  sm90::setmaxnreg_inc<kStateRegs>();
  const int w = warp / 4, wi = warp % 4, v0 = 64 * w;
  enum : int { kTurn = 1 };  // named barriers kTurn + w (PINGPONG only)
  // Three batches per chunk; WG1's last arrival is skipped so that every barrier phase completes.
  int64_t turns_left = 3 * nchunks;
  auto my_turn = [&] {
    if constexpr (PINGPONG) named_bar_sync(kTurn + w, 256);
  };
  auto pass_turn = [&] {
    if constexpr (PINGPONG) {
      --turns_left;
      if (w == 0 || turns_left > 0) named_bar_arrive(kTurn + (w ^ 1), 256);
    }
  };
  if constexpr (PINGPONG)
    if (w == 1 && nchunks > 0) named_bar_arrive(kTurn, 256);  // WG0 goes first
  const int mi = lane / 8;  // ldmatrix / stmatrix: the 8x8 matrix this lane addresses a row of
  // S[kh][4 j + e] = Sᵀ(value row + 8 (e / 2), key column 64 kh + 8 j + col + e % 2). The start: the initial state
  // (CP = 0), 0 or I (pass 1: S_loc, M), the scan's cp_h0 (pass 3).
  float S[2][32];
  {
    const portable::StateIO io = portable::state_io(a, n);
    // Pass 3: cp_h0 (row stride V), or with from_prev the predecessor's S_loc columns of cp_end (row stride V + K).
    const int64_t cp_ld = from_prev ? a.V + a.K : a.V;
    const float* cp_src = CP != 3 ? nullptr
                          : from_prev ? a.cp_end + ((rank - 1) * a.Hv + h) * int64_t(a.K) * cp_ld
                                      : a.cp_h0 + (rank * a.Hv + h) * int64_t(a.K) * a.V;
#pragma unroll
    for (int kh = 0; kh < 2; ++kh)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 64 * kh + 8 * j + col + e % 2, jv = v0 + row + 8 * (e / 2);  // key, value index
          float x = 0.f;
          if constexpr (CP == 0) {
            if (io.src != nullptr) x = portable::load_state(a, io.src, io.src_row, h, i, jv);
          } else if constexpr (CP == 3) {
            x = cp_src[static_cast<int64_t>(i) * cp_ld + jv];
          } else {
            x = zero_v && i == jv ? 1.f : 0.f;
          }
          S[kh][4 * j + e] = x;
        }
  }
  __nv_bfloat16* og = static_cast<__nv_bfloat16*>(a.o) + s.b * a.o_s[0] + h * a.o_s[2] + v0 + 16 * wi;
  int st = 0;
  uint32_t ph = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    sm90::mbar_wait(&full[st], ph);
    const uint32_t X = base + st * kStageBytes;
    unsigned char* Xp = smem + st * kStageBytes;
    const int64_t t0 = t_first + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);

    // 1. X = Sᵀ Kᵀ, O = Sᵀ Qᵀ (64 x 64 each; no O in pass 1), Sᵀ in bf16 as the A operand
    float x[32], o[32];
    {
      uint32_t sb[8][4];
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) sm90::pack_a_frag(sb[ks], S[ks / 4], ks % 4);
      sm90::fence_regs(sb);
#pragma unroll
      for (int i = 0; i < 32; ++i) x[i] = o[i] = 0.f;
      sm90::fence_regs(x);  // NOTE: the zeros materialised before wgmma.fence (else ptxas serialises, C7519)
      sm90::fence_regs(o);
      my_turn();
      sm90::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 8; ++ks)
        sm90::wgmma_m64n64k16_rs<0>(x, sb[ks], kmajor(X + kK + 8192 * (ks / 4) + 32 * (ks % 4)), 1);
      if constexpr (!kPass1)
#pragma unroll
        for (int ks = 0; ks < 8; ++ks)
          sm90::wgmma_m64n64k16_rs<0>(o, sb[ks], kmajor(X + kQ + 8192 * (ks / 4) + 32 * (ks % 4)), 1);
      sm90::wgmma_commit();
      pass_turn();
      sm90::wgmma_wait<0>();
      sm90::fence_regs(x);
      sm90::fence_regs(o);
      sm90::fence_regs(sb);
    }
    sm90::mbar_wait(&prepped[st], ph);  // Ag, Pg, F
    const float* F = reinterpret_cast<const float*>(Xp + kF);
    const float* gam = reinterpret_cast<const float*>(Xp + kAux);

    // 2. W§ᵀ = Vᵀ - X diag(f) as the A operand (k-slices over tokens), 3. vnᵀ = W§ᵀ Agᵀ
    float vn[32];
    {
      uint32_t wb[4][4];
#pragma unroll
      for (int kp = 0; kp < 4; ++kp) {
        uint32_t v4[4] = {0u, 0u, 0u, 0u};  // Vᵀ: (j = 2 kp, rows row / row + 8), (j = 2 kp + 1, ...); M: V = 0
        if (!zero_v)
          ldmatrix_x4_trans(v4, Xp + kV + 8192 * w + sw128(8 * (2 * kp + mi / 2) + (lane & 7), 16 * wi + 8 * (mi % 2)));
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int j = 2 * kp + q;
          const float2 f = *reinterpret_cast<const float2*>(F + 8 * j + col);
          const float2 va = unpack2<__nv_bfloat16>(v4[2 * q]), vb = unpack2<__nv_bfloat16>(v4[2 * q + 1]);
          wb[kp][2 * q] = pack2<__nv_bfloat16>(va.x - f.x * x[4 * j], va.y - f.y * x[4 * j + 1]);
          wb[kp][2 * q + 1] = pack2<__nv_bfloat16>(vb.x - f.x * x[4 * j + 2], vb.y - f.y * x[4 * j + 3]);
        }
      }
#pragma unroll
      for (int i = 0; i < 32; ++i) vn[i] = 0.f;
      sm90::fence_regs(vn);
      sm90::fence_regs(wb);
      my_turn();
      sm90::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) sm90::wgmma_m64n64k16_rs<0>(vn, wb[ks], kmajor(X + kA + 32 * ks), 1);
      sm90::wgmma_commit();
      pass_turn();
      sm90::wgmma_wait<0>();
      sm90::fence_regs(vn);
      sm90::fence_regs(wb);
    }

    // 4. O = O diag(fo) + vnᵀ Pgᵀ (not in pass 1); Sᵀ = e^{γL} Sᵀ + (vnᵀ diag(fd)) K
    {
      uint32_t nb[4][4], db[4][4];
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) sm90::pack_a_frag(nb[ks], vn, ks);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if constexpr (!kPass1) {
          const float2 fo = *reinterpret_cast<const float2*>(F + kChunk + 8 * j + col);
          o[4 * j] *= fo.x, o[4 * j + 1] *= fo.y, o[4 * j + 2] *= fo.x, o[4 * j + 3] *= fo.y;
        }
        const float2 fd = *reinterpret_cast<const float2*>(F + 2 * kChunk + 8 * j + col);
        vn[4 * j] *= fd.x, vn[4 * j + 1] *= fd.y, vn[4 * j + 2] *= fd.x, vn[4 * j + 3] *= fd.y;
      }
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) sm90::pack_a_frag(db[ks], vn, ks);
      const float egl = __expf(fminf(gam[kChunk - 1], 0.f));
#pragma unroll
      for (int kh = 0; kh < 2; ++kh)
#pragma unroll
        for (int i = 0; i < 32; ++i) S[kh][i] *= egl;
      sm90::fence_regs(o);
      sm90::fence_regs(S[0]);
      sm90::fence_regs(S[1]);
      sm90::fence_regs(nb);
      sm90::fence_regs(db);
      my_turn();
      sm90::wgmma_fence();
      if constexpr (!kPass1)
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) sm90::wgmma_m64n64k16_rs<0>(o, nb[ks], kmajor(X + kPg + 32 * ks), 1);
#pragma unroll
      for (int kh = 0; kh < 2; ++kh)
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          sm90::wgmma_m64n64k16_rs<1>(S[kh], db[ks], mnmajor(X + kK + 8192 * kh + 2048 * ks), 1);
      sm90::wgmma_commit();
      pass_turn();
      sm90::wgmma_wait<0>();
      sm90::fence_regs(o);
      sm90::fence_regs(S[0]);
      sm90::fence_regs(S[1]);
      sm90::fence_regs(nb);
      sm90::fence_regs(db);
    }

    // 5. Oᵀ -> the warp's own 16 columns of this warpgroup's V atom (read in step 2), then its rows < L to o
    unsigned char* stg = Xp + kV + 8192 * w;
    if constexpr (!kPass1) {
#pragma unroll
      for (int kp = 0; kp < 4; ++kp) {
        const uint32_t r4[4] = {pack2<__nv_bfloat16>(o[8 * kp], o[8 * kp + 1]), pack2<__nv_bfloat16>(o[8 * kp + 2], o[8 * kp + 3]),
                                pack2<__nv_bfloat16>(o[8 * kp + 4], o[8 * kp + 5]),
                                pack2<__nv_bfloat16>(o[8 * kp + 6], o[8 * kp + 7])};
        sm90::stmatrix_x4_trans(stg + sw128(8 * (2 * kp + mi / 2) + (lane & 7), 16 * wi + 8 * (mi % 2)), r4);
      }
      __syncwarp();
#pragma unroll
      for (int it = 0; it < 4; ++it) {
        const int tok = 16 * it + lane / 2, seg = lane & 1;
        if (tok < L)
          *reinterpret_cast<uint4*>(og + (t0 + tok) * a.o_s[1] + 8 * seg) =
              *reinterpret_cast<const uint4*>(stg + sw128(tok, 16 * wi + 8 * seg));
      }
    }
    sm90::fence_proxy_async_smem();  // the staging writes before the stage's next TMA fill
    sm90::mbar_arrive(&empty[st]);
    if (++st == kStages) st = 0, ph ^= 1;
  }
  if constexpr (kPass1) {  // the end state [S_loc | M] of this part's columns, fp32, for the scan
    float* e = a.cp_end + (rank * a.Hv + h) * int64_t(a.K) * (a.V + a.K) + part * a.V;
#pragma unroll
    for (int kh = 0; kh < 2; ++kh)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e4 = 0; e4 < 4; ++e4)
          e[static_cast<int64_t>(64 * kh + 8 * j + col + e4 % 2) * (a.V + a.K) + v0 + row + 8 * (e4 / 2)] = S[kh][4 * j + e4];
    return;
  }
  const portable::StateIO io = portable::state_io(a, n);
  if (io.dst != nullptr && last_seg)
#pragma unroll
    for (int kh = 0; kh < 2; ++kh)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          portable::store_state(a, io.dst, io.dst_row, h, 64 * kh + 8 * j + col + e % 2, v0 + row + 8 * (e / 2),
                                S[kh][4 * j + e]);
}

}  // namespace head

}  // namespace flashgdn::sm90fwd
