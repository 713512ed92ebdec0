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

namespace {

// Inputs of one chunk (tokens [c0, c0 + L) of a sequence, value head h) and its gate-free inverse.
struct ChunkIn {
  int L = 0;
  std::vector<float> q, k, v, gam, beta, A;
};

ChunkIn load_chunk(const flashgdn_chunk_fwd_params_t& p, const Problem& pr, const SeqRange& sr, int64_t h,
                   int64_t c0) {
  const HostView q{&p.q}, k{&p.k}, v{&p.v}, g{&p.g}, beta{&p.beta};
  const int Kd = static_cast<int>(pr.K), Vd = static_cast<int>(pr.V);
  const int64_t hk = h / pr.group;
  ChunkIn c;
  c.L = static_cast<int>(std::min<int64_t>(kChunk, sr.eos - c0));
  c.q.assign(kChunk * Kd, 0.f);
  c.k.assign(kChunk * Kd, 0.f);
  c.v.assign(kChunk * Vd, 0.f);
  c.gam.assign(kChunk, 0.f);
  c.beta.assign(kChunk, 0.f);
  c.A.assign(kChunk * kChunk, 0.f);
  std::vector<double> xd(Kd);
  std::vector<float> gc(kChunk, 0.f);
  for (int i = 0; i < c.L; ++i) {
    const int64_t t = c0 + i;
    for (int pass = 0; pass < 2; ++pass) {
      const HostView& x = pass ? k : q;
      for (int e = 0; e < Kd; ++e) xd[e] = x.get(sr.b, t, hk, e);
      if (pr.l2norm) l2norm(xd.data(), Kd);
      float* dst = pass ? &c.k[i * Kd] : &c.q[i * Kd];
      for (int e = 0; e < Kd; ++e) dst[e] = static_cast<float>(xd[e]);
    }
    for (int j = 0; j < Vd; ++j) c.v[i * Vd + j] = static_cast<float>(v.get(sr.b, t, h, j));
    gc[i] = static_cast<float>(g.get(sr.b, t, h));
    c.beta[i] = static_cast<float>(beta.get(sr.b, t, h));
  }
  stage_chunk_cumsum(gc.data(), c.L, c.gam.data());
  stage_kkt_solve(c.k.data(), Kd, c.beta.data(), c.L, Kd, c.A.data());
  return c;
}

// Runs chunks [c_begin, c_end) of a sequence from state S (updated in place); writes o when `o` is set.
void run_chunks(const flashgdn_chunk_fwd_params_t& p, const Problem& pr, const SeqRange& sr, int64_t h,
                int64_t c_begin, int64_t c_end, std::vector<float>& S, bool write_o) {
  const HostView o{&p.o};
  const int Kd = static_cast<int>(pr.K), Vd = static_cast<int>(pr.V);
  std::vector<float> oc(kChunk * Vd);
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t c0 = sr.bos + c * kChunk;
    const ChunkIn ci = load_chunk(p, pr, sr, h, c0);
    stage_chunk_step(ci.q.data(), Kd, ci.k.data(), Kd, ci.v.data(), Vd, ci.gam.data(), ci.beta.data(), ci.A.data(),
                     ci.L, Kd, Vd, pr.scale, S.data(), oc.data(), Vd, nullptr);
    if (write_o)
      for (int i = 0; i < ci.L; ++i)
        for (int j = 0; j < Vd; ++j) o.set(oc[i * Vd + j], sr.b, c0 + i, h, j);
  }
}

