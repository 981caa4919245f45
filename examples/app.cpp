// An application that registers its handlers in code and runs the outbox-worker service from its
// own main: the same command line (run, migrate, emit, dlq, stats, ...), the same supervisor and
// crash-isolated handler processes. Build: `make` (target outbox-example-app).
//
// The handlers below exist for the demo and the test suite: "example.ok" succeeds, "example.fail"
// fails retryably, "example.permanent" fails permanently, "example.throw" throws, and
// "example.crash" crashes its handler process with SIGSEGV, which costs that event one attempt and
// nothing else; "example.chaos", "example.chaos.ordered" and "example.ordered" serve the chaos and
// ordering tests.
#include <outbox/outbox.h>

#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// Appends "<outbox id> <pid>" to $EXAMPLE_RECORD_FILE, one line per delivery, with a single
// O_APPEND write so that lines of concurrent handler processes never interleave. Tests use it to
// count deliveries exactly.
void record_delivery(const outbox::Event& event) {
    const char* path = std::getenv("EXAMPLE_RECORD_FILE");
    if (path == nullptr) {
        return;
    }
    std::string line = event.id + " " + std::to_string(getpid()) + "\n";
    int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        throw std::runtime_error(std::string("cannot open EXAMPLE_RECORD_FILE: ") +
                                 std::strerror(errno));
    }
    ssize_t n = ::write(fd, line.data(), line.size());
    ::close(fd);
    if (n != static_cast<ssize_t>(line.size())) {
        throw std::runtime_error("short write to EXAMPLE_RECORD_FILE");
    }
}

// The record of the chaos and ordering tests: one line per attempt the handler sees through,
//     <outbox id> <attempt> <pid> <parent pid> <start ns> <end ns> <outcome>
// with a single O_APPEND write as above. "ok" is written as the handler's last act before it
// returns success; a failure the handler causes by design is written just before it happens
// ("crash", "hang" and their end equal to their start; "fail", "rejected"). When an event is
// delivered again, the tests use the attempt to find in the database the failure that was charged
// to the earlier delivery, the pid to tell whether the test itself killed the process that ran it,
// and the parent pid (the supervisor) to tell which instance held it. The times are
// CLOCK_MONOTONIC, one clock for every process of the machine, so that the ordering tests can tell
// whether two attempts of one ordering key were in flight at the same time.
int64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void record_attempt(const outbox::Event& event, int64_t start_ns, const char* outcome) {
    const char* path = std::getenv("EXAMPLE_RECORD_FILE");
    if (path == nullptr) {
        return;
    }
    int64_t end_ns = std::strcmp(outcome, "crash") == 0 || std::strcmp(outcome, "hang") == 0
                         ? start_ns
                         : monotonic_ns();
    std::string line = event.id + " " + std::to_string(event.attempt) + " " +
                       std::to_string(getpid()) + " " + std::to_string(getppid()) + " " +
                       std::to_string(start_ns) + " " + std::to_string(end_ns) + " " + outcome +
                       "\n";
    int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        throw std::runtime_error(std::string("cannot open EXAMPLE_RECORD_FILE: ") +
                                 std::strerror(errno));
    }
    ssize_t n = ::write(fd, line.data(), line.size());
    ::close(fd);
    if (n != static_cast<ssize_t>(line.size())) {
        throw std::runtime_error("short write to EXAMPLE_RECORD_FILE");
    }
}

