// Chunk-64 fp32 forward on the CPU, stage by stage as the GPU computes it (see reference.hpp and
// docs/design.md, "Chunked algorithm"). Gates only ever scale: no exp of a positive exponent.
#include <algorithm>
#include <cmath>
#include <vector>

#include "reference/common.hpp"

namespace flashgdn::reference {

void stage_chunk_cumsum(const float* g, int L, float* gamma) {
  float acc = 0.f;
  for (int i = 0; i < L; ++i) {
    acc += g[i];
    gamma[i] = acc;
  }
}

void stage_kkt_solve(const float* k, int64_t ldk, const float* beta, int L, int Kd, float* A) {
  // Lm = StrictLower(diag(beta) K K^T); A = (I + Lm)^-1 by forward substitution, row by row:
  //   A[i][j] = -sum_{m=j}^{i-1} Lm[i][m] A[m][j]  (j < i),  A[i][i] = 1.
  std::vector<float> Lm(kChunk * kChunk, 0.f);
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < i; ++j) {
      float d = 0.f;
      for (int e = 0; e < Kd; ++e) d += k[i * ldk + e] * k[j * ldk + e];
      Lm[i * kChunk + j] = beta[i] * d;
    }
  for (int i = 0; i < kChunk; ++i)
    for (int j = 0; j < kChunk; ++j) A[i * kChunk + j] = 0.f;
  for (int i = 0; i < L; ++i) {
    for (int j = 0; j < i; ++j) {
      float acc = 0.f;
      for (int m = j; m < i; ++m) acc += Lm[i * kChunk + m] * A[m * kChunk + j];
      A[i * kChunk + j] = -acc;
    }
    A[i * kChunk + i] = 1.f;
  }
}

void stage_kkt_solve_blocked(const float* k, int64_t ldk, const float* beta, int L, int Kd, float* A) {
  constexpr int kB = 16, kNB = kChunk / kB;
  // T = I + StrictLower(diag(beta) K Kᵀ), zero-padded to 64 (padded rows/columns stay identity).
  std::vector<float> T(kChunk * kChunk, 0.f);
  for (int i = 0; i < kChunk; ++i) T[i * kChunk + i] = 1.f;
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < i; ++j) {
      float d = 0.f;
      for (int e = 0; e < Kd; ++e) d += k[i * ldk + e] * k[j * ldk + e];
      T[i * kChunk + j] = beta[i] * d;
    }
  auto at = [](std::vector<float>& M, int bi, int bj, int r, int c) -> float& {
    return M[(bi * kB + r) * kChunk + bj * kB + c];
  };
  std::vector<float> X(kChunk * kChunk, 0.f);
  // Diagonal blocks: column c of D_b by forward substitution.
  for (int b = 0; b < kNB; ++b)
    for (int c = 0; c < kB; ++c)
      for (int r = 0; r < kB; ++r) {
        float acc = (r == c) ? 1.f : 0.f;
        for (int m = 0; m < r; ++m) acc -= at(T, b, b, r, m) * at(X, b, b, m, c);
        at(X, b, b, r, c) = acc;
      }
  // Off-diagonal blocks by distance d = i - j.
  for (int d = 1; d < kNB; ++d)
    for (int j = 0; j + d < kNB; ++j) {
      const int i = j + d;
      float Y[kB][kB] = {};
      for (int m = j; m < i; ++m)
        for (int r = 0; r < kB; ++r)
          for (int c = 0; c < kB; ++c) {
            float acc = 0.f;
            for (int s = 0; s < kB; ++s) acc += at(T, i, m, r, s) * at(X, m, j, s, c);
            Y[r][c] += acc;
          }
      for (int r = 0; r < kB; ++r)
        for (int c = 0; c < kB; ++c) {
          float acc = 0.f;
          for (int s = 0; s < kB; ++s) acc += at(X, i, i, r, s) * Y[s][c];
          at(X, i, j, r, c) = -acc;
        }
    }
  for (int i = 0; i < kChunk; ++i)
    for (int j = 0; j < kChunk; ++j) A[i * kChunk + j] = (i < L && j < L) ? X[i * kChunk + j] : 0.f;
}

