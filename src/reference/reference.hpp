// CPU references.
//   - recurrent_fwd / recurrent_bwd: the token-by-token recurrence in fp64 and its reverse mode. This is
//     the ground truth every kernel is tested against.
//   - chunked_fwd: chunk-64 fp32 implementation that mirrors the GPU decomposition stage by stage (the
//     stage functions below are what the GPU kernels compute), so kernel stages can be checked one by one.
// All take host memory described by validated parameters.
#pragma once

#include <cstdint>
#include <vector>

#include "api/problem.hpp"
#include "flashgdn/flashgdn.h"

namespace flashgdn::reference {

inline constexpr int kChunk = 64;

// Token range of sequence n: batch row b, tokens [bos, eos). Reads host cu_seqlens; returns
// FLASHGDN_ERROR_INVALID_DATA with a message if its contents are out of range or decreasing.
struct SeqRange {
  int64_t b, bos, eos;
};
flashgdn_status_t sequence_ranges(const Problem& pr, const flashgdn_tensor_t& cu_seqlens, const char* fn,
                                  std::vector<SeqRange>* out);

flashgdn_status_t recurrent_fwd(const flashgdn_chunk_fwd_params_t& p, const Problem& pr);
// segment_chunks > 0: exact intra-sequence context parallelism with segments of that many chunks (local
// end states and transitions per segment, a scan over segments, then every segment from its true
// initial state) — the decomposition of the planned CP kernels; 0: chunk after chunk.
flashgdn_status_t chunked_fwd(const flashgdn_chunk_fwd_params_t& p, const Problem& pr, int64_t segment_chunks = 0);
flashgdn_status_t recurrent_bwd(const flashgdn_chunk_bwd_params_t& p, const Problem& pr);
// The same gradients through the chunk-64 decomposition the GPU backward follows (chunked_bwd.cpp).
flashgdn_status_t chunked_bwd(const flashgdn_chunk_bwd_params_t& p, const Problem& pr);

// ---- stages of the chunked algorithm (one chunk of L <= 64 tokens, one value head) ----
// gamma[i] = sum_{j<=i} g[j]                                        (fp32 prefix sum)
void stage_chunk_cumsum(const float* g, int L, float* gamma);
// A = (I + StrictLower(diag(beta) K K^T))^-1, a unit lower-triangular L x L matrix (row-major, ld 64).
// Gate-free: the gated inverse is (Gamma o A) with Gamma_ij = exp(gamma_i - gamma_j), i >= j.
void stage_kkt_solve(const float* k, int64_t ldk, const float* beta, int L, int Kd, float* A);
// The same inverse by 16 x 16 blocks, the order a GPU can run in parallel: the four diagonal blocks by
// forward substitution (one column per thread), then X_ij = -D_i sum_{m=j}^{i-1} T_im X_mj for the
// off-diagonal blocks in three dependency levels (i - j = 1, 2, 3), T = I + Lm, D_i = T_ii^-1.
void stage_kkt_solve_blocked(const float* k, int64_t ldk, const float* beta, int L, int Kd, float* A);
// One chunk of the recurrence given the state S (Kd x Vd, row-major) at its start:
//   W     = V - exp(gamma) o (K S)
//   v_new = (Gamma o A) diag(beta) W
//   O     = scale * (exp(gamma) o (Q S) + (Gamma o tril(Q K^T)) v_new)
//   S     = exp(gamma_L) S + K^T (exp(gamma_L - gamma) o v_new)
// Every exponent is <= 0. q, k (L x Kd, ld ldq/ldk), v (L x Vd, ld ldv); o (L x Vd, ld ldo) and
// v_new (L x Vd, ld Vd) are outputs (v_new may be null).
void stage_chunk_step(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv,
                      const float* gamma, const float* beta, const float* A, int L, int Kd, int Vd, float scale,
                      float* S, float* o, int64_t ldo, float* v_new);

}  // namespace flashgdn::reference
