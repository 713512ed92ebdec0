// Environment switches read by the library (documented in the README): read on every call, no caching,
// so tests and benchmarks can flip them within one process.
#pragma once

#include <cstdlib>
#include <cstring>

namespace flashgdn {

// True when the variable `name` is set to exactly "1".
inline bool env_is_one(const char* name) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, "1") == 0;
}

// True when the variable `name` is set to exactly `value`.
inline bool env_is_value(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

// True when the variable `name` is set to exactly "0" (switches that are on by default).
inline bool env_is_zero(const char* name) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, "0") == 0;
}

}  // namespace flashgdn
