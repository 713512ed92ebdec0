// Portable forward, stage 2 ("recurrence"): the inter-chunk state recurrence fused with the output,
// warp-specialized.
//
// Grid N * Hv * (V / BV) (longest sequences first); 320 threads = 10 warps in three roles. One CTA per (sequence, value head, V slice
// of width BV) walks the sequence's chunks in order. Per chunk c (W, U, Pm, aux from stage 1):
//   state warps 0-3    (own the fp32 state slice S (K, BV) in registers; warp w has rows w*K/4 ..):
//       vn = U - W S_c                              (64, BV), 16 rows per warp -> sVn[c & 1] (T)
//       Vd = exp(gamma_L - gamma) o rk o vn                                    -> sVd (T)
//       S  = exp(gamma_L) S + Kᵀ Vd                 (raw K; rk folded into Vd)  -> sS[(c + 1) & 1] (T copy)
//   output warps 4-7   (one chunk behind the state warps; 16 rows of the chunk each):
//       O  = scale exp(gamma) o rq o (Q S_c) + Pm vn_c   staged through sO, 16-byte stores to o
//   producer warps 8-9 (chunk c + STAGES - 1: Q, K, W, the U slice, Pm, aux), by one of two paths:
//     cp.async (sm_80+; TMA = false): 16 bytes per thread and copy, landing signalled by kFull;
//     TMA (sm_90a; TMA = true): Q and K by tensor maps (two 64-column boxes each, 128-byte swizzle), W,
//       Pm, aux and the U slice by bulk copies, all completing on the stage's mbarrier full[s]
//       (transaction bytes). With a cluster of cs = a.rec_cluster CTAs (consecutive V slices of one
//       (sequence, head)), each CTA issues 1/cs of the shared tiles by multicast into every CTA of the
//       cluster (Q/K: 64/cs rows of each box), and its own U slice.
// NOTE: on H100 the cp.async producer moved ~62 KB per chunk at ~21 B/cycle per SM whatever the number of
// CTAs (64 or 128 on the BV = 16 rows; FLASHGDN_TRACE at 0644f83): its issue (~2900 cycles) set the chunk
// period (~3300 cycles), and the state warps' ldmatrix queued behind it. With TMA the period is ~1950
// cycles (4/16 1x8192: 0.379 -> 0.290 ms). Measured and not taken: one bulk copy per Q/K row (slower
// than cp.async: 0.54 ms), cp.async rows + bulk images (0.41 ms), and multicast over clusters of 2-8
// (0.39-0.63 ms: each CTA's refill waits for the slowest CTA's release; the default cluster is 1).
// The state warps' critical path per chunk is two products (W S, Kᵀ Vd) and never waits for a load
// issue or for the output. Every exponent is <= 0. The state operand copy sS is in the input dtype, as in
// FLA/FlashQLA.
//
// Pipelines: STAGES input stages (producer -> state/output, released by both); sVn and sS double
// buffered (state -> output, released by the output warps).
// Named barriers (bar.arrive = release, bar.sync = acquire; every arrival is matched by a sync):
//   kBarState         (128): state warps only: sVd complete; S_{c+1} complete.
//   kBarHandoff + b   (256): state arrive after chunk c (b = c & 1): vn_c and S_c ready; output sync.
//   kBarRelease + b   (256): output arrive after chunk c: sVn[b], sS[b] free; state sync before writing
//                            sS[b] again (end of chunk c + 1) — so the state warps run at most one chunk ahead.
//   kBarFull + s      (192): cp.async path: producer arrive when stage s has landed (cp.async.wait_group);
//                            state sync. The output warps see the stage through kBarHandoff.
//   kBarEmpty + s     (320): state and output arrive when done with stage s; producer sync before refilling.
// mbarriers (TMA path): full[s] (count 1: the producer's arrive.expect_tx; the copies' complete_tx) —
//   state and output warps wait on its phase; empty[s] (count cs, cluster only): each CTA's producer
//   arrives on every CTA's empty[s] once its own consumers released stage s (after kBarEmpty), and waits
//   on its own before multicasting into stage s again.
//
// Shared memory (K = 128): per stage Q, K (64, 128) T swizzled (TMA) or (64, 136) T (cp.async), W (64, 136)
// T, U (64, BV + 8) T (ALIAS: Vd overwrites it), Pm (64, 72) T 9 KB (ALIAS: O staged in it), aux 768 B; sS x2
// (128, BV + 8) T; sVn x2, sVd, sO (64, BV + 8) T (none of the last two where ALIAS); 2 x STAGES
// mbarriers. TMA: BV = 16 and 32 (aliased) take 3 stages (~212 / ~224 KB), BV = 64 2 stages (~210 KB).
// The launcher takes 3 stages where they fit and checks the device limit.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <type_traits>

