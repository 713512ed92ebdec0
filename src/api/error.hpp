// Status codes and the thread-local last-error message.
#pragma once

#include <cstdarg>
#include <string>

#include "flashgdn/flashgdn.h"

namespace flashgdn {

// Records `status` and a printf-style message for flashgdn_get_last_error(); returns `status`.
flashgdn_status_t fail(flashgdn_status_t status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void clear_error();

}  // namespace flashgdn

// Propagates a non-success status.
#define FLASHGDN_TRY(expr)                                  \
  do {                                                      \
    flashgdn_status_t flashgdn_try_status_ = (expr);        \
    if (flashgdn_try_status_ != FLASHGDN_SUCCESS) return flashgdn_try_status_; \
  } while (0)
