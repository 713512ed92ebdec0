// Host-side planning of the portable forward: the recurrence's V slice (BV), intra-card context
// parallelism (CP), and the workspace layout. From the shapes, the SM count and, when the caller passes
// cu_seqlens_host, the sequence lengths (cu_seqlens itself lives on the device); the workspace query and
// the launch see the same parameters, so they agree. Host-only (no CUDA): tests/cpp/test_plan.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "api/problem.hpp"

namespace flashgdn::portable {

// Per-chunk time of a recurrence CTA in ~us for a V slice of BV (H100, measured at d3c1703..f8bfafc:
// 1.5 / 2.0 / 3.0 for BV = 16 / 32 / 64).
inline double chunk_time(int bv) { return 1.0 + bv / 32.0; }

// BV in {64, 32, 16} minimising the sequential recurrence's time: max(longest sequence's chunks x its
// CTAs' whole waves, all chunks x CTAs / SMs) x chunk_time (lengths from cu_seqlens_host, else equal).
int choose_bv(const Problem& pr, int num_sms);

// The V slice the CP passes use (the widest: the segments supply the parallelism).
inline constexpr int kCpBv = 64;

struct CpPlan {
  bool on = false;
  int seg_chunks = 0;  // chunks per segment
  int64_t g_max = 0;   // segments the grids are sized for (>= the actual count for any lengths)
};

// "on": always (segments sized so the final pass fits one wave); "auto": when the cost model predicts a
// gain (plan.cpp; docs/design.md §5.1); "off": never. head: the passes are the sm_90a head form's (one CTA per
// segment and head in the final pass, two in the transition pass; the default on Hopper) instead of the portable
// recurrence's V / 64 and (V + K) / 64; the segments are sized for those CTA counts (the cost model is the portable
// one).
CpPlan cp_plan(const Problem& pr, int num_sms, bool head = false);

// Byte offsets of the workspace regions (256-byte aligned).
struct Layout {
  size_t offsets, order, info, ready, prepared, aux, w, u, pm, seg_offsets, seg, cp_end, cp_h0, total;
  size_t cdecay, cp_warm;  // head-form CP only (head_cp and CP planned; else 0): the warm-up bounds and choices
  CpPlan cp;
};
Layout layout(const Problem& pr, int num_sms, bool head_cp = false);

// The backward's workspace (docs/design.md §4.2): the forward's (context parallelism off: the recompute is
// sequential) followed by the recompute's and the stages' buffers, each 256-byte aligned. Per (chunk, value
// head): h_states and dstates (K, V) in the input dtype, the Ab image (64, 72) in the input dtype, Ã = Γ o A
// (64, 64) fp32; per token and value head: dq̂, dk̂ (K) in the input dtype (none when Hqk = Hv without
// l2norm: stage 3 then writes dq, dk themselves).
struct BwdLayout {
  Layout fwd;
  size_t h_states, dstates, ab, at, dqh, dkh, total;
};
BwdLayout bwd_layout(const Problem& pr, int num_sms);

}  // namespace flashgdn::portable