#include "device/sm90.cuh"
#include "device/warp_mma.cuh"
#include "kernels/portable/fwd/params.hpp"
#include "kernels/portable/fwd/scheduler.cuh"

namespace flashgdn::portable {

inline constexpr int kRecStateWarps = 4, kRecOutputWarps = 4, kRecProducerWarps = 2;
inline constexpr int kRecThreads = 32 * (kRecStateWarps + kRecOutputWarps + kRecProducerWarps);
inline constexpr int kRecProducerThreads = 32 * kRecProducerWarps;

// FLASHGDN_TRACE builds (CMake option, a diagnostic): CTA 0 records clock64() at fixed points of each
// role's chunk loop (lane 0 of every warp, the first kTraceChunks chunks); the launcher prints the
// per-phase means (fwd_portable.cu). Default builds compile none of it.
#if FLASHGDN_TRACE
inline constexpr int kTraceChunks = 64, kTraceEvents = 8;
__device__ long long g_rec_trace[kTraceChunks][kRecThreads / 32][kTraceEvents];
#define FLASHGDN_TRACE_EVENT(c, ev)                                                   \
  do {                                                                                \
    if (blockIdx.x == 0 && lane == 0 && (c) >= 0 && (c) < kTraceChunks)              \
      g_rec_trace[c][warp][ev] = clock64();                                           \
  } while (0)
#else
#define FLASHGDN_TRACE_EVENT(c, ev) \
  do {                              \
  } while (0)
#endif

template <int STAGES>
struct RecurrenceBarriers {
  static constexpr int kState = 1;
  static constexpr int kHandoff = 2;  // + (c & 1)
  static constexpr int kRelease = 4;  // + (c & 1)
  static constexpr int kFull = 6;     // + stage
  static constexpr int kEmpty = 6 + STAGES;
  static_assert(kEmpty + STAGES <= 16, "16 named barriers per CTA");
};

// The TMA path's Q and K tensor maps: (K, Hqk, T, B) with boxes of (64, 1, 64 / cluster, 1), SWIZZLE_128B.
struct RecMaps {
  CUtensorMap q, k;
};

#ifdef FLASHGDN_SM90A
inline constexpr bool kSm90aBuild = true;
#else
inline constexpr bool kSm90aBuild = false;
#endif

// TMA: Q and K as TMA writes them (column halves of (64, 64), 128-byte swizzle; 1024-byte aligned stages),
// else padded rows (cp.async).
// ALIAS: no separate Vd and O tiles (see below), where that alone makes room for a third stage.
template <class T, int KD, int BV, int STAGES, bool TMA, bool ALIAS>
struct RecurrenceSmemT {
  static constexpr bool kAlias = ALIAS;
  static constexpr int kLdK = KD + 8;  // NOTE: +16 bytes per row: conflict-free ldmatrix
  static constexpr int kLdV = BV + 8;
  static constexpr int kLdA = kChunk + 8;
  static constexpr int kLdQK = TMA ? kChunk : kLdK;  // warp_gemm's ld for Q/K (the row count when swizzled)
  static constexpr device::Major kQMajor = TMA ? device::Major::kMKSw128 : device::Major::kMK;
  static constexpr device::Major kKMajor = TMA ? device::Major::kKMSw128 : device::Major::kKM;
  struct alignas(TMA ? 1024 : 16) Stage {
    T q[TMA ? kChunk * KD : kChunk * kLdK];  // (64, K)
    T k[TMA ? kChunk * KD : kChunk * kLdK];  // (64, K)
    T w[kChunk * kLdK];   // (64, K)
    T u[kChunk * kLdV];   // (64, BV)
    T pm[kChunk * kLdA];  // (64, 64)
    float aux[3 * kChunk];  // gamma, rq, rk
  };
  Stage st[STAGES];
  T s[2][KD * kLdV];       // (K, BV) x 2
  T vn[2][kChunk * kLdV];  // (64, BV) x 2
  // NOTE: with ALIAS, no separate Vd and O tiles: Vd overwrites the stage's U (each element by the thread
  // that read it) and O a warp's own rows of the stage's Pm (Pm's rows are the output rows: a warp reads
  // only its own). The 10 KB this saves make room for a third stage at BV = 32 with TMA (H100: 8/32
  // 1x8192 0.500 -> 0.464 ms); where the stage count does not change it costs 1-2% (the release of the
  // stage waits for the O stores; BV = 64), so it is taken only where it buys the stage.
  T vd[ALIAS ? 8 : kChunk * kLdV];  // (64, BV)
  T o[ALIAS ? 8 : kChunk * kLdV];   // (64, BV)
  uint64_t bar[2 * STAGES];  // TMA path: full[s] = bar[s], empty[s] = bar[STAGES + s]
};

// The largest shared-memory block any supported GPU grants (sm_90: 227 KB); deeper variants are not built.
inline constexpr size_t kMaxSmemAnyGpu = 227 * 1024;

// Aliasing Vd and O into the stage pays where it alone makes three stages fit.
template <class T, int KD, int BV, bool TMA>
constexpr bool recurrence_alias() {
  constexpr size_t slack = TMA ? 1024 : 0;
  return sizeof(RecurrenceSmemT<T, KD, BV, 3, TMA, false>) + slack > kMaxSmemAnyGpu &&
         sizeof(RecurrenceSmemT<T, KD, BV, 3, TMA, true>) + slack <= kMaxSmemAnyGpu;
}

template <class T, int KD, int BV, int STAGES, bool TMA>
using RecurrenceSmem = RecurrenceSmemT<T, KD, BV, STAGES, TMA, recurrence_alias<T, KD, BV, TMA>()>;

// Dynamic shared memory of a recurrence variant (the TMA path aligns its base to 1024 bytes itself).
template <class T, int KD, int BV, int STAGES, bool TMA>
constexpr size_t recurrence_smem_bytes() {
  return sizeof(RecurrenceSmem<T, KD, BV, STAGES, TMA>) + (TMA ? 1024 : 0);
}

// CP = a.cp_pass as a template parameter (0 sequential, 1 transition pass, 3 final pass; 2 the backward's
// states pass: sequential, no output, the state at each chunk's start stored to a.h_states).
// NOTE: compile-time so that the sequential kernel carries none of the CP bookkeeping in registers (the
// runtime form spilled ~100 bytes per thread at BV = 64).
// TMA: the sm_90a producer (tensor maps for Q/K, bulk copies for the images, optional cluster multicast).
// Its instantiation has an empty body in non-sm_90a passes; the launcher takes it only for an sm_90a binary.
template <class T, int KD, int BV, int STAGES, int CP, bool TMA>
__global__ void __launch_bounds__(kRecThreads, 1) recurrence_kernel(const __grid_constant__ RecMaps maps, FwdArgs a) {
 if constexpr (TMA && !kSm90aBuild) {
  return;
 } else {
  using namespace device;
  using Sm = RecurrenceSmem<T, KD, BV, STAGES, TMA>;
  using Bar = RecurrenceBarriers<STAGES>;
  static_assert(STAGES >= 2, "at least double buffering");
  constexpr int kNT = BV / 8;   // n-tiles of a (., BV) accumulator
  constexpr int kSM = KD / 64;  // m-tiles of the state per state warp (K/4 rows)
  constexpr int kFullCount = 128 + kRecProducerThreads, kEmptyCount = 256 + kRecProducerThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Sm& sm = *reinterpret_cast<Sm*>(TMA ? smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023) : smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Linear CTA id = (rank, slice, h), h fastest; rank r is the r-th longest sequence (seq_order), so the
  // long sequences' CTAs are dispatched first.
  // NOTE: slice-fastest order (a head's V slices on neighbouring CTAs) made the 2/8 1x32768 recurrence
  // 20% slower on H100 (905 vs 757 us, f8bfafc vs 3411de1); h-fastest is the order measured at 757 us.
  // With context parallelism the rank is a segment g (pass 1 also covers the K identity columns of the
  // augmented state [S | M]: slices v0 >= V), and a CTA walks only its segment's chunks.
  constexpr bool pass1 = CP == 1;
  // CP = 2: the states pass of the backward's recompute (no CP): no output, S_c stored per chunk.
  constexpr bool no_output = CP == 1 || CP == 2;
  constexpr bool segmented = CP == 1 || CP == 3;
  // With clusters (TMA path, cs > 1) the cluster's CTAs are consecutive slices of one (rank, h): slice
  // fastest (the launcher makes cs divide tiles).
  const int tiles = (pass1 ? a.V + a.K : a.V) / BV;
  const int cs = TMA ? a.rec_cluster : 1;
  const int h = static_cast<int>(cs > 1 ? (blockIdx.x / tiles) % a.Hv : blockIdx.x % a.Hv);
  const int slice = static_cast<int>(cs > 1 ? blockIdx.x % tiles : (blockIdx.x / a.Hv) % tiles);
  const int64_t rank = blockIdx.x / (static_cast<int64_t>(tiles) * a.Hv);
  int64_t n, c_first = 0, nchunks;
  bool last_seg = true;
  if constexpr (segmented) {
    const FwdArgs::SegInfo si = a.seg[rank];
    // No such segment, or pass 1 of a last segment (its transition is never used): the whole CTA (and
    // its whole cluster: same rank) leaves before any barrier.
    if (si.nch < 0 || (pass1 && si.last)) {
      grid_dependency_wait();  // see the producer's exit
      return;
    }
    n = si.n;
    c_first = si.c0;
    nchunks = si.nch;
    last_seg = si.last != 0;
  } else {
    n = a.seq_order[rank];
  }
  const int v0 = slice * BV;
  const bool ident = pass1 && v0 >= a.V;  // pass 1, columns of M: start from I, U = 0
  const int hk = h / a.group;
  const Seq s = seq_range(a, n);
  if constexpr (!segmented) nchunks = (s.eos - s.bos + kChunk - 1) / kChunk;
  const int64_t c_base = a.chunk_offsets[n] + c_first;  // global chunk of this CTA's chunk 0
  const int64_t t_base = s.bos + c_first * kChunk;      // its first token
  if constexpr (TMA) {
    if (tid == 0) {
      for (int st = 0; st < STAGES; ++st) {
        sm90::mbar_init(&sm.bar[st], 1);
        sm90::mbar_init(&sm.bar[STAGES + st], static_cast<uint32_t>(cs));
      }
      sm90::fence_mbarrier_init_cluster();
    }
    if (cs > 1) sm90::cluster_sync(); else __syncthreads();
  }
  // The consumers' wait for stage st of chunk c.
  auto wait_full = [&](int64_t c, int st) {
    if constexpr (TMA) sm90::mbar_wait(&sm.bar[st], static_cast<uint32_t>((c / STAGES) & 1));
    else named_bar_sync(Bar::kFull + st, kFullCount);
  };

  if (warp >= kRecStateWarps + kRecOutputWarps) {
    // ================= producer warps =================
    const int ptid = tid - 32 * (kRecStateWarps + kRecOutputWarps);
    const T* qg = static_cast<const T*>(a.q) + s.b * a.q_s[0] + hk * a.q_s[2];
    const T* kg = static_cast<const T*>(a.k) + s.b * a.k_s[0] + hk * a.k_s[2];
    // Q/K rows: thread ptid copies 16-byte column vector ptid % kVK of rows ptid / kVK + j * kRowStep.
    constexpr int kE = 16 / sizeof(T), kVK = KD / kE, kRowStep = kRecProducerThreads / kVK;
    static_assert(kRecProducerThreads % kVK == 0 && kChunk % kRowStep == 0, "producer row mapping");
    const int r0 = ptid / kVK, cv = (ptid % kVK) * kE;
    // A contiguous image of BYTES bytes (a multiple of 16), 16 bytes per thread and step.
    auto copy_image = [&](auto bytes_tag, void* dst, const void* src) {
      constexpr int kBytes = decltype(bytes_tag)::value;
      static_assert(kBytes % 16 == 0, "16-byte granules");
      char* d = static_cast<char*>(dst) + ptid * 16;
      const char* g = static_cast<const char*>(src) + ptid * 16;
#pragma unroll
      for (int o = 0; o < kBytes; o += 16 * kRecProducerThreads)
        if (o + ptid * 16 < kBytes) cp_async_16(d + o, g + o, true);
    };
    // Prepare may still be running (programmatic launch): acquire (chunk, head) ch's images before copying
    // them. NOTE: once every prepare CTA has finished, no more acquire loads: each one holds the copies
    // behind an L2 round trip (the per-chunk form, 5a6ba83, was the slower of the two measured on H100).
    // Prepare CTAs that do real work are counted (those past the last chunk are not).
    const int32_t prepare_ctas = static_cast<int32_t>(a.chunk_offsets[a.N] * a.Hv);
    bool all_prepared = false;
    auto acquire_images = [&](int64_t ch) {
      if (all_prepared) return;
      if (load_acquire_gpu(a.prepared) == prepare_ctas) all_prepared = true;
      else while (load_acquire_gpu(&a.ready[ch]) == 0) __nanosleep(100);
      if constexpr (TMA) sm90::fence_proxy_async_global();  // written through the generic proxy, read by TMA
    };
    // Q and K rows [t0, t0 + 64) by cp.async, zero-filled past L.
    auto copy_rows = [&](typename Sm::Stage& X, int64_t t0, int L) {
      const int64_t qstep = kRowStep * a.q_s[1], kstep = kRowStep * a.k_s[1];
      const T* qp = qg + (t0 + r0) * a.q_s[1] + cv;
      const T* kp = kg + (t0 + r0) * a.k_s[1] + cv;
      const T* q_safe = qg + t0 * a.q_s[1] + cv;  // a valid address for the zero-filled rows past L
      const T* k_safe = kg + t0 * a.k_s[1] + cv;
#pragma unroll
      for (int j = 0; j < kChunk / kRowStep; ++j) {
        const int r = r0 + j * kRowStep;
        const bool ok = r < L;
        if (!no_output) cp_async_16(&X.q[r * Sm::kLdK + cv], ok ? qp : q_safe, ok);
        cp_async_16(&X.k[r * Sm::kLdK + cv], ok ? kp : k_safe, ok);
        qp += qstep;
        kp += kstep;
      }
    };
    auto load_chunk = [&](int64_t c, int st) {
      typename Sm::Stage& X = sm.st[st];
      const int64_t t0 = t_base + c * kChunk;
      const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
      const int64_t ch = (c_base + c) * a.Hv + h;
      acquire_images(ch);
      copy_image(std::integral_constant<int, sizeof(T) * kChunk * Sm::kLdK>{}, X.w,
                 static_cast<const T*>(a.W) + ch * w_image_elems(KD));
      if (!ident)
        copy_image(std::integral_constant<int, sizeof(T) * kChunk * Sm::kLdV>{}, X.u,
                   static_cast<const T*>(a.U) + ch * a.u_stride + slice * u_slice_elems(BV));
      if (!no_output)  // pass 1 and the states pass have no output: no Pm, no Q
        copy_image(std::integral_constant<int, sizeof(T) * kChunk * Sm::kLdA>{}, X.pm,
                   static_cast<const T*>(a.Pm) + ch * pm_image_elems());
      copy_image(std::integral_constant<int, sizeof(float) * 3 * kChunk>{}, X.aux, a.aux + ch * 3 * kChunk);
      copy_rows(X, t0, L);
    };
    if constexpr (TMA) {
      const uint32_t crank = cs > 1 ? sm90::cluster_ctarank() : 0;
      const uint16_t mask = static_cast<uint16_t>((1u << cs) - 1);
      // This CTA's share (1/cs) of a shared image, multicast to the cluster when cs > 1.
      auto share = [&](void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
        const uint32_t part = bytes / static_cast<uint32_t>(cs);
        char* d = static_cast<char*>(dst) + crank * part;
        const char* g = static_cast<const char*>(src) + crank * part;
        if (cs > 1) sm90::bulk_load_multicast(d, g, part, bar, mask);
        else sm90::bulk_load(d, g, part, bar);
      };
      constexpr uint32_t kQKBytes = sizeof(T) * kChunk * KD, kWBytes = sizeof(T) * kChunk * Sm::kLdK;
      constexpr uint32_t kUBytes = sizeof(T) * kChunk * Sm::kLdV, kPmBytes = sizeof(T) * kChunk * Sm::kLdA;
      constexpr uint32_t kAuxBytes = sizeof(float) * 3 * kChunk;
      static_assert(kWBytes % 128 == 0 && kPmBytes % 128 == 0 && kAuxBytes % 128 == 0,
                    "shared images split into up to 8 multicast parts of 16-byte multiples");
      constexpr int kHalves = KD / 64;  // Q/K boxes are 64 columns wide (the 128-byte swizzle span)
      const int box_rows = kChunk / cs;  // this CTA's rows of each Q/K box (the map's box extent)
      for (int64_t c = 0; c < nchunks; ++c) {
        const int st = static_cast<int>(c % STAGES);
        const int64_t ch = (c_base + c) * a.Hv + h;
        FLASHGDN_TRACE_EVENT(c, 0);
        // NOTE: the acquire comes before the wait for the stage, so its L2 round trips (while prepare still
        // runs) overlap the consumers' work instead of delaying the refill (2-stage variants).
        acquire_images(ch);
        if (c >= STAGES) {
          named_bar_sync(Bar::kEmpty + st, kEmptyCount);  // this CTA's consumers released chunk c - STAGES
          if (cs > 1) {
            // Every CTA of the cluster writes into stage st: each waits for all cs releases.
            if (ptid < cs) sm90::mbar_arrive_cluster(&sm.bar[STAGES + st], static_cast<uint32_t>(ptid));
            sm90::mbar_wait_cluster(&sm.bar[STAGES + st], static_cast<uint32_t>((c / STAGES - 1) & 1));
          }
        }
        FLASHGDN_TRACE_EVENT(c, 1);
        typename Sm::Stage& X = sm.st[st];
        uint64_t* full = &sm.bar[st];
        const int64_t t0 = t_base + c * kChunk;
        if (ptid == 0) {
          // Whole boxes count, rows past the tensor's end (zero-filled) included.
          const uint32_t bytes = kWBytes + kAuxBytes + (ident ? 0 : kUBytes) + (no_output ? 0 : kPmBytes + kQKBytes) + kQKBytes;
          sm90::mbar_expect_tx(full, bytes);
          share(X.w, static_cast<const T*>(a.W) + ch * w_image_elems(KD), kWBytes, full);
        } else if (ptid == 1) {
          if (!no_output) share(X.pm, static_cast<const T*>(a.Pm) + ch * pm_image_elems(), kPmBytes, full);
        } else if (ptid == 2) {
          share(X.aux, a.aux + ch * 3 * kChunk, kAuxBytes, full);
        } else if (ptid == 3) {
          if (!ident)
            sm90::bulk_load(X.u, static_cast<const T*>(a.U) + ch * a.u_stride + slice * u_slice_elems(BV), kUBytes, full);
        } else if (ptid < 4 + 2 * kHalves) {
          // Rows [t0 + crank * box_rows, + box_rows) of one 64-column half of Q (j = 0) or K (j = 1); rows
          // past the sequence's end hold later tokens (or zeros past T): the state warps clear K's.
          const int j = (ptid - 4) / kHalves, half = (ptid - 4) % kHalves;
          if (!(j == 0 && no_output)) {
            T* dst = (j == 0 ? X.q : X.k) + half * kChunk * 64 + crank * box_rows * 64;
            const CUtensorMap* map = j == 0 ? &maps.q : &maps.k;
            const int32_t r = static_cast<int32_t>(t0 + crank * box_rows);
            if (cs > 1) sm90::tma_load_4d_multicast(dst, map, half * 64, hk, r, static_cast<int32_t>(s.b), full, mask);
            else sm90::tma_load_4d(dst, map, half * 64, hk, r, static_cast<int32_t>(s.b), full);
          }
        }
        FLASHGDN_TRACE_EVENT(c, 2);
        FLASHGDN_TRACE_EVENT(c, 3);
      }
    } else {
      for (int64_t c = 0; c < nchunks + STAGES - 1; ++c) {
        if (c < nchunks) {
          const int st = static_cast<int>(c % STAGES);
          FLASHGDN_TRACE_EVENT(c, 0);
          if (c >= STAGES) named_bar_sync(Bar::kEmpty + st, kEmptyCount);  // chunk c - STAGES released
          FLASHGDN_TRACE_EVENT(c, 1);
          load_chunk(c, st);
          FLASHGDN_TRACE_EVENT(c, 2);
        }
        cp_async_commit();  // one group per iteration (empty at the tail) keeps the wait count uniform
        const int64_t d = c - (STAGES - 1);
        if (d >= 0) {
          cp_async_wait<STAGES - 1>();  // chunk d has landed (for this thread's copies)
          FLASHGDN_TRACE_EVENT(d, 3);
          named_bar_arrive(Bar::kFull + static_cast<int>(d % STAGES), kFullCount);
        }
      }
    }
    // Match the releases of the last chunks (every arrival has its sync).
    for (int64_t c = nchunks > STAGES ? nchunks : STAGES; c < nchunks + STAGES; ++c)
      named_bar_sync(Bar::kEmpty + static_cast<int>((c - STAGES) % STAGES), kEmptyCount);
    // This grid may have started while prepare ran (programmatic launch). Its completion must imply
    // prepare's: the next call's offsets kernel (stream-ordered after this grid only) clears the ready
    // flags and the counter, which a straggling prepare CTA could otherwise still write.
    grid_dependency_wait();
    return;
  }

  const int m0 = (warp & 3) * 16;  // this warp's rows of every (64, .) tile
  if (warp < kRecStateWarps) {
    // ================= state warps =================
    float S[kSM][kNT][4];  // (K/4, BV) fp32 per warp
    const int srow0 = warp * (KD / 4);
    // f(x, i, j) for every state element this thread holds: x = S[mt][nt][e], i over K, j over the columns.
    auto for_each_state = [&](auto f) {
#pragma unroll
      for (int mt = 0; mt < kSM; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            f(S[mt][nt][e], srow0 + mt * 16 + acc_row(lane, e), v0 + nt * 8 + acc_col(lane, e));
    };
    auto store_s_operand = [&](T* dstS) { store_acc(S, dstS, Sm::kLdV, srow0, lane); };
    {
      // CP: pass 1 starts from [0 | I]; pass 3 from the scan's start state (every segment, the first one
      // included, so no CTA reads a pool slot that the sequence's last segment writes back).
      // NOTE: scoped (and the final state's destination looked up again after the loop) so that none of it
      // stays live in registers across the chunk loop.
      const StateIO io = state_io(a, n);
      const void* src = !segmented ? io.src : nullptr;  // sequential and states passes
      const float* cp_src = CP == 3 ? a.cp_h0 + (rank * a.Hv + h) * int64_t(a.K) * a.V : nullptr;
      for_each_state([&](float& x, int i, int j) {
        x = src != nullptr      ? load_state(a, src, io.src_row, h, i, j)
            : cp_src != nullptr ? cp_src[static_cast<int64_t>(i) * a.V + j]
            : ident             ? ((i == j - a.V) ? 1.f : 0.f)
                                : 0.f;
      });
    }
    store_s_operand(sm.s[0]);
    named_bar_sync(Bar::kState, 128);

    for (int64_t c = 0; c < nchunks; ++c) {
      const int st = static_cast<int>(c % STAGES), b = static_cast<int>(c & 1);
      FLASHGDN_TRACE_EVENT(c, 0);
      if constexpr (CP == 2)  // the states pass: S_c (this CTA's K x BV slice) in T, [chunk, Hv, K, V]
        store_acc(S, static_cast<T*>(a.h_states) + ((c_base + c) * a.Hv + h) * int64_t(KD) * a.V + v0, a.V, srow0, lane);
      wait_full(c, st);
      FLASHGDN_TRACE_EVENT(c, 1);
      const typename Sm::Stage& X = sm.st[st];
      const float* gam = X.aux;
      const float* rk = X.aux + 2 * kChunk;
      const float gl = gam[kChunk - 1];  // = gamma[L - 1] (stage 1 pads gamma)
      // vn = U - W S_c  (16, BV) per warp.
      {
        float acc[1][kNT][4];
        zero(acc);
        warp_gemm<1, kNT, KD / 16, Major::kMK, BMajor::kKN>(acc, X.w, Sm::kLdK, m0, sm.s[b], Sm::kLdV, 0, lane);
        T* vn = sm.vn[b];
        T* vd = Sm::kAlias ? const_cast<T*>(X.u) : sm.vd;  // (64, BV)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = m0 + (lane >> 2) + hf * 8;
          const float f = __expf(gl - gam[i]) * rk[i];
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
            const int j = nt * 8 + ((lane & 3) << 1);
            const float u0 = ident ? 0.f : to_float(X.u[i * Sm::kLdV + j]);
            const float u1 = ident ? 0.f : to_float(X.u[i * Sm::kLdV + j + 1]);
            const float vn0 = u0 - acc[0][nt][2 * hf];
            const float vn1 = u1 - acc[0][nt][2 * hf + 1];
            *reinterpret_cast<uint32_t*>(&vn[i * Sm::kLdV + j]) = pack2<T>(vn0, vn1);
            *reinterpret_cast<uint32_t*>(&vd[i * Sm::kLdV + j]) = pack2<T>(f * vn0, f * vn1);
          }
        }
        // Vd went into the stage's U, which the async proxy refills once the stage is released.
        if constexpr (TMA && Sm::kAlias) sm90::fence_proxy_async_smem();
      }
      if constexpr (TMA) {
        // A chunk shorter than 64: K's rows past L hold later tokens (or TMA's zeros); they meet Vd's zero
        // rows in Kᵀ Vd and must be finite, so clear them (this CTA's copy; before the kState sync below).
        const int64_t t0 = t_base + c * kChunk;
        const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
        if (L < kChunk) {
          uint4* kk = reinterpret_cast<uint4*>(const_cast<T*>(X.k));
          constexpr int kRowVecs = 64 * int(sizeof(T)) / 16;  // 16-byte chunks per 64-column row
          const int n_vecs = (kChunk - L) * kRowVecs;
          for (int i = tid; i < (KD / 64) * n_vecs; i += 128) {
            const int half = i / n_vecs, r = L + (i % n_vecs) / kRowVecs, v = i % kRowVecs;
            kk[(half * kChunk + r) * kRowVecs + v] = make_uint4(0, 0, 0, 0);  // any chunk order: all zeros
          }
          sm90::fence_proxy_async_smem();  // before the stage is refilled by the async proxy
        }
      }
      FLASHGDN_TRACE_EVENT(c, 2);
      named_bar_sync(Bar::kState, 128);  // sVd complete
      FLASHGDN_TRACE_EVENT(c, 3);
      // S = exp(gamma_L) S + Kᵀ Vd.
      scale(S, __expf(gl));
      warp_gemm<kSM, kNT, kChunk / 16, Sm::kKMajor, BMajor::kKN>(S, X.k, Sm::kLdQK, srow0, Sm::kAlias ? X.u : sm.vd, Sm::kLdV, 0, lane);
      FLASHGDN_TRACE_EVENT(c, 4);
      // sS[b ^ 1] held S_{c-1}: wait until the output warps are done with chunk c - 1.
      if (c >= 1) named_bar_sync(Bar::kRelease + (b ^ 1), 256);
      FLASHGDN_TRACE_EVENT(c, 5);
      store_s_operand(sm.s[b ^ 1]);
      named_bar_sync(Bar::kState, 128);               // S_{c+1} complete; sVd free
      FLASHGDN_TRACE_EVENT(c, 6);
      named_bar_arrive(Bar::kHandoff + b, 256);       // vn_c (and S_c) to the output warps
      named_bar_arrive(Bar::kEmpty + st, kEmptyCount);  // done with stage st
    }
    if (nchunks > 0) named_bar_sync(Bar::kRelease + static_cast<int>((nchunks - 1) & 1), 256);

    // Pass 1: the end state [S_loc | M] slice, fp32, for the scan.
    if constexpr (pass1) {
      float* e = a.cp_end + (rank * a.Hv + h) * int64_t(a.K) * (a.V + a.K);
      for_each_state([&](float& x, int i, int j) { e[static_cast<int64_t>(i) * (a.V + a.K) + j] = x; });
      return;
    }
    // Final state (the sequence's last segment only).
    const StateIO io = state_io(a, n);
    if (io.dst != nullptr && last_seg)
      for_each_state([&](float& x, int i, int j) { store_state(a, io.dst, io.dst_row, h, i, j, x); });
    return;
  }

  // ================= output warps =================
  T* og = static_cast<T*>(a.o) + s.b * a.o_s[0] + h * a.o_s[2] + v0;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int st = static_cast<int>(c % STAGES), b = static_cast<int>(c & 1);
    FLASHGDN_TRACE_EVENT(c, 0);
    named_bar_sync(Bar::kHandoff + b, 256);
    if constexpr (TMA)
      if (!no_output) wait_full(c, st);  // completed already (the state warps waited): the copies' acquire
    FLASHGDN_TRACE_EVENT(c, 1);
    if constexpr (no_output) {  // no output (transition / states pass): keep the barrier protocol only
      named_bar_arrive(Bar::kRelease + b, 256);
      named_bar_arrive(Bar::kEmpty + st, kEmptyCount);
      continue;
    }
    const typename Sm::Stage& X = sm.st[st];
    const float* gam = X.aux;
    const float* rq = X.aux + kChunk;
    const int64_t t0 = t_base + c * kChunk;
    const int L = static_cast<int>(s.eos - t0 < kChunk ? s.eos - t0 : kChunk);
    // O = scale exp(gamma) o rq o (Q S_c) + Pm vn_c.
    float acc[1][kNT][4];
    zero(acc);
    warp_gemm<1, kNT, KD / 16, Sm::kQMajor, BMajor::kKN>(acc, X.q, Sm::kLdQK, m0, sm.s[b], Sm::kLdV, 0, lane);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = m0 + (lane >> 2) + hf * 8;
      const float f = a.scale * __expf(gam[i]) * rq[i];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        acc[0][nt][2 * hf] *= f;
        acc[0][nt][2 * hf + 1] *= f;
      }
    }
    warp_gemm<1, kNT, kChunk / 16, Major::kMK, BMajor::kKN>(acc, X.pm, Sm::kLdA, m0, sm.vn[b], Sm::kLdV, 0, lane);
    FLASHGDN_TRACE_EVENT(c, 2);
    named_bar_arrive(Bar::kRelease + b, 256);                        // sS[b], sVn[b] free
    // ALIAS: O staged in this warp's own rows of the stage's Pm (read above by this warp only), so the
    // stage is released after the stores; else in sO, and the stage released now.
    static_assert(BV + 8 <= Sm::kLdA, "O rows fit Pm's rows");
    T* so = Sm::kAlias ? const_cast<T*>(X.pm) : sm.o;
    constexpr int kLdO = Sm::kAlias ? Sm::kLdA : Sm::kLdV;
    if constexpr (!Sm::kAlias) named_bar_arrive(Bar::kEmpty + st, kEmptyCount);  // Q, Pm, aux of stage st read
    __syncwarp();
    store_acc(acc, so, kLdO, m0, lane);
    __syncwarp();
    constexpr int kVec = BV * sizeof(T) / 16;  // 16-byte vectors per row
    for (int i = lane; i < 16 * kVec; i += 32) {
      const int r = m0 + i / kVec, cv = (i % kVec) * (16 / sizeof(T));
      if (r < L)
        *reinterpret_cast<uint4*>(og + (t0 + r) * a.o_s[1] + cv) = *reinterpret_cast<const uint4*>(&so[r * kLdO + cv]);
    }
    __syncwarp();
    if constexpr (Sm::kAlias) {
      if constexpr (TMA) sm90::fence_proxy_async_smem();  // O went into Pm, which the async proxy refills
      named_bar_arrive(Bar::kEmpty + st, kEmptyCount);    // Q, Pm, aux of stage st read (and O stored)
    }
    FLASHGDN_TRACE_EVENT(c, 3);
  }
 }  // TMA && !kSm90aBuild
}

}  // namespace flashgdn::portable