// The chaos handlers: a fixed fate per event, from a hash of its id, one in `modulus` each: 0
// crashes its handler process with SIGSEGV on the first attempt, 1 fails twice before succeeding,
// 2 is rejected permanently (its place is the dead-letter queue), 3 hangs on the first attempt
// until the supervisor kills it; the rest succeed at once. Every misbehaviour comes before the
// "ok" record: an "ok" line is an attempt whose handler finished and reported success, so a crash
// or timeout charged to it can only come from outside the handler. tests/integration/chaos_test.cpp
// computes the same fates with the same hash.
outbox::Result chaos_attempt(const outbox::Event& event, size_t modulus, int64_t start_ns) {
    switch (std::hash<std::string>{}(event.id) % modulus) {
    case 0:
        if (event.attempt == 1) {
            record_attempt(event, start_ns, "crash");
            std::raise(SIGSEGV);
        }
        break;
    case 1:
        if (event.attempt <= 2) {
            record_attempt(event, start_ns, "fail");
            return outbox::Result::retry("chaos: transient failure");
        }
        break;
    case 2:
        record_attempt(event, start_ns, "rejected");
        return outbox::Result::permanent("chaos: rejected");
    case 3:
        if (event.attempt == 1) {
            record_attempt(event, start_ns, "hang");
            for (;;) {
                pause();
            }
        }
        break;
    default:
        break;
    }
    record_attempt(event, start_ns, "ok");
    return outbox::Result::ok();
}

// The string value of a top-level field of a payload as PostgreSQL prints jsonb ("name": "value",
// no escapes in the values the tests write), or "" when absent.
std::string payload_string(const outbox::Event& event, const std::string& field) {
    std::string needle = "\"" + field + "\": \"";
    size_t at = event.payload_json.find(needle);
    if (at == std::string::npos) {
        return {};
    }
    at += needle.size();
    size_t end = event.payload_json.find('"', at);
    return end == std::string::npos ? std::string() : event.payload_json.substr(at, end - at);
}

// EXAMPLE_HOLD_MS: how long the ordering handlers work on an event, so that two attempts of one
// ordering key run at the same time would overlap in the record (they would not if each took a
// few microseconds).
long hold_ms() {
    static const long ms = [] {
        const char* v = std::getenv("EXAMPLE_HOLD_MS");
        return v != nullptr ? std::atol(v) : 0L;
    }();
    return ms;
}

} // namespace

