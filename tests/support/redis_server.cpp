#include "tests/support/redis_server.h"

#include <catch2/catch.hpp>

#include <signal.h>
#include <stdlib.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace outbox::test {

RedisServer::RedisServer(RedisServerOptions options) : options_(std::move(options)) {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/outbox-redis-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
        FAIL("mkdtemp failed: " << std::strerror(errno));
    }
    dir_ = pattern;
    port_ = free_tcp_port();
    start();
}

RedisServer::~RedisServer() {
    if (process_) {
        process_->signal_group(SIGKILL);
        process_.reset();
    }
    std::error_code ec;
    if (std::getenv("OUTBOX_TEST_KEEP_OUTPUT") == nullptr) {
        std::filesystem::remove_all(dir_, ec);
    }
}

std::string RedisServer::url(int db) const {
    std::string auth = options_.password ? ":" + *options_.password + "@" : "";
    return "redis://" + auth + "127.0.0.1:" + std::to_string(port_) + "/" + std::to_string(db);
}

void RedisServer::start() {
    REQUIRE(process_ == nullptr);
    // Durable as the sink's comment on acknowledgements assumes: every write is in the fsynced
    // append-only file before Redis replies. No RDB snapshots, no configuration file (the
    // defaults plus these), the log on stdout.
    std::vector<std::string> args = {"--port",        std::to_string(port_),
                                     "--bind",        "127.0.0.1",
                                     "--dir",         dir_,
                                     "--appendonly",  "yes",
                                     "--appendfsync", options_.appendfsync,
                                     "--save",        "",
                                     "--daemonize",   "no",
                                     "--logfile",     ""};
    if (options_.password) {
        args.insert(args.end(), {"--requirepass", *options_.password});
    }
    SpawnOptions spawn;
    spawn.args = args;
    process_ = std::make_unique<ChildProcess>("redis-server", std::move(spawn));
    // Printed once the data set (the append-only file) is loaded and the listener is up.
    bool ready = wait_until(
        [&] {
            return process_->stdout_text().find("Ready to accept connections") !=
                       std::string::npos ||
                   !process_->is_running();
        },
        std::chrono::seconds(15));
    INFO(describe());
    REQUIRE(ready);
    REQUIRE(process_->is_running());
}

void RedisServer::stop() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGCONT);
    process_->send_signal(SIGTERM);
    auto status = process_->wait_exit(std::chrono::seconds(30));
    INFO(describe());
    REQUIRE(status);
    previous_logs_ += process_->stdout_text();
    process_.reset();
}

void RedisServer::kill() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGKILL);
    auto status = process_->wait_exit(std::chrono::seconds(30));
    REQUIRE(status);
    previous_logs_ += process_->stdout_text();
    process_.reset();
}

void RedisServer::pause() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGSTOP);
    pid_t pid = process_->pid();
    REQUIRE(wait_until([&] { return all_threads_stopped(pid); }, std::chrono::seconds(10),
                       std::chrono::milliseconds(1)));
}

void RedisServer::resume() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGCONT);
}

std::string RedisServer::describe() const {
    std::string out = "redis-server on port " + std::to_string(port_) + ", data " + dir_;
    if (!previous_logs_.empty()) {
        out +=
            "\nearlier runs:\n" +
            previous_logs_.substr(previous_logs_.size() > 4000 ? previous_logs_.size() - 4000 : 0);
    }
    if (process_) {
        out += "\n" + process_->describe();
    }
    return out;
}

} // namespace outbox::test
