// fp64 token-by-token recurrence (forward) and its reverse mode (backward).
#include <cmath>
#include <vector>

#include "api/error.hpp"
#include "api/tensor.hpp"
#include "reference/common.hpp"

namespace flashgdn::reference {

flashgdn_status_t sequence_ranges(const Problem& pr, const flashgdn_tensor_t& cu, const char* fn,
                                  std::vector<SeqRange>* out) {
  out->clear();
  if (!pr.varlen) {
    for (int64_t b = 0; b < pr.B; ++b) out->push_back({b, 0, pr.T});
    return FLASHGDN_SUCCESS;
  }
  int64_t prev = load_index(cu, 0);
  if (prev != 0) return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: cu_seqlens[0] = %lld, expected 0", fn, (long long)prev);
  for (int64_t n = 0; n < pr.N; ++n) {
    const int64_t next = load_index(cu, n + 1);
    if (next < prev)
      return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: cu_seqlens is not non-decreasing: cu_seqlens[%lld] = %lld < %lld",
                  fn, (long long)(n + 1), (long long)next, (long long)prev);
    if (next > pr.T)
      return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: cu_seqlens[%lld] = %lld exceeds the token count T = %lld", fn,
                  (long long)(n + 1), (long long)next, (long long)pr.T);
    out->push_back({0, prev, next});
    prev = next;
  }
  if (prev != pr.T)
    return fail(FLASHGDN_ERROR_INVALID_DATA, "%s: cu_seqlens[N] = %lld, expected the token count T = %lld", fn,
                (long long)prev, (long long)pr.T);
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t recurrent_fwd(const flashgdn_chunk_fwd_params_t& p, const Problem& pr) {
  static const char* fn = "flashgdn_reference_fwd";
  std::vector<SeqRange> seqs;
  FLASHGDN_TRY(sequence_ranges(pr, p.cu_seqlens, fn, &seqs));
  const HostView q{&p.q}, k{&p.k}, v{&p.v}, g{&p.g}, beta{&p.beta}, o{&p.o};
  const int64_t K = pr.K, V = pr.V;
  std::vector<double> S(K * V), qt(K), kt(K), u(V);
  // Validate every slot first so that a bad index leaves all outputs untouched.
  std::vector<StateIO> io(pr.N);
  for (int64_t n = 0; n < pr.N; ++n) FLASHGDN_TRY(state_io(p, pr, n, fn, &io[n]));
  // Read every initial state before writing any final state: pool slots may be shared.
  std::vector<double> finals(pr.N * pr.Hv * K * V);
  for (int64_t n = 0; n < pr.N; ++n) {
    const SeqRange sr = seqs[n];
    for (int64_t h = 0; h < pr.Hv; ++h) {
      const int64_t hk = h / pr.group;
      load_state(pr, io[n].src, io[n].src_row, h, S.data());
      for (int64_t t = sr.bos; t < sr.eos; ++t) {
        for (int64_t i = 0; i < K; ++i) {
          qt[i] = q.get(sr.b, t, hk, i);
          kt[i] = k.get(sr.b, t, hk, i);
        }
        if (pr.l2norm) {
          l2norm(qt.data(), K);
          l2norm(kt.data(), K);
        }
        const double decay = std::exp(g.get(sr.b, t, h));
        const double bt = beta.get(sr.b, t, h);
        for (double& s : S) s *= decay;
        for (int64_t j = 0; j < V; ++j) {
          double ks = 0;
          for (int64_t i = 0; i < K; ++i) ks += S[i * V + j] * kt[i];
          u[j] = bt * (v.get(sr.b, t, h, j) - ks);
        }
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < V; ++j) S[i * V + j] += kt[i] * u[j];
        for (int64_t j = 0; j < V; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < K; ++i) acc += S[i * V + j] * qt[i];
          o.set(pr.scale64 * acc, sr.b, t, h, j);
        }
      }
      std::copy(S.begin(), S.end(), finals.begin() + (n * pr.Hv + h) * K * V);
    }
  }
  for (int64_t n = 0; n < pr.N; ++n)
    if (io[n].dst)
      for (int64_t h = 0; h < pr.Hv; ++h) store_state(pr, io[n].dst, io[n].dst_row, h, &finals[(n * pr.Hv + h) * K * V]);
  return FLASHGDN_SUCCESS;
}

