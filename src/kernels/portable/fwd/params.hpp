// Device-side arguments of the portable forward kernels (a POD built once on the host per call). Also
// included by host-only code (the planner and its tests): no CUDA types here.
#pragma once

#include <cstdint>

#include "device/hd.hpp"

namespace flashgdn::portable {

inline constexpr int kChunk = 64;

// Workspace images. W, U and Pm are stored exactly as the recurrence's shared-memory tiles (rows padded
// by 16 bytes, pads zero), so that its producer moves each with linear 16-byte copies; U is split in
// V / bv slices of (64, bv + 8). Element counts per (chunk, value head):
FLASHGDN_HD constexpr int64_t w_image_elems(int K) { return int64_t(kChunk) * (K + 8); }
FLASHGDN_HD constexpr int64_t u_slice_elems(int bv) { return int64_t(kChunk) * (bv + 8); }
FLASHGDN_HD constexpr int64_t u_image_elems(int V, int bv) { return (V / bv) * u_slice_elems(bv); }
FLASHGDN_HD constexpr int64_t pm_image_elems() { return int64_t(kChunk) * (kChunk + 8); }
inline constexpr int kMinBv = 16;  // the workspace holds U for the narrowest slice (the largest image)

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
  int32_t* seq_order;      // [N]: sequences by decreasing length (identity when N > kSortMax)
  struct ChunkInfo {
    int64_t t0;  // first token of the chunk (row b)
    int32_t L;   // tokens in the chunk (1..64); -1: no such chunk (c >= total)
    int32_t b;   // batch row (0 when varlen)
  }* chunk_info;           // [max_chunks]: one 16-byte load per prepare CTA instead of a search
  float* aux;              // [chunks, Hv, 3, 64]: gamma, rq, rk per token (fp32)
  void* W;                 // [chunks, Hv] images (64, K + 8) T: (Gamma o A) diag(beta) diag(exp(gamma)) K̂
  void* U;                 // [chunks, Hv] images [V / bv](64, bv + 8) T: (Gamma o A) diag(beta) V
  void* Pm;                // [chunks, Hv] images (64, 72) T: scale * Gamma o tril(Q̂ K̂ᵀ)
  // Intra-card context parallelism (cp_pass != 0): each sequence is cut into segments of seg_chunks
  // chunks (at least one per sequence); the recurrence runs per segment.
  struct SegInfo {
    int32_t n;     // sequence
    int32_t c0;    // first chunk of the segment within the sequence
    int32_t nch;   // chunks in the segment (0 for an empty sequence); -1: no such segment
    int32_t last;  // the sequence's last segment (writes the final state)
  };
  int cp_pass;             // 0: no CP; 1: transition pass (augmented state [S_loc | M]); 3: final pass
  int seg_chunks;
  int64_t g_max;           // segments the grids are sized for (>= the actual count)
  int64_t* seg_offsets;    // [N + 1]: first segment of each sequence
  SegInfo* seg;            // [g_max]
  float* cp_end;           // [g_max, Hv, K, V + K] fp32: pass 1's end states [S_loc | M] (row stride V + K)
  float* cp_h0;            // [g_max, Hv, K, V] fp32: each segment's start state (the scan's output)
  // Gate-driven warm-up (head-form CP passes only; null elsewhere): cdecay [max_chunks, Hv] fp32, each chunk's bound
  // on log ||chunk map||_2 (written by prepare in a_only mode); cp_warm [g_max, Hv] int32, the transition pass's
  // warm-up chunks per segment (0: none, the full transition with M), read by the scan.
  float* cdecay;
  int32_t* cp_warm;
  // 1 (the default; FLASHGDN_CP_DIRECT=0 gives 0; head-form CP only): a segment whose predecessor took the warm-up starts from the
  // predecessor's S_loc in cp_end (the final pass reads it), and the scan (cp_scan_direct_kernel) skips those copies.
  int cp_direct;
  int64_t u_stride;        // elements between the U images of consecutive (chunk, head): u_image_elems(V, kMinBv)
  int bv;                  // the recurrence's V slice (U's image layout)
  int64_t max_chunks;
  // [max_chunks, Hv]: 1 once the prepare CTA of (chunk, head) has written its images (release), cleared
  // by chunk_table_kernel. The recurrence, launched to overlap prepare's last wave, acquires it per chunk.
  int32_t* ready;
  int32_t* prepared;     // prepare CTAs of real chunks finished (released by each), zeroed by chunk_offsets_kernel
  int prep_head_fastest;  // prepare's 1-D grid order: head fastest (1) or chunk fastest (0)
  // The recurrence's producer: TMA (1: sm_90a; tensor maps and bulk copies completing on mbarriers) or
  // cp.async (0). With TMA, rec_cluster CTAs (1, 2, 4 or 8: a cluster of consecutive V slices of one
  // (sequence, head)) share Q, K, W, Pm and aux by cluster multicast.
  int rec_tma;
  int rec_cluster;
  // The backward's recompute (null in the forward): h_states [chunks, Hv, K, V] T, the state at each
  // chunk's start (written by the recurrence's states pass, cp_pass = 2); Ab [chunks, Hv] (64, 72) T
  // images of (Gamma o A) diag(beta) (written by prepare when non-null).
  void* h_states;
  void* Ab;
  // 1: prepare writes only aux and, into Pm's image array, the gate-free A diag(beta) (bf16, zero above the
  // diagonal, past L and in the pads) for the sm_90a head form (no W, U, Pm; V is not read).
  int a_only;
  // 1 (the default; FLASHGDN_SOLVE_MMA=0 gives 0): the solve's off-diagonal levels on tf32 tensor cores
  // (blocked_solve_mma.cuh) where A is written as a bf16 image (prepare's a_only mode, the sm_90a head form's SOLVE variant).
  int solve_mma;
  // 1 (FLASHGDN_SOLVE_DIAG8=1, A/B): the solve's diagonal 16 x 16 blocks from 8 x 8 ones and their pairwise merge
  // (blocked_solve.hpp: diag8, merge8_y / merge8_x) instead of diag's 16-step chains.
  int solve_diag8;
  void* At;   // [chunks, Hv] (64, 72) bf16 images of Γ o A (zero above the diagonal, in rows past L and in the
              // pads); null: not written
};

