// GPU half of the demo (compiled only in GPU builds): a Qwen3.5-9B-shaped prefill (Hqk = 16, Hv = 32,
// K = V = 128, sequences of 1000 and 300 tokens, in-kernel l2norm, fp32 initial/final state) on the GPU,
// checked against the fp64 CPU reference.
#pragma once

#include <cmath>
#include <string>
#include <vector>

namespace flashgdn_demo {
// Relative L2 error ||a - b|| / ||b||; any non-finite value in a gives infinity.
inline double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    n += (a[i] - b[i]) * (a[i] - b[i]);
    d += b[i] * b[i];
  }
  return std::sqrt(n / (d > 0 ? d : 1));
}
}  // namespace flashgdn_demo

#ifdef FLASHGDN_DEMO_GPU
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "flashgdn/flashgdn.hpp"

namespace flashgdn_demo {

inline bool gpu_available(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    *why = std::string("no CUDA device (") + (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")";
    return false;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  if (prop.major < 8) {
    *why = std::string("GPU ") + prop.name + " is older than sm_80";
    return false;
  }
  return true;
}

inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

#define DEMO_CUDA(x)                                                              \
  do {                                                                            \
    cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) {                                                      \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      return 1;                                                                   \
    }                                                                             \
  } while (0)

inline int gpu_demo() {
  const int64_t Hqk = 16, Hv = 32, K = 128, V = 128, N = 2;
  const std::vector<int32_t> cu = {0, 1000, 1300};
  const int64_t T = cu.back();
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("GPU: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  std::mt19937_64 rng(0);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> q(T * Hqk * K), k(T * Hqk * K), v(T * Hv * V);
  std::vector<float> g(T * Hv), beta(T * Hv), h0(N * Hv * K * V);
  for (auto* x : {&q, &k, &v}) for (uint16_t& e : *x) e = to_bf16(nd(rng));
  for (float& e : g) e = std::log(1 / (1 + std::exp(-nd(rng)))) / 16;
  for (float& e : beta) e = 1 / (1 + std::exp(-nd(rng)));
  for (float& e : h0) e = 0.1f * nd(rng);
  void *dq, *dk, *dv, *dg, *db, *dcu, *dh0, *dht, *dout;
  DEMO_CUDA(cudaMalloc(&dq, q.size() * 2));
  DEMO_CUDA(cudaMalloc(&dk, k.size() * 2));
  DEMO_CUDA(cudaMalloc(&dv, v.size() * 2));
  DEMO_CUDA(cudaMalloc(&dout, v.size() * 2));
  DEMO_CUDA(cudaMalloc(&dg, g.size() * 4));
  DEMO_CUDA(cudaMalloc(&db, beta.size() * 4));
  DEMO_CUDA(cudaMalloc(&dcu, cu.size() * 4));
  DEMO_CUDA(cudaMalloc(&dh0, h0.size() * 4));
  DEMO_CUDA(cudaMalloc(&dht, h0.size() * 4));
  DEMO_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  DEMO_CUDA(cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice));
  DEMO_CUDA(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  DEMO_CUDA(cudaMemcpy(dg, g.data(), g.size() * 4, cudaMemcpyHostToDevice));
  DEMO_CUDA(cudaMemcpy(db, beta.data(), beta.size() * 4, cudaMemcpyHostToDevice));
  DEMO_CUDA(cudaMemcpy(dcu, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  DEMO_CUDA(cudaMemcpy(dh0, h0.data(), h0.size() * 4, cudaMemcpyHostToDevice));
  DEMO_CUDA(cudaMemset(dout, 0xff, v.size() * 2));  // poison: NaN in bf16
  DEMO_CUDA(cudaMemset(dht, 0xff, h0.size() * 4));

  flashgdn::ChunkFwdParams p;
  p.q = flashgdn::tensor(dq, FLASHGDN_DTYPE_BFLOAT16, {1, T, Hqk, K});
  p.k = flashgdn::tensor(dk, FLASHGDN_DTYPE_BFLOAT16, {1, T, Hqk, K});
  p.v = flashgdn::tensor(dv, FLASHGDN_DTYPE_BFLOAT16, {1, T, Hv, V});
  p.g = flashgdn::tensor(dg, FLASHGDN_DTYPE_FLOAT32, {1, T, Hv});
  p.beta = flashgdn::tensor(db, FLASHGDN_DTYPE_FLOAT32, {1, T, Hv});
  p.o = flashgdn::tensor(dout, FLASHGDN_DTYPE_BFLOAT16, {1, T, Hv, V});
  p.cu_seqlens = flashgdn::tensor(dcu, FLASHGDN_DTYPE_INT32, {N + 1});
  p.initial_state = flashgdn::tensor(dh0, FLASHGDN_DTYPE_FLOAT32, {N, Hv, K, V});
  p.final_state = flashgdn::tensor(dht, FLASHGDN_DTYPE_FLOAT32, {N, Hv, K, V});
  p.use_qk_l2norm = 1;
  void* ws = nullptr;
  size_t bytes = 0;
  try {
    bytes = flashgdn::chunk_fwd_workspace_size(p);
    if (bytes) DEMO_CUDA(cudaMalloc(&ws, bytes));
    flashgdn::chunk_fwd(p, ws, bytes, nullptr);
  } catch (const flashgdn::Error& e) {
    std::printf("GPU forward failed: %s\n", e.what());
    return 1;
  }
  DEMO_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> o(v.size());
  std::vector<float> ht(h0.size());
  DEMO_CUDA(cudaMemcpy(o.data(), dout, o.size() * 2, cudaMemcpyDeviceToHost));
  DEMO_CUDA(cudaMemcpy(ht.data(), dht, ht.size() * 4, cudaMemcpyDeviceToHost));

  // fp64 reference on the host from the same (bf16-rounded) inputs.
  std::vector<float> o_ref(v.size()), ht_ref(h0.size());
  flashgdn::ChunkFwdParams r = p;
  r.q.data = q.data();
  r.k.data = k.data();
  r.v.data = v.data();
  r.g.data = g.data();
  r.beta.data = beta.data();
  r.cu_seqlens.data = const_cast<int32_t*>(cu.data());
  r.initial_state.data = h0.data();
  r.final_state.data = ht_ref.data();
  r.o = flashgdn::tensor(o_ref.data(), FLASHGDN_DTYPE_FLOAT32, {1, T, Hv, V});
  std::printf("running the fp64 CPU reference (a few seconds)...\n");
  flashgdn::reference_fwd(r);
  std::vector<double> a(o.size()), b(o.size()), c(ht.size()), d(ht.size());
  for (size_t i = 0; i < o.size(); ++i) {
    a[i] = from_bf16(o[i]);
    b[i] = o_ref[i];
  }
  for (size_t i = 0; i < ht.size(); ++i) {
    c[i] = ht[i];
    d[i] = ht_ref[i];
  }
  const double eo = rel_l2(a, b), eh = rel_l2(c, d);
  const bool ok = eo <= 1e-2 && eh <= 1e-2;
  std::printf("Qwen3.5-9B layout: Hqk/Hv = 16/32, K = V = 128, seqlens 1000+300, bf16, l2norm in kernel\n");
  std::printf("  GPU vs fp64 reference: rel L2 o = %.2e, final state = %.2e (limit 1e-2) -> %s\n", eo, eh,
              ok ? "OK" : "FAIL");
  cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout); cudaFree(dg); cudaFree(db);
  cudaFree(dcu); cudaFree(dh0); cudaFree(dht);
  if (ws) cudaFree(ws);
  return ok ? 0 : 1;
}

}  // namespace flashgdn_demo

#else  // host-only build

namespace flashgdn_demo {
inline bool gpu_available(std::string* why) {
  *why = "host-only build";
  return false;
}
inline int gpu_demo() { return 1; }
}  // namespace flashgdn_demo

#endif
