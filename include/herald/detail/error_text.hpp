// The text of an exception, for error callbacks, dead letters and error replies.
#pragma once

#include <exception>
#include <string>

namespace herald::detail {

/// what() of the exception `error` holds, "unknown exception" for one that is not a
/// std::exception, and "" for a null pointer. Never throws: a failure to build the string (out
/// of memory) yields "".
inline std::string exception_text(const std::exception_ptr& error) noexcept {
  if (!error) return {};
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    try {
      return e.what();
    } catch (...) {
      return {};
    }
  } catch (...) {
  }
  try {
    return "unknown exception";
  } catch (...) {
    return {};
  }
}

}  // namespace herald::detail
