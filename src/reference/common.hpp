// Helpers shared by the CPU references: state sources/destinations, state addressing, l2norm.
#pragma once

#include <cmath>
#include <cstdint>

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


}  // namespace flashgdn::reference
