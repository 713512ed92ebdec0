// sm_90a forward, stage 2 (EXPERIMENTAL, FLASHGDN_EXPERIMENTAL_SM90=1; correct on H100, slower than the fused form of
// fused_sm90.cuh, kept as an A/B variant): the
// portable recurrence's roles and barrier protocol with wgmma products from 128-byte-swizzled shared
// memory and TMA loads. K = V = 128, BV = 64, bf16; stage 1 is the portable prepare kernel (its W, U, Pm
// images are read through 2-D / 3-D tensor maps, their 16-byte row pads skipped by the boxes).
//
// Grid N * Hv * 2 (sequence rank slowest, head fastest, as the portable kernel); 288 threads:
//   warpgroup 0 (warps 0-3), state: S (128 x 64 fp32) in wgmma accumulators (two m64 blocks, 64 registers
//       per thread). Per chunk: vn = U - W S (8 wgmma m64n64k16: W K-major over two swizzle atoms, S
//       MN-major), vn -> sVn[c & 1], Vd = e^{gamma_L - gamma} o rk o vn -> sVd (swizzled generic stores +
//       fence.proxy.async), S = e^{gamma_L} S + Kᵀ Vd (2 x 4 wgmma: Kᵀ MN-major from the K tile), the bf16
//       copy -> sS[(c + 1) & 1].
//   warpgroup 1 (warps 4-7), output, one chunk behind: O = scale e^{gamma} o rq o (Q S_c) + Pm vn_c (Q K-major
//       over two atoms, Pm K-major, S and vn MN-major), stored from registers (rows < L).
//   warp 8, producer (lane 0): per stage Q, K (3-D maps over the user tensors: (K, heads, tokens)), W, U,
//       Pm (maps over the workspace images) and aux (bulk copy), on mbarrier full[s] (transaction bytes);
//       refills stage s after mbarrier empty[s] (256 consumer arrivals).
// Rows past a chunk's length: TMA brings the next sequence's (finite) Q/K rows or zeros past the tensor;
// they are harmless because stage 1 zeroes W, U and Pm there (Vd rows are then 0) and O rows >= L are not
// stored — provided those rows are finite (0 x NaN); the portable path zero-fills them instead.
// Named barriers as in the portable kernel: kState (1, 128), kHandoff + (c & 1) (2-3, 256), kRelease +
// (c & 1) (4-5, 256). mbarriers: full[2] (count 1 + tx), empty[2] (count 256).
//
// Shared memory (1024-aligned): 2 stages x (Q 16 KB, K 16 KB, W 16 KB, U 8 KB, Pm 8 KB, aux 768 B) =
// 132 KB; sS x2 16 KB, sVd 8 KB, sVn x2 8 KB: ~188 KB.
#pragma once

#include <cuda.h>

#include "device/sm90.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::sm90fwd {

using portable::FwdArgs;
using portable::kChunk;

inline constexpr int kThreads = 288;
inline constexpr int kBv = 64;
inline constexpr uint32_t kStageBytes = 67584;  // 66 KB: Q, K, W 16 KB each, U, Pm 8 KB each, aux 768 B
inline constexpr uint32_t kQ = 0, kK = 16384, kW = 32768, kU = 49152, kPm = 57344, kAux = 65536;
inline constexpr uint32_t kTxBytes = 3 * 16384 + 2 * 8192 + 768;
inline constexpr uint32_t kS0 = 2 * kStageBytes, kVd = kS0 + 2 * 16384, kVn0 = kVd + 8192, kBars = kVn0 + 2 * 8192;
inline constexpr uint32_t kSmemBytes = kBars + 64 + 1024;  // + mbarriers + alignment slack

struct Maps {
  CUtensorMap q, k, w, u, pm;
};

// Byte offset of bf16 element (row, col) in a 128-byte-swizzled tile of 128-byte rows.
__device__ __forceinline__ uint32_t sw128(int row, int col) {
  return static_cast<uint32_t>(row * 128 + ((((col * 2) >> 4) ^ (row & 7)) << 4) + ((col * 2) & 15));
}

