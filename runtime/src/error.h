// The one exception type inside the runtime: a status code plus a message. The C API
// boundary (api.cpp) turns it into the function's return value and uniattn_last_error().
#pragma once

#include <stdexcept>
#include <string>

#include "uniattn/runtime.h"

namespace uniattn::runtime {

class Error : public std::runtime_error {
 public:
  Error(uniattn_status status, const std::string& message) : std::runtime_error(message), status(status) {}
  uniattn_status status;
};

}  // namespace uniattn::runtime
