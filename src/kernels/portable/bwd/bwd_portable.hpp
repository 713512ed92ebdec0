// Host launchers of the portable backward: the whole backward, and stage 4 (stages 1-3 sit with the
// forward's launcher, whose planning they share: fwd_portable.hpp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "api/problem.hpp"
#include "flashgdn/flashgdn.h"
#include "kernels/portable/bwd/params.hpp"

namespace flashgdn::portable {

// Stage 4: dq, dk from stage 3's per-value-head gradients (qk_grads.cuh). K = 64 or 128; `dtype` is the
// inputs' (bf16 or fp16).
flashgdn_status_t launch_qk_grads(const QkGradArgs& g, int K, flashgdn_dtype_t dtype, cudaStream_t stream);

// The whole GPU backward (docs/design.md §4.2): stages 1-3 (launch_bwd_stages123) and stage 4, on `stream`,
// no allocation and no synchronisation; `workspace` holds bwd_workspace_bytes(pr) bytes (plan.hpp's
// BwdLayout).
size_t bwd_workspace_bytes(const Problem& pr);
flashgdn_status_t launch_bwd(const Problem& pr, const flashgdn_chunk_bwd_params_t& p, void* workspace,
                             cudaStream_t stream);

}  // namespace flashgdn::portable
