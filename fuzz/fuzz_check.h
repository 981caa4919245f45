// Invariant checks shared by the fuzz targets (fuzz/fuzz_*.cpp) and by the unit test that replays
// their saved crash inputs (tests/unit/fuzz_regressions_test.cpp).
//
// A fuzz target finds more than crashes when it also checks what the code under test promises: a
// decoded message re-encodes to itself, an error is one line, a response is well-formed HTTP.
// Under libFuzzer a broken promise aborts, exactly like a crash, so that the input is saved. The
// replay test defines OUTBOX_FUZZ_CHECK_THROWS before including the targets, so that a broken
// promise is a failed test case instead of the end of the whole test binary.
//
// A check must not run inside a C library's callback (a libmicrohttpd or libuv callback):
// an exception cannot cross C frames. Such callbacks record what they saw and are checked after.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace outbox::fuzz {

[[noreturn]] inline void invariant_failed(const char* condition, const char* what, const char* file,
                                          int line) {
    const std::string message = std::string(file) + ":" + std::to_string(line) +
                                ": fuzz invariant failed: " + what + " (" + condition + ")";
#ifdef OUTBOX_FUZZ_CHECK_THROWS
    throw std::logic_error(message);
#else
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stderr);
    std::abort();
#endif
}

} // namespace outbox::fuzz

// A macro rather than a function so that the message names the condition and the line that failed.
#define OUTBOX_FUZZ_CHECK(condition, what)                                                         \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            ::outbox::fuzz::invariant_failed(#condition, what, __FILE__, __LINE__);                \
        }                                                                                          \
    } while (false)
