#include "api/error.hpp"

#include <cstdio>

namespace flashgdn {
namespace {
thread_local std::string g_last_error;
}

flashgdn_status_t fail(flashgdn_status_t status, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  g_last_error = buf;
  return status;
}

void clear_error() { g_last_error.clear(); }

}  // namespace flashgdn

extern "C" {

const char* flashgdn_get_last_error(void) { return flashgdn::g_last_error.c_str(); }

const char* flashgdn_status_string(flashgdn_status_t status) {
  switch (status) {
    case FLASHGDN_SUCCESS: return "success";
    case FLASHGDN_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case FLASHGDN_ERROR_UNSUPPORTED: return "unsupported";
    case FLASHGDN_ERROR_WORKSPACE: return "workspace error";
    case FLASHGDN_ERROR_INVALID_DATA: return "invalid data";
    case FLASHGDN_ERROR_CUDA: return "CUDA error";
    case FLASHGDN_ERROR_NO_DEVICE: return "no CUDA device";
    case FLASHGDN_ERROR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

}  // extern "C"
