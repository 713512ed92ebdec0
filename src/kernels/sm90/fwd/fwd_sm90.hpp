// sm_90a forward, stage 2. Host side: when it applies, the tensor maps, the launch. The head form
// (fused_head_sm90.cuh: one CTA per (sequence, head); stage 1 the portable prepare with a_only) where the planner
// would give the portable recurrence 64-column slices and no context parallelism; FLASHGDN_EXPERIMENTAL_SM90=3 forces
// it wherever it applies, =4 forces its SOLVE variant (no prepare stage: its gates warpgroup computes A), =0 never;
// planned context parallelism runs on head-form passes (FLASHGDN_SM90_CP=0: on the portable recurrence's). (1 and 2, the W/U recurrence and the
// two-slice fused form, were removed once the head form beat them on every row measured; docs/design.md §6.1.)
#pragma once

#include <cuda_runtime.h>

#include "api/problem.hpp"
#include "flashgdn/flashgdn.h"
#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::sm90fwd {

// K = V = 128, bf16, compute capability 9.x, no context parallelism, one token stride for every batch row,
// the shared memory available, and variant() != 0.
bool applies(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, int cc_major, int max_smem);

// The variant (read on every call): FLASHGDN_EXPERIMENTAL_SM90=0 off, =3 the head form, =4 the head form without
// prepare; unset (or another value, said once on stderr): the head form where the planner takes it (forced() false).
int variant();
// FLASHGDN_EXPERIMENTAL_SM90 is 3 or 4: the variant wherever it applies (A/B), not only where planned.
bool forced();

// Context parallelism with the head form's passes (the default; FLASHGDN_SM90_CP=0 not): bf16, K = V = 128, cc 9.x,
// TMA-aligned q/k/v, the shared memory. The transition and final passes are then head-form kernels after prepare
// (the SOLVE variant's without it); the scan between them stays the portable one.
bool applies_cp(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, int cc_major, int max_smem);
// One CP pass (a.cp_pass 1: transition, 3: final) on the head form.
flashgdn_status_t launch_cp(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                            cudaStream_t stream);

// flashgdn_init on `dev` (the current device, compute capability 9.x): loads the head form's instantiations of the
// default switches (the head form, CP passes 1 and 3) and raises their shared-memory limits; adds their count.
flashgdn_status_t preload(int dev, int* loaded);

// Launches the head form (after the portable prepare stage in a_only mode, except for variant 4).
flashgdn_status_t launch(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                         cudaStream_t stream);

}  // namespace flashgdn::sm90fwd
