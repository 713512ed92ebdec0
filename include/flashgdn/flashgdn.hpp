// FlashGDN C++ header: a thin, header-only layer over the C ABI in flashgdn.h.
// Errors become flashgdn::Error exceptions carrying the status and the library's message.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "flashgdn/flashgdn.h"

namespace flashgdn {

class Error : public std::runtime_error {
 public:
  Error(flashgdn_status_t status, const std::string& what) : std::runtime_error(what), status_(status) {}
  flashgdn_status_t status() const noexcept { return status_; }

 private:
  flashgdn_status_t status_;
};

inline void check(flashgdn_status_t s) {
  if (s != FLASHGDN_SUCCESS) throw Error(s, std::string(flashgdn_status_string(s)) + ": " + flashgdn_get_last_error());
}

// Contiguous tensor description; set .stride[] afterwards for views.
inline flashgdn_tensor_t tensor(void* data, flashgdn_dtype_t dtype, std::initializer_list<int64_t> shape) {
  int64_t dims[FLASHGDN_MAX_DIMS] = {0, 0, 0, 0};
  int32_t n = 0;
  for (int64_t s : shape) {
    if (n == FLASHGDN_MAX_DIMS) throw Error(FLASHGDN_ERROR_INVALID_ARGUMENT, "flashgdn::tensor: more than 4 dims");
    dims[n++] = s;
  }
  return flashgdn_make_tensor(data, dtype, n, dims);
}

struct ChunkFwdParams : flashgdn_chunk_fwd_params_t {
  ChunkFwdParams() { flashgdn_chunk_fwd_params_init(this); }
};

struct ChunkBwdParams : flashgdn_chunk_bwd_params_t {
  ChunkBwdParams() { flashgdn_chunk_bwd_params_init(this); }
};

inline size_t chunk_fwd_workspace_size(const ChunkFwdParams& p) {
  size_t bytes = 0;
  check(flashgdn_chunk_fwd_workspace_size(&p, &bytes));
  return bytes;
}

inline void chunk_fwd(const ChunkFwdParams& p, void* workspace, size_t workspace_bytes,
                      flashgdn_stream_t stream = nullptr) {
  check(flashgdn_chunk_fwd(&p, workspace, workspace_bytes, stream));
}

inline size_t chunk_bwd_workspace_size(const ChunkBwdParams& p) {
  size_t bytes = 0;
  check(flashgdn_chunk_bwd_workspace_size(&p, &bytes));
  return bytes;
}

inline void chunk_bwd(const ChunkBwdParams& p, void* workspace, size_t workspace_bytes,
                      flashgdn_stream_t stream = nullptr) {
  check(flashgdn_chunk_bwd(&p, workspace, workspace_bytes, stream));
}

inline void reference_fwd(const ChunkFwdParams& p,
                          flashgdn_reference_algo_t algo = FLASHGDN_REFERENCE_RECURRENT_FP64) {
  check(flashgdn_reference_fwd(&p, algo));
}

inline void reference_bwd(const ChunkBwdParams& p) { check(flashgdn_reference_bwd(&p)); }

inline bool built_with_gpu() { return flashgdn_built_with_gpu() != 0; }
// The one-time work of the first GPU call, done now (flashgdn_init; device -1: the current device).
inline void init(int device = -1) { check(flashgdn_init(device)); }

}  // namespace flashgdn