// acc (64 x 64) = A S: A a (64, 128) K-major tile of two 64-wide swizzle atoms, S (128, 64) MN-major.
__device__ __forceinline__ void tile_times_s(float (&acc)[32], uint32_t a, uint32_t s) {
  using namespace device;
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;
  sm90::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks)
    sm90::wgmma_m64n64k16<0, 1>(acc, make_smem_desc(a + 8192 * (ks / 4) + 32 * (ks % 4), 16, 1024, Swizzle::k128B),
                                make_smem_desc(s + 2048 * ks, 8192, 1024, Swizzle::k128B), 1);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(acc);
}

// ---- the state / output fragments both sm_90a forward kernels (this one and fused_sm90.cuh) share ----
// A state-warpgroup thread (row, col: its accumulator coordinates) holds S[mt][4 jn + e], element
// (64 mt + row + 8 (e / 2), 8 jn + col + e % 2) of the (K = 128, 64) slice; f(x, i, j) for each.
template <class F>
__device__ __forceinline__ void for_each_state(float (&S)[2][32], int row, int col, F&& f) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int jn = 0; jn < 8; ++jn)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(S[mt][4 * jn + e], 64 * mt + row + 8 * (e / 2), 8 * jn + col + (e % 2));
}

// The bf16 copy of S into the tile at d (MN-major B operand: (128 k-rows, 64), 128-byte swizzle), fenced for
// the async proxy (wgmma reads it).
__device__ __forceinline__ void store_state_copy(const float (&S)[2][32], unsigned char* d, int row, int col) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
        *reinterpret_cast<__nv_bfloat162*>(d + sw128(64 * mt + row + 8 * hf, 8 * j + col)) =
            __floats2bfloat162_rn(S[mt][4 * j + 2 * hf], S[mt][4 * j + 2 * hf + 1]);
  device::sm90::fence_proxy_async_smem();
}

// S = egl S + Kᵀ Vd: k the (64 tokens, 128) K tile of two 64-column swizzle atoms (read MN-major as Kᵀ), vd the
// (64, 64) MN-major tile (2 x 4 wgmma m64n64k16).
__device__ __forceinline__ void update_state(float (&S)[2][32], float egl, uint32_t k, uint32_t vd) {
  using namespace device;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < 32; ++i) S[mt][i] *= egl;
  sm90::wgmma_fence();
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      sm90::wgmma_m64n64k16<1, 1>(S[mt], make_smem_desc(k + 8192 * mt + 2048 * ks, 8192, 1024, Swizzle::k128B),
                                  make_smem_desc(vd + 2048 * ks, 8192, 1024, Swizzle::k128B), 1);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(S[0]);
  sm90::fence_regs(S[1]);
}

// The output tile's rows < L to og (row t0 + r at og + (t0 + r) * ld).
__device__ __forceinline__ void store_output_rows(const float (&o)[32], __nv_bfloat16* og, int64_t ld, int64_t t0,
                                                  int L, int row, int col) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = row + 8 * hf;
      if (r < L)
        *reinterpret_cast<__nv_bfloat162*>(og + (t0 + r) * ld + 8 * j + col) =
            __floats2bfloat162_rn(o[4 * j + 2 * hf], o[4 * j + 2 * hf + 1]);
    }
}

