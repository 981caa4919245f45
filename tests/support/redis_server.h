// A throw-away redis-server for the broker tests: a free port of 127.0.0.1, its data in a
// temporary directory, durable as the sink's documentation assumes (appendonly yes, appendfsync
// always, no RDB snapshots), killed and removed at the end.
//
//     RedisServer redis;                     // started; waits until it answers
//     auto sink = outbox::make_redis_sink({.url = redis.url(), .timeout_ms = 5000});
//     redis.stop();                          // SIGTERM, waits for the exit
//     redis.start();                         // again, same port and data directory
//
// Nothing here needs root. A RedisServer belongs to the thread that created it (see
// ChildProcess).
#pragma once

#include "tests/support/process.h"

#include <memory>
#include <optional>
#include <string>

namespace outbox::test {

struct RedisServerOptions {
    std::optional<std::string> password; // requirepass
    // "always" (every write fsynced before the reply); "everysec" only to tell, in a
    // measurement, the sink's own cost from the disk's.
    std::string appendfsync = "always";
};

class RedisServer {
  public:
    // Starts the server and REQUIREs that it answers within 15 s.
    explicit RedisServer(RedisServerOptions options = {});
    ~RedisServer();
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;

    int port() const { return port_; }
    // redis://[:password@]127.0.0.1:port/db
    std::string url(int db = 0) const;
    const std::string& data_dir() const { return dir_; }

    // SIGTERM (Redis finishes its append-only file and exits) and wait for the exit; REQUIREs
    // it.
    void stop();
    // Starts it again on the same port with the same data; REQUIREs that it answers.
    void start();
    // SIGKILL, as a crash, and wait for the end; start() brings it back on the same data.
    void kill();
    // SIGSTOP (returning once every thread has stopped) and SIGCONT: a server that keeps its
    // connections open but answers nothing.
    void pause();
    void resume();
    bool running() const { return process_ != nullptr; }

    std::string describe() const;

  private:
    RedisServerOptions options_;
    std::string dir_;
    int port_ = 0;
    std::unique_ptr<ChildProcess> process_;
    std::string previous_logs_;
};

} // namespace outbox::test
