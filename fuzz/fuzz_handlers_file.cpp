// libFuzzer target: the handlers file parser (fuzz/fuzz_handlers_file.h says what is checked).
#include "fuzz/fuzz_handlers_file.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    outbox::fuzz::fuzz_handlers_file(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}
