// Helpers shared by the CPU references: state sources/destinations, state addressing, l2norm.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "api/error.hpp"
#include "api/tensor.hpp"
#include "reference/reference.hpp"

namespace flashgdn::reference {

// Where sequence n's initial state comes from and where its final state goes.
struct StateIO {
  const flashgdn_tensor_t* src = nullptr;  // null: zeros
  int64_t src_row = 0;
  const flashgdn_tensor_t* dst = nullptr;  // null: not written
  int64_t dst_row = 0;
};

inline bool mask_at(const flashgdn_tensor_t& m, int64_t n) { return static_cast<const uint8_t*>(m.data)[n * m.stride[0]] != 0; }

inline flashgdn_status_t state_io(const flashgdn_chunk_fwd_params_t& p, const Problem& pr, int64_t n, const char* fn,
                           StateIO* io) {
  *io = StateIO{};
  if (pr.pool) {
    const int64_t slot = load_index(p.state_indices, n);
    if (slot < -1 || slot >= pr.P)
      return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: state_indices[%lld] = %lld is outside [-1, %lld)", fn, (long long)n,
                  (long long)slot, (long long)pr.P);
    if (slot < 0) return FLASHGDN_SUCCESS;
    const bool read = !pr.has_mask || mask_at(p.has_initial_state, n);
    if (read) *io = StateIO{&p.initial_state, slot, nullptr, 0};
    io->dst = &p.initial_state;
    io->dst_row = slot;
    return FLASHGDN_SUCCESS;
  }
  if (pr.has_h0 && (!pr.has_mask || mask_at(p.has_initial_state, n))) {
    io->src = &p.initial_state;
    io->src_row = n;
  }
  if (pr.has_ht) {
    io->dst = &p.final_state;
    io->dst_row = n;
  }
  return FLASHGDN_SUCCESS;
}

// State element (i over K, j over V) offset inside one [Hv, ., .] row of a state tensor.
inline int64_t state_off(const Problem& pr, const flashgdn_tensor_t& t, int64_t row, int64_t h, int64_t i, int64_t j) {
  const int64_t inner = pr.v_first ? j * pr.K + i : i * pr.V + j;
  return row * t.stride[0] + h * t.stride[1] + inner;
}

inline void load_state(const Problem& pr, const flashgdn_tensor_t* t, int64_t row, int64_t h, double* S) {
  for (int64_t i = 0; i < pr.K; ++i)
    for (int64_t j = 0; j < pr.V; ++j)
      S[i * pr.V + j] = t ? load_scalar(t->data, t->dtype, state_off(pr, *t, row, h, i, j)) : 0.0;
}

inline void store_state(const Problem& pr, const flashgdn_tensor_t* t, int64_t row, int64_t h, const double* S) {
  for (int64_t i = 0; i < pr.K; ++i)
    for (int64_t j = 0; j < pr.V; ++j) store_scalar(t->data, t->dtype, state_off(pr, *t, row, h, i, j), S[i * pr.V + j]);
}

// x_hat = x * rsqrt(sum(x^2) + 1e-6); returns the rsqrt factor.
inline double l2norm(double* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  const double r = 1.0 / std::sqrt(s + 1e-6);
  for (int64_t i = 0; i < n; ++i) x[i] *= r;
  return r;
}


// Writes dq, dk from gradients w.r.t. the (normalised) q̂, k̂ accumulated over the value heads of each
// group, laid out [B, T, Hqk, K]: with l2norm, dx = (dx̂ - x̂ (x̂ . dx̂)) * rsqrt(|x|^2 + eps).
inline void write_qk_grads(const flashgdn_chunk_bwd_params_t& p, const Problem& pr, const std::vector<double>& dqh,
                           const std::vector<double>& dkh) {
  const HostView q{&p.q}, k{&p.k}, dq{&p.dq}, dk{&p.dk};
  const int64_t K = pr.K;
  for (int64_t b = 0; b < pr.B; ++b)
    for (int64_t t = 0; t < pr.T; ++t)
      for (int64_t hk = 0; hk < pr.Hqk; ++hk) {
        const int64_t base = ((b * pr.T + t) * pr.Hqk + hk) * K;
        for (int pass = 0; pass < 2; ++pass) {
          const HostView& x = pass == 0 ? q : k;
          const HostView& dx = pass == 0 ? dq : dk;
          const double* da = (pass == 0 ? dqh : dkh).data() + base;
          if (!pr.l2norm) {
            for (int64_t i = 0; i < K; ++i) dx.set(da[i], b, t, hk, i);
            continue;
          }
          double ss = 0, dot = 0;
          for (int64_t i = 0; i < K; ++i) ss += x.get(b, t, hk, i) * x.get(b, t, hk, i);
          const double rn = 1.0 / std::sqrt(ss + 1e-6);
          for (int64_t i = 0; i < K; ++i) dot += x.get(b, t, hk, i) * rn * da[i];
          for (int64_t i = 0; i < K; ++i) dx.set((da[i] - x.get(b, t, hk, i) * rn * dot) * rn, b, t, hk, i);
        }
      }
}

}  // namespace flashgdn::reference
