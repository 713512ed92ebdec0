// CPU reference tests: chunked fp32 == recurrent fp64; reverse mode == central finite differences;
// varlen == sequences one by one; state-pool semantics; chunk stages; bad cu_seqlens contents.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "api/problem.hpp"
#include "host_problem.hpp"
#include "kernels/portable/fwd/blocked_solve.hpp"
#include "reference/reference.hpp"

using flashgdn::test::HostProblem;
using flashgdn::test::rel_l2;
using flashgdn::test::Shape;

namespace {

struct ChunkCase {
  const char* name;
  Shape s;
};

void PrintTo(const ChunkCase& c, std::ostream* os) { *os << c.name; }

class ChunkedMatchesRecurrent : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(ChunkedMatchesRecurrent, OutputAndFinalState) {
  HostProblem a(GetParam().s, 1234);
  HostProblem b(GetParam().s, 1234);
  auto pa = a.fwd();
  auto pb = b.fwd();
  flashgdn::reference_fwd(pa, FLASHGDN_REFERENCE_RECURRENT_FP64);
  flashgdn::reference_fwd(pb, FLASHGDN_REFERENCE_CHUNKED_FP32);
  EXPECT_LT(rel_l2(b.o, a.o), 2e-5);
  if (a.s.ht) EXPECT_LT(rel_l2(b.ht, a.ht), 2e-5);
}

Shape mk(std::vector<int64_t> lens, int64_t hqk, int64_t hv, int64_t kd, int64_t vd) {
  Shape s;
  s.seqlens = lens;
  s.Hqk = hqk;
  s.Hv = hv;
  s.K = kd;
  s.V = vd;
  return s;
}

Shape with(Shape s, std::function<void(Shape&)> f) {
  f(s);
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ChunkedMatchesRecurrent,
    ::testing::Values(
        ChunkCase{"tails", mk({1, 63, 64, 65, 130, 0}, 1, 2, 16, 8)},
        ChunkCase{"gva3", mk({100}, 2, 6, 16, 16)},
        ChunkCase{"qwen_dims", mk({70}, 1, 1, 128, 128)},
        ChunkCase{"strong_decay", with(mk({129}, 1, 2, 16, 16), [](Shape& s) { s.g_lo = -20; s.g_hi = 0; })},
        ChunkCase{"g_zero_beta2", with(mk({129}, 1, 2, 16, 16), [](Shape& s) { s.g_lo = s.g_hi = 0; s.beta_hi = 2; s.l2norm = true; })},
        ChunkCase{"vfirst_l2norm", with(mk({77}, 2, 4, 16, 32), [](Shape& s) { s.v_first = true; s.l2norm = true; })},
        ChunkCase{"no_state", with(mk({90}, 1, 1, 16, 16), [](Shape& s) { s.h0 = false; })},
        ChunkCase{"batched", with(mk({65, 65, 65}, 1, 2, 16, 16), [](Shape& s) { s.varlen = false; })}),
    [](const ::testing::TestParamInfo<ChunkCase>& i) { return std::string(i.param.name); });

// Loss = sum(o * dO) + sum(ht * dht): its gradient is what reference_bwd returns.
double loss(HostProblem& hp) {
  auto p = hp.fwd();
  flashgdn::reference_fwd(p, FLASHGDN_REFERENCE_RECURRENT_FP64);
  double l = 0;
  for (size_t i = 0; i < hp.o.size(); ++i) l += hp.o[i] * hp.dO[i];
  if (hp.s.ht)
    for (size_t i = 0; i < hp.ht.size(); ++i) l += hp.ht[i] * hp.dht[i];
  return l;
}

class GradientMatchesFiniteDifferences : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(GradientMatchesFiniteDifferences, AllInputs) {
  HostProblem hp(GetParam().s, 99);
  auto pb = hp.bwd();
  flashgdn::reference_bwd(pb);
  struct In {
    const char* name;
    std::vector<double>* x;
    std::vector<double>* dx;
  };
  std::vector<In> ins = {{"q", &hp.q, &hp.dq}, {"k", &hp.k, &hp.dk}, {"v", &hp.v, &hp.dv},
                         {"g", &hp.g, &hp.dg}, {"beta", &hp.beta, &hp.dbeta}};
  if (hp.s.h0) ins.push_back({"h0", &hp.h0, &hp.dh0});
  std::mt19937 rng(7);
  for (const In& in : ins) {
    std::vector<double> fd, an;
    for (int rep = 0; rep < 12; ++rep) {
      const size_t i = std::uniform_int_distribution<size_t>(0, in.x->size() - 1)(rng);
      const double x0 = (*in.x)[i], eps = 1e-6;
      (*in.x)[i] = x0 + eps;
      const double lp = loss(hp);
      (*in.x)[i] = x0 - eps;
      const double lm = loss(hp);
      (*in.x)[i] = x0;
      fd.push_back((lp - lm) / (2 * eps));
      an.push_back((*in.dx)[i]);
    }
    EXPECT_LT(rel_l2(an, fd), 1e-5) << in.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GradientMatchesFiniteDifferences,
    ::testing::Values(
        ChunkCase{"plain", mk({5, 0, 3}, 1, 2, 4, 3)},
        ChunkCase{"gva3_l2norm", with(mk({6, 1}, 1, 3, 4, 4), [](Shape& s) { s.l2norm = true; s.beta_hi = 2; })},
        ChunkCase{"vfirst_strong", with(mk({7}, 2, 2, 3, 5), [](Shape& s) { s.v_first = true; s.g_lo = -5; })},
        ChunkCase{"no_state_g0", with(mk({6}, 1, 1, 4, 4), [](Shape& s) { s.h0 = false; s.ht = false; s.g_lo = s.g_hi = 0; })},
        ChunkCase{"batched", with(mk({4, 4}, 1, 2, 3, 3), [](Shape& s) { s.varlen = false; })}),
    [](const ::testing::TestParamInfo<ChunkCase>& i) { return std::string(i.param.name); });

TEST(Reference, ContextParallelChunkedEqualsSequential) {
  for (int seg : {1, 2, 3}) {
    Shape sh = mk({200, 64, 1, 333}, 1, 4, 16, 8);
    sh.g_lo = -0.3;
    HostProblem a(sh, 77), b(sh, 77);
    // Mixed gate regimes across heads: head 3 has g = 0 (no decay at all).
    for (HostProblem* hp : {&a, &b})
      for (size_t i = 3; i < hp->g.size(); i += 4) hp->g[i] = 0.0;
    auto pa = a.fwd();
    auto pb = b.fwd();
    flashgdn::Problem pr;
    ASSERT_EQ(flashgdn::validate_fwd(&pb, flashgdn::Target::kReference, "test", &pr), FLASHGDN_SUCCESS);
    ASSERT_EQ(flashgdn::reference::chunked_fwd(pa, pr, 0), FLASHGDN_SUCCESS);
    ASSERT_EQ(flashgdn::reference::chunked_fwd(pb, pr, seg), FLASHGDN_SUCCESS);
    EXPECT_LT(rel_l2(b.o, a.o), 1e-5) << "segments of " << seg;
    EXPECT_LT(rel_l2(b.ht, a.ht), 1e-5) << "segments of " << seg;
  }
}

class ChunkedBackwardMatchesRecurrent : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(ChunkedBackwardMatchesRecurrent, AllGradients) {
  HostProblem a(GetParam().s, 4321), b(GetParam().s, 4321);
  auto pa = a.bwd();
  auto pb = b.bwd();
  flashgdn::Problem pr;
  ASSERT_EQ(flashgdn::validate_bwd(&pb, flashgdn::Target::kReference, "test", &pr), FLASHGDN_SUCCESS)
      << flashgdn_get_last_error();
  flashgdn::reference_bwd(pa);
  ASSERT_EQ(flashgdn::reference::chunked_bwd(pb, pr), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  EXPECT_LT(rel_l2(b.dq, a.dq), 1e-10) << "dq";
  EXPECT_LT(rel_l2(b.dk, a.dk), 1e-10) << "dk";
  EXPECT_LT(rel_l2(b.dv, a.dv), 1e-10) << "dv";
  EXPECT_LT(rel_l2(b.dg, a.dg), 1e-9) << "dg";
  EXPECT_LT(rel_l2(b.dbeta, a.dbeta), 1e-10) << "dbeta";
  if (a.s.h0) EXPECT_LT(rel_l2(b.dh0, a.dh0), 1e-10) << "dh0";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ChunkedBackwardMatchesRecurrent,
    ::testing::Values(
        ChunkCase{"tails", mk({1, 63, 64, 65, 0, 130}, 1, 2, 8, 8)},
        ChunkCase{"gva3_l2norm", with(mk({100, 7}, 2, 6, 8, 4), [](Shape& s) { s.l2norm = true; s.beta_hi = 2; })},
        ChunkCase{"strong_decay", with(mk({129}, 1, 2, 8, 8), [](Shape& s) { s.g_lo = -20; })},
        ChunkCase{"g_zero_vfirst", with(mk({70, 5}, 1, 1, 8, 16), [](Shape& s) { s.g_lo = s.g_hi = 0; s.v_first = true; })},
        ChunkCase{"no_state", with(mk({90}, 1, 2, 8, 8), [](Shape& s) { s.h0 = false; s.ht = false; })},
        ChunkCase{"batched", with(mk({65, 65}, 1, 2, 8, 8), [](Shape& s) { s.varlen = false; })}),
    [](const ::testing::TestParamInfo<ChunkCase>& i) { return std::string(i.param.name); });

TEST(Reference, VarlenEqualsSequencesOneByOne) {
  Shape s = mk({33, 0, 64, 7}, 1, 2, 8, 8);
  HostProblem all(s, 5);
  auto p = all.fwd();
  flashgdn::reference_fwd(p);
  for (size_t n = 0, tok = 0; n < s.seqlens.size(); tok += s.seqlens[n], ++n) {
    if (s.seqlens[n] == 0) continue;  // covered inside the batch
    Shape one = s;
    one.seqlens = {s.seqlens[n]};
    HostProblem hp(one, 0);
    const int64_t L = s.seqlens[n], H = s.Hv;
    // Copy this sequence's slice of every input.
    std::copy_n(all.q.begin() + tok * s.Hqk * s.K, L * s.Hqk * s.K, hp.q.begin());
    std::copy_n(all.k.begin() + tok * s.Hqk * s.K, L * s.Hqk * s.K, hp.k.begin());
    std::copy_n(all.v.begin() + tok * H * s.V, L * H * s.V, hp.v.begin());
    std::copy_n(all.g.begin() + tok * H, L * H, hp.g.begin());
    std::copy_n(all.beta.begin() + tok * H, L * H, hp.beta.begin());
    std::copy_n(all.h0.begin() + n * H * s.K * s.V, H * s.K * s.V, hp.h0.begin());
    auto p1 = hp.fwd();
    flashgdn::reference_fwd(p1);
    for (int64_t i = 0; i < L * H * s.V; ++i) ASSERT_EQ(hp.o[i], all.o[tok * H * s.V + i]);
    for (int64_t i = 0; i < H * s.K * s.V; ++i) ASSERT_EQ(hp.ht[i], all.ht[n * H * s.K * s.V + i]);
  }
}

TEST(Reference, StatePoolSemantics) {
  // 3 sequences, a pool of 5 slots: seq 0 -> slot 3, seq 1 -> -1 (zeros, no write-back),
  // seq 2 -> slot 0 with has_initial_state = false (zeros, written back).
  Shape s = mk({10, 20, 5}, 1, 2, 4, 4);
  s.ht = false;
  s.h0 = false;
  HostProblem hp(s, 11);
  const int64_t slot = s.Hv * s.K * s.V;
  std::vector<double> pool(5 * slot);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd;
  for (double& e : pool) e = nd(rng);
  const std::vector<double> pool0 = pool;
  std::vector<int32_t> idx = {3, -1, 0};
  std::vector<uint8_t> mask = {1, 1, 0};
  auto p = hp.fwd();
  p.initial_state = flashgdn::tensor(pool.data(), FLASHGDN_DTYPE_FLOAT64, {5, s.Hv, s.K, s.V});
  p.state_indices = flashgdn::tensor(idx.data(), FLASHGDN_DTYPE_INT32, {3});
  p.has_initial_state = flashgdn::tensor(mask.data(), FLASHGDN_DTYPE_BOOL, {3});
  flashgdn::reference_fwd(p);
  const std::vector<double> o_pool = hp.o;

  // Same problem with explicit initial/final states.
  Shape s2 = s;
  s2.h0 = s2.ht = true;
  HostProblem ex(s2, 11);
  std::fill(ex.h0.begin(), ex.h0.end(), 0.0);
  std::copy_n(pool0.begin() + 3 * slot, slot, ex.h0.begin());
  auto pe = ex.fwd();
  flashgdn::reference_fwd(pe);
  EXPECT_EQ(rel_l2(o_pool, ex.o), 0.0);
  for (int64_t i = 0; i < slot; ++i) {
    EXPECT_EQ(pool[3 * slot + i], ex.ht[0 * slot + i]);
    EXPECT_EQ(pool[0 * slot + i], ex.ht[2 * slot + i]);
    for (int untouched : {1, 2, 4}) EXPECT_EQ(pool[untouched * slot + i], pool0[untouched * slot + i]);
  }
  // An out-of-range slot is reported and nothing is written.
  idx = {3, 5, 0};
  pool = pool0;
  EXPECT_EQ(flashgdn_reference_fwd(&p, FLASHGDN_REFERENCE_RECURRENT_FP64), FLASHGDN_ERROR_INVALID_DATA);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("state_indices[1] = 5 is outside [-1, 5)"), std::string::npos);
  EXPECT_EQ(pool, pool0);
}

TEST(Reference, BadCuSeqlensContents) {
  Shape s = mk({4, 4}, 1, 1, 4, 4);
  HostProblem hp(s, 1);
  auto p = hp.fwd();
  hp.cu = {0, 6, 5};
  EXPECT_EQ(flashgdn_reference_fwd(&p, FLASHGDN_REFERENCE_RECURRENT_FP64), FLASHGDN_ERROR_INVALID_DATA);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("cu_seqlens is not non-decreasing"), std::string::npos);
  hp.cu = {0, 4, 9};
  EXPECT_EQ(flashgdn_reference_fwd(&p, FLASHGDN_REFERENCE_CHUNKED_FP32), FLASHGDN_ERROR_INVALID_DATA);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("exceeds the token count T = 8"), std::string::npos);
  hp.cu = {1, 4, 8};
  EXPECT_EQ(flashgdn_reference_fwd(&p, FLASHGDN_REFERENCE_RECURRENT_FP64), FLASHGDN_ERROR_INVALID_DATA);
  EXPECT_NE(std::string(flashgdn_get_last_error()).find("cu_seqlens[0] = 1, expected 0"), std::string::npos);
}

