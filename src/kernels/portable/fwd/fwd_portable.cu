// Host launcher of the portable (sm_80+) chunked forward: workspace layout, tile choice, launches.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "api/env.hpp"
#include "api/error.hpp"
#include "api/tensor.hpp"
#include "api/tensor_map.hpp"
#include "kernels/portable/bwd/chunk_grads.cuh"
#include "kernels/portable/bwd/dstate.cuh"
#include "kernels/portable/fwd/cp_scan.cuh"
#include "kernels/portable/fwd/fwd_portable.hpp"
#include "kernels/portable/fwd/plan.hpp"
#include "kernels/portable/fwd/prepare.cuh"
#include "kernels/portable/fwd/prepare_group.cuh"
#include "kernels/portable/fwd/recurrence.cuh"
#include "kernels/portable/fwd/scheduler_kernels.cuh"
#include "kernels/launch_util.hpp"
#include "kernels/sm90/fwd/fwd_sm90.hpp"

namespace flashgdn::portable {

namespace {

int current_num_sms();
int prepare_variant();
int cluster_override();

// Per-device attributes, read once (the launch path stays free of repeated driver queries).
struct DeviceInfo {
  int num_sms = 0, max_smem = 0, cc_major = 0;
  bool tma_recurrence = false;  // the recurrence's sm_90a (TMA) instantiations run on this device
};

flashgdn_status_t device_info(int dev, DeviceInfo* out);

flashgdn_status_t cuda_error(const char* what, cudaError_t e) {
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
    return fail(FLASHGDN_ERROR_NO_DEVICE, "flashgdn_chunk_fwd: %s: %s", what, cudaGetErrorString(e));
  return fail(FLASHGDN_ERROR_CUDA, "flashgdn_chunk_fwd: %s: %s", what, cudaGetErrorString(e));
}

#if FLASHGDN_TRACE
// Diagnostic builds only (FLASHGDN_TRACE): synchronises the stream after the recurrence and prints CTA 0's
// per-phase means in cycles over chunks [8, min(nchunks, 64)) to stderr.
void print_recurrence_trace(cudaStream_t stream, int bv, int stages) {
  static long long t[kTraceChunks][kRecThreads / 32][kTraceEvents];
  if (cudaStreamSynchronize(stream) != cudaSuccess || cudaMemcpyFromSymbol(t, g_rec_trace, sizeof(t)) != cudaSuccess) {
    std::fprintf(stderr, "flashgdn trace: readback failed\n");
    return;
  }
  const int w_state = 0, w_out = kRecStateWarps, w_prod = kRecStateWarps + kRecOutputWarps;
  int n = 0;
  double period = 0, st[6] = {0}, out[3] = {0}, prod[3] = {0};
  for (int c = 8; c + 1 < kTraceChunks; ++c) {
    const long long* s0 = t[c][w_state];
    const long long* s1 = t[c + 1][w_state];
    const long long* o = t[c][w_out];
    const long long* p = t[c][w_prod];
    if (s1[1] == 0 || o[3] == 0 || p[3] == 0) break;
    ++n;
    period += double(s1[1] - s0[1]);
    st[0] += double(s0[1] - s0[0]);  // wait for the stage (kFull)
    st[1] += double(s0[2] - s0[1]);  // W S, vn / Vd stores
    st[2] += double(s0[3] - s0[2]);  // kState (Vd complete)
    st[3] += double(s0[4] - s0[3]);  // S update
    st[4] += double(s0[5] - s0[4]);  // wait for the output warps (kRelease)
    st[5] += double(s0[6] - s0[5]);  // S operand store + kState
    out[0] += double(o[1] - o[0]);   // wait for the hand-off
    out[1] += double(o[2] - o[1]);   // Q S, Pm vn
    out[2] += double(o[3] - o[2]);   // O stores
    prod[0] += double(p[1] - p[0]);  // wait for the stage to be released (kEmpty)
    prod[1] += double(p[2] - p[1]);  // flag acquire + copy issue
    prod[2] += double(p[3] - p[2]);  // until the copies landed
  }
  std::memset(t, 0, sizeof(t));
  cudaMemcpyToSymbol(g_rec_trace, t, sizeof(t));
  if (n == 0) {
    std::fprintf(stderr, "flashgdn trace: fewer than 10 chunks traced\n");
    return;
  }
  std::fprintf(stderr,
               "flashgdn trace BV=%d stages=%d (CTA 0, cycles, mean of %d chunks): period %.0f | state: wait-full %.0f, "
               "WS %.0f, sync %.0f, S-update %.0f, wait-release %.0f, S-store+sync %.0f | output: wait-handoff %.0f, "
               "QS+PmVn %.0f, O-store %.0f | producer: wait-empty %.0f, issue %.0f, land %.0f\n",
               bv, stages, n, period / n, st[0] / n, st[1] / n, st[2] / n, st[3] / n, st[4] / n, st[5] / n, out[0] / n,
               out[1] / n, out[2] / n, prod[0] / n, prod[1] / n, prod[2] / n);
}
#endif

// pdl: programmatic dependent launch (sm_90+): the grid may start while the previous kernel in the stream
// (prepare) runs its last wave; the producer acquires a.ready per (chunk, head) before reading its images.
// NOTE: the overlap is at most prepare's last (partial) wave, ~25 us on H100 rows whose heads x sequences
// leave the recurrence one wave.
// The TMA path's tensor map of q or k [B, T, Hqk, K] as (K, Hqk, T, B), boxes of (64, 1, 64 / cs, 1) with the
// 128-byte swizzle. Extents of 1 get a stride that TMA accepts (never used to step).
template <class T>
flashgdn_status_t map_qk(CUtensorMap* map, const void* base, const int64_t (&st)[3], const FwdArgs& a, int cs,
                         const char* name) {
  TmaTile t;
  t.base = base;
  t.dtype = std::is_same_v<T, __half> ? FLASHGDN_DTYPE_FLOAT16 : FLASHGDN_DTYPE_BFLOAT16;
  const uint64_t es = sizeof(T);
  t.dim0 = static_cast<uint64_t>(a.K);
  t.dim1 = static_cast<uint64_t>(a.Hqk);
  t.row_stride_bytes = (a.Hqk > 1 ? static_cast<uint64_t>(st[2]) : t.dim0) * es;
  t.dim2 = static_cast<uint64_t>(a.T);
  t.stride2_bytes = a.T > 1 ? static_cast<uint64_t>(st[1]) * es : t.row_stride_bytes * t.dim1;
  t.dim3 = static_cast<uint64_t>(a.B);
  t.stride3_bytes = a.B > 1 ? static_cast<uint64_t>(st[0]) * es : t.stride2_bytes * t.dim2;
  t.box0 = 64;
  t.box1 = 1;
  t.box2 = static_cast<uint32_t>(kChunk / cs);
  t.box3 = 1;
  t.swizzle = device::Swizzle::k128B;
  return encode_tma_tile(map, t, "flashgdn_chunk_fwd", name);
}

template <class T, int KD, int BV, int STAGES, int CP, bool TMA>
flashgdn_status_t launch_recurrence_stages(FwdArgs a, int64_t ctas, int dev, bool pdl, cudaStream_t stream) {
  auto kernel = recurrence_kernel<T, KD, BV, STAGES, CP, TMA>;
  // A cluster is consecutive V slices of one (rank, head): the largest power of two <= rec_cluster that
  // divides this pass's slices (pass 1 also covers the K columns of M).
  const int tiles = (CP == 1 ? a.V + a.K : a.V) / BV;
  int cs = TMA ? a.rec_cluster : 1;
  while (cs > 1 && tiles % cs != 0) cs /= 2;
  a.rec_cluster = cs;
  RecMaps maps{};
  if constexpr (TMA) {
    FLASHGDN_TRY(map_qk<T>(&maps.q, a.q, a.q_s, a, cs, "q"));
    FLASHGDN_TRY(map_qk<T>(&maps.k, a.k, a.k_s, a, cs, "k"));
  }
  const int smem = static_cast<int>(recurrence_smem_bytes<T, KD, BV, STAGES, TMA>());
  static std::atomic<uint64_t> done{0};
  cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
  if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(recurrence)", e);
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(ctas));
  cfg.blockDim = dim3(kRecThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(smem);
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n_attr = 0;
  if (pdl) {
    attr[n_attr].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n_attr++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cs > 1) {
    attr[n_attr].id = cudaLaunchAttributeClusterDimension;
    attr[n_attr].val.clusterDim.x = static_cast<unsigned>(cs);
    attr[n_attr].val.clusterDim.y = 1;
    attr[n_attr++].val.clusterDim.z = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n_attr;
  e = cudaLaunchKernelEx(&cfg, kernel, maps, a);
  if (e == cudaSuccess) e = cudaGetLastError();
#if FLASHGDN_TRACE
  if (e == cudaSuccess) print_recurrence_trace(stream, BV, STAGES);
#endif
  return e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_error("recurrence kernel launch", e);
}


template <class T, int KD, int BV, int CP, bool TMA>
flashgdn_status_t launch_recurrence_path(const FwdArgs& a, int64_t ctas, int max_smem, int dev, bool pdl,
                                         cudaStream_t stream) {
  // NOTE: a third input stage hides the latency of the first touch of a chunk's Q/K/W when the
  // per-chunk work is small (narrow V slices); taken wherever it fits.
  if constexpr (recurrence_smem_bytes<T, KD, BV, 3, TMA>() <= kMaxSmemAnyGpu) {
    if (static_cast<int>(recurrence_smem_bytes<T, KD, BV, 3, TMA>()) <= max_smem)
      return launch_recurrence_stages<T, KD, BV, 3, CP, TMA>(a, ctas, dev, pdl, stream);
  }
  return launch_recurrence_stages<T, KD, BV, 2, CP, TMA>(a, ctas, dev, pdl, stream);
}

template <class T, int KD, int BV, int CP>
flashgdn_status_t launch_recurrence(const FwdArgs& a, int64_t ctas, int max_smem, int dev, bool pdl,
                                    cudaStream_t stream) {
  return a.rec_tma ? launch_recurrence_path<T, KD, BV, CP, true>(a, ctas, max_smem, dev, pdl, stream)
                   : launch_recurrence_path<T, KD, BV, CP, false>(a, ctas, max_smem, dev, pdl, stream);
}

// sm90_pr / sm90_p non-null: the experimental sm_90a recurrence replaces the portable one (bv = 64).
// The backward's stage 2 (dstate.cuh) after the recompute. Each CTA is a sequential chain over its
// sequence's chunks, so: V slices of 16 with double-buffered loads when those CTAs fit one wave (one per
// SM); else slices of 32, double-buffered if they fit one wave, else single-buffered (83 KB: two CTAs per
// SM hide each other's loads).
template <class T, int KD, int VD, int BV, int STAGES, bool TMA>
flashgdn_status_t launch_dstate_variant(const FwdArgs& a, const BwdArgs& bw, int dev, cudaStream_t stream) {
  auto kernel = dstate_kernel<T, KD, BV, STAGES, TMA>;
  const int smem = static_cast<int>(dstate_smem_bytes<T, KD, BV, STAGES, TMA>());
  RecMaps maps{};
  if constexpr (TMA) {
    FLASHGDN_TRY(map_qk<T>(&maps.q, a.q, a.q_s, a, 1, "q"));
    FLASHGDN_TRY(map_qk<T>(&maps.k, a.k, a.k_s, a, 1, "k"));
  }
  static std::atomic<uint64_t> done{0};
  cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
  if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(dstate)", e);
  const int64_t ctas = int64_t(a.N) * a.Hv * (VD / BV);
  if (ctas > 0x7fffffff) return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn backward: too many CTAs");
  kernel<<<static_cast<unsigned>(ctas), kDStateThreads, smem, stream>>>(maps, a, bw);
  e = cudaGetLastError();
  return e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_error("dstate kernel launch", e);
}

// The TMA loads where the recurrence takes them (a.rec_tma: an sm_90a binary, T >= 64, not switched off by
// FLASHGDN_PORTABLE_TMA=0).
template <class T, int KD, int VD, int BV, int STAGES>
flashgdn_status_t launch_dstate_bv(const FwdArgs& a, const BwdArgs& bw, int dev, cudaStream_t stream) {
  return a.rec_tma ? launch_dstate_variant<T, KD, VD, BV, STAGES, true>(a, bw, dev, stream)
                   : launch_dstate_variant<T, KD, VD, BV, STAGES, false>(a, bw, dev, stream);
}

int dstate_override();  // FLASHGDN_BWD_DSTATE (below)

template <class T, int KD, int VD>
flashgdn_status_t launch_dstate(const FwdArgs& a, const BwdArgs& bw, int max_smem, int dev, cudaStream_t stream) {
  const int64_t rows = int64_t(a.N) * a.Hv, sms = current_num_sms();
  // The TMA variants are the larger (1 KB of alignment slack).
  const bool two16 = static_cast<int>(dstate_smem_bytes<T, KD, 16, 2, true>()) <= max_smem;
  const bool two32 = static_cast<int>(dstate_smem_bytes<T, KD, 32, 2, true>()) <= max_smem;
  if constexpr (VD >= 32) {
    switch (dstate_override()) {
      case 161: return launch_dstate_bv<T, KD, VD, 16, 1>(a, bw, dev, stream);
      case 162: if (two16) return launch_dstate_bv<T, KD, VD, 16, 2>(a, bw, dev, stream); break;
      case 321: return launch_dstate_bv<T, KD, VD, 32, 1>(a, bw, dev, stream);
      case 322: if (two32) return launch_dstate_bv<T, KD, VD, 32, 2>(a, bw, dev, stream); break;
      default: break;
    }
  }
  if (VD >= 32 && rows * (VD / 16) <= sms && two16) return launch_dstate_bv<T, KD, VD, 16, 2>(a, bw, dev, stream);
  if (rows * (VD / 32) <= sms && two32) return launch_dstate_bv<T, KD, VD, 32, 2>(a, bw, dev, stream);
  return launch_dstate_bv<T, KD, VD, 32, 1>(a, bw, dev, stream);
}

// The backward's stage 3 (chunk_grads.cuh): one CTA per (chunk, value head).
template <class T, int KD, int VD>
flashgdn_status_t launch_chunk_grads(const FwdArgs& a, const BwdArgs& bw, int max_smem, int dev, cudaStream_t stream) {
  auto kernel = chunk_grads_kernel<T, KD, VD>;
  const int smem = static_cast<int>(sizeof(ChunkGradSmem<T, KD, VD>));
  if (smem > max_smem)
    return fail(FLASHGDN_ERROR_UNSUPPORTED,
                "flashgdn_chunk_bwd: the backward's per-chunk kernel needs %d bytes of shared memory per block for "
                "K = %d, V = %d; this device allows %d (the GPU backward targets sm_90: H100/H200)",
                smem, KD, VD, max_smem);
  static std::atomic<uint64_t> done{0};
  cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
  if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(chunk grads)", e);
  const int64_t ctas = a.max_chunks * a.Hv;
  if (ctas > 0x7fffffff) return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn_chunk_bwd: too many chunks x heads");
  if (ctas > 0) kernel<<<static_cast<unsigned>(ctas), kGradThreads, smem, stream>>>(a, bw);
  e = cudaGetLastError();
  return e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_error("chunk grads kernel launch", e);
}

template <class T, int KD, int VD>
flashgdn_status_t launch_all(FwdArgs a, int bv, int max_smem, int dev, bool pdl, cudaStream_t stream,
                             const Problem* sm90_pr = nullptr, const flashgdn_chunk_fwd_params_t* sm90_p = nullptr,
                             const BwdArgs* bw = nullptr) {
  // Shrink BV if the device cannot hold the recurrence's tile (before stage 1: U's image depends on it).
  if (bv == 64 && static_cast<int>(recurrence_smem_bytes<T, KD, 64, 2, true>()) > max_smem) bv = 32;
  if (bv == 32 && static_cast<int>(recurrence_smem_bytes<T, KD, 32, 2, true>()) > max_smem) bv = 16;
  a.bv = bv;
  // Stage 1: prepare (parallel over chunks and value heads).
  auto prepare = [&](auto late_v_tag, auto mma_tag) -> flashgdn_status_t {
    constexpr bool kLateV = decltype(late_v_tag)::value, kMma = decltype(mma_tag)::value;
    auto kernel = prepare_kernel<T, KD, VD, kLateV, kMma>;
    const int smem = static_cast<int>(sizeof(PrepareSmem<T, KD, VD, kLateV>));
    static std::atomic<uint64_t> done{0};
    cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
    if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(prepare)", e);
    const int64_t ctas = a.max_chunks * a.Hv;
    if (ctas > 0x7fffffff)
      return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn_chunk_fwd: %lld chunks x %d heads exceed the grid limit",
                  static_cast<long long>(a.max_chunks), a.Hv);
    if (ctas > 0) kernel<<<static_cast<unsigned>(ctas), 128, smem, stream>>>(a);
    e = cudaGetLastError();
    return e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_error("prepare kernel launch", e);
  };
  // The CP scan (between the transition and the final pass).
  auto scan = [&](auto bufs_tag) -> flashgdn_status_t {
    constexpr int kBufs = decltype(bufs_tag)::value;
    auto kernel = cp_scan_kernel<KD, kBufs>;
    const int smem = static_cast<int>(sizeof(ScanSmem<KD, kBufs>));
    static std::atomic<uint64_t> done{0};
    cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
    if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(cp scan)", e);
    kernel<<<static_cast<unsigned>(int64_t(a.N) * a.Hv * (a.V / kScanBV)), 256, smem, stream>>>(a);
    e = cudaGetLastError();
    return e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_error("cp scan kernel launch", e);
  };
  // Two M buffers (M_{g+1} fetched during step g) where they fit (140 KB at K = 128), else one.
  auto run_scan = [&]() -> flashgdn_status_t {
    return static_cast<int>(sizeof(ScanSmem<KD, 2>)) <= max_smem ? scan(std::integral_constant<int, 2>{})
                                                                  : scan(std::integral_constant<int, 1>{});
  };
  // CP on the head form's passes (sm90fwd::applies_cp), after prepare (no prepare with the SOLVE variant).
  auto head_cp = [&]() -> flashgdn_status_t {
    FwdArgs a1 = a;
    a1.cp_pass = 1;
    FLASHGDN_TRY(sm90fwd::launch_cp(a1, *sm90_pr, *sm90_p, stream));
    if (a.cp_direct) {  // the default (FLASHGDN_CP_DIRECT=0 not): the scan without the warm-up's copies (cp_scan.cuh)
      auto kernel = cp_scan_direct_kernel<KD>;
      const int smem = static_cast<int>(sizeof(ScanSmem<KD, 1>));
      static std::atomic<uint64_t> done{0};
      cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
      if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(cp scan direct)", e);
      kernel<<<static_cast<unsigned>(int64_t(a.N) * a.Hv * (a.V / kScanBV)), 256, smem, stream>>>(a);
      e = cudaGetLastError();
      if (e != cudaSuccess) return cuda_error("cp scan direct kernel launch", e);
    } else {
      FLASHGDN_TRY(run_scan());
    }
    FwdArgs a3 = a;
    a3.cp_pass = 3;
    return sm90fwd::launch_cp(a3, *sm90_pr, *sm90_p, stream);
  };
  // The sm_90a head form's SOLVE variant (FLASHGDN_EXPERIMENTAL_SM90=4) has no prepare stage.
  if (sm90_pr != nullptr && sm90fwd::variant() == 4)
    return a.cp_pass == 1 ? head_cp() : sm90fwd::launch(a, *sm90_pr, *sm90_p, stream);
  // a.solve_mma (default; FLASHGDN_SOLVE_MMA=0 not): the a_only solve's levels on tf32 tensor cores (bf16, K = V = 128).
  bool mma = false;
  if constexpr (std::is_same_v<T, __nv_bfloat16> && KD == 128 && VD == 128) mma = a.a_only && a.solve_mma;
  // NOTE: a_only (no V) always takes the 56 KB, 4-CTAs-per-SM layout (H100, 55da7a9: 16/64 8192x4 prepare 0.77 ->
  // 0.68 ms, the call 1.508 -> 1.400 ms).
  // The default (FLASHGDN_PREPARE_GROUP=0: one CTA per (chunk, value head)): a_only per (chunk, q/k head) for the
  // whole head group, K Kᵀ formed once per group (prepare_group.cuh). NOTE: H100 (addfda4) 16/64 8192x4 1.238 ->
  // 1.106 ms, 8/32 1x32768 0.675 -> 0.607, 16/64 1x8192 0.392 -> 0.352; 16/16 (group of one) unchanged.
  bool grouped = false;
  if constexpr (std::is_same_v<T, __nv_bfloat16> && KD == 128 && VD == 128) grouped = a.a_only && !env_is_zero("FLASHGDN_PREPARE_GROUP");
  if (grouped) {
    if constexpr (std::is_same_v<T, __nv_bfloat16> && KD == 128 && VD == 128) {
      auto launch_group = [&](auto mma_tag) -> flashgdn_status_t {
        auto kernel = prepare_group_kernel<T, KD, VD, decltype(mma_tag)::value>;
        const int smem = static_cast<int>(sizeof(PrepareSmem<T, KD, VD, true>));
        static std::atomic<uint64_t> done{0};
        cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
        if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(prepare group)", e);
        const int64_t ctas = a.max_chunks * a.Hqk;
        if (ctas > 0x7fffffff)
          return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn_chunk_fwd: %lld chunks x %d q/k heads exceed the grid limit",
                      static_cast<long long>(a.max_chunks), a.Hqk);
        if (ctas > 0) kernel<<<static_cast<unsigned>(ctas), 128, smem, stream>>>(a);
        e = cudaGetLastError();
        return e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_error("prepare group kernel launch", e);
      };
      FLASHGDN_TRY(mma ? launch_group(std::true_type{}) : launch_group(std::false_type{}));
    }
  } else if (mma) {
    if constexpr (std::is_same_v<T, __nv_bfloat16> && KD == 128 && VD == 128)
      FLASHGDN_TRY(prepare(std::true_type{}, std::true_type{}));
  } else {
    FLASHGDN_TRY(prepare_variant() == 4 || a.a_only ? prepare(std::true_type{}, std::false_type{})
                                                    : prepare(std::false_type{}, std::false_type{}));
  }
  if (sm90_pr != nullptr) return a.cp_pass == 1 ? head_cp() : sm90fwd::launch(a, *sm90_pr, *sm90_p, stream);
  auto recurrence = [&](const FwdArgs& x, int64_t ranks, int columns) -> flashgdn_status_t {
    const int v_tiles = columns / bv;
    if (ranks * x.Hv * v_tiles > 0x7fffffff)
      return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn_chunk_fwd: %lld x Hv x (%d / %d) CTAs exceed the grid limit",
                  static_cast<long long>(ranks), columns, bv);
    const int64_t ctas = ranks * x.Hv * v_tiles;
    // Only the pass right after prepare overlaps it; the final CP pass follows the scan in stream order.
    const bool overlap = pdl && x.cp_pass != 3;
    auto by_bv = [&](auto cp_tag) -> flashgdn_status_t {
      constexpr int kCp = decltype(cp_tag)::value;
      switch (bv) {
        case 64: return launch_recurrence<T, KD, 64, kCp>(x, ctas, max_smem, dev, overlap, stream);
        case 32: return launch_recurrence<T, KD, 32, kCp>(x, ctas, max_smem, dev, overlap, stream);
        default: return launch_recurrence<T, KD, 16, kCp>(x, ctas, max_smem, dev, overlap, stream);
      }
    };
    switch (x.cp_pass) {
      case 1: return by_bv(std::integral_constant<int, 1>{});
      case 2: return by_bv(std::integral_constant<int, 2>{});
      case 3: return by_bv(std::integral_constant<int, 3>{});
      default: return by_bv(std::integral_constant<int, 0>{});
    }
  };
  if (a.cp_pass == 0) return recurrence(a, a.N, a.V);
  if (a.cp_pass == 2) {  // the backward's recompute, then (when asked) its stage 2
    FLASHGDN_TRY(recurrence(a, a.N, a.V));
    if (bw == nullptr) return FLASHGDN_SUCCESS;
    FLASHGDN_TRY((launch_dstate<T, KD, VD>(a, *bw, max_smem, dev, stream)));
    return bw->dqh != nullptr ? launch_chunk_grads<T, KD, VD>(a, *bw, max_smem, dev, stream) : FLASHGDN_SUCCESS;
  }
  // Context parallelism: transition pass over the augmented columns [V | K], the scan, the final pass.
  FwdArgs a1 = a;
  a1.cp_pass = 1;
  FLASHGDN_TRY(recurrence(a1, a.g_max, a.V + a.K));
  FLASHGDN_TRY(run_scan());
  FwdArgs a3 = a;
  a3.cp_pass = 3;
  return recurrence(a3, a.g_max, a.V);
}

