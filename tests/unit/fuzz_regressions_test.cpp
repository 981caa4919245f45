// Replays the fuzz targets' saved inputs through the same entry functions libFuzzer calls
// (fuzz/fuzz_*.h), so that the normal unit test run guards every fixed fuzz finding without
// clang or libFuzzer: fuzz/regressions/<target>/ holds the inputs that once broke something, and
// fuzz/corpus/<target>/ the hand-written seeds, which must keep passing too. The entry functions
// check their invariants themselves; here a broken one throws and fails the test case, naming the
// input file.
#define OUTBOX_FUZZ_CHECK_THROWS
#include "fuzz/fuzz_config.h"
#include "fuzz/fuzz_frames.h"
#include "fuzz/fuzz_handlers_file.h"
#include "fuzz/fuzz_http.h"

#include <catch2/catch.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace fs = std::filesystem;

const fs::path kFuzzDir = fs::path(__FILE__).parent_path().parent_path().parent_path() / "fuzz";

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The regular files of a directory, sorted so that failures are reported in a stable order; none
// when the directory does not exist (a target without findings has no regressions directory).
std::vector<fs::path> inputs_in(const fs::path& directory) {
    std::vector<fs::path> files;
    if (!fs::is_directory(directory)) {
        return files;
    }
    for (const fs::directory_entry& entry : fs::directory_iterator(directory)) {
        if (entry.is_regular_file() && entry.path().filename().string().front() != '.') {
            files.push_back(entry.path());
        }
    }
    std::sort(files.begin(), files.end());
    return files;
}

void replay(const std::string& target, const std::function<void(std::string_view)>& entry) {
    // The seeds always exist; finding none means this test looks in the wrong place.
    const std::vector<fs::path> seeds = inputs_in(kFuzzDir / "corpus" / target);
    REQUIRE_FALSE(seeds.empty());
    std::vector<fs::path> inputs = inputs_in(kFuzzDir / "regressions" / target);
    inputs.insert(inputs.end(), seeds.begin(), seeds.end());
    for (const fs::path& path : inputs) {
        const std::string name = path.parent_path().parent_path().filename().string() + "/" +
                                 target + "/" + path.filename().string();
        DYNAMIC_SECTION(name) {
            const std::string input = read_file(path);
            CHECK_NOTHROW(entry(input));
        }
    }
}

// The HTTP target's handler throws on purpose and the server logs refused requests; neither is
// news here. A client write racing the server's close must fail with EPIPE rather than end the
// test binary, as the supervisor ignores SIGPIPE too. Both are restored afterwards.
class QuietHttpReplay {
  public:
    QuietHttpReplay()
        : level_(spdlog::get_level()), previous_sigpipe_(std::signal(SIGPIPE, SIG_IGN)) {
        spdlog::set_level(spdlog::level::off);
    }
    ~QuietHttpReplay() {
        spdlog::set_level(level_);
        std::signal(SIGPIPE, previous_sigpipe_);
    }
    QuietHttpReplay(const QuietHttpReplay&) = delete;
    QuietHttpReplay& operator=(const QuietHttpReplay&) = delete;

  private:
    spdlog::level::level_enum level_;
    void (*previous_sigpipe_)(int);
};

} // namespace

TEST_CASE("fuzz inputs: channel frames and event objects", "[fuzz]") {
    replay("frames", outbox::fuzz::fuzz_frames);
}

TEST_CASE("fuzz inputs: handlers file", "[fuzz]") {
    replay("handlers_file", outbox::fuzz::fuzz_handlers_file);
}

TEST_CASE("fuzz inputs: configuration", "[fuzz]") {
    replay("config", outbox::fuzz::fuzz_config);
}

TEST_CASE("fuzz inputs: HTTP server", "[fuzz]") {
    const QuietHttpReplay quiet;
    replay("http", outbox::fuzz::fuzz_http);
    // Catch2 runs this test case once per input; each run closes the server and its loop, which
    // also checks that the server left no handle open.
    CHECK_NOTHROW(outbox::fuzz::http_detail::close_fixture());
}
