// GPU dispatch: workspace planning, checking mode, and the choice of kernel path.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "api/dispatch.hpp"
#include "api/env.hpp"
#include "api/error.hpp"
#include "api/tensor.hpp"
#include "api/tensor_map.hpp"
#include "kernels/portable/bwd/bwd_portable.hpp"
#include "kernels/portable/fwd/fwd_portable.hpp"

namespace flashgdn {

bool gpu_built() { return true; }

bool is_device_only_pointer(const void* p) {
  if (p == nullptr) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // no driver / unregistered host pointer: not device memory
    return false;
  }
  return attr.type == cudaMemoryTypeDevice;
}

size_t fwd_workspace_bytes(const Problem& pr) { return portable::workspace_bytes(pr); }
size_t bwd_workspace_bytes(const Problem& pr) { return portable::bwd_workspace_bytes(pr); }

namespace {

flashgdn_status_t cuda_fail(const char* fn, const char* what, cudaError_t e) {
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
    return fail(FLASHGDN_ERROR_NO_DEVICE, "%s: %s: %s", fn, what, cudaGetErrorString(e));
  return fail(FLASHGDN_ERROR_CUDA, "%s: %s: %s", fn, what, cudaGetErrorString(e));
}

flashgdn_status_t copy_indices(const flashgdn_tensor_t& t, int64_t n, const char* fn, cudaStream_t s,
                               std::vector<int64_t>* out) {
  out->resize(n);
  if (n == 0) return FLASHGDN_SUCCESS;
  const size_t es = dtype_size(t.dtype);
  std::vector<unsigned char> raw(n * es);
  cudaError_t e = cudaMemcpyAsync(raw.data(), t.data, n * es, cudaMemcpyDeviceToHost, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return cuda_fail(fn, "checking mode: copying indices to the host failed", e);
  for (int64_t i = 0; i < n; ++i)
    (*out)[i] = t.dtype == FLASHGDN_DTYPE_INT64 ? reinterpret_cast<const int64_t*>(raw.data())[i]
                                                : reinterpret_cast<const int32_t*>(raw.data())[i];
  return FLASHGDN_SUCCESS;
}

}  // namespace

flashgdn_status_t init_device(int device) {
  static const char* fn = "flashgdn_init";
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  const auto t0 = clock::now();
  int prev = 0, count = 0;
  cudaError_t e = cudaGetDevice(&prev);  // this library's CUDA runtime (linked statically) starts here
  if (e == cudaSuccess) e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return cuda_fail(fn, "cudaGetDevice", e);
  if (device >= count)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'device' = %d, but %d devices are visible", fn, device,
                count);
  const int dev = device < 0 ? prev : device;
  if (dev != prev && (e = cudaSetDevice(dev)) != cudaSuccess) return cuda_fail(fn, "cudaSetDevice", e);
  e = cudaFree(nullptr);  // the device's primary context (a no-op where the caller made it already)
  const auto t1 = clock::now();
  flashgdn_status_t st = e == cudaSuccess ? FLASHGDN_SUCCESS : cuda_fail(fn, "cudaFree(nullptr)", e);
  if (st == FLASHGDN_SUCCESS) st = fetch_tensor_map_encoder(fn);
  const auto t2 = clock::now();
  int loaded = 0;
  if (st == FLASHGDN_SUCCESS) st = portable::preload_fwd(dev, &loaded);
  const auto t3 = clock::now();
  if (dev != prev && (e = cudaSetDevice(prev)) != cudaSuccess && st == FLASHGDN_SUCCESS)
    st = cuda_fail(fn, "cudaSetDevice (restoring the current device)", e);
  if (env_is_one("FLASHGDN_TRACE_INIT"))
    std::fprintf(stderr, "flashgdn_init(device %d): runtime and context %.3f ms, tensor-map entry point %.3f ms, "
                 "device attributes and %d kernels %.3f ms, total %.3f ms (status %d)\n",
                 dev, ms(t0, t1), ms(t1, t2), loaded, ms(t2, t3), ms(t0, clock::now()), static_cast<int>(st));
  return st;
}

