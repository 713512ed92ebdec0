// Host launcher of the portable (sm_80+) chunked forward: workspace layout, tile choice, launches.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "api/error.hpp"
#include "api/tensor.hpp"
#include "kernels/portable/fwd/fwd_portable.hpp"
#include "kernels/portable/fwd/prepare.cuh"
#include "kernels/portable/fwd/recurrence.cuh"

namespace flashgdn::portable {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct Layout {
  size_t offsets, order, info, aux, w, u, pm, total;
};

Layout layout(const Problem& pr) {
  const size_t chunks = static_cast<size_t>(pr.max_chunks()), hv = static_cast<size_t>(pr.Hv);
  Layout l{};
  size_t at = 0;
  l.offsets = at;
  at += align_up((pr.N + 1) * sizeof(int64_t));
  l.order = at;
  at += align_up(pr.N * sizeof(int32_t));
  l.info = at;
  at += align_up(chunks * sizeof(FwdArgs::ChunkInfo));
  l.aux = at;
  at += align_up(chunks * hv * 3 * kChunk * sizeof(float));
  l.w = at;
  at += align_up(chunks * hv * w_image_elems(static_cast<int>(pr.K)) * 2);
  l.u = at;
  at += align_up(chunks * hv * u_image_elems(static_cast<int>(pr.V), kMinBv) * 2);
  l.pm = at;
  at += align_up(chunks * hv * pm_image_elems() * 2);
  l.total = at;
  return l;
}

void strides3(const flashgdn_tensor_t& t, int64_t (&s)[3]) {
  for (int i = 0; i < 3; ++i) s[i] = t.stride[i];
}

// Per-device attributes, read once (the launch path stays free of repeated driver queries).
struct DeviceInfo {
  int num_sms = 0, max_smem = 0;
};

flashgdn_status_t device_info(int dev, DeviceInfo* out);

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per kernel and device (bit `dev` of `done`).
template <class Kernel>
cudaError_t raise_smem_limit_once(Kernel kernel, int smem, int dev, std::atomic<uint64_t>& done) {
  const uint64_t bit = dev < 64 ? (uint64_t(1) << dev) : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e == cudaSuccess && bit) done.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

flashgdn_status_t cuda_error(const char* what, cudaError_t e) {
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
    return fail(FLASHGDN_ERROR_NO_DEVICE, "flashgdn_chunk_fwd: %s: %s", what, cudaGetErrorString(e));
  return fail(FLASHGDN_ERROR_CUDA, "flashgdn_chunk_fwd: %s: %s", what, cudaGetErrorString(e));
}

template <class T, int KD, int BV, int STAGES>
flashgdn_status_t launch_recurrence_stages(const FwdArgs& a, int v_tiles, int dev, cudaStream_t stream) {
  auto kernel = recurrence_kernel<T, KD, BV, STAGES>;
  const int smem = static_cast<int>(sizeof(RecurrenceSmem<T, KD, BV, STAGES>));
  static std::atomic<uint64_t> done{0};
  cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
  if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(recurrence)", e);
  kernel<<<static_cast<unsigned>(int64_t(a.N) * a.Hv * v_tiles), kRecThreads, smem, stream>>>(a);
  e = cudaGetLastError();
  return e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_error("recurrence kernel launch", e);
}

// The largest shared-memory block any supported GPU grants (sm_90: 227 KB); deeper variants are not built.
constexpr size_t kMaxSmemAnyGpu = 227 * 1024;

template <class T, int KD, int BV>
flashgdn_status_t launch_recurrence(const FwdArgs& a, int v_tiles, int max_smem, int dev, cudaStream_t stream) {
  // NOTE: a third input stage hides the latency of the first touch of a chunk's Q/K/W when the
  // per-chunk work is small (narrow V slices); taken wherever it fits.
  if constexpr (sizeof(RecurrenceSmem<T, KD, BV, 3>) <= kMaxSmemAnyGpu) {
    if (static_cast<int>(sizeof(RecurrenceSmem<T, KD, BV, 3>)) <= max_smem)
      return launch_recurrence_stages<T, KD, BV, 3>(a, v_tiles, dev, stream);
  }
  return launch_recurrence_stages<T, KD, BV, 2>(a, v_tiles, dev, stream);
}

template <class T, int KD, int VD>
flashgdn_status_t launch_all(FwdArgs a, int bv, int max_smem, int dev, cudaStream_t stream) {
  // Shrink BV if the device cannot hold the recurrence's tile (before stage 1: U's image depends on it).
  if (bv == 64 && static_cast<int>(sizeof(RecurrenceSmem<T, KD, 64, 2>)) > max_smem) bv = 32;
  if (bv == 32 && static_cast<int>(sizeof(RecurrenceSmem<T, KD, 32, 2>)) > max_smem) bv = 16;
  a.bv = bv;
  // Stage 1: prepare (parallel over chunks and value heads).
  {
    auto kernel = prepare_kernel<T, KD, VD>;
    const int smem = static_cast<int>(sizeof(PrepareSmem<T, KD, VD>));
    static std::atomic<uint64_t> done{0};
    cudaError_t e = raise_smem_limit_once(kernel, smem, dev, done);
    if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute(prepare)", e);
    if (a.max_chunks > 0) kernel<<<dim3(static_cast<unsigned>(a.max_chunks), a.Hv), 128, smem, stream>>>(a);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_error("prepare kernel launch", e);
  }
  const int v_tiles = a.V / bv;
  if (int64_t(a.N) * a.Hv * v_tiles > 0x7fffffff)
    return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn_chunk_fwd: N * Hv * (V / %d) = %lld exceeds the grid limit", bv,
                static_cast<long long>(int64_t(a.N) * a.Hv * v_tiles));
  switch (bv) {
    case 64: return launch_recurrence<T, KD, 64>(a, v_tiles, max_smem, dev, stream);
    case 32: return launch_recurrence<T, KD, 32>(a, v_tiles, max_smem, dev, stream);
    default: return launch_recurrence<T, KD, 16>(a, v_tiles, max_smem, dev, stream);
  }
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
  if (e != cudaSuccess) return cuda_error("cudaDeviceGetAttribute", e);
  std::lock_guard<std::mutex> lock(mu);
  cache[dev] = info;
  *out = info;
  return FLASHGDN_SUCCESS;
}

