// Runs the CPU reference through the installed library and prints one line.
#include <cstdio>
#include <vector>

#include <flashgdn/flashgdn.hpp>

int main() {
  const int64_t T = 3, H = 1, D = 2;
  std::vector<float> q = {1, 0, 0, 1, 1, 1}, k = {1, 0, 0, 1, 1, 0}, v = {1, 2, 3, 4, 5, 6};
  std::vector<float> g = {0, -0.5f, -0.1f}, beta = {1, 0.5f, 0.25f}, o(T * H * D);
  flashgdn::ChunkFwdParams p;
  p.q = flashgdn::tensor(q.data(), FLASHGDN_DTYPE_FLOAT32, {1, T, H, D});
  p.k = flashgdn::tensor(k.data(), FLASHGDN_DTYPE_FLOAT32, {1, T, H, D});
  p.v = flashgdn::tensor(v.data(), FLASHGDN_DTYPE_FLOAT32, {1, T, H, D});
  p.g = flashgdn::tensor(g.data(), FLASHGDN_DTYPE_FLOAT32, {1, T, H});
  p.beta = flashgdn::tensor(beta.data(), FLASHGDN_DTYPE_FLOAT32, {1, T, H});
  p.o = flashgdn::tensor(o.data(), FLASHGDN_DTYPE_FLOAT32, {1, T, H, D});
  p.scale = 1.0f;
  flashgdn::reference_fwd(p);
  // t=0: S = k v^T = [[1,2],[0,0]], o = S^T q = [1,2].
  std::printf("flashgdn %s (abi %d): o[0] = %g %g\n", flashgdn_version_string(), flashgdn_abi_version(), o[0], o[1]);
  return (o[0] == 1.0f && o[1] == 2.0f) ? 0 : 1;
}