void stage_chunk_step(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv,
                      const float* gamma, const float* beta, const float* A, int L, int Kd, int Vd, float scale,
                      float* S, float* o, int64_t ldo, float* v_new_out) {
  std::vector<float> W(L * Vd), vn(L * Vd), P(L * L);
  // W = V - exp(gamma) o (K S)
  for (int i = 0; i < L; ++i) {
    const float eg = std::exp(gamma[i]);
    for (int j = 0; j < Vd; ++j) {
      float ks = 0.f;
      for (int e = 0; e < Kd; ++e) ks += k[i * ldk + e] * S[e * Vd + j];
      W[i * Vd + j] = v[i * ldv + j] - eg * ks;
    }
  }
  // v_new = (Gamma o A) diag(beta) W, Gamma_ij = exp(gamma_i - gamma_j) for i >= j.
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < Vd; ++j) {
      float acc = 0.f;
      for (int m = 0; m <= i; ++m) acc += std::exp(gamma[i] - gamma[m]) * A[i * kChunk + m] * beta[m] * W[m * Vd + j];
      vn[i * Vd + j] = acc;
    }
  // O = scale * (exp(gamma) o (Q S) + (Gamma o tril(Q K^T)) v_new)
  for (int i = 0; i < L; ++i)
    for (int m = 0; m <= i; ++m) {
      float d = 0.f;
      for (int e = 0; e < Kd; ++e) d += q[i * ldq + e] * k[m * ldk + e];
      P[i * L + m] = d * std::exp(gamma[i] - gamma[m]);
    }
  for (int i = 0; i < L; ++i) {
    const float eg = std::exp(gamma[i]);
    for (int j = 0; j < Vd; ++j) {
      float qs = 0.f;
      for (int e = 0; e < Kd; ++e) qs += q[i * ldq + e] * S[e * Vd + j];
      float pv = 0.f;
      for (int m = 0; m <= i; ++m) pv += P[i * L + m] * vn[m * Vd + j];
      o[i * ldo + j] = scale * (eg * qs + pv);
    }
  }
  // S = exp(gamma_L) S + K^T (exp(gamma_L - gamma) o v_new)
  const float gl = gamma[L - 1], egl = std::exp(gl);
  for (int e = 0; e < Kd; ++e)
    for (int j = 0; j < Vd; ++j) {
      float acc = 0.f;
      for (int i = 0; i < L; ++i) acc += k[i * ldk + e] * std::exp(gl - gamma[i]) * vn[i * Vd + j];
      S[e * Vd + j] = egl * S[e * Vd + j] + acc;
    }
  if (v_new_out) std::copy(vn.begin(), vn.end(), v_new_out);
}

flashgdn_status_t chunked_fwd(const flashgdn_chunk_fwd_params_t& p, const Problem& pr) {
  static const char* fn = "flashgdn_reference_fwd";
  std::vector<SeqRange> seqs;
  FLASHGDN_TRY(sequence_ranges(pr, p.cu_seqlens, fn, &seqs));
  std::vector<StateIO> io(pr.N);
  for (int64_t n = 0; n < pr.N; ++n) FLASHGDN_TRY(state_io(p, pr, n, fn, &io[n]));
  const HostView q{&p.q}, k{&p.k}, v{&p.v}, g{&p.g}, beta{&p.beta}, o{&p.o};
  const int Kd = static_cast<int>(pr.K), Vd = static_cast<int>(pr.V);
  std::vector<float> qc(kChunk * Kd), kc(kChunk * Kd), vc(kChunk * Vd), gc(kChunk), gam(kChunk), bc(kChunk),
      A(kChunk * kChunk), oc(kChunk * Vd), S(Kd * Vd);
  std::vector<double> Sd(Kd * Vd), finals(pr.N * pr.Hv * Kd * Vd);
  std::vector<double> xd(Kd);
  for (int64_t n = 0; n < pr.N; ++n) {
    const SeqRange sr = seqs[n];
    for (int64_t h = 0; h < pr.Hv; ++h) {
      const int64_t hk = h / pr.group;
      load_state(pr, io[n].src, io[n].src_row, h, Sd.data());
      for (int e = 0; e < Kd * Vd; ++e) S[e] = static_cast<float>(Sd[e]);
      for (int64_t c0 = sr.bos; c0 < sr.eos; c0 += kChunk) {
        const int L = static_cast<int>(std::min<int64_t>(kChunk, sr.eos - c0));
        for (int i = 0; i < L; ++i) {
          const int64_t t = c0 + i;
          for (int pass = 0; pass < 2; ++pass) {
            const HostView& x = pass ? k : q;
            for (int e = 0; e < Kd; ++e) xd[e] = x.get(sr.b, t, hk, e);
            if (pr.l2norm) l2norm(xd.data(), Kd);
            float* dst = pass ? &kc[i * Kd] : &qc[i * Kd];
            for (int e = 0; e < Kd; ++e) dst[e] = static_cast<float>(xd[e]);
          }
          for (int j = 0; j < Vd; ++j) vc[i * Vd + j] = static_cast<float>(v.get(sr.b, t, h, j));
          gc[i] = static_cast<float>(g.get(sr.b, t, h));
          bc[i] = static_cast<float>(beta.get(sr.b, t, h));
        }
        stage_chunk_cumsum(gc.data(), L, gam.data());
        stage_kkt_solve(kc.data(), Kd, bc.data(), L, Kd, A.data());
        stage_chunk_step(qc.data(), Kd, kc.data(), Kd, vc.data(), Vd, gam.data(), bc.data(), A.data(), L, Kd, Vd,
                         pr.scale, S.data(), oc.data(), Vd, nullptr);
        for (int i = 0; i < L; ++i)
          for (int j = 0; j < Vd; ++j) o.set(oc[i * Vd + j], sr.b, c0 + i, h, j);
      }
      for (int e = 0; e < Kd * Vd; ++e) finals[(n * pr.Hv + h) * Kd * Vd + e] = S[e];
    }
  }
  for (int64_t n = 0; n < pr.N; ++n)
    if (io[n].dst)
      for (int64_t h = 0; h < pr.Hv; ++h)
        store_state(pr, io[n].dst, io[n].dst_row, h, &finals[(n * pr.Hv + h) * Kd * Vd]);
  return FLASHGDN_SUCCESS;
}

}  // namespace flashgdn::reference
