// sm_90a forward, stage 2 (EXPERIMENTAL). Host side: when it applies, the tensor maps, the launch. Stage 1 stays
// the portable prepare kernel (BV = 64). FLASHGDN_EXPERIMENTAL_SM90=1: the recurrence over prepare's W, U, Pm
// images (recurrence_sm90.cuh); =2: the fused form over the gate-free A alone (fused_sm90.cuh; prepare then
// runs with a_only).
#pragma once

#include <cuda_runtime.h>

#include "api/problem.hpp"
#include "flashgdn/flashgdn.h"
#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::sm90fwd {

// K = V = 128, bf16, compute capability 9.x, no context parallelism, one token stride for every batch row,
// the shared memory available, and FLASHGDN_EXPERIMENTAL_SM90=1 or 2.
bool applies(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, int cc_major, int max_smem);

// The variant FLASHGDN_EXPERIMENTAL_SM90 asks for: 0 (off), 1 (W/U recurrence) or 2 (fused).
int variant();

// Launches the recurrence (after the portable prepare stage, with a.bv = 64).
flashgdn_status_t launch(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                         cudaStream_t stream);

}  // namespace flashgdn::sm90fwd
