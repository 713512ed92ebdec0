// sm_90a forward, stage 2. Host side: when it applies, the tensor maps, the launch. Stage 1 stays the portable
// prepare kernel. Unset FLASHGDN_EXPERIMENTAL_SM90 or =3: the head form (fused_head_sm90.cuh: one CTA per (sequence,
// head) over the gate-free A alone; prepare runs with a_only), unset only where the planner would give the portable
// recurrence 64-column slices and no context parallelism (the head form has neither narrower slices nor CP yet);
// =2: the fused form (fused_sm90.cuh, two V-slice CTAs per head; a_only as well); =1: the recurrence over
// prepare's W, U, Pm images (recurrence_sm90.cuh); =4: the head form without a prepare stage (its gates warpgroup
// computes A); =0: never. 4, 2 and 1 are A/B variants.
#pragma once

#include <cuda_runtime.h>

#include "api/problem.hpp"
#include "flashgdn/flashgdn.h"
#include "kernels/portable/fwd/params.hpp"

namespace flashgdn::sm90fwd {

// K = V = 128, bf16, compute capability 9.x, no context parallelism, one token stride for every batch row,
// the shared memory available, and variant() != 0.
bool applies(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, int cc_major, int max_smem);

// The variant (read on every call): FLASHGDN_EXPERIMENTAL_SM90=0 off, =1 the W/U recurrence, =2 the
// fused form, =3 the head form, =4 the head form without prepare; unset: the head form where the planner takes it
// (forced() false).
int variant();
// FLASHGDN_EXPERIMENTAL_SM90 is 1, 2, 3 or 4: the variant wherever it applies (A/B), not only where planned.
bool forced();

// Context parallelism with the head form's passes (FLASHGDN_SM90_CP=1, A/B; not the default): bf16, K = V = 128,
// cc 9.x, TMA-aligned q/k/v, the SOLVE variant's shared memory. The transition and final passes are then head-form
// kernels (no prepare stage); the scan between them stays the portable one.
bool applies_cp(const Problem& pr, const flashgdn_chunk_fwd_params_t& p, int cc_major, int max_smem);
// One CP pass (a.cp_pass 1: transition, 3: final) on the head form.
flashgdn_status_t launch_cp(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                            cudaStream_t stream);

// Launches the recurrence (after the portable prepare stage, with a.bv = 64).
flashgdn_status_t launch(const portable::FwdArgs& a, const Problem& pr, const flashgdn_chunk_fwd_params_t& p,
                         cudaStream_t stream);

}  // namespace flashgdn::sm90fwd