// The last n with offsets[n] <= x (offsets non-decreasing, offsets[0] = 0 <= x).
FLASHGDN_HD inline int64_t find_sequence(const int64_t* offsets, int64_t N, int64_t x) {
  int64_t lo = 0, hi = N - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (offsets[mid] <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Segment g (CP): its sequence, first chunk, chunk count and whether it is the sequence's last, from the
// chunk and segment offsets (both [N + 1]); nch = -1 when g is past the last segment.
FLASHGDN_HD inline FwdArgs::SegInfo segment_info(int64_t g, const int64_t* seg_offsets, const int64_t* chunk_offsets,
                                                 int64_t N, int seg_chunks) {
  FwdArgs::SegInfo si{0, 0, -1, 0};
  if (g >= seg_offsets[N]) return si;
  const int64_t n = find_sequence(seg_offsets, N, g);
  const int64_t j = g - seg_offsets[n];
  const int64_t chunks = chunk_offsets[n + 1] - chunk_offsets[n];
  const int64_t nseg = seg_offsets[n + 1] - seg_offsets[n];
  const int64_t c0 = j * seg_chunks;
  si.n = static_cast<int32_t>(n);
  si.c0 = static_cast<int32_t>(c0);
  si.nch = static_cast<int32_t>(chunks - c0 < seg_chunks ? chunks - c0 : seg_chunks);
  si.last = j == nseg - 1;
  return si;
}

// Gate-driven warm-up of a CP transition (docs/design.md §5.2). A segment maps its start state S to M S + S_loc. For a
// window of its last n chunks, M = M_w M_pre and S_loc = M_w S_loc,pre + S_loc,w, so dropping everything before the
// window changes the end state by M_w (M_pre S + S_loc,pre) = M_w S_ws (S_ws: the true state at the window start), and
// ||M_w S_ws|| <= ||M_w||_2 ||S_ws||. Per token the map is e^g (I - beta k̂ k̂ᵀ), of 2-norm e^g max(1, |1 - beta ||k̂||²|);
// prepare writes each chunk's bound d_c = gamma_L + sum_t log max(1, |1 - beta_t ||k̂_t||²|) >= log ||chunk map||_2.
// Once the trailing chunks' bounds sum to <= kWarmupLogBound the dropped term is below e^-20 ||S_ws|| ~ 2^-28.9 ||S_ws||,
// under a sixteenth of one fp32 rounding of the state it replaces. Heads with g = 0 (d_c >= 0) never get there and
// take the exact transition.
inline constexpr float kWarmupLogBound = -20.f;
inline constexpr int kWarmupMaxChunks = 256;  // windows are looked for among a segment's last 256 chunks
// The number of trailing chunks of a segment of nch chunks (bounds decay[c * stride], c < nch) whose bounds sum to
// <= kWarmupLogBound, or 0 when they never do (NaN included): then the full transition, M included.
FLASHGDN_HD inline int warmup_chunks(const float* decay, int64_t stride, int nch) {
  float acc = 0.f;
  for (int i = 1; i <= nch; ++i) {
    acc += decay[static_cast<int64_t>(nch - i) * stride];
    if (acc <= kWarmupLogBound) return i;
  }
  return 0;
}

// Segments of a sequence of `chunks` chunks: at least one (an empty sequence keeps its final state).
FLASHGDN_HD constexpr int64_t segments_of(int64_t chunks, int seg_chunks) {
  return chunks == 0 ? 1 : (chunks + seg_chunks - 1) / seg_chunks;
}

}  // namespace flashgdn::portable
