// Shared helpers of the GPU test binaries: a skip when there is no device, a checked CUDA call, and an
// owning device buffer.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>

namespace flashgdn::test {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << cudaGetErrorString(x)

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#define REQUIRE_GPU() \
  if (!::flashgdn::test::have_gpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped"

struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n = 0) : bytes(n) {
    if (n) EXPECT_EQ(cudaMalloc(&p, n), cudaSuccess);
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

}  // namespace flashgdn::test
