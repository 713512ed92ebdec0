// Sequence and chunk bookkeeping for the portable forward: clamped sequence ranges (cu_seqlens lives on
// the device and is never trusted), the chunk-offset scan, and global chunk -> (sequence, chunk) lookup.
#pragma once

#include <cstdint>

#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::portable {

struct Seq {
  int64_t b, bos, eos;  // batch row, tokens [bos, eos) of that row
};

// Never out of bounds, whatever cu_seqlens holds: bos in [0, T], eos in [bos, T].
__device__ __forceinline__ Seq seq_range(const FwdArgs& a, int64_t n) {
  if (a.cu_seqlens == nullptr) return Seq{n, 0, a.T};
  auto at = [&](int64_t i) -> int64_t {
    return a.cu_i64 ? static_cast<const int64_t*>(a.cu_seqlens)[i] : static_cast<const int32_t*>(a.cu_seqlens)[i];
  };
  int64_t bos = at(n), eos = at(n + 1);
  bos = bos < 0 ? 0 : (bos > a.T ? a.T : bos);
  eos = eos < bos ? bos : (eos > a.T ? a.T : eos);
  return Seq{0, bos, eos};
}

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

// One block: chunk_offsets[n] = sum over m < n of ceil(len_m / 64), chunk_offsets[N] = total; with CP
// also seg_offsets, sequence n having max(1, ceil(chunks_n / seg_chunks)) segments.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) chunk_offsets_kernel(FwdArgs a) {
  __shared__ int64_t warp_sums[kThreads / 32];
  auto chunks = [&](int64_t n) {
    const Seq s = seq_range(a, n);
    return (s.eos - s.bos + kChunk - 1) / kChunk;
  };
  block_offsets<kThreads>(a.N, chunks, a.chunk_offsets, warp_sums);
  if (a.cp_pass == 0) return;
  auto segments = [&](int64_t n) { return segments_of(chunks(n), a.seg_chunks); };
  block_offsets<kThreads>(a.N, segments, a.seg_offsets, warp_sums);
}

// chunk_info[c] for every c < max_chunks (after chunk_offsets_kernel): grid ceil(max_chunks / 256).
__global__ void __launch_bounds__(256) chunk_table_kernel(FwdArgs a) {
  const int64_t c = blockIdx.x * int64_t(256) + threadIdx.x;
  if (c >= a.max_chunks) return;
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

// seq_order: the recurrence's dispatch order, longest sequence first (longest-processing-time first: with
// varlen the long sequences' CTAs start in the first wave). One block of 1024 threads, bitonic sort of
// (length, index) keys in shared memory; identity order when N > kSortMax. Ties keep index order.
inline constexpr int kSortMax = 2048;
__global__ void __launch_bounds__(1024) seq_order_kernel(FwdArgs a) {
  __shared__ int64_t key[kSortMax];
  const int tid = threadIdx.x;
  if (a.N > kSortMax) {
    for (int64_t n = tid; n < a.N; n += 1024) a.seq_order[n] = static_cast<int32_t>(n);
    return;
  }
  int P = 1;
  while (P < a.N) P <<= 1;
  for (int i = tid; i < P; i += 1024) {
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
      for (int i = tid; i < P; i += 1024) {
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
  for (int i = tid; i < a.N; i += 1024) a.seq_order[i] = static_cast<int32_t>(kSortMax - 1 - (key[i] & (kSortMax - 1)));
}

// seg[g] for every g < g_max (CP only, after chunk_offsets_kernel): grid ceil(g_max / 256).
__global__ void __launch_bounds__(256) segment_table_kernel(FwdArgs a) {
  const int64_t g = blockIdx.x * int64_t(256) + threadIdx.x;
  if (g < a.g_max) a.seg[g] = segment_info(g, a.seg_offsets, a.chunk_offsets, a.N, a.seg_chunks);
}

// Where sequence n's state comes from and goes to: the initial state (or the pool slot; null = zeros)
// and the final state (or the same pool slot; null = not written).
struct StateIO {
  const void* src;
  int64_t src_row;
  void* dst;
  int64_t dst_row;
};
__device__ __forceinline__ StateIO state_io(const FwdArgs& a, int64_t n) {
  StateIO io{a.h0, n, a.ht, n};
  if (a.state_indices != nullptr) {
    const int64_t slot = a.idx_i64 ? static_cast<const int64_t*>(a.state_indices)[n]
                                   : static_cast<const int32_t*>(a.state_indices)[n];
    io.src_row = io.dst_row = slot;
    if (slot < 0 || slot >= a.P) io.src = io.dst = nullptr;  // -1 or out of range: zeros in, nothing back
  }
  if (a.has_initial_state != nullptr && a.has_initial_state[n * a.mask_stride] == 0) io.src = nullptr;
  return io;
}

// Offset of state element (i over K, j over V) of head h in row `row` of a state tensor.
__device__ __forceinline__ int64_t state_offset(const FwdArgs& a, int64_t row, int64_t row_stride, int h, int i, int j) {
  return row * row_stride + static_cast<int64_t>(h) * a.K * a.V +
         (a.v_first ? static_cast<int64_t>(j) * a.K + i : static_cast<int64_t>(i) * a.V + j);
}

}  // namespace flashgdn::portable