// FLASHGDN_PORTABLE_BV=16|32|64 pins the recurrence's V slice (a tuning and benchmarking aid, read once;
// documented in docs/design.md). Anything else is ignored with a message on stderr.
int bv_override() {
  static const int bv = [] {
    const char* e = std::getenv("FLASHGDN_PORTABLE_BV");
    if (e == nullptr || *e == 0) return 0;
    const int v = std::atoi(e);
    if (v == 16 || v == 32 || v == 64) return v;
    std::fprintf(stderr, "flashgdn: ignoring FLASHGDN_PORTABLE_BV=%s (expected 16, 32 or 64)\n", e);
    return 0;
  }();
  return bv;
}

}  // namespace

size_t workspace_bytes(const Problem& pr) { return layout(pr).total; }

int choose_bv(const Problem& pr, int num_sms) {
  // One CTA per SM (the recurrence uses ~200 KB of shared memory). Cost model: waves x per-chunk time
  // of a CTA, measured on H100 (53c2923..d3c1703) as ~1.5 / 2.0 / 3.0 us for BV = 16 / 32 / 64, i.e.
  // ~(1 + BV / 32): narrow slices buy parallelism when sequences x heads cannot fill the GPU, wide slices
  // do less redundant Q/K/W traffic and fewer products per column when they can.
  int best = 16;
  double best_cost = 1e300;
  for (int bv : {64, 32, 16}) {
    if (bv > pr.V) continue;
    const int64_t ctas = pr.N * pr.Hv * (pr.V / bv);
    // One sequence: whole waves. Several (lengths unknown on the host): fractional waves, since the
    // recurrence dispatches the longest sequence first and the short ones' CTAs free their SMs early.
    // NOTE: measured on H100 at 036f30d: fractional waves for N = 1 picked BV = 32 on 16/48 1x8192
    // (192 CTAs, two full waves) and lost 19%.
    const double waves = pr.N == 1 ? static_cast<double>((ctas + num_sms - 1) / num_sms)
                                   : std::max(1.0, static_cast<double>(ctas) / num_sms);
    const double cost = waves * (1.0 + bv / 32.0);
    if (cost < best_cost - 1e-9) {
      best_cost = cost;
      best = bv;
    }
  }
  return best;
}

flashgdn_status_t launch_fwd(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                             cudaStream_t stream) {
  if (pr.N == 0) return FLASHGDN_SUCCESS;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_error("cudaGetDevice", e);
  DeviceInfo info;
  FLASHGDN_TRY(device_info(dev, &info));
  const int num_sms = info.num_sms, max_smem = info.max_smem;

  const Layout l = layout(pr);
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
  a.max_chunks = pr.max_chunks();

  chunk_offsets_kernel<256><<<1, 256, 0, stream>>>(a);
  e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_error("chunk offsets kernel launch", e);
  seq_order_kernel<<<1, 1024, 0, stream>>>(a);
  e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_error("sequence order kernel launch", e);
  if (a.max_chunks > 0) {
    chunk_table_kernel<<<static_cast<unsigned>((a.max_chunks + 255) / 256), 256, 0, stream>>>(a);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_error("chunk table kernel launch", e);
  }

  const int bv = bv_override() > 0 && bv_override() <= pr.V ? bv_override() : choose_bv(pr, num_sms);
  const bool bf16 = pr.io_dtype == FLASHGDN_DTYPE_BFLOAT16;
#define FLASHGDN_DISPATCH(KD_, VD_)                                                          \
  if (pr.K == KD_ && pr.V == VD_)                                                            \
    return bf16 ? launch_all<__nv_bfloat16, KD_, VD_>(a, bv, max_smem, dev, stream)          \
                : launch_all<__half, KD_, VD_>(a, bv, max_smem, dev, stream);
  FLASHGDN_DISPATCH(128, 128)
  FLASHGDN_DISPATCH(128, 64)
  FLASHGDN_DISPATCH(64, 128)
  FLASHGDN_DISPATCH(64, 64)
#undef FLASHGDN_DISPATCH
  return fail(FLASHGDN_ERROR_INTERNAL, "flashgdn_chunk_fwd: no kernel for K = %lld, V = %lld", (long long)pr.K,
              (long long)pr.V);
}

}  // namespace flashgdn::portable
