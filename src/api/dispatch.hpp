// Interface between the host API (validation, planning) and the kernels. Implemented by
// src/kernels/dispatch.cu in GPU builds and by src/api/dispatch_stub.cpp in host-only builds.
#pragma once

#include <cstddef>

#include "api/problem.hpp"
#include "flashgdn/flashgdn.h"

namespace flashgdn {

bool gpu_built();

// True if `p` is device (not host-accessible) memory; false without a driver or in host-only builds.
bool is_device_only_pointer(const void* p);

// Workspace bytes of a validated problem (shape-only: never reads device memory).
size_t fwd_workspace_bytes(const Problem& pr);
size_t bwd_workspace_bytes(const Problem& pr);

// Checking mode: copies cu_seqlens / state_indices / g to the host (synchronising `stream`) and reports
// non-monotone or out-of-range indices, duplicate pool slots and positive or non-finite g as
// FLASHGDN_ERROR_INVALID_DATA.
flashgdn_status_t check_device_inputs(const Problem& pr, const flashgdn_tensor_t& cu_seqlens,
                                      const flashgdn_tensor_t* state_indices, const flashgdn_tensor_t& g,
                                      const char* fn, flashgdn_stream_t stream);

// flashgdn_init: the runtime, device attributes, tensor-map entry point and the sm_90a forward's kernels, loaded now.
flashgdn_status_t init_device(int device);

flashgdn_status_t launch_fwd(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                             flashgdn_stream_t stream);
flashgdn_status_t launch_bwd(const Problem& pr, const flashgdn_chunk_bwd_params_t& p, void* workspace,
                             flashgdn_stream_t stream);

}  // namespace flashgdn
