// Host helpers shared by the kernel launchers (portable and sm_90a).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace flashgdn {

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per kernel and device (bit `dev` of `done`).
template <class Kernel>
cudaError_t raise_smem_limit_once(Kernel kernel, int smem, int dev, std::atomic<uint64_t>& done) {
  const uint64_t bit = dev < 64 ? (uint64_t(1) << dev) : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e == cudaSuccess && bit) done.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

}  // namespace flashgdn
