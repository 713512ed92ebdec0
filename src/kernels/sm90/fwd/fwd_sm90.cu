// Host launcher of the sm_90a forward (fwd_sm90.hpp). Compiled for sm_90a only.
#include "kernels/sm90/fwd/fwd_sm90.hpp"

#include <atomic>
#include <cstdint>
#include <cstdio>

#include "api/env.hpp"
#include "api/error.hpp"
#include "api/tensor_map.hpp"
#include "kernels/launch_util.hpp"
#include "kernels/sm90/fwd/fused_head_sm90.cuh"

namespace flashgdn::sm90fwd {

// NOTE: read on every call (a getenv each): benchmarks switch variants within one process.
int variant() {
  if (env_is_value("FLASHGDN_EXPERIMENTAL_SM90", "3")) return 3;
  if (env_is_value("FLASHGDN_EXPERIMENTAL_SM90", "4")) return 4;
  if (env_is_zero("FLASHGDN_EXPERIMENTAL_SM90")) return 0;
  const char* v = std::getenv("FLASHGDN_EXPERIMENTAL_SM90");
  if (v != nullptr && *v != '\0') {  // not a variant (1 and 2, the W/U recurrence and the fused form, are gone)
    static std::atomic<bool> told{false};
    if (!told.exchange(true))
      std::fprintf(stderr,
                   "flashgdn: FLASHGDN_EXPERIMENTAL_SM90=%s is not a variant (0: off, 3: head form, 4: head form "
                   "without prepare); the default plan runs (said once per process)\n",
                   v);
  }
  return 3;  // unset: the head form where planned
}

bool forced() {
  return env_is_value("FLASHGDN_EXPERIMENTAL_SM90", "3") || env_is_value("FLASHGDN_EXPERIMENTAL_SM90", "4");
}

namespace {

// TMA over the user's q, k, v: one token stride for every batch row (the 3-D maps index tokens as b * T + t), 16-byte
// aligned bases and strides.
bool tma_ok(const Problem& pr, const flashgdn_chunk_fwd_params_t& p) {
  for (const flashgdn_tensor_t* x : {&p.q, &p.k, &p.v}) {
    const int64_t width = x == &p.v ? pr.V : pr.K;
    if (pr.B > 1 && x->stride[0] != pr.T * x->stride[1]) return false;
    if (reinterpret_cast<uintptr_t>(x->data) % 16 != 0 || x->stride[1] % 8 != 0 || x->stride[2] % 8 != 0 ||
        x->stride[2] < width)
      return false;
  }
  return true;
}

}  // namespace

bool applies(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, int cc_major, int max_smem) {
  const int var = variant();
  if (var == 0) return false;
  if (cc_major != 9 || pr.K != 128 || pr.V != 128 || pr.io_dtype != FLASHGDN_DTYPE_BFLOAT16) return false;
  if (pr.cp_mode == FLASHGDN_CP_ON) return false;
  if (max_smem < static_cast<int>(head::smem_bytes(var == 4))) return false;
  return tma_ok(pr, p);
}

namespace {

// q / k (heads = Hqk, width K) or v (heads = Hv, width V): (width, heads, tokens), boxes (64, 1, 64).
flashgdn_status_t map_tokens(CUtensorMap* map, const flashgdn_tensor_t& x, const Problem& pr, const char* name,
                         bool is_v = false) {
  TmaTile t;
  t.base = x.data;
  t.dtype = x.dtype;
  t.dim0 = static_cast<uint64_t>(is_v ? pr.V : pr.K);
  t.dim1 = static_cast<uint64_t>(is_v ? pr.Hv : pr.Hqk);
  t.row_stride_bytes = static_cast<uint64_t>(x.stride[2]) * 2;
  t.dim2 = static_cast<uint64_t>(pr.B * pr.T);
  t.stride2_bytes = static_cast<uint64_t>(x.stride[1]) * 2;
  t.box0 = 64;
  t.box1 = 1;
  t.box2 = 64;
  t.swizzle = device::Swizzle::k128B;
  return encode_tma_tile(map, t, "flashgdn_chunk_fwd", name);
}

// A workspace image array: `rows` rows of `inner` elements (16-byte pads included), boxes of (64, 64).
flashgdn_status_t map_image(CUtensorMap* map, const void* base, int inner, int64_t rows, const char* name) {
  TmaTile t;
  t.base = base;
  t.dtype = FLASHGDN_DTYPE_BFLOAT16;
  t.dim0 = static_cast<uint64_t>(inner);
  t.dim1 = static_cast<uint64_t>(rows);
  t.row_stride_bytes = static_cast<uint64_t>(inner) * 2;
  t.box0 = 64;
  t.box1 = 64;
  t.swizzle = device::Swizzle::k128B;
  return encode_tma_tile(map, t, "flashgdn_chunk_fwd", name);
}

// The shared-memory limit of one instantiation, raised once per device (bit `dev`; launch and preload share it).
template <bool PINGPONG, bool SOLVE, int CP>
std::atomic<uint64_t>& head_raised() {
  static std::atomic<uint64_t> raised{0};
  return raised;
}

template <bool PINGPONG, bool SOLVE, int CP = 0>
flashgdn_status_t launch_head_kernel(const head::Maps& maps, const portable::FwdArgs& a, cudaStream_t stream) {
  auto kernel = head::fused_head_sm90_kernel<PINGPONG, SOLVE, CP>;
  constexpr uint32_t smem = head::smem_bytes(SOLVE);
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = raise_smem_limit_once(kernel, static_cast<int>(smem), dev, head_raised<PINGPONG, SOLVE, CP>());
  if (e != cudaSuccess)
    return fail(FLASHGDN_ERROR_CUDA, "flashgdn_chunk_fwd: sm90 head kernel setup: %s", cudaGetErrorString(e));
  // CTAs: sequences (CP 0), segments (pass 3) or segments x {S_loc, M} (pass 1), times heads.
  const int64_t ranks = CP == 0 ? int64_t(a.N) : CP == 1 ? 2 * a.g_max : a.g_max;
  if (ranks * a.Hv > 0x7fffffff) return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn_chunk_fwd: too many CTAs");
  if (ranks * a.Hv == 0) return FLASHGDN_SUCCESS;
  kernel<<<static_cast<unsigned>(ranks * a.Hv), head::kThreads, smem, stream>>>(maps, a);
  e = cudaGetLastError();
  if (e != cudaSuccess)
    return fail(FLASHGDN_ERROR_CUDA, "flashgdn_chunk_fwd: sm90 head kernel launch: %s", cudaGetErrorString(e));
  return FLASHGDN_SUCCESS;
}

// flashgdn_init: the instantiation loaded (cudaFuncGetAttributes loads it under lazy module loading) and its
// shared-memory limit raised on `dev` (the current device).
template <bool PINGPONG, bool SOLVE, int CP>
flashgdn_status_t preload_head_kernel(int dev) {
  auto kernel = head::fused_head_sm90_kernel<PINGPONG, SOLVE, CP>;
  cudaFuncAttributes fa{};
  cudaError_t e = cudaFuncGetAttributes(&fa, kernel);
  if (e == cudaSuccess)
    e = raise_smem_limit_once(kernel, static_cast<int>(head::smem_bytes(SOLVE)), dev, head_raised<PINGPONG, SOLVE, CP>());
  if (e != cudaSuccess) return fail(FLASHGDN_ERROR_CUDA, "flashgdn_init: sm90 head kernel: %s", cudaGetErrorString(e));
  return FLASHGDN_SUCCESS;
}

// The head form; solve: the variant without a prepare stage (its gates warpgroup computes A itself).
flashgdn_status_t launch_head(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                              bool solve, cudaStream_t stream) {
  using portable::kChunk;
  head::Maps maps{};
  FLASHGDN_TRY(map_tokens(&maps.q, p.q, pr, "q"));
  FLASHGDN_TRY(map_tokens(&maps.k, p.k, pr, "k"));
  FLASHGDN_TRY(map_tokens(&maps.v, p.v, pr, "v", true));
  if (!solve)
    FLASHGDN_TRY(map_image(&maps.a, a.Pm, kChunk + 8, a.max_chunks * a.Hv * kChunk, "workspace A"));
  // NOTE: read on every call (A/B within one process). The ping-pong schedule is the default (H100, 031f29b: 16/64
  // 8192x4 1.301 -> 1.273 ms with the tf32 solve levels, 16/64 1x8192 0.520 -> 0.501); FLASHGDN_SM90_PINGPONG=0 not.
  const bool pingpong = !env_is_zero("FLASHGDN_SM90_PINGPONG");
  if (solve) return pingpong ? launch_head_kernel<true, true>(maps, a, stream) : launch_head_kernel<false, true>(maps, a, stream);
  return pingpong ? launch_head_kernel<true, false>(maps, a, stream) : launch_head_kernel<false, false>(maps, a, stream);
}

}  // namespace

bool applies_cp(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, int cc_major, int max_smem) {
  if (env_is_zero("FLASHGDN_SM90_CP") || variant() == 0) return false;
  if (cc_major != 9 || pr.K != 128 || pr.V != 128 || pr.io_dtype != FLASHGDN_DTYPE_BFLOAT16) return false;
  if (max_smem < static_cast<int>(head::smem_bytes(variant() == 4))) return false;
  return tma_ok(pr, p);
}

flashgdn_status_t preload(int dev, int* loaded) {
  // The default switches' instantiations (ping-pong, prepare's A images): the head form, CP passes 1 and 3.
  FLASHGDN_TRY((preload_head_kernel<true, false, 0>(dev)));
  FLASHGDN_TRY((preload_head_kernel<true, false, 1>(dev)));
  FLASHGDN_TRY((preload_head_kernel<true, false, 3>(dev)));
  *loaded += 3;
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t launch_cp(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                            cudaStream_t stream) {
  head::Maps maps{};
  FLASHGDN_TRY(map_tokens(&maps.q, p.q, pr, "q"));
  FLASHGDN_TRY(map_tokens(&maps.k, p.k, pr, "k"));
  FLASHGDN_TRY(map_tokens(&maps.v, p.v, pr, "v", true));
  const bool solve = variant() == 4;  // the passes without prepare's A images (A/B)
  if (!solve) FLASHGDN_TRY(map_image(&maps.a, a.Pm, portable::kChunk + 8, a.max_chunks * a.Hv * portable::kChunk, "workspace A"));
  const bool pingpong = !env_is_zero("FLASHGDN_SM90_PINGPONG");
  if (a.cp_pass == 1)
    return solve ? launch_head_kernel<false, true, 1>(maps, a, stream)
                 : pingpong ? launch_head_kernel<true, false, 1>(maps, a, stream) : launch_head_kernel<false, false, 1>(maps, a, stream);
  if (a.cp_pass == 3)
    return solve ? launch_head_kernel<false, true, 3>(maps, a, stream)
                 : pingpong ? launch_head_kernel<true, false, 3>(maps, a, stream) : launch_head_kernel<false, false, 3>(maps, a, stream);
  return fail(FLASHGDN_ERROR_INTERNAL, "flashgdn_chunk_fwd: sm90 CP pass %d", a.cp_pass);
}

flashgdn_status_t launch(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                         cudaStream_t stream) {
  return launch_head(a, pr, p, variant() == 4, stream);
}

}  // namespace flashgdn::sm90fwd