flashgdn_status_t device_info(int dev, DeviceInfo* out) {
  static std::mutex mu;
  static std::unordered_map<int, DeviceInfo> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(dev);
    if (it != cache.end()) {
      *out = it->second;
      return FLASHGDN_SUCCESS;
    }
  }
  DeviceInfo info;
  cudaError_t e = cudaDeviceGetAttribute(&info.num_sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&info.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e != cudaSuccess) return cuda_error("cudaDeviceGetAttribute", e);
  if (info.cc_major == 9) {
    // The fatbin has sm_90a code when FLASHGDN_PORTABLE_ARCHS lists 90a; the binary the driver picks for
    // this device says whether the TMA instantiations have a body.
    // (device_info is called for the current device.)
    cudaFuncAttributes fa{};
    if (cudaFuncGetAttributes(&fa, recurrence_kernel<__nv_bfloat16, 128, 16, 3, 0, true>) == cudaSuccess)
      info.tma_recurrence = fa.binaryVersion == 90;
    cudaGetLastError();  // leave no sticky error behind
  }
  std::lock_guard<std::mutex> lock(mu);
  cache[dev] = info;
  *out = info;
  return FLASHGDN_SUCCESS;
}

// FLASHGDN_PORTABLE_PREPARE=4 selects the prepare variant with V loaded late into X's space (~56 KB, 4 CTAs
// per SM; an A/B aid until measured), anything else the default (3 CTAs per SM). Read once.
int prepare_variant() {
  static const int v = [] {
    const char* e = std::getenv("FLASHGDN_PORTABLE_PREPARE");
    return e != nullptr && std::strcmp(e, "4") == 0 ? 4 : 3;
  }();
  return v;
}

