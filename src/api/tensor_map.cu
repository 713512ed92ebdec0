// cuTensorMapEncodeTiled through the runtime's driver entry point: libflashgdn never links libcuda.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <mutex>

#include "api/error.hpp"
#include "api/tensor_map.hpp"

namespace flashgdn {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn(cudaError_t* err) {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static cudaError_t status = cudaSuccess;
  static std::once_flag once;
  std::call_once(once, [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    status = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
    if (status == cudaSuccess && q == cudaDriverEntryPointSuccess) fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  });
  *err = status;
  return fn;
}

}  // namespace

flashgdn_status_t fetch_tensor_map_encoder(const char* fn) {
  cudaError_t e = cudaSuccess;
  if (encode_fn(&e) == nullptr)
    return fail(FLASHGDN_ERROR_NO_DEVICE, "%s: cuTensorMapEncodeTiled is unavailable (%s)", fn,
                e == cudaSuccess ? "driver too old" : cudaGetErrorString(e));
  return FLASHGDN_SUCCESS;
}

flashgdn_status_t encode_tma_tile(void* out, const TmaTile& t, const char* fn, const char* name) {
  FLASHGDN_TRY(validate_tma_tile(t, fn, name));
  cudaError_t e = cudaSuccess;
  PFN_cuTensorMapEncodeTiled_v12000 encode = encode_fn(&e);
  if (encode == nullptr)
    return fail(FLASHGDN_ERROR_NO_DEVICE, "%s: cuTensorMapEncodeTiled is unavailable (%s)", fn,
                e == cudaSuccess ? "driver too old" : cudaGetErrorString(e));
  CUtensorMapDataType dt = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  switch (t.dtype) {
    case FLASHGDN_DTYPE_BFLOAT16: dt = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16; break;
    case FLASHGDN_DTYPE_FLOAT16: dt = CU_TENSOR_MAP_DATA_TYPE_FLOAT16; break;
    case FLASHGDN_DTYPE_FLOAT32: dt = CU_TENSOR_MAP_DATA_TYPE_FLOAT32; break;
    default: return fail(FLASHGDN_ERROR_INTERNAL, "%s: TMA map for '%s': unsupported dtype", fn, name);
  }
  const cuuint64_t dims[4] = {t.dim0, t.dim1, t.dim2, t.dim3};
  const cuuint64_t strides[3] = {t.row_stride_bytes, t.stride2_bytes, t.stride3_bytes};
  const cuuint32_t box[4] = {t.box0, t.box1, t.box2, t.box3};
  const cuuint32_t estr[4] = {1, 1, 1, 1};
  const CUtensorMapSwizzle sw = t.swizzle == device::Swizzle::k128B  ? CU_TENSOR_MAP_SWIZZLE_128B
                                : t.swizzle == device::Swizzle::k64B ? CU_TENSOR_MAP_SWIZZLE_64B
                                : t.swizzle == device::Swizzle::k32B ? CU_TENSOR_MAP_SWIZZLE_32B
                                                                     : CU_TENSOR_MAP_SWIZZLE_NONE;
  const CUresult r = encode(static_cast<CUtensorMap*>(out), dt, t.rank(), const_cast<void*>(t.base), dims, strides, box, estr,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, sw, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return fail(FLASHGDN_ERROR_CUDA, "%s: cuTensorMapEncodeTiled failed for '%s' (CUresult %d)", fn, name,
                static_cast<int>(r));
  return FLASHGDN_SUCCESS;
}

}  // namespace flashgdn