// Reverse mode of the recurrence above. Per (sequence, value head) the forward states are recomputed and
// kept (fp64), then walked backwards:
//   o = scale S_t^T q          ->  dS += scale q do^T,  dq_hat = scale S_t do
//   S_t = S_a + k u^T          ->  dk_hat += dS u,  du = dS^T k
//   u = beta (v - S_a^T k)     ->  dbeta = du . (v - S_a^T k),  dv = beta du,
//                                  dS_a = dS - k (beta du)^T,  dk_hat -= S_a (beta du)
//   S_a = exp(g) S_{t-1}       ->  dg = <dS_a, S_a>,  dS_{t-1} = exp(g) dS_a
// and the l2norm backward dx = (dx_hat - x_hat (x_hat . dx_hat)) * r for r = rsqrt(|x|^2 + eps).
flashgdn_status_t recurrent_bwd(const flashgdn_chunk_bwd_params_t& p, const Problem& pr) {
  static const char* fn = "flashgdn_reference_bwd";
  std::vector<SeqRange> seqs;
  FLASHGDN_TRY(sequence_ranges(pr, p.cu_seqlens, fn, &seqs));
  const HostView q{&p.q}, k{&p.k}, v{&p.v}, g{&p.g}, beta{&p.beta}, dO{&p.d_o};
  const HostView dv{&p.dv}, dg{&p.dg}, dbeta{&p.dbeta};
  const int64_t K = pr.K, V = pr.V;
  // dq_hat / dk_hat accumulated over the value heads of each group, per (b, t, hk).
  std::vector<double> dqh(pr.B * pr.T * pr.Hqk * K, 0.0), dkh(pr.B * pr.T * pr.Hqk * K, 0.0);
  auto acc_idx = [&](int64_t b, int64_t t, int64_t hk) { return ((b * pr.T + t) * pr.Hqk + hk) * K; };
  std::vector<double> dS(K * V), qh(K), kh(K), u(V), du(V), r(V), Sa(K * V);

  for (int64_t n = 0; n < pr.N; ++n) {
    const SeqRange sr = seqs[n];
    const int64_t L = sr.eos - sr.bos;
    for (int64_t h = 0; h < pr.Hv; ++h) {
      const int64_t hk = h / pr.group;
      // Forward: keep S_{t-1} for every token (states[0] = initial state).
      std::vector<double> states((L + 1) * K * V);
      const flashgdn_tensor_t* h0 = pr.has_h0 ? &p.initial_state : nullptr;
      load_state(pr, h0, n, h, states.data());
      auto norm_qk = [&](int64_t t) {
        for (int64_t i = 0; i < K; ++i) {
          qh[i] = q.get(sr.b, t, hk, i);
          kh[i] = k.get(sr.b, t, hk, i);
        }
        if (pr.l2norm) {
          l2norm(qh.data(), K);
          l2norm(kh.data(), K);
        }
      };
      for (int64_t s = 0; s < L; ++s) {
        const int64_t t = sr.bos + s;
        norm_qk(t);
        const double* Sp = &states[s * K * V];
        double* Sn = &states[(s + 1) * K * V];
        const double decay = std::exp(g.get(sr.b, t, h)), bt = beta.get(sr.b, t, h);
        for (int64_t e = 0; e < K * V; ++e) Sn[e] = decay * Sp[e];
        for (int64_t j = 0; j < V; ++j) {
          double ks = 0;
          for (int64_t i = 0; i < K; ++i) ks += Sn[i * V + j] * kh[i];
          u[j] = bt * (v.get(sr.b, t, h, j) - ks);
        }
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < V; ++j) Sn[i * V + j] += kh[i] * u[j];
      }
      // Backward.
      if (pr.has_ht) {
        load_state(pr, &p.d_final_state, n, h, dS.data());
      } else {
        std::fill(dS.begin(), dS.end(), 0.0);
      }
      for (int64_t s = L - 1; s >= 0; --s) {
        const int64_t t = sr.bos + s;
        norm_qk(t);
        const double* Sp = &states[s * K * V];
        const double* St = &states[(s + 1) * K * V];
        const double decay = std::exp(g.get(sr.b, t, h)), bt = beta.get(sr.b, t, h);
        double* dqa = &dqh[acc_idx(sr.b, t, hk)];
        double* dka = &dkh[acc_idx(sr.b, t, hk)];
        // Output.
        for (int64_t i = 0; i < K; ++i) {
          double a = 0;
          for (int64_t j = 0; j < V; ++j) a += St[i * V + j] * dO.get(sr.b, t, h, j);
          dqa[i] += pr.scale64 * a;
        }
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < V; ++j) dS[i * V + j] += pr.scale64 * qh[i] * dO.get(sr.b, t, h, j);
        // Recompute S_a, the residual r = v - S_a^T k and u = beta r.
        for (int64_t e = 0; e < K * V; ++e) Sa[e] = decay * Sp[e];
        for (int64_t j = 0; j < V; ++j) {
          double ks = 0;
          for (int64_t i = 0; i < K; ++i) ks += Sa[i * V + j] * kh[i];
          r[j] = v.get(sr.b, t, h, j) - ks;
          u[j] = bt * r[j];
        }
        // S_t = S_a + k u^T.
        for (int64_t j = 0; j < V; ++j) {
          double a = 0;
          for (int64_t i = 0; i < K; ++i) a += dS[i * V + j] * kh[i];
          du[j] = a;
        }
        for (int64_t i = 0; i < K; ++i) {
          double a = 0;
          for (int64_t j = 0; j < V; ++j) a += dS[i * V + j] * u[j];
          dka[i] += a;
        }
        // u = beta r.
        double db = 0;
        for (int64_t j = 0; j < V; ++j) {
          db += du[j] * r[j];
          dv.set(bt * du[j], sr.b, t, h, j);
        }
        dbeta.set(db, sr.b, t, h);
        for (int64_t i = 0; i < K; ++i) {
          double a = 0;
          for (int64_t j = 0; j < V; ++j) {
            dS[i * V + j] -= kh[i] * bt * du[j];
            a += Sa[i * V + j] * bt * du[j];
          }
          dka[i] -= a;
        }
        // S_a = exp(g) S_{t-1}.
        double dgt = 0;
        for (int64_t e = 0; e < K * V; ++e) dgt += dS[e] * Sa[e];
        dg.set(dgt, sr.b, t, h);
        for (double& x : dS) x *= decay;
      }
      if (pr.has_h0) store_state(pr, &p.d_initial_state, n, h, dS.data());
    }
  }
  write_qk_grads(p, pr, dqh, dkh);
  return FLASHGDN_SUCCESS;
}

}  // namespace flashgdn::reference
