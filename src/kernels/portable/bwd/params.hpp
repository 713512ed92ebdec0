// Arguments of the portable backward's kernels beyond the forward's FwdArgs (which the backward's
// recompute fills: sequences, chunk offsets, the prepare images).
#pragma once

#include <cstdint>

namespace flashgdn::portable {

struct BwdArgs {
  const void* d_o;     // [B, T, Hv, V] input dtype
  int64_t do_s[3];     // strides (b, t, h) in elements; the last dim is contiguous
  void* dv;            // [B, T, Hv, V] input dtype
  int64_t dv_s[3];
  const float* dht;    // [N, Hv, K, V] (or [.., V, K] with v_first) fp32; null: zero
  float* dh0;          // the same layout, fp32; null: not wanted
  int64_t dht_row_stride, dh0_row_stride;  // elements between sequences (the inner [Hv, K, V] is contiguous)
  const void* ab;      // [chunks, Hv] (64, 72) images of (Gamma o A) diag(beta), input dtype (prepare)
  void* dstates;       // [chunks, Hv, K, V] input dtype: dS' per chunk (for stage 3)
  // Stage 3 (chunk_grads.cuh); dqh null: stages 1-2 only.
  const void* at;      // [chunks, Hv] (64, 72) bf16 images of Γ o A (prepare on the recompute, FwdArgs::At)
  void* dqh;           // dq̂ per value head, input dtype, element (b, t, h, :) at b s[0] + t s[1] + h s[2]:
  void* dkh;           // the [B·T, Hv, K] workspace (stage 4's input), or dq / dk themselves when
  int64_t dqh_s[3], dkh_s[3];  // Hqk = Hv without l2norm (stage 4 then has nothing to do)
  float* dg;           // [B, T, Hv] fp32, strides (b, t, h)
  int64_t dg_s[3];
  void* dbeta;         // [B, T, Hv] beta's dtype
  int64_t dbeta_s[3];
};

// Stage 4 (qk_grads.cuh): per-value-head gradients w.r.t. q̂, k̂ -> dq, dk.
struct QkGradArgs {
  const void* dqh;   // [B·T, Hv, K] input dtype (stage 3)
  const void* dkh;
  const void* q;     // the forward's inputs (for the l2norm backward), strides (b, t, h) in elements
  const void* k;
  int64_t q_s[3], k_s[3];
  void* dq;          // [B, T, Hqk, K] input dtype
  void* dk;
  int64_t dq_s[3], dk_s[3];
  int B, T, Hqk, Hv, group;
  int l2norm;
};

}  // namespace flashgdn::portable
