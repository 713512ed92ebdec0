// Portable (sm_80+, mma.sync) chunked forward: prepare.cuh, recurrence.cuh, cp_scan.cuh; planning in plan.hpp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "api/problem.hpp"
#include "flashgdn/flashgdn.h"

namespace flashgdn::portable {

size_t workspace_bytes(const Problem& pr);
flashgdn_status_t launch_fwd(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                             cudaStream_t stream);

}  // namespace flashgdn::portable
