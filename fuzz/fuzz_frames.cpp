// libFuzzer target: channel frames and event objects (fuzz/fuzz_frames.h says what is checked).
#include "fuzz/fuzz_frames.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    outbox::fuzz::fuzz_frames(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}