__global__ void __launch_bounds__(kThreads, 1) recurrence_sm90_kernel(const __grid_constant__ Maps maps, FwdArgs a) {
  using namespace device;
  using portable::Seq;
  enum : int { kBarState = 1, kBarHandoff = 2, kBarRelease = 4 };
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  const uint32_t base = smem_u32(smem);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kBars);
  uint64_t* empty = full + 2;
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
      sm90::mbar_init(&empty[i], 256);
    }
    cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
  }
  __syncthreads();

  if (warp == 8) {
    // ================= producer =================
    if ((tid & 31) == 0) {
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
          sm90::tma_load_2d(X + kW + 8192 * atom, &maps.w, 64 * atom, static_cast<int32_t>(ch * kChunk), &full[st]);
        }
        sm90::tma_load_3d(X + kU, &maps.u, 0, 64 * slice, static_cast<int32_t>(ch), &full[st]);
        sm90::tma_load_2d(X + kPm, &maps.pm, 0, static_cast<int32_t>(ch * kChunk), &full[st]);
        sm90::bulk_load(X + kAux, a.aux + ch * 3 * kChunk, 3 * kChunk * sizeof(float), &full[st]);
      }
    }
    return;
  }

  const int t = tid & 127;  // thread in the warpgroup
  const int row = 16 * (t / 32) + (t % 32) / 4, col = 2 * (t % 4);  // accumulator coordinates
  if (warp < 4) {
    // ================= state warpgroup =================
    const portable::StateIO io = portable::state_io(a, n);
    float S[2][32];  // rows 64 mt + row (+8), cols 8 j + col (+1) of the slice
    for_each_state(S, row, col, [&](float& x, int i, int j) {
      x = io.src != nullptr ? portable::load_state(a, io.src, io.src_row, h, i, v0 + j) : 0.f;
    });
    store_state_copy(S, smem + kS0, row, col);
    named_bar_sync(kBarState, 128);
    for (int64_t c = 0; c < nchunks; ++c) {
      const int st = static_cast<int>(c & 1), b = st;
      sm90::mbar_wait(&full[st], static_cast<uint32_t>((c / 2) & 1));
      const uint32_t X = base + st * kStageBytes;
      const unsigned char* Xp = smem + st * kStageBytes;
      const float* gam = reinterpret_cast<const float*>(Xp + kAux);
      const float* rk = gam + 2 * kChunk;
      const float gl = gam[kChunk - 1];
      float acc[32];
      tile_times_s(acc, X + kW, base + kS0 + 16384 * b);
      unsigned char* vn = smem + kVn0 + 8192 * b;
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int r = row + 8 * hf, cc = 8 * j + col;
          const __nv_bfloat162 u = *reinterpret_cast<const __nv_bfloat162*>(Xp + kU + sw128(r, cc));
          const float n0 = __low2float(u) - acc[4 * j + 2 * hf], n1 = __high2float(u) - acc[4 * j + 2 * hf + 1];
          const float f = __expf(gl - gam[r]) * rk[r];
          *reinterpret_cast<__nv_bfloat162*>(vn + sw128(r, cc)) = __floats2bfloat162_rn(n0, n1);
          *reinterpret_cast<__nv_bfloat162*>(smem + kVd + sw128(r, cc)) = __floats2bfloat162_rn(f * n0, f * n1);
        }
      sm90::fence_proxy_async_smem();
      named_bar_sync(kBarState, 128);  // sVd complete
      const float egl = __expf(gl);
      update_state(S, egl, X + kK, base + kVd);
      if (c >= 1) named_bar_sync(kBarRelease + (b ^ 1), 256);  // output done with chunk c - 1
      store_state_copy(S, smem + kS0 + 16384 * (b ^ 1), row, col);
      named_bar_sync(kBarState, 128);         // S_{c+1} complete; sVd free
      named_bar_arrive(kBarHandoff + b, 256);  // vn_c, S_c to the output warpgroup
      sm90::mbar_arrive(&empty[st]);          // done with stage st
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
    named_bar_sync(kBarHandoff + b, 256);
    sm90::mbar_wait(&full[st], static_cast<uint32_t>((c / 2) & 1));  // the stage's TMA data, seen directly
    const uint32_t X = base + st * kStageBytes;
    const float* gam = reinterpret_cast<const float*>(smem + st * kStageBytes + kAux);
    const float* rq = gam + kChunk;
    const int64_t t0 = s.bos + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    float o[32];
    tile_times_s(o, X + kQ, base + kS0 + 16384 * b);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = row + 8 * (e / 2);
        o[4 * j + e] *= a.scale * __expf(gam[r]) * rq[r];
      }
    sm90::wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      sm90::wgmma_m64n64k16<0, 1>(o, make_smem_desc(X + kPm + 32 * ks, 16, 1024, Swizzle::k128B),
                                  make_smem_desc(base + kVn0 + 8192 * b + 2048 * ks, 8192, 1024, Swizzle::k128B), 1);
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(o);
    named_bar_arrive(kBarRelease + b, 256);      // sS[b], sVn[b] free
    sm90::mbar_arrive(&empty[st]);               // Q, Pm, aux of stage st read
    store_output_rows(o, og, a.o_s[1], t0, L, row, col);
  }
}

}  // namespace flashgdn::sm90fwd