// An A/B and tuning switch read at each call: its value if it is one of `allowed`, else `fallback` (with a
// message on stderr, once per switch (`warned`), for a value that is set but not allowed).
int env_choice(const char* name, std::initializer_list<int> allowed, int fallback, std::atomic<bool>& warned) {
  const char* e = std::getenv(name);
  if (e == nullptr || *e == 0) return fallback;
  const int v = std::atoi(e);
  for (int a : allowed)
    if (v == a) return v;
  if (!warned.exchange(true)) std::fprintf(stderr, "flashgdn: ignoring %s=%s\n", name, e);
  return fallback;
}

// FLASHGDN_BWD_DSTATE=161|162|321|322 pins stage 2's V slice and stages (BV x 10 + STAGES; a tuning and
// benchmarking aid read at each call, documented in docs/design.md).
int dstate_override() {
  static std::atomic<bool> warned{false};
  return env_choice("FLASHGDN_BWD_DSTATE", {161, 162, 321, 322}, 0, warned);
}

// FLASHGDN_PORTABLE_BV=16|32|64 pins the recurrence's V slice (a tuning and benchmarking aid, read at each
// call; documented in docs/design.md).
int bv_override() {
  static std::atomic<bool> warned{false};
  return env_choice("FLASHGDN_PORTABLE_BV", {16, 32, 64}, 0, warned);
}

