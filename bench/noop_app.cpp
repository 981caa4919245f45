// The benchmark's application: the outbox-worker service (Worker::main: run, migrate, emit, ...)
// with one no-op C++ subscriber for "bench.*". Built by bench/run.sh against the static library:
//
//   g++ -std=c++20 -O2 -I include bench/noop_app.cpp BUILD_DIR/liboutbox.a
//       -lpq -luv -lcjson -lspdlog -lfmt -lcurl -lmicrohttpd -lrdkafka -lnats -lrabbitmq -lhiredis
//       -lpthread
//
// When BENCH_START_FILE is set, the handler appends "<outbox id> <wall clock in µs>" for every
// delivery, taken as the handler starts; that is the "handler start" of the latency runs. The file
// is opened once per handler process (after the fork) with O_APPEND, and each line goes out in a
// single write(2), so lines of concurrent handler processes never interleave. Without it the
// handler does nothing at all: that is the burn-down's subscriber.
#include <outbox/outbox.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace {

int64_t wall_clock_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

const char* start_file() {
    static const char* path = std::getenv("BENCH_START_FILE");
    return path;
}

void record_start(const outbox::Event& event, int64_t start_us) {
    static int fd = -1;
    if (fd < 0) {
        fd = ::open(start_file(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            throw std::runtime_error(std::string("cannot open BENCH_START_FILE: ") +
                                     std::strerror(errno));
        }
    }
    char line[256];
    int n = std::snprintf(line, sizeof line, "%s %lld\n", event.id.c_str(),
                          static_cast<long long>(start_us));
    if (n <= 0 || n >= static_cast<int>(sizeof line) ||
        ::write(fd, line, static_cast<size_t>(n)) != n) {
        throw std::runtime_error("cannot write to BENCH_START_FILE");
    }
}

} // namespace

int main(int argc, char** argv) {
    outbox::Worker worker;
    worker.subscribe({{"bench.*"}, [](const outbox::Event& event) {
                          if (start_file() != nullptr) {
                              record_start(event, wall_clock_us());
                          }
                          return outbox::Result::ok();
                      }});
    return worker.main(argc, argv);
}
