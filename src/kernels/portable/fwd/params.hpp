// Device-side arguments of the portable forward kernels (a POD built once on the host per call).
#pragma once

#include <cstdint>

namespace flashgdn::portable {

inline constexpr int kChunk = 64;

struct FwdArgs {
  // Inputs/outputs. q/k/v/o strides in elements for (b, t, h); the last dim is contiguous.
  const void* q;
  const void* k;
  const void* v;
  void* o;
  const float* g;
  const void* beta;
  int64_t q_s[3], k_s[3], v_s[3], o_s[3], g_s[3], beta_s[3];
  int beta_f32;  // beta is fp32 (else q's dtype)

  const void* cu_seqlens;  // null: B equal-length sequences
  int cu_i64;
  int B, T, N, Hqk, Hv, group, K, V;
  float scale;
  int l2norm;

  // States. Element (i over K, j over V) of row r, head h sits at r * row_stride + h * K * V + (v_first ? j * K + i : i * V + j).
  const void* h0;  // null: zeros
  int h0_bf16;
  int64_t h0_row_stride;
  void* ht;  // null: no final state (in pool mode ht == h0)
  int ht_bf16;
  int64_t ht_row_stride;
  const void* state_indices;  // pool mode when non-null
  int idx_i64;
  int64_t P;
  const uint8_t* has_initial_state;  // null: all true
  int64_t mask_stride;
  int v_first;

  // Workspace.
  int64_t* chunk_offsets;  // [N + 1]: first global chunk of each sequence
  float* aux;              // [chunks, Hv, 3, 64]: gamma, rq, rk per token (fp32)
  void* W;                 // [chunks, Hv, 64, K] T: (Gamma o A) diag(beta) diag(exp(gamma)) K̂
  void* U;                 // [chunks, Hv, 64, V] T: (Gamma o A) diag(beta) V
  void* Pm;                // [chunks, Hv, 64, 64] T: scale * Gamma o tril(Q̂ K̂ᵀ)
  int64_t max_chunks;
};

}  // namespace flashgdn::portable