// FLASHGDN_PORTABLE_CLUSTER=1|2|4|8: the recurrence's cluster size on the TMA path (read at each call;
// default 1: multicast measured slower on H100, docs/design.md §5).
int cluster_override() {
  static std::atomic<bool> warned{false};
  return env_choice("FLASHGDN_PORTABLE_CLUSTER", {1, 2, 4, 8}, 1, warned);
}

// The current device's attributes (zeros when they cannot be read: the plan is then still deterministic).
DeviceInfo current_device_info() {
  int dev = 0;
  DeviceInfo info;
  if (cudaGetDevice(&dev) != cudaSuccess || device_info(dev, &info) != FLASHGDN_SUCCESS) {
    cudaGetLastError();  // leave no sticky error behind
    return DeviceInfo{};
  }
  return info;
}
int current_num_sms() { return current_device_info().num_sms; }

// CP on the head form's passes is what the plan sizes segments for (the default on cc 9.x, bf16,
// K = V = 128). From the shapes and the device only, so that the workspace query and the launch agree; where the
// launch then finds the head form inapplicable (e.g. unaligned q/k/v) the portable passes run this plan.
bool head_cp_planned(const Problem& pr, int cc_major) {
  return cc_major == 9 && pr.K == 128 && pr.V == 128 && pr.io_dtype == FLASHGDN_DTYPE_BFLOAT16 &&
         !env_is_zero("FLASHGDN_SM90_CP") && !env_is_zero("FLASHGDN_EXPERIMENTAL_SM90");
}

}  // namespace

