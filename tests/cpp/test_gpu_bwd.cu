// GPU backward (flashgdn_chunk_bwd) against the fp64 reverse mode of the recurrence (flashgdn_reference_bwd)
// on the same rounded inputs (label `gpu`; every test skips without a device). Fresh random inputs per case,
// outputs poisoned (NaN) before each run, relative L2 limits of issue 4: bf16 dq, dk, dv, dh0 <= 1.5e-2,
// dβ, dg <= 2e-2; fp16 half of those. Every case also runs twice and must agree bitwise (determinism).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "api/tensor.hpp"
#include "flashgdn/flashgdn.hpp"
#include "gpu_test_util.hpp"
#include "host_problem.hpp"

namespace {

using flashgdn::test::HostProblem;
using flashgdn::test::Shape;

using flashgdn::test::DevBuf;

struct BwdCase {
  std::string name;
  Shape s;
  bool fp16 = false, beta16 = false, state_bf16 = false, strided = false;
  uint64_t seed = 1;
};
void PrintTo(const BwdCase& c, std::ostream* os) { *os << c.name; }

uint16_t to_bits(double x, bool fp16) {
  return fp16 ? flashgdn::float_to_half_bits(static_cast<float>(x)) : flashgdn::float_to_bf16_bits(static_cast<float>(x));
}
double from_bits(uint16_t b, bool fp16) { return fp16 ? flashgdn::half_bits_to_float(b) : flashgdn::bf16_bits_to_float(b); }
// Rounds x to the 16-bit dtype in place and returns the bits.
std::vector<uint16_t> round16(std::vector<double>& x, bool fp16) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    b[i] = to_bits(x[i], fp16);
    x[i] = from_bits(b[i], fp16);
  }
  return b;
}

struct GpuGrads {
  std::vector<double> dq, dk, dv, dg, dbeta, dh0;
  std::vector<unsigned char> raw;  // every output's bytes, for the bitwise comparison
};

