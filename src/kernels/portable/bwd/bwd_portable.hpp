// Host launchers of the portable backward's kernels that do not need the forward's planning (the rest,
// stages 1-2, sit with the forward's launcher: fwd_portable.hpp).
#pragma once

#include <cuda_runtime.h>

#include "flashgdn/flashgdn.h"
#include "kernels/portable/bwd/params.hpp"

namespace flashgdn::portable {

// Stage 4: dq, dk from stage 3's per-value-head gradients (qk_grads.cuh). K = 64 or 128; `dtype` is the
// inputs' (bf16 or fp16).
flashgdn_status_t launch_qk_grads(const QkGradArgs& g, int K, flashgdn_dtype_t dtype, cudaStream_t stream);

}  // namespace flashgdn::portable