int main(int argc, char** argv) {
    outbox::Worker worker;

    worker.subscribe({{"example.ok", "shopify.*"}, [](const outbox::Event& event) {
                          record_delivery(event);
                          return outbox::Result::ok();
                      }});
    // Takes a while, so that tests can stop or kill an instance while events are running.
    worker.subscribe({{"example.slow"}, [](const outbox::Event& event) {
                          std::this_thread::sleep_for(std::chrono::milliseconds(300));
                          record_delivery(event);
                          return outbox::Result::ok();
                      }});
    worker.subscribe({{"example.hang"},
                      [](const outbox::Event&) -> outbox::Result {
                          for (;;) {
                              pause();
                          }
                      },
                      500});
    worker.subscribe({{"example.abort"}, [](const outbox::Event&) -> outbox::Result {
                          std::abort();
                      }});
    worker.subscribe({{"example.exit3"}, [](const outbox::Event&) -> outbox::Result {
                          _exit(3);
                      }});
    // Allocates 256 MiB: fails under OUTBOX_WORKER_MEMORY_MB=64 (std::bad_alloc, a retryable
    // failure).
    worker.subscribe({{"example.hog"}, [](const outbox::Event&) {
                          std::vector<char> big(256u << 20, 1);
                          return big[12345] == 1 ? outbox::Result::ok()
                                                 : outbox::Result::retry("unreachable");
                      }});
    worker.subscribe({{"example.fail"}, [](const outbox::Event&) {
                          return outbox::Result::retry("the downstream service is unavailable");
                      }});
    worker.subscribe({{"example.permanent"}, [](const outbox::Event&) {
                          return outbox::Result::permanent("payload rejected: missing sku");
                      }});
    worker.subscribe({{"example.throw"}, [](const outbox::Event&) -> outbox::Result {
                          throw std::runtime_error("handler threw");
                      }});
    worker.subscribe({{"example.crash"}, [](const outbox::Event&) -> outbox::Result {
                          std::raise(SIGSEGV);
                          return outbox::Result::ok();
                      }});
    // Misbehaving handlers for the bad-input tests: one writes bytes that are no frame into the
    // handler process's channel to the supervisor (descriptor 3), one closes that channel and
    // carries on as if nothing happened, one fails with an error message that is not UTF-8.
    worker.subscribe({{"example.garbage"}, [](const outbox::Event&) -> outbox::Result {
                          static const char junk[] = "\xff\xff\xff\xffnot a frame";
                          (void)!::write(3, junk, sizeof junk - 1);
                          std::this_thread::sleep_for(std::chrono::seconds(5));
                          return outbox::Result::ok();
                      }});
    worker.subscribe({{"example.closechannel"}, [](const outbox::Event&) -> outbox::Result {
                          ::close(3);
                          std::this_thread::sleep_for(std::chrono::seconds(60));
                          return outbox::Result::ok();
                      }});
    worker.subscribe(
        {{"example.badutf8"}, [](const outbox::Event&) {
             static const char message[] = "bad bytes \xc3\x28 and \xff\xfe, a NUL \0 here";
             return outbox::Result::permanent(std::string(message, sizeof message - 1));
         }});

    // Reports what a handler process holds, for the isolation test: its open descriptors and
    // whether the database location reached its environment. It "fails" permanently so that the
    // report lands in the dead-letter queue's failureReason.
    worker.subscribe(
        {{"example.inspect"}, [](const outbox::Event&) {
             std::string fds;
             if (DIR* dir = opendir("/proc/self/fd")) {
                 std::vector<int> open_fds;
                 while (dirent* entry = readdir(dir)) {
                     if (entry->d_name[0] != '.' && std::atoi(entry->d_name) != dirfd(dir)) {
                         open_fds.push_back(std::atoi(entry->d_name));
                     }
                 }
                 closedir(dir);
                 std::sort(open_fds.begin(), open_fds.end());
                 for (int fd : open_fds) {
                     fds += (fds.empty() ? "" : " ") + std::to_string(fd);
                 }
             }
             return outbox::Result::permanent(
                 "fds=" + fds + " database_url=" + (std::getenv("DATABASE_URL") ? "set" : "unset"));
         }});

    // For the chaos tests (chaos_attempt above): "example.chaos" misbehaves one event in ten
    // each way, "example.chaos.ordered", the ordering keys' chaos, one in forty (a key's events
    // go one at a time, so each misbehaviour delays all the key's later events).
    worker.subscribe(
        {{"example.chaos"},
         [](const outbox::Event& event) { return chaos_attempt(event, 10, monotonic_ns()); },
         300});
    worker.subscribe({{"example.chaos.ordered"},
                      [](const outbox::Event& event) {
                          int64_t start = monotonic_ns();
                          if (hold_ms() > 0) {
                              std::this_thread::sleep_for(std::chrono::milliseconds(hold_ms()));
                          }
                          return chaos_attempt(event, 40, start);
                      },
                      300});
    // For the ordering tests: succeeds after EXAMPLE_HOLD_MS and records the attempt as above,
    // unless the payload's "failWhileExists" names a file that exists: then it fails retryably,
    // which blocks the event's ordering key until the test removes the file.
    worker.subscribe({{"example.ordered"}, [](const outbox::Event& event) {
                          int64_t start = monotonic_ns();
                          if (hold_ms() > 0) {
                              std::this_thread::sleep_for(std::chrono::milliseconds(hold_ms()));
                          }
                          std::string gate = payload_string(event, "failWhileExists");
                          if (!gate.empty() && ::access(gate.c_str(), F_OK) == 0) {
                              record_attempt(event, start, "fail");
                              return outbox::Result::retry("ordered: " + gate + " exists");
                          }
                          record_attempt(event, start, "ok");
                          return outbox::Result::ok();
                      }});

    return worker.main(argc, argv);
}
