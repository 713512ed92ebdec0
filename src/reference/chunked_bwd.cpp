// Chunk-64 backward on the CPU (fp64), in the gate-separable form the GPU backward will follow. Per
// (sequence, value head): recompute the state at every chunk start (forward, chunk by chunk), then walk
// the chunks in reverse. With the forward of one chunk (docs/design.md §3)
//   Lm = StrictLower(diag(β) K Kᵀ), A = (I + Lm)⁻¹, Γ_ij = e^{γ_i-γ_j} (i >= j), Ab = (Γ ⊙ A) diag(β)
//   W  = V - e^{γ} ⊙ (K S),  vn = Ab W,  P = scale Γ ⊙ tril(Q Kᵀ)
//   O  = scale e^{γ} ⊙ (Q S) + P vn,  S' = e^{γ_L} S + Kᵀ (e^{γ_L-γ} ⊙ vn)
// and upstream dO, dS', the backward of the chunk is
//   dvn = Pᵀ dO + e^{γ_L-γ} ⊙ (K dS'),  dP = dO vnᵀ,  dW = Abᵀ dvn,  dAb = dvn Wᵀ,  dV = dW
//   dS  = e^{γ_L} dS' + scale Qᵀ (e^{γ} ⊙ dO) - Kᵀ (e^{γ} ⊙ dW)
//   dQ  = scale e^{γ} ⊙ (dO Sᵀ) + (scale Γ ⊙ dP) K
//   dK  = (scale Γ ⊙ dP)ᵀ Q + e^{γ_L-γ} ⊙ (vn dS'ᵀ) - e^{γ} ⊙ (dW Sᵀ) + [through Lm]
//   dA  = dAb ⊙ Γ diag(β),  dLm = -Aᵀ dA Aᵀ (strictly lower),  dβ_j = Σ_i dAb_ij Γ_ij A_ij + Σ_k dLm_jk k_j·k_k
//   dγ  from e^{γ} in W and O, Γ in P and Ab, e^{γ_L-γ} and e^{γ_L} in S'; dg = reverse chunk cumsum of dγ.
// Every exponent is <= 0. Tested against the reverse mode of the token recurrence (recurrent_bwd).
#include <algorithm>
#include <cmath>
#include <vector>

#include "reference/common.hpp"

namespace flashgdn::reference {

namespace {

using Mat = std::vector<double>;  // row-major

struct Chunk {
  int L = 0;
  Mat q, k, v;        // (L, Kd), (L, Kd), (L, Vd): q̂, k̂ (normalised when l2norm is on)
  std::vector<double> beta, gam;
  Mat A, Gam, Ab;     // (L, L)
};

void prepare_chunk(Chunk& c, int Kd) {
  const int L = c.L;
  c.A.assign(L * L, 0.0);
  c.Gam.assign(L * L, 0.0);
  c.Ab.assign(L * L, 0.0);
  Mat Lm(L * L, 0.0);
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < i; ++j) {
      double d = 0;
      for (int e = 0; e < Kd; ++e) d += c.k[i * Kd + e] * c.k[j * Kd + e];
      Lm[i * L + j] = c.beta[i] * d;
    }
  for (int i = 0; i < L; ++i) {
    for (int j = 0; j < i; ++j) {
      double acc = 0;
      for (int m = j; m < i; ++m) acc += Lm[i * L + m] * c.A[m * L + j];
      c.A[i * L + j] = -acc;
    }
    c.A[i * L + i] = 1.0;
  }
  for (int i = 0; i < L; ++i)
    for (int j = 0; j <= i; ++j) {
      c.Gam[i * L + j] = std::exp(c.gam[i] - c.gam[j]);
      c.Ab[i * L + j] = c.Gam[i * L + j] * c.A[i * L + j] * c.beta[j];
    }
}

// KS = K S (L, Vd), and the forward quantities W, vn of the chunk; returns the next state in S.
void chunk_forward(const Chunk& c, int Kd, int Vd, Mat& S, Mat& KS, Mat& W, Mat& vn) {
  const int L = c.L;
  KS.assign(L * Vd, 0.0);
  W.assign(L * Vd, 0.0);
  vn.assign(L * Vd, 0.0);
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < Vd; ++j) {
      double a = 0;
      for (int e = 0; e < Kd; ++e) a += c.k[i * Kd + e] * S[e * Vd + j];
      KS[i * Vd + j] = a;
      W[i * Vd + j] = c.v[i * Vd + j] - std::exp(c.gam[i]) * a;
    }
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < Vd; ++j) {
      double a = 0;
      for (int m = 0; m <= i; ++m) a += c.Ab[i * L + m] * W[m * Vd + j];
      vn[i * Vd + j] = a;
    }
  const double gl = c.gam[L - 1];
  for (int e = 0; e < Kd; ++e)
    for (int j = 0; j < Vd; ++j) {
      double a = 0;
      for (int i = 0; i < L; ++i) a += c.k[i * Kd + e] * std::exp(gl - c.gam[i]) * vn[i * Vd + j];
      S[e * Vd + j] = std::exp(gl) * S[e * Vd + j] + a;
    }
}

}  // namespace

