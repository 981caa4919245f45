// libFuzzer target: the supervisor's HTTP server over a real socket (fuzz/fuzz_http.h says how).
#include "fuzz/fuzz_http.h"

#include <spdlog/spdlog.h>

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // The server logs refused requests at debug level and a throwing handler at error level; at
    // tens of thousands of requests a second that is noise, and the checks say what went wrong.
    spdlog::set_level(spdlog::level::off);
    // A client write racing the server's close must fail with EPIPE, not kill the fuzzer; the
    // supervisor ignores SIGPIPE the same way.
    std::signal(SIGPIPE, SIG_IGN);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    outbox::fuzz::fuzz_http(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}
