// FlashGDN demo: a Qwen3.5-shaped chunked prefill checked against the fp64 reference.
//   With a Hopper (or any sm_80+) GPU: runs the GPU forward on Hqk = 16, Hv = 32 (Qwen3.5-9B, TP1),
//   K = V = 128, two sequences, and compares o and the final state with the fp64 CPU reference.
//   Without a GPU (or in a host-only build): runs the CPU references on a small problem and says so.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "flashgdn/flashgdn.hpp"
#include "demo_gpu.hpp"

namespace {

using flashgdn_demo::rel_l2;

int cpu_demo() {
  const int64_t Hqk = 2, Hv = 4, K = 32, V = 32;
  const std::vector<int64_t> cu = {0, 100, 229};
  const int64_t T = cu.back(), N = 2;
  std::mt19937_64 rng(0);
  std::normal_distribution<double> nd;
  std::vector<double> q(T * Hqk * K), k(T * Hqk * K), v(T * Hv * V), g(T * Hv), beta(T * Hv);
  for (auto* x : {&q, &k, &v}) for (double& e : *x) e = nd(rng);
  for (double& e : g) e = std::log(1 / (1 + std::exp(-nd(rng)))) / 16;  // logsigmoid / 16
  for (double& e : beta) e = 1 / (1 + std::exp(-nd(rng)));
  std::vector<double> o1(T * Hv * V), o2(T * Hv * V), h1(N * Hv * K * V), h2(N * Hv * K * V);
  flashgdn::ChunkFwdParams p;
  const auto F = FLASHGDN_DTYPE_FLOAT64;
  p.q = flashgdn::tensor(q.data(), F, {1, T, Hqk, K});
  p.k = flashgdn::tensor(k.data(), F, {1, T, Hqk, K});
  p.v = flashgdn::tensor(v.data(), F, {1, T, Hv, V});
  p.g = flashgdn::tensor(g.data(), F, {1, T, Hv});
  p.beta = flashgdn::tensor(beta.data(), F, {1, T, Hv});
  p.cu_seqlens = flashgdn::tensor(const_cast<int64_t*>(cu.data()), FLASHGDN_DTYPE_INT64, {N + 1});
  p.use_qk_l2norm = 1;
  p.o = flashgdn::tensor(o1.data(), F, {1, T, Hv, V});
  p.final_state = flashgdn::tensor(h1.data(), F, {N, Hv, K, V});
  flashgdn::reference_fwd(p, FLASHGDN_REFERENCE_RECURRENT_FP64);
  p.o = flashgdn::tensor(o2.data(), F, {1, T, Hv, V});
  p.final_state = flashgdn::tensor(h2.data(), F, {N, Hv, K, V});
  flashgdn::reference_fwd(p, FLASHGDN_REFERENCE_CHUNKED_FP32);
  const double eo = rel_l2(o2, o1), eh = rel_l2(h2, h1);
  std::printf("CPU reference: T = %lld (2 sequences), Hqk/Hv = %lld/%lld, K = V = %lld, l2norm on\n", (long long)T,
              (long long)Hqk, (long long)Hv, (long long)K);
  std::printf("  chunked fp32 vs recurrent fp64: rel L2 o = %.2e, final state = %.2e  -> %s\n", eo, eh,
              (eo < 1e-4 && eh < 1e-4) ? "OK" : "FAIL");
  return (eo < 1e-4 && eh < 1e-4) ? 0 : 1;
}

}  // namespace

int main() {
  std::printf("FlashGDN %s demo\n", flashgdn_version_string());
  std::string why;
  if (!flashgdn::built_with_gpu()) {
    std::printf("No GPU run: this library was built without GPU kernels. Running the CPU reference instead.\n");
    return cpu_demo();
  }
  if (!flashgdn_demo::gpu_available(&why)) {
    std::printf("No GPU run: %s. Running the CPU reference on a small problem instead.\n", why.c_str());
    return cpu_demo();
  }
  return flashgdn_demo::gpu_demo();
}
