// Portable (sm_80+, mma.sync) chunked forward: prepare.cuh, recurrence.cuh, cp_scan.cuh; planning in plan.hpp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "api/problem.hpp"
#include "kernels/portable/bwd/params.hpp"
#include "flashgdn/flashgdn.h"

namespace flashgdn::portable {

size_t workspace_bytes(const Problem& pr);
// flashgdn_init on `dev` (the current device): device attributes and the sm_90a forward's kernels (default switches)
// loaded, with the scheduler and CP scan kernels it uses; adds the number of kernels loaded to *loaded.
flashgdn_status_t preload_fwd(int dev, int* loaded);
flashgdn_status_t launch_fwd(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                             cudaStream_t stream);

// The backward's recompute (stage 1 of docs/design.md §4.2): prepare (with the Ab images when `ab` is
// non-null: [max_chunks, Hv] x (64, 72) T) and the recurrence's states pass, which writes the state at
// each chunk's start to `h_states` ([max_chunks, Hv, K, V] in the input dtype) and no output (p.o is not
// written). Context parallelism is off. `workspace` as for launch_fwd (workspace_bytes(pr)).
flashgdn_status_t launch_fwd_states(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                                    void* h_states, void* ab, cudaStream_t stream);

// Stages 1-3 of the backward (docs/design.md §4.2): the recompute above (Ab into bw.ab, and Γ o A into
// bw.at when stage 3 runs), the reverse state recurrence (dstate.cuh: dv, the initial state's gradient and
// dS' per chunk into bw.dstates) and, when bw.dqh is non-null, the per-chunk gradients (chunk_grads.cuh:
// dq̂, dk̂ per value head into bw.dqh / bw.dkh, dg, dβ). Stage 4 is launch_qk_grads (bwd_portable.hpp).
flashgdn_status_t launch_bwd_stages123(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, void* workspace,
                                       void* h_states, const BwdArgs& bw, cudaStream_t stream);

}  // namespace flashgdn::portable
