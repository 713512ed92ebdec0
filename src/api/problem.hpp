// Validated description of a chunked GDN call: every shape and flag resolved once on the host, used by
// the planner, the GPU dispatch and the CPU reference alike.
#pragma once

#include <cstdint>
#include <vector>

#include "flashgdn/flashgdn.h"

namespace flashgdn {

enum class Target { kGpu, kReference };

struct Problem {
  int64_t B = 0, T = 0;      // batch, tokens per batch row
  int64_t Hqk = 0, Hv = 0;   // q/k heads, value heads
  int64_t K = 0, V = 0;      // head dims
  int64_t N = 0;             // sequences
  int64_t P = 0;             // rows of initial_state (pool slots, or N)
  int64_t group = 1;         // Hv / Hqk
  bool varlen = false;
  bool has_h0 = false;       // initial_state given
  bool has_ht = false;       // final_state given (fwd) / d_final_state given (bwd)
  bool pool = false;         // state_indices given
  bool has_mask = false;     // has_initial_state given
  bool l2norm = false;
  bool v_first = false;
  bool check = false;
  int32_t cp_mode = 0;
  float scale = 0.f;         // resolved (never 0)
  double scale64 = 0.0;      // the same in fp64 (the reference uses it)
  flashgdn_dtype_t io_dtype = FLASHGDN_DTYPE_BFLOAT16;  // q/k/v/o
  flashgdn_dtype_t beta_dtype = FLASHGDN_DTYPE_FLOAT32;
  // Chunks per sequence from cu_seqlens_host (empty: lengths unknown on the host). Planning only.
  std::vector<int64_t> seq_chunks;

  // Upper bound on the number of 64-token chunks over all sequences: ceil(T_total/64) + N.
  int64_t max_chunks() const { return (B * T + 63) / 64 + N; }
};

flashgdn_status_t validate_fwd(const flashgdn_chunk_fwd_params_t* p, Target target, const char* fn,
                               Problem* out);
flashgdn_status_t validate_bwd(const flashgdn_chunk_bwd_params_t* p, Target target, const char* fn,
                               Problem* out);

}  // namespace flashgdn