flashgdn_status_t preload_fwd(int dev, int* loaded) {
  DeviceInfo info;
  FLASHGDN_TRY(device_info(dev, &info));  // attributes; on cc 9.x it loads one recurrence instantiation
  auto touch = [&](auto kernel, const char* what) -> flashgdn_status_t {
    cudaFuncAttributes fa{};
    const cudaError_t e = cudaFuncGetAttributes(&fa, kernel);  // loads it under lazy module loading
    if (e != cudaSuccess) return cuda_error(what, e);
    ++*loaded;
    return FLASHGDN_SUCCESS;
  };
  FLASHGDN_TRY(touch(chunk_offsets_kernel<256>, "flashgdn_init: chunk offsets kernel"));
  FLASHGDN_TRY(touch(segment_table_kernel, "flashgdn_init: segment table kernel"));
  FLASHGDN_TRY(touch(chunk_table_kernel, "flashgdn_init: chunk table kernel"));
  if (info.cc_major != 9 || !info.tma_recurrence) return FLASHGDN_SUCCESS;  // no sm_90a code for this device
  // The sm_90a forward under the default switches: the grouped A-only prepare with tensor-core solve levels, the
  // direct CP scan, the head-form kernels.
  FLASHGDN_TRY((touch(prepare_group_kernel<__nv_bfloat16, 128, 128, true>, "flashgdn_init: prepare kernel")));
  FLASHGDN_TRY(touch(cp_scan_direct_kernel<128>, "flashgdn_init: cp scan kernel"));
  return sm90fwd::preload(dev, loaded);
}

