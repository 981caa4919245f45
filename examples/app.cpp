// An application that registers its handlers in code and runs the outbox-worker service from its
// own main: the same command line (run, migrate, emit, dlq, stats, ...), the same supervisor and
// crash-isolated handler processes. Build: `make` (target outbox-example-app).
//
// The handlers below exist for the demo and the test suite: "example.ok" succeeds, "example.fail"
// fails retryably, "example.permanent" fails permanently, "example.throw" throws, and
// "example.crash" crashes its handler process with SIGSEGV, which costs that event one attempt and
// nothing else.
#include <outbox/outbox.h>

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
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

// The chaos test's record: "<outbox id> <attempt> <pid> <parent pid>", one line per delivery,
// written as the handler's last act before it returns success, with a single O_APPEND write as
// above. When an event is delivered again, the test uses the attempt to find in the database the
// failure that was charged to the earlier delivery, the pid to tell whether the test itself killed
// the process that ran it, and the parent pid (the supervisor) to tell which instance held it.
void record_chaos_delivery(const outbox::Event& event) {
    const char* path = std::getenv("EXAMPLE_RECORD_FILE");
    if (path == nullptr) {
        return;
    }
    std::string line = event.id + " " + std::to_string(event.attempt) + " " +
                       std::to_string(getpid()) + " " + std::to_string(getppid()) + "\n";
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

    // For the chaos test: a fixed fate per event, from a hash of its id. One in ten crashes its
    // handler process on the first attempt, one fails twice before succeeding, one is rejected
    // permanently (its place is the dead-letter queue), one hangs on the first attempt until the
    // supervisor kills it; the rest succeed at once. Every misbehaviour comes before the delivery
    // is recorded: a recorded delivery is one whose handler finished and reported success, so a
    // crash or timeout charged to it can only come from outside the handler.
    worker.subscribe({{"example.chaos"},
                      [](const outbox::Event& event) -> outbox::Result {
                          switch (std::hash<std::string>{}(event.id) % 10) {
                          case 0:
                              if (event.attempt == 1) {
                                  std::raise(SIGSEGV);
                              }
                              break;
                          case 1:
                              if (event.attempt <= 2) {
                                  return outbox::Result::retry("chaos: transient failure");
                              }
                              break;
                          case 2:
                              return outbox::Result::permanent("chaos: rejected");
                          case 3:
                              if (event.attempt == 1) {
                                  for (;;) {
                                      pause();
                                  }
                              }
                              break;
                          default:
                              break;
                          }
                          record_chaos_delivery(event);
                          return outbox::Result::ok();
                      },
                      300});

    return worker.main(argc, argv);
}
