// A throw-away nats-server for the broker tests: JetStream on, a free port of 127.0.0.1, its store
// in a temporary directory, killed and removed at the end.
//
//     NatsServer nats;                       // started; waits until it answers
//     auto sink = outbox::make_nats_sink({.url = nats.url(), .timeout_ms = 5000});
//     nats.stop();                           // SIGTERM, waits for the exit
//     nats.start();                          // again, same port and store
//
// Nothing here needs root: the store, the configuration and the logs live in temporary
// directories. A NatsServer belongs to the thread that created it (see ChildProcess).
#pragma once

#include "tests/support/process.h"

#include <memory>
#include <optional>
#include <string>

namespace outbox::test {

struct NatsServerOptions {
    bool jetstream = true;           // -js; false for a server that has no JetStream at all
    std::optional<long> max_payload; // the server's max_payload in bytes (default 1 MiB)
};

class NatsServer {
  public:
    // Starts the server and REQUIREs that it answers within 15 s.
    explicit NatsServer(NatsServerOptions options = {});
    ~NatsServer();
    NatsServer(const NatsServer&) = delete;
    NatsServer& operator=(const NatsServer&) = delete;

    int port() const { return port_; }
    std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
    const std::string& store_dir() const { return store_dir_; }

    // SIGTERM (the server flushes its store and exits) and wait for the exit; REQUIREs it.
    void stop();
    // Starts it again on the same port with the same store; REQUIREs that it answers.
    void start();
    // SIGKILL, as a crash, and wait for the end; start() brings it back on the same data.
    void kill();
    // SIGSTOP (returning once every thread has stopped) and SIGCONT: a server that keeps its
    // connections open but answers nothing.
    void pause();
    void resume();
    bool running() const { return process_ != nullptr; }

    // The command line and the server's log, for INFO() when a check fails.
    std::string describe() const;

  private:
    NatsServerOptions options_;
    std::string dir_;       // the temporary directory: configuration and store
    std::string store_dir_; // dir_/store
    int port_ = 0;
    std::unique_ptr<ChildProcess> process_;
    std::string previous_logs_; // the logs of the runs stopped before
};

} // namespace outbox::test
