// Host-only build (FLASHGDN_BUILD_GPU=OFF): every GPU entry point reports that no kernels were built.
#include "api/dispatch.hpp"
#include "api/error.hpp"

namespace flashgdn {

bool gpu_built() { return false; }
bool is_device_only_pointer(const void*) { return false; }
size_t fwd_workspace_bytes(const Problem&) { return 0; }
size_t bwd_workspace_bytes(const Problem&) { return 0; }

static flashgdn_status_t no_gpu(const char* fn) {
  return fail(FLASHGDN_ERROR_UNSUPPORTED,
              "%s: this libflashgdn was built without GPU kernels (FLASHGDN_BUILD_GPU=OFF); use the CPU reference "
              "(flashgdn_reference_fwd/bwd) or rebuild with the CUDA toolkit",
              fn);
}

flashgdn_status_t check_device_inputs(const Problem&, const flashgdn_tensor_t&, const flashgdn_tensor_t*,
                                      const flashgdn_tensor_t&, const char* fn, flashgdn_stream_t) {
  return no_gpu(fn);
}
flashgdn_status_t init_device(int) { return no_gpu("flashgdn_init"); }
flashgdn_status_t launch_fwd(const Problem&, const flashgdn_chunk_fwd_params_t&, void*, flashgdn_stream_t) {
  return no_gpu("flashgdn_chunk_fwd");
}
flashgdn_status_t launch_bwd(const Problem&, const flashgdn_chunk_bwd_params_t&, void*, flashgdn_stream_t) {
  return no_gpu("flashgdn_chunk_bwd");
}

}  // namespace flashgdn
