// An application that registers its handlers in code and runs the outbox-worker service from its
// own main: the same command line (run, migrate, emit, dlq, stats, ...), the same supervisor and
// crash-isolated handler processes. Build: `make` (target outbox-example-app).
//
// The handlers below exist for the demo and the test suite: "example.ok" succeeds, "example.fail"
// fails retryably, "example.permanent" fails permanently, "example.throw" throws, and
// "example.crash" crashes its handler process with SIGSEGV, which costs that event one attempt and
// nothing else.
#include <outbox/outbox.h>

#include <csignal>
#include <cstdio>
#include <stdexcept>

int main(int argc, char** argv) {
    outbox::Worker worker;

    worker.subscribe({{"example.ok", "shopify.*"}, [](const outbox::Event& event) {
                          std::fprintf(stderr, "example-app: handled %s (%s) attempt %d\n", event.id.c_str(),
                                       event.event_type.c_str(), event.attempt);
                          return outbox::Result::ok();
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

    return worker.main(argc, argv);
}
