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
  const void* ab;      // [chunks, Hv] (64, 72) images of (Gamma o A) diag(beta), input dtype (prepare)
  void* dstates;       // [chunks, Hv, K, V] input dtype: dS' per chunk (for stage 3)
};

}  // namespace flashgdn::portable