size_t workspace_bytes(const Problem& pr) {
  const DeviceInfo info = current_device_info();
  return layout(pr, info.num_sms, head_cp_planned(pr, info.cc_major)).total;
}

namespace {
flashgdn_status_t launch_impl(const Problem& pr_in, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                              cudaStream_t stream, void* h_states, void* ab, const BwdArgs* bw = nullptr);
}  // namespace

flashgdn_status_t launch_fwd(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                             cudaStream_t stream) {
  return launch_impl(pr, p, workspace, stream, nullptr, nullptr);
}

flashgdn_status_t launch_fwd_states(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                                    void* h_states, void* ab, cudaStream_t stream) {
  if (h_states == nullptr)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "flashgdn backward recompute: h_states must not be null");
  return launch_impl(pr, p, workspace, stream, h_states, ab);
}

flashgdn_status_t launch_bwd_stages123(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                                       void* h_states, const BwdArgs& bw, cudaStream_t stream) {
  if (h_states == nullptr || bw.ab == nullptr || bw.dstates == nullptr)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "flashgdn backward: h_states, ab and dstates must not be null");
  if (bw.dqh != nullptr && (bw.at == nullptr || bw.dkh == nullptr || bw.dg == nullptr || bw.dbeta == nullptr))
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "flashgdn backward: stage 3 needs at, dkh, dg and dbeta");
  return launch_impl(pr, p, workspace, stream, h_states, const_cast<void*>(bw.ab), &bw);
}