TEST(Stages, KktSolveIsTheInverse) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.2f);
  for (int L : {1, 17, 64}) {
    const int Kd = 32;
    std::vector<float> k(64 * Kd), beta(64), A(64 * 64);
    for (float& e : k) e = nd(rng);
    for (float& e : beta) e = std::abs(nd(rng)) * 4;
    flashgdn::reference::stage_kkt_solve(k.data(), Kd, beta.data(), L, Kd, A.data());
    // (I + StrictLower(diag(beta) K K^T)) A == I
    double err = 0;
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) {
        double acc = A[i * 64 + j];
        for (int m = 0; m < i; ++m) {
          double d = 0;
          for (int e = 0; e < Kd; ++e) d += k[i * Kd + e] * k[m * Kd + e];
          acc += beta[i] * d * A[m * 64 + j];
        }
        err = std::max(err, std::abs(acc - (i == j ? 1.0 : 0.0)));
      }
    EXPECT_LT(err, 1e-4) << "L = " << L;
  }
}

TEST(Stages, BlockedSolveEqualsSubstitution) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.25f);
  for (int L : {1, 15, 16, 17, 33, 50, 64}) {
    const int Kd = 32;
    std::vector<float> k(64 * Kd), beta(64), A(64 * 64), B(64 * 64);
    for (float& e : k) e = nd(rng);
    for (float& e : beta) e = std::abs(nd(rng)) * 8;  // up to ~2
    flashgdn::reference::stage_kkt_solve(k.data(), Kd, beta.data(), L, Kd, A.data());
    flashgdn::reference::stage_kkt_solve_blocked(k.data(), Kd, beta.data(), L, Kd, B.data());
    double num = 0, den = 0;
    for (int i = 0; i < 64 * 64; ++i) {
      num += double(A[i] - B[i]) * (A[i] - B[i]);
      den += double(A[i]) * A[i];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-5) << "L = " << L;
  }
}

