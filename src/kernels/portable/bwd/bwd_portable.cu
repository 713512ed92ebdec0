// Host launchers of the portable backward's stand-alone kernels (bwd_portable.hpp).
#include "kernels/portable/bwd/bwd_portable.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "api/error.hpp"
#include "kernels/portable/bwd/qk_grads.cuh"

namespace flashgdn::portable {

flashgdn_status_t launch_qk_grads(const QkGradArgs& g, int K, flashgdn_dtype_t dtype, cudaStream_t stream) {
  const int64_t warps = 2 * static_cast<int64_t>(g.B) * g.T * g.Hqk;
  if (warps == 0) return FLASHGDN_SUCCESS;
  const int64_t blocks = (warps * 32 + kQkGradThreads - 1) / kQkGradThreads;
  if (blocks > 0x7fffffff) return fail(FLASHGDN_ERROR_UNSUPPORTED, "flashgdn backward: too many tokens for one grid");
  const dim3 grid(static_cast<unsigned>(blocks));
  const bool bf16 = dtype == FLASHGDN_DTYPE_BFLOAT16;
  if (K == 128) {
    if (bf16) qk_grads_kernel<__nv_bfloat16, 128><<<grid, kQkGradThreads, 0, stream>>>(g);
    else qk_grads_kernel<__half, 128><<<grid, kQkGradThreads, 0, stream>>>(g);
  } else if (K == 64) {
    if (bf16) qk_grads_kernel<__nv_bfloat16, 64><<<grid, kQkGradThreads, 0, stream>>>(g);
    else qk_grads_kernel<__half, 64><<<grid, kQkGradThreads, 0, stream>>>(g);
  } else {
    return fail(FLASHGDN_ERROR_INTERNAL, "flashgdn backward: no q/k gradient kernel for K = %d", K);
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? FLASHGDN_SUCCESS
                          : fail(FLASHGDN_ERROR_CUDA, "flashgdn backward: q/k gradient kernel launch: %s",
                                 cudaGetErrorString(e));
}

}  // namespace flashgdn::portable
