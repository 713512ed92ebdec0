// The C ABI: info, parameter initialisation, workspace queries, GPU entry points and the CPU reference.
#include <cstring>
#include <initializer_list>
#include <utility>

#include "api/dispatch.hpp"
#include "api/error.hpp"
#include "api/problem.hpp"
#include "api/tensor.hpp"
#include "reference/reference.hpp"

using namespace flashgdn;

namespace {

constexpr size_t kWorkspaceAlign = 256;

flashgdn_status_t check_workspace(const char* fn, size_t need, void* ws, size_t bytes) {
  if (need == 0) return FLASHGDN_SUCCESS;
  if (ws == nullptr)
    return fail(FLASHGDN_ERROR_WORKSPACE, "%s: argument 'workspace' is NULL but %zu bytes are required", fn, need);
  if (bytes < need)
    return fail(FLASHGDN_ERROR_WORKSPACE, "%s: argument 'workspace_bytes' = %zu is smaller than the required %zu", fn,
                bytes, need);
  if (reinterpret_cast<uintptr_t>(ws) % kWorkspaceAlign != 0)
    return fail(FLASHGDN_ERROR_WORKSPACE, "%s: argument 'workspace' must be %zu-byte aligned", fn, kWorkspaceAlign);
  return FLASHGDN_SUCCESS;
}

// The CPU reference dereferences every pointer on the host: device memory would crash it.
flashgdn_status_t check_host_tensors(const char* fn, std::initializer_list<std::pair<const char*, const flashgdn_tensor_t*>> ts) {
  for (const auto& [name, t] : ts)
    if (t->data != nullptr && is_device_only_pointer(t->data))
      return fail(FLASHGDN_ERROR_INVALID_ARGUMENT,
                  "%s: argument '%s' is device memory; the CPU reference takes host memory", fn, name);
  return FLASHGDN_SUCCESS;
}

}  // namespace