flashgdn_status_t check_device_inputs(const Problem& pr, const flashgdn_tensor_t& cu, const flashgdn_tensor_t* idx,
                                      const flashgdn_tensor_t& g, const char* fn, flashgdn_stream_t stream) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaError_t e = cudaStreamIsCapturing(s, &cap);
  if (e != cudaSuccess) return cuda_fail(fn, "cudaStreamIsCapturing", e);
  if (cap != cudaStreamCaptureStatusNone)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                "%s: argument 'check_inputs' is set while the stream is being captured; checking mode synchronises and "
                "cannot be captured in a CUDA graph",
                fn);
  if (pr.varlen) {
    std::vector<int64_t> c;
    FLASHGDN_TRY(copy_indices(cu, pr.N + 1, fn, s, &c));
    if (c[0] != 0) return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: cu_seqlens[0] = %lld, expected 0", fn, (long long)c[0]);
    for (int64_t n = 0; n < pr.N; ++n) {
      if (c[n + 1] < c[n])
        return fail(FLASHGDN_ERROR_INVALID_DATA,
                    "%s: cu_seqlens is not non-decreasing: cu_seqlens[%lld] = %lld < cu_seqlens[%lld] = %lld", fn,
                    (long long)(n + 1), (long long)c[n + 1], (long long)n, (long long)c[n]);
    }
    if (c[pr.N] != pr.T)
      return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: cu_seqlens[N] = %lld, expected the token count T = %lld", fn,
                  (long long)c[pr.N], (long long)pr.T);
  }
  if (idx) {
    std::vector<int64_t> v;
    FLASHGDN_TRY(copy_indices(*idx, pr.N, fn, s, &v));
    std::vector<int64_t> owner(pr.P, -1);
    for (int64_t n = 0; n < pr.N; ++n) {
      if (v[n] < -1 || v[n] >= pr.P)
        return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: state_indices[%lld] = %lld is outside [-1, %lld)", fn,
                    (long long)n, (long long)v[n], (long long)pr.P);
      if (v[n] >= 0) {
        if (owner[v[n]] >= 0)
          return fail(FLASHGDN_ERROR_INVALID_DATA,
                      "%s: state_indices[%lld] and state_indices[%lld] both name pool slot %lld", fn,
                      (long long)owner[v[n]], (long long)n, (long long)v[n]);
        owner[v[n]] = n;
      }
    }
  }
  // g: the per-token log decay must be finite and <= 0 (the kernels only ever scale by exp(<= 0)).
  if (pr.B * pr.T * pr.Hv > 0) {
    const int64_t span = (pr.B - 1) * g.stride[0] + (pr.T - 1) * g.stride[1] + (pr.Hv - 1) * g.stride[2] + 1;
    std::vector<float> hg(span);
    cudaError_t e2 = cudaMemcpyAsync(hg.data(), g.data, span * sizeof(float), cudaMemcpyDeviceToHost, s);
    if (e2 == cudaSuccess) e2 = cudaStreamSynchronize(s);
    if (e2 != cudaSuccess) return cuda_fail(fn, "checking mode: copying g to the host failed", e2);
    for (int64_t b = 0; b < pr.B; ++b)
      for (int64_t t = 0; t < pr.T; ++t)
        for (int64_t h = 0; h < pr.Hv; ++h) {
          const float x = hg[b * g.stride[0] + t * g.stride[1] + h * g.stride[2]];
          if (!(x <= 0.f))
            return fail(FLASHGDN_ERROR_INVALID_DATA,
                        "%s: g[%lld, %lld, %lld] = %g; the log decay must be finite and <= 0", fn, (long long)b,
                        (long long)t, (long long)h, static_cast<double>(x));
        }
  }
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t launch_fwd(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                             flashgdn_stream_t stream) {
  return portable::launch_fwd(pr, p, workspace, reinterpret_cast<cudaStream_t>(stream));
}

flashgdn_status_t launch_bwd(const Problem& pr, const flashgdn_chunk_bwd_params_t& p, void* workspace,
                             flashgdn_stream_t stream) {
  return portable::launch_bwd(pr, p, workspace, reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace flashgdn