// Linear part of the state map of chunks [c_begin, c_end): M = T_last ... T_first with
// T_c = e^{gamma_L} (I - Kᵀ A diag(beta) K)  (Kd x Kd, fp64).
std::vector<double> segment_transition(const flashgdn_chunk_fwd_params_t& p, const Problem& pr, const SeqRange& sr,
                                       int64_t h, int64_t c_begin, int64_t c_end) {
  const int Kd = static_cast<int>(pr.K);
  std::vector<double> M(Kd * Kd, 0.0), T(Kd * Kd), P(Kd * Kd);
  for (int a = 0; a < Kd; ++a) M[a * Kd + a] = 1.0;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const ChunkIn ci = load_chunk(p, pr, sr, h, sr.bos + c * kChunk);
    std::vector<double> AbK(ci.L * Kd, 0.0);  // A diag(beta) K
    for (int i = 0; i < ci.L; ++i)
      for (int j = 0; j <= i; ++j)
        for (int e = 0; e < Kd; ++e) AbK[i * Kd + e] += double(ci.A[i * kChunk + j]) * ci.beta[j] * ci.k[j * Kd + e];
    const double egl = std::exp(double(ci.gam[ci.L - 1]));
    for (int a = 0; a < Kd; ++a)
      for (int b = 0; b < Kd; ++b) {
        double m = (a == b) ? 1.0 : 0.0;
        for (int i = 0; i < ci.L; ++i) m -= double(ci.k[i * Kd + a]) * AbK[i * Kd + b];
        T[a * Kd + b] = egl * m;
      }
    for (int a = 0; a < Kd; ++a)
      for (int b = 0; b < Kd; ++b) {
        double acc = 0;
        for (int e = 0; e < Kd; ++e) acc += T[a * Kd + e] * M[e * Kd + b];
        P[a * Kd + b] = acc;
      }
    M.swap(P);
  }
  return M;
}

}  // namespace

flashgdn_status_t chunked_fwd(const flashgdn_chunk_fwd_params_t& p, const Problem& pr, int64_t segment_chunks) {
  static const char* fn = "flashgdn_reference_fwd";
  std::vector<SeqRange> seqs;
  FLASHGDN_TRY(sequence_ranges(pr, p.cu_seqlens, fn, &seqs));
  std::vector<StateIO> io(pr.N);
  for (int64_t n = 0; n < pr.N; ++n) FLASHGDN_TRY(state_io(p, pr, n, fn, &io[n]));
  const int Kd = static_cast<int>(pr.K), Vd = static_cast<int>(pr.V);
  std::vector<double> Sd(Kd * Vd), finals(pr.N * pr.Hv * Kd * Vd);
  std::vector<float> S(Kd * Vd);
  for (int64_t n = 0; n < pr.N; ++n) {
    const SeqRange sr = seqs[n];
    const int64_t nchunks = (sr.eos - sr.bos + kChunk - 1) / kChunk;
    for (int64_t h = 0; h < pr.Hv; ++h) {
      load_state(pr, io[n].src, io[n].src_row, h, Sd.data());
      for (int e = 0; e < Kd * Vd; ++e) S[e] = static_cast<float>(Sd[e]);
      if (segment_chunks <= 0 || nchunks <= segment_chunks) {
        run_chunks(p, pr, sr, h, 0, nchunks, S, true);
      } else {
        // Exact context parallelism: (1) every segment from a zero state -> local end state E_j, and its
        // transition M_j; (2) scan S_{j+1} = M_j S_j + E_j; (3) every segment again from its true S_j.
        const int64_t nseg = (nchunks + segment_chunks - 1) / segment_chunks;
        std::vector<std::vector<float>> start(nseg + 1);
        start[0] = S;
        for (int64_t j = 0; j < nseg; ++j) {
          const int64_t cb = j * segment_chunks, ce = std::min(nchunks, cb + segment_chunks);
          std::vector<float> E(Kd * Vd, 0.f);
          run_chunks(p, pr, sr, h, cb, ce, E, false);
          const std::vector<double> M = segment_transition(p, pr, sr, h, cb, ce);
          start[j + 1].assign(Kd * Vd, 0.f);
          for (int a = 0; a < Kd; ++a)
            for (int c = 0; c < Vd; ++c) {
              double acc = E[a * Vd + c];
              for (int b = 0; b < Kd; ++b) acc += M[a * Kd + b] * start[j][b * Vd + c];
              start[j + 1][a * Vd + c] = static_cast<float>(acc);
            }
        }
        for (int64_t j = 0; j < nseg; ++j) {
          std::vector<float> Sj = start[j];
          run_chunks(p, pr, sr, h, j * segment_chunks, std::min(nchunks, (j + 1) * segment_chunks), Sj, true);
        }
        S = start[nseg];
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