extern "C" {

int32_t flashgdn_abi_version(void) { return FLASHGDN_ABI_VERSION; }

const char* flashgdn_version_string(void) {
#define FLASHGDN_STR2(x) #x
#define FLASHGDN_STR(x) FLASHGDN_STR2(x)
  return FLASHGDN_STR(FLASHGDN_VERSION_MAJOR) "." FLASHGDN_STR(FLASHGDN_VERSION_MINOR) "." FLASHGDN_STR(
      FLASHGDN_VERSION_PATCH);
}

int32_t flashgdn_built_with_gpu(void) { return gpu_built() ? 1 : 0; }

void flashgdn_chunk_fwd_params_init(flashgdn_chunk_fwd_params_t* p) {
  if (!p) return;
  std::memset(p, 0, sizeof(*p));
  p->struct_size = sizeof(*p);
}

void flashgdn_chunk_bwd_params_init(flashgdn_chunk_bwd_params_t* p) {
  if (!p) return;
  std::memset(p, 0, sizeof(*p));
  p->struct_size = sizeof(*p);
}

flashgdn_tensor_t flashgdn_make_tensor(void* data, flashgdn_dtype_t dtype, int32_t ndim, const int64_t* shape) {
  flashgdn_tensor_t t;
  std::memset(&t, 0, sizeof(t));
  t.data = data;
  t.dtype = dtype;
  t.ndim = ndim;
  if (ndim < 1 || ndim > FLASHGDN_MAX_DIMS || shape == nullptr) return t;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    t.shape[i] = shape[i];
    t.stride[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
  return t;
}

flashgdn_status_t flashgdn_init(int32_t device) {
  if (device < -1)
    return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "flashgdn_init: argument 'device' = %d, expected -1 (the current "
                "device) or a device index", static_cast<int>(device));
  return init_device(device);
}

flashgdn_status_t flashgdn_chunk_fwd_workspace_size(const flashgdn_chunk_fwd_params_t* params, size_t* bytes) {
  static const char* fn = "flashgdn_chunk_fwd_workspace_size";
  if (bytes == nullptr) return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'bytes' is NULL", fn);
  Problem pr;
  FLASHGDN_TRY(validate_fwd(params, Target::kGpu, fn, &pr));
  *bytes = fwd_workspace_bytes(pr);
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t flashgdn_chunk_fwd(const flashgdn_chunk_fwd_params_t* params, void* workspace,
                                     size_t workspace_bytes, flashgdn_stream_t stream) {
  static const char* fn = "flashgdn_chunk_fwd";
  Problem pr;
  FLASHGDN_TRY(validate_fwd(params, Target::kGpu, fn, &pr));
  FLASHGDN_TRY(check_workspace(fn, fwd_workspace_bytes(pr), workspace, workspace_bytes));
  if (pr.check)
    FLASHGDN_TRY(check_device_inputs(pr, params->cu_seqlens, pr.pool ? &params->state_indices : nullptr, params->g, fn,
                                      stream));
  return launch_fwd(pr, *params, workspace, stream);
}

flashgdn_status_t flashgdn_chunk_bwd_workspace_size(const flashgdn_chunk_bwd_params_t* params, size_t* bytes) {
  static const char* fn = "flashgdn_chunk_bwd_workspace_size";
  if (bytes == nullptr) return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'bytes' is NULL", fn);
  Problem pr;
  FLASHGDN_TRY(validate_bwd(params, Target::kGpu, fn, &pr));
  *bytes = bwd_workspace_bytes(pr);
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t flashgdn_chunk_bwd(const flashgdn_chunk_bwd_params_t* params, void* workspace,
                                     size_t workspace_bytes, flashgdn_stream_t stream) {
  static const char* fn = "flashgdn_chunk_bwd";
  Problem pr;
  FLASHGDN_TRY(validate_bwd(params, Target::kGpu, fn, &pr));
  FLASHGDN_TRY(check_workspace(fn, bwd_workspace_bytes(pr), workspace, workspace_bytes));
  if (pr.check) FLASHGDN_TRY(check_device_inputs(pr, params->cu_seqlens, nullptr, params->g, fn, stream));
  return launch_bwd(pr, *params, workspace, stream);
}

flashgdn_status_t flashgdn_reference_fwd(const flashgdn_chunk_fwd_params_t* params, flashgdn_reference_algo_t algo) {
  static const char* fn = "flashgdn_reference_fwd";
  Problem pr;
  FLASHGDN_TRY(validate_fwd(params, Target::kReference, fn, &pr));
  const flashgdn_chunk_fwd_params_t& p = *params;
  FLASHGDN_TRY(check_host_tensors(fn, {{"q", &p.q}, {"k", &p.k}, {"v", &p.v}, {"g", &p.g}, {"beta", &p.beta},
                                       {"o", &p.o}, {"initial_state", &p.initial_state},
                                       {"final_state", &p.final_state}, {"cu_seqlens", &p.cu_seqlens},
                                       {"state_indices", &p.state_indices},
                                       {"has_initial_state", &p.has_initial_state}}));
  switch (algo) {
    case FLASHGDN_REFERENCE_RECURRENT_FP64: return reference::recurrent_fwd(*params, pr);
    case FLASHGDN_REFERENCE_CHUNKED_FP32: return reference::chunked_fwd(*params, pr);
  }
  return fail(FLASHGDN_ERROR_INVALID_ARGUMENT, "%s: argument 'algo' = %d is not a flashgdn_reference_algo_t", fn,
              static_cast<int>(algo));
}

flashgdn_status_t flashgdn_reference_bwd(const flashgdn_chunk_bwd_params_t* params) {
  static const char* fn = "flashgdn_reference_bwd";
  Problem pr;
  FLASHGDN_TRY(validate_bwd(params, Target::kReference, fn, &pr));
  const flashgdn_chunk_bwd_params_t& p = *params;
  FLASHGDN_TRY(check_host_tensors(fn, {{"q", &p.q}, {"k", &p.k}, {"v", &p.v}, {"g", &p.g}, {"beta", &p.beta},
                                       {"initial_state", &p.initial_state}, {"cu_seqlens", &p.cu_seqlens},
                                       {"d_o", &p.d_o}, {"d_final_state", &p.d_final_state}, {"dq", &p.dq},
                                       {"dk", &p.dk}, {"dv", &p.dv}, {"dg", &p.dg}, {"dbeta", &p.dbeta},
                                       {"d_initial_state", &p.d_initial_state}}));
  return reference::recurrent_bwd(*params, pr);
}

}  // extern "C"
