// The C header must compile as C++17 with warnings as errors and link.
#include "ckpt_manager.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

// The enums have a fixed width in C++ too.
static_assert(std::is_same<std::underlying_type_t<ckpt_status>, uint32_t>::value, "");
static_assert(std::is_same<std::underlying_type_t<ckpt_log_level>, uint32_t>::value, "");
static_assert(std::is_same<std::underlying_type_t<ckpt_dtype>, uint32_t>::value, "");

int main() {
  const std::string expected = std::to_string(CKPT_VERSION_MAJOR) + "." +
                               std::to_string(CKPT_VERSION_MINOR) + "." +
                               std::to_string(CKPT_VERSION_PATCH);
  if (expected != ckpt_version()) {
    std::fprintf(stderr, "header %s, library %s\n", expected.c_str(), ckpt_version());
    return 1;
  }
  ckpt_options *options = nullptr;
  if (ckpt_options_new(&options) != CKPT_STATUS_OK) return 1;
  ckpt_status status = ckpt_options_set_max_to_keep(options, 0);
  ckpt_options_free(options);
  if (status != CKPT_STATUS_INVALID_ARGUMENT) return 1;
  if (std::strcmp(ckpt_status_name(status), "CKPT_STATUS_INVALID_ARGUMENT") != 0) return 1;
  return std::strlen(ckpt_last_error_message()) > 0 ? 0 : 1;
}
