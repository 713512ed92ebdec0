// Environment switches read by the library (documented in the README): read on every call, no caching,
// so tests and benchmarks can flip them within one process.
#pragma once

#include <cstdlib>
#include <cstring>

namespace flashgdn {

// True when the variable `name` is set to exactly `value`.
inline bool env_is_value(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

// Switches that are off by default ("1" turns them on) and on by default ("0" turns them off).
inline bool env_is_one(const char* name) { return env_is_value(name, "1"); }
inline bool env_is_zero(const char* name) { return env_is_value(name, "0"); }

}  // namespace flashgdn