// The GPU's thread-partitioned phases, run on the CPU thread by thread with a barrier between phases.
TEST(Stages, BlockedSolvePhasesAsTheGpuRunsThem) {
  namespace bs = flashgdn::portable::blocked_solve;
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.f, 0.25f);
  for (int L : {1, 16, 40, 64}) {
    const int Kd = 16;
    std::vector<float> k(64 * Kd, 0.f), beta(64, 0.f), A(64 * 64);
    for (int i = 0; i < L; ++i) {
      for (int e = 0; e < Kd; ++e) k[i * Kd + e] = nd(rng);
      beta[i] = std::abs(nd(rng)) * 8;
    }
    flashgdn::reference::stage_kkt_solve(k.data(), Kd, beta.data(), L, Kd, A.data());
    // X with the prepare kernel's stride (kLd) and with the sm_90a head kernel's (64: over its A and Pg tiles); the
    // diagonal blocks by diag or by diag8 + merge8.
    for (int ldx : {bs::kLd, 64})
    for (bool diag8 : {false, true}) {
      std::vector<float> T(64 * bs::kLd, 0.f), X(64 * ldx, NAN), Y(bs::kScratch, NAN);
      for (int i = 0; i < 64; ++i) {
        T[i * bs::kLd + i] = 1.f;
        for (int j = 0; j < i; ++j) {
          float d = 0.f;
          for (int e = 0; e < Kd; ++e) d += k[i * Kd + e] * k[j * Kd + e];
          T[i * bs::kLd + j] = beta[i] * d;
        }
      }
      if (diag8) {  // the 8 x 8 blocks and their pairwise merge (FLASHGDN_SOLVE_DIAG8=1), as the GPU runs them
        for (int tid = 0; tid < 64; ++tid) bs::diag8(tid, T.data(), X.data(), ldx);
        for (int q = 0; q < 4; ++q)
          for (int e = 0; e < 64; ++e) bs::merge8_y(q, e, T.data(), X.data(), Y.data() + 64 * q, ldx);
        for (int q = 0; q < 4; ++q)
          for (int e = 0; e < 64; ++e) bs::merge8_x(q, e, X.data(), Y.data() + 64 * q, ldx);
      } else {
        for (int tid = 0; tid < 64; ++tid) bs::diag(tid, T.data(), X.data(), ldx);
      }
      for (int d = 1; d < bs::kNB; ++d) {
        for (int tid = 0; tid < 128; ++tid) bs::level_y(tid, 128, d, T.data(), X.data(), Y.data(), ldx);
        for (int tid = 0; tid < 128; ++tid) bs::level_x(tid, 128, d, X.data(), Y.data(), ldx);
      }
      double num = 0, den = 0;
      for (int i = 0; i < L; ++i)
        for (int j = 0; j <= i; ++j) {
          const double a = A[i * 64 + j], x = X[i * ldx + j];
          num += (a - x) * (a - x);
          den += a * a;
        }
      EXPECT_LT(std::sqrt(num / den), 1e-5) << "L = " << L << ", ldx = " << ldx << ", diag8 = " << diag8;
    }
  }
}

