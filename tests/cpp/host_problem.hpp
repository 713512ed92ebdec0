// Test helper: a random GDN problem in host memory (fp64 unless asked otherwise), with params filled.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "flashgdn/flashgdn.hpp"

namespace flashgdn::test {

struct Shape {
  int64_t Hqk = 2, Hv = 2, K = 8, V = 8;
  std::vector<int64_t> seqlens = {20};
  bool varlen = true;  // packed with cu_seqlens (B = 1); else B = len(seqlens), all equal
  bool h0 = true, ht = true, l2norm = false, v_first = false;
  double g_lo = -0.5, g_hi = 0.0;  // g ~ U[g_lo, g_hi]
  double beta_lo = 0.0, beta_hi = 1.0;
};

template <class T>
flashgdn_tensor_t view(std::vector<T>& buf, flashgdn_dtype_t dt, std::initializer_list<int64_t> shape) {
  return flashgdn::tensor(buf.data(), dt, shape);
}

struct HostProblem {
  Shape s;
  int64_t B = 1, T = 0, N = 0;
  std::vector<double> q, k, v, g, beta, o, h0, ht, dO, dht, dq, dk, dv, dg, dbeta, dh0;
  std::vector<int64_t> cu;

  explicit HostProblem(const Shape& shape, uint64_t seed) : s(shape) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::uniform_real_distribution<double> ug(s.g_lo, s.g_hi), ub(s.beta_lo, s.beta_hi);
    N = static_cast<int64_t>(s.seqlens.size());
    if (s.varlen) {
      cu.push_back(0);
      for (int64_t L : s.seqlens) cu.push_back(cu.back() + L);
      T = cu.back();
      B = 1;
    } else {
      B = N;
      T = s.seqlens.at(0);
    }
    auto fill = [&](std::vector<double>& x, size_t n, double sc) {
      x.resize(n);
      for (double& e : x) e = sc * nd(rng);
    };
    const double kscale = s.l2norm ? 1.0 : 1.0 / std::sqrt(static_cast<double>(s.K));
    fill(q, B * T * s.Hqk * s.K, kscale);
    fill(k, B * T * s.Hqk * s.K, kscale);
    fill(v, B * T * s.Hv * s.V, 1.0);
    g.resize(B * T * s.Hv);
    beta.resize(B * T * s.Hv);
    for (double& e : g) e = ug(rng);
    for (double& e : beta) e = ub(rng);
    o.assign(B * T * s.Hv * s.V, NAN);
    if (s.h0) fill(h0, N * s.Hv * s.K * s.V, 0.5);
    if (s.ht) ht.assign(N * s.Hv * s.K * s.V, NAN);
    fill(dO, B * T * s.Hv * s.V, 1.0);
    if (s.ht) fill(dht, N * s.Hv * s.K * s.V, 0.25);
    dq.assign(q.size(), NAN);
    dk.assign(k.size(), NAN);
    dv.assign(v.size(), NAN);
    dg.assign(g.size(), NAN);
    dbeta.assign(beta.size(), NAN);
    if (s.h0) dh0.assign(h0.size(), NAN);
  }

  int64_t d2() const { return s.v_first ? s.V : s.K; }
  int64_t d3() const { return s.v_first ? s.K : s.V; }

  ChunkFwdParams fwd() {
    ChunkFwdParams p;
    const auto F = FLASHGDN_DTYPE_FLOAT64;
    p.q = view(q, F, {B, T, s.Hqk, s.K});
    p.k = view(k, F, {B, T, s.Hqk, s.K});
    p.v = view(v, F, {B, T, s.Hv, s.V});
    p.g = view(g, F, {B, T, s.Hv});
    p.beta = view(beta, F, {B, T, s.Hv});
    p.o = view(o, F, {B, T, s.Hv, s.V});
    if (s.varlen) p.cu_seqlens = view(cu, FLASHGDN_DTYPE_INT64, {N + 1});
    if (s.h0) p.initial_state = view(h0, F, {N, s.Hv, d2(), d3()});
    if (s.ht) p.final_state = view(ht, F, {N, s.Hv, d2(), d3()});
    p.use_qk_l2norm = s.l2norm;
    p.state_v_first = s.v_first;
    return p;
  }

  ChunkBwdParams bwd() {
    ChunkBwdParams p;
    const auto F = FLASHGDN_DTYPE_FLOAT64;
    p.q = view(q, F, {B, T, s.Hqk, s.K});
    p.k = view(k, F, {B, T, s.Hqk, s.K});
    p.v = view(v, F, {B, T, s.Hv, s.V});
    p.g = view(g, F, {B, T, s.Hv});
    p.beta = view(beta, F, {B, T, s.Hv});
    p.d_o = view(dO, F, {B, T, s.Hv, s.V});
    p.dq = view(dq, F, {B, T, s.Hqk, s.K});
    p.dk = view(dk, F, {B, T, s.Hqk, s.K});
    p.dv = view(dv, F, {B, T, s.Hv, s.V});
    p.dg = view(dg, F, {B, T, s.Hv});
    p.dbeta = view(dbeta, F, {B, T, s.Hv});
    if (s.varlen) p.cu_seqlens = view(cu, FLASHGDN_DTYPE_INT64, {N + 1});
    if (s.h0) {
      p.initial_state = view(h0, F, {N, s.Hv, d2(), d3()});
      p.d_initial_state = view(dh0, F, {N, s.Hv, d2(), d3()});
    }
    if (s.ht) p.d_final_state = view(dht, F, {N, s.Hv, d2(), d3()});
    p.use_qk_l2norm = s.l2norm;
    p.state_v_first = s.v_first;
    return p;
  }
};

inline double rel_l2(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1.0));
}

}  // namespace flashgdn::test