// One GPU backward of `hp` (inputs already rounded) into `out`.
void run_gpu_bwd(const BwdCase& c, HostProblem& hp, GpuGrads* out) {
  const Shape& s = hp.s;
  const bool f16 = c.fp16;
  const auto dt = f16 ? FLASHGDN_DTYPE_FLOAT16 : FLASHGDN_DTYPE_BFLOAT16;
  const int64_t BT = hp.B * hp.T, nq = BT * s.Hqk * s.K, nv = BT * s.Hv * s.V, nh = BT * s.Hv;
  const int64_t ns = hp.N * s.Hv * s.K * s.V;
  // q, k, v: separate contiguous tensors, or views of one fused [B, T, (q | k | v | pad)] buffer.
  const int64_t row = 2 * s.Hqk * s.K + s.Hv * s.V + 64;
  std::vector<uint16_t> hq(nq), hk(nq), hv(nv), hdo(nv);
  for (int64_t i = 0; i < nq; ++i) { hq[i] = to_bits(hp.q[i], f16); hk[i] = to_bits(hp.k[i], f16); }
  for (int64_t i = 0; i < nv; ++i) { hv[i] = to_bits(hp.v[i], f16); hdo[i] = to_bits(hp.dO[i], f16); }
  DevBuf dqkv(static_cast<size_t>(c.strided ? BT * row : nq * 2 + nv) * 2), ddo(nv * 2);
  uint16_t* base = static_cast<uint16_t*>(dqkv.p);
  uint16_t *pq = base, *pk = base + (c.strided ? s.Hqk * s.K : nq), *pv = base + (c.strided ? 2 * s.Hqk * s.K : 2 * nq);
  if (c.strided) {
    std::vector<uint16_t> fused(BT * row, 0);
    for (int64_t t = 0; t < BT; ++t) {
      std::memcpy(&fused[t * row], &hq[t * s.Hqk * s.K], s.Hqk * s.K * 2);
      std::memcpy(&fused[t * row + s.Hqk * s.K], &hk[t * s.Hqk * s.K], s.Hqk * s.K * 2);
      std::memcpy(&fused[t * row + 2 * s.Hqk * s.K], &hv[t * s.Hv * s.V], s.Hv * s.V * 2);
    }
    CUDA_OK(cudaMemcpy(base, fused.data(), fused.size() * 2, cudaMemcpyHostToDevice));
  } else {
    CUDA_OK(cudaMemcpy(pq, hq.data(), nq * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(pk, hk.data(), nq * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(pv, hv.data(), nv * 2, cudaMemcpyHostToDevice));
  }
  CUDA_OK(cudaMemcpy(ddo.p, hdo.data(), nv * 2, cudaMemcpyHostToDevice));
  std::vector<float> hg(hp.g.begin(), hp.g.end()), hb(hp.beta.begin(), hp.beta.end());
  DevBuf dg_in(nh * 4), dbeta_in(nh * 4), dcu(hp.cu.size() * 8 + 8), dh0(ns * 4 + 4), ddht(ns * 4 + 4);
  CUDA_OK(cudaMemcpy(dg_in.p, hg.data(), nh * 4, cudaMemcpyHostToDevice));
  if (c.beta16) {
    std::vector<uint16_t> b(nh);
    for (int64_t i = 0; i < nh; ++i) b[i] = to_bits(hp.beta[i], f16);
    CUDA_OK(cudaMemcpy(dbeta_in.p, b.data(), nh * 2, cudaMemcpyHostToDevice));
  } else {
    CUDA_OK(cudaMemcpy(dbeta_in.p, hb.data(), nh * 4, cudaMemcpyHostToDevice));
  }
  if (s.varlen) CUDA_OK(cudaMemcpy(dcu.p, hp.cu.data(), hp.cu.size() * 8, cudaMemcpyHostToDevice));
  if (s.h0) {
    if (c.state_bf16) {
      std::vector<uint16_t> b(ns);
      for (int64_t i = 0; i < ns; ++i) b[i] = flashgdn::float_to_bf16_bits(static_cast<float>(hp.h0[i]));
      CUDA_OK(cudaMemcpy(dh0.p, b.data(), ns * 2, cudaMemcpyHostToDevice));
    } else {
      std::vector<float> f(hp.h0.begin(), hp.h0.end());
      CUDA_OK(cudaMemcpy(dh0.p, f.data(), ns * 4, cudaMemcpyHostToDevice));
    }
  }
  if (s.ht) {
    std::vector<float> f(hp.dht.begin(), hp.dht.end());
    CUDA_OK(cudaMemcpy(ddht.p, f.data(), ns * 4, cudaMemcpyHostToDevice));
  }
  // Outputs, poisoned.
  DevBuf odq(nq * 2), odk(nq * 2), odv(nv * 2), odg(nh * 4), odb(nh * 4), odh0(ns * 4 + 4);
  for (DevBuf* b : {&odq, &odk, &odv, &odg, &odb, &odh0}) CUDA_OK(cudaMemset(b->p, 0xff, b->bytes));

  using flashgdn::tensor;
  flashgdn::ChunkBwdParams p;
  p.q = tensor(pq, dt, {hp.B, hp.T, s.Hqk, s.K});
  p.k = tensor(pk, dt, {hp.B, hp.T, s.Hqk, s.K});
  p.v = tensor(pv, dt, {hp.B, hp.T, s.Hv, s.V});
  if (c.strided)
    for (auto* t : {&p.q, &p.k, &p.v}) {
      t->stride[1] = row;
      t->stride[0] = row * hp.T;
    }
  p.g = tensor(dg_in.p, FLASHGDN_DTYPE_FLOAT32, {hp.B, hp.T, s.Hv});
  p.beta = tensor(dbeta_in.p, c.beta16 ? dt : FLASHGDN_DTYPE_FLOAT32, {hp.B, hp.T, s.Hv});
  if (s.varlen) p.cu_seqlens = tensor(dcu.p, FLASHGDN_DTYPE_INT64, {hp.N + 1});
  const int64_t d2 = hp.d2(), d3 = hp.d3();
  if (s.h0) {
    p.initial_state = tensor(dh0.p, c.state_bf16 ? FLASHGDN_DTYPE_BFLOAT16 : FLASHGDN_DTYPE_FLOAT32, {hp.N, s.Hv, d2, d3});
    p.d_initial_state = tensor(odh0.p, FLASHGDN_DTYPE_FLOAT32, {hp.N, s.Hv, d2, d3});
  }
  if (s.ht) p.d_final_state = tensor(ddht.p, FLASHGDN_DTYPE_FLOAT32, {hp.N, s.Hv, d2, d3});
  p.d_o = tensor(ddo.p, dt, {hp.B, hp.T, s.Hv, s.V});
  p.dq = tensor(odq.p, dt, {hp.B, hp.T, s.Hqk, s.K});
  p.dk = tensor(odk.p, dt, {hp.B, hp.T, s.Hqk, s.K});
  p.dv = tensor(odv.p, dt, {hp.B, hp.T, s.Hv, s.V});
  p.dg = tensor(odg.p, FLASHGDN_DTYPE_FLOAT32, {hp.B, hp.T, s.Hv});
  p.dbeta = tensor(odb.p, c.beta16 ? dt : FLASHGDN_DTYPE_FLOAT32, {hp.B, hp.T, s.Hv});
  p.use_qk_l2norm = s.l2norm;
  p.state_v_first = s.v_first;
  size_t bytes = 0;
  ASSERT_EQ(flashgdn_chunk_bwd_workspace_size(&p, &bytes), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  DevBuf ws(bytes + 1);
  CUDA_OK(cudaMemset(ws.p, 0xff, ws.bytes));  // stale workspace must not matter
  ASSERT_EQ(flashgdn_chunk_bwd(&p, ws.p, bytes, nullptr), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  CUDA_OK(cudaDeviceSynchronize());

  auto fetch16 = [&](const DevBuf& b, int64_t n, std::vector<double>& dst) {
    std::vector<uint16_t> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), b.p, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    dst.resize(n);
    for (int64_t i = 0; i < n; ++i) dst[i] = from_bits(h[i], f16);
    const auto* r = reinterpret_cast<const unsigned char*>(h.data());
    out->raw.insert(out->raw.end(), r, r + n * 2);
  };
  auto fetch32 = [&](const DevBuf& b, int64_t n, std::vector<double>& dst) {
    std::vector<float> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), b.p, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    dst.assign(h.begin(), h.end());
    const auto* r = reinterpret_cast<const unsigned char*>(h.data());
    out->raw.insert(out->raw.end(), r, r + n * 4);
  };
  fetch16(odq, nq, out->dq);
  fetch16(odk, nq, out->dk);
  fetch16(odv, nv, out->dv);
  fetch32(odg, nh, out->dg);
  if (c.beta16) fetch16(odb, nh, out->dbeta); else fetch32(odb, nh, out->dbeta);
  if (s.h0) fetch32(odh0, ns, out->dh0);
}

class GpuBackward : public ::testing::TestWithParam<BwdCase> {};

TEST_P(GpuBackward, MatchesFp64ReverseMode) {
  REQUIRE_GPU();
  const BwdCase& c = GetParam();
  HostProblem hp(c.s, c.seed);
  // The GPU sees rounded inputs; the reference gets the same values.
  round16(hp.q, c.fp16);
  round16(hp.k, c.fp16);
  round16(hp.v, c.fp16);
  round16(hp.dO, c.fp16);
  if (c.beta16) round16(hp.beta, c.fp16);
  for (double& x : hp.g) x = static_cast<float>(x);
  for (double& x : hp.beta) x = static_cast<float>(x);
  for (double& x : hp.dht) x = static_cast<float>(x);
  for (double& x : hp.h0)
    x = c.state_bf16 ? flashgdn::bf16_bits_to_float(flashgdn::float_to_bf16_bits(static_cast<float>(x)))
                     : static_cast<double>(static_cast<float>(x));
  GpuGrads a, b;
  run_gpu_bwd(c, hp, &a);
  if (HasFatalFailure()) return;
  run_gpu_bwd(c, hp, &b);
  if (HasFatalFailure()) return;
  flashgdn::ChunkBwdParams rp = hp.bwd();
  ASSERT_EQ(flashgdn_reference_bwd(&rp), FLASHGDN_SUCCESS) << flashgdn_get_last_error();
  using flashgdn::test::rel_l2;
  const double eq = rel_l2(a.dq, hp.dq), ek = rel_l2(a.dk, hp.dk), ev = rel_l2(a.dv, hp.dv);
  const double eg = rel_l2(a.dg, hp.dg), eb = rel_l2(a.dbeta, hp.dbeta);
  const double eh = c.s.h0 ? rel_l2(a.dh0, hp.dh0) : 0.0;
  std::printf("  [%s] rel L2: dq %.2e dk %.2e dv %.2e dg %.2e dbeta %.2e dh0 %.2e\n", c.name.c_str(), eq, ek, ev, eg,
              eb, eh);
  const double lim = c.fp16 ? 7.5e-3 : 1.5e-2, lim_gb = c.fp16 ? 1e-2 : 2e-2;
  EXPECT_LE(eq, lim);
  EXPECT_LE(ek, lim);
  EXPECT_LE(ev, lim);
  EXPECT_LE(eh, lim);
  EXPECT_LE(eg, lim_gb);
  EXPECT_LE(eb, lim_gb);
  EXPECT_TRUE(a.raw == b.raw) << "two backward runs differ (not deterministic)";
}

BwdCase mk(const std::string& name, Shape s, uint64_t seed) {
  BwdCase c;
  c.name = name;
  c.s = s;
  c.seed = seed;
  return c;
}

std::vector<BwdCase> cases() {
  std::vector<BwdCase> v;
  auto base = [](int64_t hqk, int64_t hv) {
    Shape s;
    s.Hqk = hqk;
    s.Hv = hv;
    s.K = s.V = 128;
    s.seqlens = {200, 63, 65, 1, 128};
    s.g_lo = -0.15;
    return s;
  };
  v.push_back(mk("gva1_tails", base(2, 2), 11));
  {
    Shape s = base(2, 4);
    s.varlen = false;
    s.seqlens = {130, 130};
    v.push_back(mk("gva2_batched", s, 12));
  }
  {
    Shape s = base(1, 3);
    s.l2norm = true;
    s.beta_hi = 2.0;
    v.push_back(mk("gva3_l2norm", s, 13));
  }
  {
    Shape s = base(1, 4);
    s.h0 = s.ht = false;
    v.push_back(mk("gva4_no_states", s, 14));
  }
  {
    Shape s = base(2, 2);
    s.h0 = true;
    s.ht = false;
    v.push_back(mk("h0_no_dht", s, 15));
  }
  {
    Shape s = base(2, 2);
    s.h0 = false;
    s.ht = true;
    v.push_back(mk("dht_no_h0", s, 16));
  }
  {
    Shape s = base(1, 2);
    s.g_lo = -20.0;
    v.push_back(mk("strong_decay", s, 17));
  }
  {
    Shape s = base(1, 2);
    s.g_lo = 0.0;
    v.push_back(mk("g_zero", s, 18));
  }
  {
    Shape s = base(2, 4);
    s.v_first = true;
    v.push_back(mk("v_first", s, 19));
  }
  {
    Shape s = base(1, 3);
    s.l2norm = true;
    BwdCase c = mk("fp16_l2norm", s, 20);
    c.fp16 = true;
    v.push_back(c);
  }
  {
    Shape s = base(2, 2);
    BwdCase c = mk("fp16", s, 21);
    c.fp16 = true;
    v.push_back(c);
  }
  {
    Shape s = base(2, 6);
    BwdCase c = mk("strided_beta16_h0bf16", s, 22);
    c.strided = c.beta16 = c.state_bf16 = true;
    v.push_back(c);
  }
  {
    Shape s = base(1, 8);
    s.seqlens = {300};
    v.push_back(mk("gva8_long", s, 23));
  }
  {
    // Empty sequences (their dh0 is dht) and a batch shorter than one chunk (the states pass's cp.async path).
    Shape s = base(1, 2);
    s.seqlens = {1, 0, 5};
    v.push_back(mk("tiny_with_empty", s, 25));
    Shape s2 = base(2, 2);
    s2.seqlens = {0, 130, 0, 64};
    v.push_back(mk("empty_sequences", s2, 26));
  }
  {
    // Small enough for compute-sanitizer (gpu-check runs every '*Sanitize*' test under its four tools).
    Shape s = base(1, 2);
    s.seqlens = {70, 1};
    v.push_back(mk("Sanitize_small", s, 24));
  }
  for (auto kv : {std::pair<int64_t, int64_t>{64, 64}, {64, 128}, {128, 64}}) {
    Shape s = base(1, 2);
    s.K = kv.first;
    s.V = kv.second;
    v.push_back(mk("dims" + std::to_string(kv.first) + "x" + std::to_string(kv.second), s, 30 + kv.first + kv.second));
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuBackward, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