namespace {
// h_states non-null: the backward's recompute (launch_fwd_states).
flashgdn_status_t launch_impl(const Problem& pr_in, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                              cudaStream_t stream, void* h_states, void* ab, const BwdArgs* bw) {
  Problem pr = pr_in;
  if (h_states != nullptr) pr.cp_mode = FLASHGDN_CP_OFF;  // the states pass is sequential
  if (pr.N == 0) return FLASHGDN_SUCCESS;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_error("cudaGetDevice", e);
  DeviceInfo info;
  FLASHGDN_TRY(device_info(dev, &info));
  const int num_sms = info.num_sms, max_smem = info.max_smem;

  const Layout l = layout(pr, num_sms, h_states == nullptr && head_cp_planned(pr, info.cc_major));
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  FwdArgs a{};
  a.q = p.q.data;
  a.k = p.k.data;
  a.v = p.v.data;
  a.o = p.o.data;
  a.g = static_cast<const float*>(p.g.data);
  a.beta = p.beta.data;
  strides3(p.q, a.q_s);
  strides3(p.k, a.k_s);
  strides3(p.v, a.v_s);
  strides3(p.o, a.o_s);
  strides3(p.g, a.g_s);
  strides3(p.beta, a.beta_s);
  a.beta_f32 = p.beta.dtype == FLASHGDN_DTYPE_FLOAT32;
  a.cu_seqlens = pr.varlen ? p.cu_seqlens.data : nullptr;
  a.cu_i64 = p.cu_seqlens.dtype == FLASHGDN_DTYPE_INT64;
  a.B = static_cast<int>(pr.B);
  a.T = static_cast<int>(pr.T);
  a.N = static_cast<int>(pr.N);
  a.Hqk = static_cast<int>(pr.Hqk);
  a.Hv = static_cast<int>(pr.Hv);
  a.group = static_cast<int>(pr.group);
  a.K = static_cast<int>(pr.K);
  a.V = static_cast<int>(pr.V);
  a.scale = pr.scale;
  a.l2norm = pr.l2norm;
  a.v_first = pr.v_first;
  if (pr.has_h0) {
    a.h0 = p.initial_state.data;
    a.h0_bf16 = p.initial_state.dtype == FLASHGDN_DTYPE_BFLOAT16;
    a.h0_row_stride = p.initial_state.stride[0];
  }
  if (pr.pool) {
    a.ht = p.initial_state.data;
    a.ht_bf16 = a.h0_bf16;
    a.ht_row_stride = a.h0_row_stride;
    a.state_indices = p.state_indices.data;
    a.idx_i64 = p.state_indices.dtype == FLASHGDN_DTYPE_INT64;
    a.P = pr.P;
  } else if (pr.has_ht) {
    a.ht = p.final_state.data;
    a.ht_bf16 = p.final_state.dtype == FLASHGDN_DTYPE_BFLOAT16;
    a.ht_row_stride = p.final_state.stride[0];
  }
  if (pr.has_mask) {
    a.has_initial_state = static_cast<const uint8_t*>(p.has_initial_state.data);
    a.mask_stride = p.has_initial_state.stride[0];
  }
  a.chunk_offsets = reinterpret_cast<int64_t*>(ws + l.offsets);
  a.chunk_info = reinterpret_cast<FwdArgs::ChunkInfo*>(ws + l.info);
  a.seq_order = reinterpret_cast<int32_t*>(ws + l.order);
  a.aux = reinterpret_cast<float*>(ws + l.aux);
  a.W = ws + l.w;
  a.U = ws + l.u;
  a.Pm = ws + l.pm;
  a.u_stride = u_image_elems(static_cast<int>(pr.V), kMinBv);
  if (l.cp.on) {
    a.cp_pass = 1;  // for the offsets kernel: also the segment offsets; launch_all sets it per pass
    a.seg_chunks = l.cp.seg_chunks;
    a.g_max = l.cp.g_max;
    a.seg_offsets = reinterpret_cast<int64_t*>(ws + l.seg_offsets);
    a.seg = reinterpret_cast<FwdArgs::SegInfo*>(ws + l.seg);
    a.cp_end = reinterpret_cast<float*>(ws + l.cp_end);
    a.cp_h0 = reinterpret_cast<float*>(ws + l.cp_h0);
  }
  a.max_chunks = pr.max_chunks();
  a.ready = reinterpret_cast<int32_t*>(ws + l.ready);
  a.prepared = reinterpret_cast<int32_t*>(ws + l.prepared);
  // FLASHGDN_PORTABLE_PREP_ORDER=chunk: prepare's grid chunk-fastest (A/B; default head-fastest).
  a.prep_head_fastest = env_is_value("FLASHGDN_PORTABLE_PREP_ORDER", "chunk") ? 0 : 1;
  // The solve's levels on tf32 tensor cores where A is stored in bf16 (params.hpp; FLASHGDN_SOLVE_MMA=0: fp32 levels).
  a.solve_mma = env_is_zero("FLASHGDN_SOLVE_MMA") ? 0 : 1;
  a.solve_diag8 = env_is_one("FLASHGDN_SOLVE_DIAG8") ? 1 : 0;  // A/B (params.hpp)
  // The recurrence's TMA producer where an sm_90a binary runs (FLASHGDN_PORTABLE_TMA=0: cp.async, for
  // A/B) and its cluster size (FLASHGDN_PORTABLE_CLUSTER=1|2|4|8 pins it). Fewer than 64 tokens per batch
  // row (a box would exceed the tensor) take the cp.async producer.
  a.rec_tma = info.tma_recurrence && pr.T >= kChunk && !env_is_zero("FLASHGDN_PORTABLE_TMA") ? 1 : 0;
  a.rec_cluster = a.rec_tma ? cluster_override() : 1;

  chunk_offsets_kernel<256><<<1, 256, 0, stream>>>(a);
  e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_error("chunk offsets kernel launch", e);
  if (l.cp.on) {
    segment_table_kernel<<<static_cast<unsigned>((a.g_max + 255) / 256), 256, 0, stream>>>(a);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_error("segment table kernel launch", e);
  }
  if (a.max_chunks > 0) {
    chunk_table_kernel<<<static_cast<unsigned>((a.max_chunks + 255) / 256), 256, 0, stream>>>(a);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_error("chunk table kernel launch", e);
  }

  a.h_states = h_states;
  a.Ab = ab;
  a.At = bw != nullptr && bw->dqh != nullptr ? const_cast<void*>(bw->at) : nullptr;
  // The sm_90a forward's head form (bf16, K = V = 128, cc 9.x; fwd_sm90.hpp) where the portable plan has BV = 64 and
  // no context parallelism (its N * Hv CTAs, two state chains each, then fill the GPU as the portable grid would).
  const int bv_env = bv_override();
  const int plan_bv = bv_env > 0 && bv_env <= pr.V ? bv_env : choose_bv(pr, num_sms);  // the portable plan's slice
  const int sm90_var = sm90fwd::variant();
  const bool sm90_path = !l.cp.on && h_states == nullptr && sm90fwd::applies(pr, p, info.cc_major, max_smem) &&
                         (sm90fwd::forced() || (bv_env == 0 && plan_bv == 64));
  if (info.cc_major == 9 && h_states == nullptr && sm90_var != 0 &&
      (pr.K != 128 || pr.V != 128 || pr.io_dtype != FLASHGDN_DTYPE_BFLOAT16)) {
    // Issue 5: a call the sm_90a kernels do not cover says so, once per process (the portable path runs it).
    static std::atomic<bool> told{false};
    if (!told.exchange(true))
      std::fprintf(stderr,
                   "flashgdn: the sm_90a forward covers bf16 with K = V = 128; K = %lld, V = %lld, %s runs on the "
                   "portable kernels (said once per process)\n",
                   static_cast<long long>(pr.K), static_cast<long long>(pr.V),
                   pr.io_dtype == FLASHGDN_DTYPE_BFLOAT16 ? "bf16" : "fp16");
  }
  const int bv = l.cp.on || sm90_path ? kCpBv : plan_bv;
  // Programmatic dependent launch of the recurrence on sm_90+ (FLASHGDN_PORTABLE_PDL=0 turns it off: A/B).
  const bool pdl = info.cc_major >= 9 && !env_is_zero("FLASHGDN_PORTABLE_PDL");
  // CP on the head form's passes (the default; FLASHGDN_SM90_CP=0: the portable passes): launch_all takes them.
  const bool sm90_cp = l.cp.on && h_states == nullptr && sm90fwd::applies_cp(pr, p, info.cc_major, max_smem);
  if (sm90_path || sm90_cp) {  // bf16, K = V = 128 (sm90fwd::applies / applies_cp)
    if (sm90_cp && l.cdecay != 0) {  // the gate-driven warm-up's bounds (prepare) and choices (pass 1 -> the scan)
      a.cdecay = reinterpret_cast<float*>(ws + l.cdecay);
      a.cp_warm = reinterpret_cast<int32_t*>(ws + l.cp_warm);
      a.cp_direct = env_is_zero("FLASHGDN_CP_DIRECT") ? 0 : 1;  // default; =0: the scan with copies (params.hpp)
    }
    a.a_only = 1;  // the head form: prepare writes A diag(beta) and aux only (variant 4: no prepare)
    return launch_all<__nv_bfloat16, 128, 128>(a, bv, max_smem, dev, false, stream, &pr, &p);
  }
  const bool bf16 = pr.io_dtype == FLASHGDN_DTYPE_BFLOAT16;
  if (h_states != nullptr) a.cp_pass = 2;  // after the scheduler kernels (they read cp_pass 0: no segments)
#define FLASHGDN_DISPATCH(KD_, VD_)                                                          \
  if (pr.K == KD_ && pr.V == VD_)                                                            \
    return bf16 ? launch_all<__nv_bfloat16, KD_, VD_>(a, bv, max_smem, dev, pdl, stream, nullptr, nullptr, bw) \
                : launch_all<__half, KD_, VD_>(a, bv, max_smem, dev, pdl, stream, nullptr, nullptr, bw);
  FLASHGDN_DISPATCH(128, 128)
  FLASHGDN_DISPATCH(128, 64)
  FLASHGDN_DISPATCH(64, 128)
  FLASHGDN_DISPATCH(64, 64)
#undef FLASHGDN_DISPATCH
  return fail(FLASHGDN_ERROR_INTERNAL, "flashgdn_chunk_fwd: no kernel for K = %lld, V = %lld", (long long)pr.K,
              (long long)pr.V);
}

}  // namespace

}  // namespace flashgdn::portable
