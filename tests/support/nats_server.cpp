#include "tests/support/nats_server.h"

#include <catch2/catch.hpp>

#include <signal.h>
#include <stdlib.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace outbox::test {

NatsServer::NatsServer(NatsServerOptions options) : options_(options) {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/outbox-nats-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
        FAIL("mkdtemp failed: " << std::strerror(errno));
    }
    dir_ = pattern;
    store_dir_ = dir_ + "/store";
    port_ = free_tcp_port();
    // A configuration file for what has no command-line flag; the rest are flags.
    std::ofstream config(dir_ + "/nats.conf");
    if (options_.max_payload) {
        config << "max_payload: " << *options_.max_payload << "\n";
    }
    config.close();
    start();
}

NatsServer::~NatsServer() {
    if (process_) {
        // A paused server must not stay stopped while its group is killed and reaped.
        process_->signal_group(SIGKILL);
        process_.reset();
    }
    std::error_code ec;
    if (std::getenv("OUTBOX_TEST_KEEP_OUTPUT") == nullptr) {
        std::filesystem::remove_all(dir_, ec);
    }
}

void NatsServer::start() {
    REQUIRE(process_ == nullptr);
    std::vector<std::string> args = {"-a", "127.0.0.1",        "-p", std::to_string(port_),
                                     "-c", dir_ + "/nats.conf"};
    if (options_.jetstream) {
        args.insert(args.end(), {"-js", "-sd", store_dir_});
    }
    SpawnOptions spawn;
    spawn.args = args;
    process_ = std::make_unique<ChildProcess>("nats-server", std::move(spawn));
    // "Server is ready" comes after the listener is up and, with JetStream, after the streams
    // of the store were recovered.
    bool ready = wait_until(
        [&] {
            return process_->stderr_text().find("Server is ready") != std::string::npos ||
                   !process_->is_running();
        },
        std::chrono::seconds(15));
    INFO(describe());
    REQUIRE(ready);
    REQUIRE(process_->is_running());
}

void NatsServer::stop() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGCONT); // in case it was paused
    process_->send_signal(SIGTERM);
    auto status = process_->wait_exit(std::chrono::seconds(30));
    INFO(describe());
    REQUIRE(status);
    previous_logs_ += process_->stderr_text();
    process_.reset();
}

void NatsServer::kill() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGKILL);
    auto status = process_->wait_exit(std::chrono::seconds(30));
    REQUIRE(status);
    previous_logs_ += process_->stderr_text();
    process_.reset();
}

void NatsServer::pause() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGSTOP);
    pid_t pid = process_->pid();
    REQUIRE(wait_until([&] { return all_threads_stopped(pid); }, std::chrono::seconds(10),
                       std::chrono::milliseconds(1)));
}

void NatsServer::resume() {
    REQUIRE(process_ != nullptr);
    process_->send_signal(SIGCONT);
}

std::string NatsServer::describe() const {
    std::string out = "nats-server on port " + std::to_string(port_) + ", store " + store_dir_;
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
