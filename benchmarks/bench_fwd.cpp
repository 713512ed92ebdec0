// C++ forward benchmark (no Python), e.g. under ncu:
//   flashgdn_bench_fwd --hqk 16 --hv 64 --seqlens 1x8192 [--reps 20] [--fp16] [--l2norm] [--no-state] [--cp | --no-cp]
// Same inputs as benchmarks/bench_fwd.py (packed varlen, int32 cu_seqlens, unit-norm q/k, g =
// logsigmoid(randn)/16, beta = sigmoid(randn), fp32 initial and final state); prints the median of
// --reps CUDA-event timings, each after a 512 MiB write that flushes L2.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashgdn/flashgdn.hpp"

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

namespace {

std::vector<int64_t> parse_seqlens(const std::string& s) {
  std::vector<int64_t> out;
  const size_t x = s.find('x');
  if (x != std::string::npos) {  // "1x32768" = one of 32768, "8192x4" = four of 8192
    const int64_t a = std::stoll(s.substr(0, x)), b = std::stoll(s.substr(x + 1));
    out.assign(std::min(a, b), std::max(a, b));
    return out;
  }
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t plus = s.find('+', pos);
    out.push_back(std::stoll(s.substr(pos, plus == std::string::npos ? std::string::npos : plus - pos)));
    if (plus == std::string::npos) break;
    pos = plus + 1;
  }
  return out;
}

uint16_t to_half_bits(float f, bool fp16) {
  if (fp16) {
    const __half h = __float2half_rn(f);
    uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
  }
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t hqk = 16, hv = 64, D = 128;
  std::string seqlens = "1x8192";
  int reps = 20;
  bool fp16 = false, l2norm = false, state = true;
  flashgdn_cp_mode_t cp_mode = FLASHGDN_CP_AUTO;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value after %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--hqk") hqk = std::stoll(next());
    else if (a == "--hv") hv = std::stoll(next());
    else if (a == "--dim") D = std::stoll(next());
    else if (a == "--seqlens") seqlens = next();
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--fp16") fp16 = true;
    else if (a == "--l2norm") l2norm = true;
    else if (a == "--no-state") state = false;
    else if (a == "--cp") cp_mode = FLASHGDN_CP_ON;
    else if (a == "--no-cp") cp_mode = FLASHGDN_CP_OFF;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const std::vector<int64_t> lens = parse_seqlens(seqlens);
  const int64_t N = static_cast<int64_t>(lens.size());
  std::vector<int32_t> cu(1, 0);
  for (int64_t L : lens) cu.push_back(cu.back() + static_cast<int32_t>(L));
  const int64_t T = cu.back();

  std::mt19937 rng(0);
  std::normal_distribution<float> nd;
  const float ks = 1.f / std::sqrt(static_cast<float>(D));
  std::vector<uint16_t> q(T * hqk * D), k(T * hqk * D), v(T * hv * D);
  for (auto& x : q) x = to_half_bits(nd(rng) * ks, fp16);
  for (auto& x : k) x = to_half_bits(nd(rng) * ks, fp16);
  for (auto& x : v) x = to_half_bits(nd(rng), fp16);
  std::vector<float> g(T * hv), beta(T * hv), h0(state ? N * hv * D * D : 0);
  for (auto& x : g) x = -std::log1p(std::exp(-nd(rng))) / 16.f;  // logsigmoid / 16
  for (auto& x : beta) x = 1.f / (1.f + std::exp(-nd(rng)));
  for (auto& x : h0) x = nd(rng);

  void *dq, *dk, *dv, *dout, *dg, *db, *dcu, *dh0 = nullptr, *dht = nullptr, *ws = nullptr, *flush;
  CHECK_CUDA(cudaMalloc(&dq, q.size() * 2));
  CHECK_CUDA(cudaMalloc(&dk, k.size() * 2));
  CHECK_CUDA(cudaMalloc(&dv, v.size() * 2));
  CHECK_CUDA(cudaMalloc(&dout, v.size() * 2));
  CHECK_CUDA(cudaMalloc(&dg, g.size() * 4));
  CHECK_CUDA(cudaMalloc(&db, beta.size() * 4));
  CHECK_CUDA(cudaMalloc(&dcu, cu.size() * 4));
  CHECK_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dg, g.data(), g.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(db, beta.data(), beta.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dcu, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  const auto dt = fp16 ? FLASHGDN_DTYPE_FLOAT16 : FLASHGDN_DTYPE_BFLOAT16;
  flashgdn::ChunkFwdParams p;
  p.q = flashgdn::tensor(dq, dt, {1, T, hqk, D});
  p.k = flashgdn::tensor(dk, dt, {1, T, hqk, D});
  p.v = flashgdn::tensor(dv, dt, {1, T, hv, D});
  p.o = flashgdn::tensor(dout, dt, {1, T, hv, D});
  p.g = flashgdn::tensor(dg, FLASHGDN_DTYPE_FLOAT32, {1, T, hv});
  p.beta = flashgdn::tensor(db, FLASHGDN_DTYPE_FLOAT32, {1, T, hv});
  p.cu_seqlens = flashgdn::tensor(dcu, FLASHGDN_DTYPE_INT32, {N + 1});
  p.use_qk_l2norm = l2norm;
  p.cp_mode = cp_mode;
  if (state) {
    CHECK_CUDA(cudaMalloc(&dh0, h0.size() * 4));
    CHECK_CUDA(cudaMalloc(&dht, h0.size() * 4));
    CHECK_CUDA(cudaMemcpy(dh0, h0.data(), h0.size() * 4, cudaMemcpyHostToDevice));
    p.initial_state = flashgdn::tensor(dh0, FLASHGDN_DTYPE_FLOAT32, {N, hv, D, D});
    p.final_state = flashgdn::tensor(dht, FLASHGDN_DTYPE_FLOAT32, {N, hv, D, D});
  }
  size_t bytes = 0;
  try {
    bytes = flashgdn::chunk_fwd_workspace_size(p);
  } catch (const flashgdn::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  if (bytes) CHECK_CUDA(cudaMalloc(&ws, bytes));
  const size_t flush_bytes = size_t(512) << 20;
  CHECK_CUDA(cudaMalloc(&flush, flush_bytes));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  auto call = [&]() {
    const flashgdn_status_t s = flashgdn_chunk_fwd(&p, ws, bytes, stream);
    if (s != FLASHGDN_SUCCESS) {
      std::fprintf(stderr, "flashgdn_chunk_fwd: %s\n", flashgdn_get_last_error());
      std::exit(1);
    }
  };
  for (int i = 0; i < 3; ++i) call();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaMemsetAsync(flush, r & 0xff, flush_bytes, stream));
    CHECK_CUDA(cudaEventRecord(e0, stream));
    call();
    CHECK_CUDA(cudaEventRecord(e1, stream));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s: Hqk/Hv %lld/%lld, D %lld, seqlens %s (%lld tokens, %lld seqs), %s: median %.3f ms (min %.3f) over %d runs\n",
              prop.name, (long long)hqk, (long long)hv, (long long)D, seqlens.c_str(), (long long)T, (long long)N,
              fp16 ? "fp16" : "bf16", ms[ms.size() / 2], ms.front(), reps);
  return 0;
}