// The chunk's map on the state is affine with linear part T_c = e^{gamma_L} (I - Kᵀ A diag(beta) K):
// the gates factor out (the basis of exact context parallelism).
TEST(Stages, ChunkTransitionIsGateSeparable) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int L = 50, Kd = 16, Vd = 8;
  std::vector<float> q(L * Kd), k(L * Kd), v(L * Vd), g(L), gam(L), beta(L), A(64 * 64), o(L * Vd);
  for (float& e : q) e = nd(rng) * 0.25f;
  for (float& e : k) e = nd(rng) * 0.25f;
  for (float& e : v) e = nd(rng);
  for (int i = 0; i < L; ++i) {
    g[i] = -0.05f * std::abs(nd(rng));
    beta[i] = 1.f / (1.f + std::exp(-nd(rng)));
  }
  flashgdn::reference::stage_chunk_cumsum(g.data(), L, gam.data());
  flashgdn::reference::stage_kkt_solve(k.data(), Kd, beta.data(), L, Kd, A.data());
  std::vector<float> S(Kd * Vd), S1(Kd * Vd), S0(Kd * Vd, 0.f);
  for (float& e : S) e = nd(rng);
  S1 = S;
  flashgdn::reference::stage_chunk_step(q.data(), Kd, k.data(), Kd, v.data(), Vd, gam.data(), beta.data(), A.data(), L,
                                        Kd, Vd, 0.5f, S1.data(), o.data(), Vd, nullptr);
  flashgdn::reference::stage_chunk_step(q.data(), Kd, k.data(), Kd, v.data(), Vd, gam.data(), beta.data(), A.data(), L,
                                        Kd, Vd, 0.5f, S0.data(), o.data(), Vd, nullptr);
  // M = Kᵀ A diag(beta) K  (Kd x Kd)
  std::vector<double> AbK(L * Kd, 0.0), M(Kd * Kd, 0.0);
  for (int i = 0; i < L; ++i)
    for (int e = 0; e < Kd; ++e)
      for (int j = 0; j <= i; ++j) AbK[i * Kd + e] += double(A[i * 64 + j]) * beta[j] * k[j * Kd + e];
  for (int a = 0; a < Kd; ++a)
    for (int b = 0; b < Kd; ++b)
      for (int i = 0; i < L; ++i) M[a * Kd + b] += double(k[i * Kd + a]) * AbK[i * Kd + b];
  const double egl = std::exp(double(gam[L - 1]));
  double num = 0, den = 0;
  for (int a = 0; a < Kd; ++a)
    for (int c = 0; c < Vd; ++c) {
      double ts = egl * S[a * Vd + c];
      for (int b = 0; b < Kd; ++b) ts -= egl * M[a * Kd + b] * S[b * Vd + c];
      const double lin = double(S1[a * Vd + c]) - S0[a * Vd + c];
      num += (lin - ts) * (lin - ts);
      den += ts * ts;
    }
  EXPECT_LT(std::sqrt(num / den), 1e-5);
}

TEST(Stages, CumsumAndNoPositiveExponent) {
  const float g[5] = {-1.f, -0.5f, 0.f, -2.f, -0.25f};
  float gam[5];
  flashgdn::reference::stage_chunk_cumsum(g, 5, gam);
  EXPECT_FLOAT_EQ(gam[4], -3.75f);
  for (int i = 1; i < 5; ++i) EXPECT_LE(gam[i], gam[i - 1]);  // so gamma_i - gamma_j <= 0 for i >= j
}

}  // namespace