flashgdn_status_t chunked_bwd(const flashgdn_chunk_bwd_params_t& p, const Problem& pr) {
  static const char* fn = "flashgdn_reference_bwd";
  std::vector<SeqRange> seqs;
  FLASHGDN_TRY(sequence_ranges(pr, p.cu_seqlens, fn, &seqs));
  const HostView q{&p.q}, k{&p.k}, v{&p.v}, g{&p.g}, beta{&p.beta}, dO{&p.d_o};
  const HostView dv{&p.dv}, dg{&p.dg}, dbeta{&p.dbeta};
  const int Kd = static_cast<int>(pr.K), Vd = static_cast<int>(pr.V);
  const double scale = pr.scale64;
  std::vector<double> dqh(pr.B * pr.T * pr.Hqk * Kd, 0.0), dkh(pr.B * pr.T * pr.Hqk * Kd, 0.0);
  std::vector<double> xq(Kd), xk(Kd);

  for (int64_t n = 0; n < pr.N; ++n) {
    const SeqRange sr = seqs[n];
    const int64_t nchunks = (sr.eos - sr.bos + kChunk - 1) / kChunk;
    for (int64_t h = 0; h < pr.Hv; ++h) {
      const int64_t hk = h / pr.group;
      // Chunk inputs.
      std::vector<Chunk> ch(nchunks);
      for (int64_t c = 0; c < nchunks; ++c) {
        Chunk& C = ch[c];
        const int64_t t0 = sr.bos + c * kChunk;
        C.L = static_cast<int>(std::min<int64_t>(kChunk, sr.eos - t0));
        C.q.assign(C.L * Kd, 0.0);
        C.k.assign(C.L * Kd, 0.0);
        C.v.assign(C.L * Vd, 0.0);
        C.beta.assign(C.L, 0.0);
        C.gam.assign(C.L, 0.0);
        double acc = 0;
        for (int i = 0; i < C.L; ++i) {
          const int64_t t = t0 + i;
          for (int e = 0; e < Kd; ++e) {
            xq[e] = q.get(sr.b, t, hk, e);
            xk[e] = k.get(sr.b, t, hk, e);
          }
          if (pr.l2norm) {
            l2norm(xq.data(), Kd);
            l2norm(xk.data(), Kd);
          }
          std::copy(xq.begin(), xq.end(), C.q.begin() + i * Kd);
          std::copy(xk.begin(), xk.end(), C.k.begin() + i * Kd);
          for (int j = 0; j < Vd; ++j) C.v[i * Vd + j] = v.get(sr.b, t, h, j);
          C.beta[i] = beta.get(sr.b, t, h);
          acc += g.get(sr.b, t, h);
          C.gam[i] = acc;
        }
        prepare_chunk(C, Kd);
      }
      // Forward: the state at every chunk start.
      std::vector<Mat> S(nchunks + 1, Mat(Kd * Vd, 0.0));
      load_state(pr, pr.has_h0 ? &p.initial_state : nullptr, n, h, S[0].data());
      Mat KS, W, vn;
      for (int64_t c = 0; c < nchunks; ++c) {
        S[c + 1] = S[c];
        chunk_forward(ch[c], Kd, Vd, S[c + 1], KS, W, vn);
      }
      // Backward.
      Mat dS(Kd * Vd, 0.0);
      if (pr.has_ht) load_state(pr, &p.d_final_state, n, h, dS.data());
      for (int64_t c = nchunks - 1; c >= 0; --c) {
        const Chunk& C = ch[c];
        const int L = C.L;
        const int64_t t0 = sr.bos + c * kChunk;
        const Mat& S0 = S[c];
        Mat Sn = S0;
        chunk_forward(C, Kd, Vd, Sn, KS, W, vn);
        const double gl = C.gam[L - 1], egl = std::exp(gl);
        Mat dOc(L * Vd), QS(L * Vd, 0.0), QK(L * L, 0.0), P(L * L, 0.0);
        for (int i = 0; i < L; ++i)
          for (int j = 0; j < Vd; ++j) dOc[i * Vd + j] = dO.get(sr.b, t0 + i, h, j);
        for (int i = 0; i < L; ++i) {
          for (int j = 0; j < Vd; ++j) {
            double a = 0;
            for (int e = 0; e < Kd; ++e) a += C.q[i * Kd + e] * S0[e * Vd + j];
            QS[i * Vd + j] = a;
          }
          for (int j = 0; j <= i; ++j) {
            double a = 0;
            for (int e = 0; e < Kd; ++e) a += C.q[i * Kd + e] * C.k[j * Kd + e];
            QK[i * L + j] = a;
            P[i * L + j] = scale * C.Gam[i * L + j] * a;
          }
        }
        // dvn = Pᵀ dO + e^{γ_L-γ} ⊙ (K dS')
        Mat KdS(L * Vd, 0.0), dvn(L * Vd, 0.0);
        for (int i = 0; i < L; ++i)
          for (int j = 0; j < Vd; ++j) {
            double a = 0;
            for (int e = 0; e < Kd; ++e) a += C.k[i * Kd + e] * dS[e * Vd + j];
            KdS[i * Vd + j] = a;
            double b = 0;
            for (int m = i; m < L; ++m) b += P[m * L + i] * dOc[m * Vd + j];
            dvn[i * Vd + j] = b + std::exp(gl - C.gam[i]) * a;
          }
        // dP = dO vnᵀ, dW = Abᵀ dvn, dAb = dvn Wᵀ (lower parts)
        Mat dP(L * L, 0.0), dW(L * Vd, 0.0), dAb(L * L, 0.0);
        for (int i = 0; i < L; ++i)
          for (int j = 0; j <= i; ++j) {
            double a = 0, b = 0;
            for (int e = 0; e < Vd; ++e) {
              a += dOc[i * Vd + e] * vn[j * Vd + e];
              b += dvn[i * Vd + e] * W[j * Vd + e];
            }
            dP[i * L + j] = a;
            dAb[i * L + j] = b;
          }
        for (int i = 0; i < L; ++i)
          for (int j = 0; j < Vd; ++j) {
            double a = 0;
            for (int m = i; m < L; ++m) a += C.Ab[m * L + i] * dvn[m * Vd + j];
            dW[i * Vd + j] = a;
            dv.set(a, sr.b, t0 + i, h, j);
          }
        // dγ and dβ, then dq̂, dk̂.
        std::vector<double> dgam(L, 0.0), db(L, 0.0);
        Mat dqc(L * Kd, 0.0), dkc(L * Kd, 0.0);
        for (int i = 0; i < L; ++i) {
          const double eg = std::exp(C.gam[i]), el = std::exp(gl - C.gam[i]);
          double w = 0, o = 0, c2 = 0;
          for (int j = 0; j < Vd; ++j) {
            w += dW[i * Vd + j] * KS[i * Vd + j];
            o += dOc[i * Vd + j] * QS[i * Vd + j];
            c2 += KdS[i * Vd + j] * vn[i * Vd + j];
          }
          dgam[i] += -eg * w + scale * eg * o - el * c2;
          dgam[L - 1] += el * c2;
          // dQ = scale e^{γ} (dO Sᵀ) ; dK from W: -e^{γ} (dW Sᵀ); dK from S': e^{γ_L-γ} (vn dS'ᵀ)
          for (int e = 0; e < Kd; ++e) {
            double a = 0, b = 0, c = 0;
            for (int j = 0; j < Vd; ++j) {
              a += dOc[i * Vd + j] * S0[e * Vd + j];
              b += dW[i * Vd + j] * S0[e * Vd + j];
              c += vn[i * Vd + j] * dS[e * Vd + j];
            }
            dqc[i * Kd + e] += scale * eg * a;
            dkc[i * Kd + e] += -eg * b + el * c;
          }
        }
        {
          double a = 0;
          for (int e = 0; e < Kd * Vd; ++e) a += dS[e] * S0[e];
          dgam[L - 1] += egl * a;
        }
        // Through P = scale Γ ⊙ QKᵀ and Ab = (Γ ⊙ A) diag(β).
        Mat dA(L * L, 0.0);
        for (int i = 0; i < L; ++i)
          for (int j = 0; j <= i; ++j) {
            const double gm = C.Gam[i * L + j];
            const double mp = scale * dP[i * L + j] * QK[i * L + j] * gm;
            const double mb = dAb[i * L + j] * C.A[i * L + j] * C.beta[j] * gm;
            dgam[i] += mp + mb;
            dgam[j] -= mp + mb;
            db[j] += dAb[i * L + j] * gm * C.A[i * L + j];
            dA[i * L + j] = dAb[i * L + j] * gm * C.beta[j];
            const double sp = scale * gm * dP[i * L + j];
            for (int e = 0; e < Kd; ++e) {
              dqc[i * Kd + e] += sp * C.k[j * Kd + e];
              dkc[j * Kd + e] += sp * C.q[i * Kd + e];
            }
          }
        // dLm = -Aᵀ dA Aᵀ (strictly lower); Lm_ij = β_i k_i·k_j.
        Mat T1(L * L, 0.0);
        for (int i = 0; i < L; ++i)
          for (int j = 0; j < L; ++j) {
            double a = 0;
            for (int m = 0; m < L; ++m) a += C.A[m * L + i] * dA[m * L + j];  // (Aᵀ dA)_ij
            T1[i * L + j] = a;
          }
        for (int i = 0; i < L; ++i)
          for (int j = 0; j < i; ++j) {
            double a = 0;
            for (int m = 0; m < L; ++m) a += T1[i * L + m] * C.A[j * L + m];  // (T1 Aᵀ)_ij
            const double dl = -a;
            double kk = 0;
            for (int e = 0; e < Kd; ++e) kk += C.k[i * Kd + e] * C.k[j * Kd + e];
            db[i] += dl * kk;
            for (int e = 0; e < Kd; ++e) {
              dkc[i * Kd + e] += C.beta[i] * dl * C.k[j * Kd + e];
              dkc[j * Kd + e] += C.beta[i] * dl * C.k[i * Kd + e];
            }
          }
        // New dS = e^{γ_L} dS' + scale Qᵀ (e^{γ} ⊙ dO) - Kᵀ (e^{γ} ⊙ dW).
        for (int e = 0; e < Kd; ++e)
          for (int j = 0; j < Vd; ++j) {
            double a = 0;
            for (int i = 0; i < L; ++i) {
              const double eg = std::exp(C.gam[i]);
              a += eg * (scale * C.q[i * Kd + e] * dOc[i * Vd + j] - C.k[i * Kd + e] * dW[i * Vd + j]);
            }
            dS[e * Vd + j] = egl * dS[e * Vd + j] + a;
          }
        // Outputs: dg = reverse chunk cumsum of dγ; dβ; accumulate dq̂, dk̂ over the group.
        double run = 0;
        for (int i = L - 1; i >= 0; --i) {
          run += dgam[i];
          dg.set(run, sr.b, t0 + i, h);
          dbeta.set(db[i], sr.b, t0 + i, h);
          const int64_t base = ((sr.b * pr.T + t0 + i) * pr.Hqk + hk) * Kd;
          for (int e = 0; e < Kd; ++e) {
            dqh[base + e] += dqc[i * Kd + e];
            dkh[base + e] += dkc[i * Kd + e];
          }
        }
      }
      if (pr.has_h0) store_state(pr, &p.d_initial_state, n, h, dS.data());
    }
  }
  write_qk_grads(p, pr, dqh, dkh);
  return FLASHGDN_SUCCESS;
}

}  // namespace flashgdn::reference
