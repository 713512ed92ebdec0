// The portable forward's bookkeeping kernels (chunk and segment offsets, dispatch order, chunk and
// segment tables). Included by the one translation unit that launches them (fwd_portable.cu).
#pragma once

#include <cstdint>

#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

// Exclusive prefix sum over sequences of count(n), one block: out[n] = sum over m < n, out[N] = total.
// Thread t owns a contiguous range of sequences. `warp_sums` is free again when it returns.
template <int kThreads, class Count>
__device__ __forceinline__ void block_offsets(int64_t N, Count count, int64_t* out, int64_t* warp_sums) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t per = (N + kThreads - 1) / kThreads;
  const int64_t n0 = tid * per, n1 = (n0 + per < N) ? n0 + per : N;
  int64_t local = 0;
  for (int64_t n = n0; n < n1; ++n) local += count(n);
  int64_t incl = local;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int64_t y = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += y;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  int64_t base = 0;
  for (int w = 0; w < warp; ++w) base += warp_sums[w];
  int64_t run = base + incl - local;
  for (int64_t n = n0; n < n1; ++n) {
    out[n] = run;
    run += count(n);
  }
  if (tid == kThreads - 1) out[N] = base + incl;
  __syncthreads();
}

// seq_order: the recurrence's dispatch order, longest sequence first (longest-processing-time first: with
// varlen the long sequences' CTAs start in the first wave). Run by the offsets block: bitonic sort of
// (length, index) keys in shared memory; identity order when N > kSortMax. Ties keep index order.
inline constexpr int kSortMax = 2048;
template <int kThreads>
__device__ void order_sequences(const FwdArgs& a, int64_t* key) {
  const int tid = threadIdx.x;
  if (a.N > kSortMax) {
    for (int64_t n = tid; n < a.N; n += kThreads) a.seq_order[n] = static_cast<int32_t>(n);
    return;
  }
  int P = 1;
  while (P < a.N) P <<= 1;
  for (int i = tid; i < P; i += kThreads) {
    if (i < a.N) {
      const Seq s = seq_range(a, i);
      // Larger key = earlier: length high, then the smaller index.
      key[i] = ((s.eos - s.bos) << 12) | (kSortMax - 1 - i);
    } else {
      key[i] = -1;  // padding sorts last
    }
  }
  __syncthreads();
  for (int k = 2; k <= P; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = tid; i < P; i += kThreads) {
        const int l = i ^ j;
        if (l > i) {
          const bool desc = (i & k) == 0;
          const int64_t x = key[i], y = key[l];
          if (desc ? x < y : x > y) {
            key[i] = y;
            key[l] = x;
          }
        }
      }
      __syncthreads();
    }
  for (int i = tid; i < a.N; i += kThreads) a.seq_order[i] = static_cast<int32_t>(kSortMax - 1 - (key[i] & (kSortMax - 1)));
}

// One block: chunk_offsets[n] = sum over m < n of ceil(len_m / 64), chunk_offsets[N] = total; then with CP
// seg_offsets (sequence n has max(1, ceil(chunks_n / seg_chunks)) segments), without it seq_order.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) chunk_offsets_kernel(FwdArgs a) {
  __shared__ int64_t warp_sums[kThreads / 32];
  if (threadIdx.x == 0) *a.prepared = 0;
  auto chunks = [&](int64_t n) {
    const Seq s = seq_range(a, n);
    return (s.eos - s.bos + kChunk - 1) / kChunk;
  };
  block_offsets<kThreads>(a.N, chunks, a.chunk_offsets, warp_sums);
  if (a.cp_pass == 0) {
    __shared__ int64_t key[kSortMax];
    order_sequences<kThreads>(a, key);
    return;
  }
  auto segments = [&](int64_t n) { return segments_of(chunks(n), a.seg_chunks); };
  block_offsets<kThreads>(a.N, segments, a.seg_offsets, warp_sums);
}

// chunk_info[c] for every c < max_chunks (after chunk_offsets_kernel), and the ready flags of chunk c
// cleared: grid ceil(max_chunks / 256).
__global__ void __launch_bounds__(256) chunk_table_kernel(FwdArgs a) {
  const int64_t c = blockIdx.x * int64_t(256) + threadIdx.x;
  if (c >= a.max_chunks) return;
  for (int h = 0; h < a.Hv; ++h) a.ready[c * a.Hv + h] = 0;
  FwdArgs::ChunkInfo ci{0, -1, 0};
  if (c < a.chunk_offsets[a.N]) {
    const int64_t n = find_sequence(a.chunk_offsets, a.N, c);
    const Seq s = seq_range(a, n);
    ci.t0 = s.bos + (c - a.chunk_offsets[n]) * kChunk;
    ci.L = static_cast<int32_t>(s.eos - ci.t0 < kChunk ? s.eos - ci.t0 : kChunk);
    ci.b = static_cast<int32_t>(s.b);
  }
  a.chunk_info[c] = ci;
}

// seg[g] for every g < g_max (CP only, after chunk_offsets_kernel): grid ceil(g_max / 256).
__global__ void __launch_bounds__(256) segment_table_kernel(FwdArgs a) {
  const int64_t g = blockIdx.x * int64_t(256) + threadIdx.x;
  if (g < a.g_max) a.seg[g] = segment_info(g, a.seg_offsets, a.chunk_offsets, a.N, a.seg_chunks);
}

}  // namespace flashgdn::portable
