#include "tests/support/kafka_mock.h"

#include "tests/support/process.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>

extern char** environ;

namespace outbox::test {

KafkaMockCluster::KafkaMockCluster(const std::vector<std::pair<std::string, int>>& topics) {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/outbox-kafka-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
        FAIL("mkdtemp failed: " << std::strerror(errno));
    }
    dir_ = pattern;
    std::string stderr_path = dir_ + "/stderr";

    std::vector<std::string> args = {OUTBOX_KAFKA_MOCK};
    for (const auto& [name, partitions] : topics) {
        args.push_back(name + ":" + std::to_string(partitions));
    }
    std::vector<char*> argv;
    for (auto& a : args) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);

    // Commands go through a socket rather than a pipe so that a write to a program that has
    // died fails with EPIPE (send with MSG_NOSIGNAL) instead of killing the test with SIGPIPE.
    int in[2];
    int out[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0 || pipe2(out, O_CLOEXEC) != 0) {
        FAIL("socketpair or pipe2 failed: " << std::strerror(errno));
    }
    // posix_spawn rather than fork(): the test process runs librdkafka's threads, and a spawn
    // needs no care about what the child may do before exec. Every other descriptor of the test
    // process is closed in the child, so that the program holds nothing of other tests.
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
    int rc = posix_spawn(&pid_, argv[0], &actions, &attributes, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    close(in[0]);
    close(out[1]);
    to_program_ = in[1];
    from_program_ = out[0];
    if (rc != 0) {
        pid_ = -1;
        FAIL("cannot start " << OUTBOX_KAFKA_MOCK << ": " << std::strerror(rc));
    }
    bootstrap_ = read_line(10000);
    INFO(log());
    REQUIRE(bootstrap_.find("127.0.0.1:") == 0);
}

KafkaMockCluster::~KafkaMockCluster() {
    // EOF on its stdin ends the program; a program that does not end is killed.
    if (to_program_ >= 0) {
        close(to_program_);
    }
    if (pid_ > 0) {
        bool ended = wait_until(
            [&] {
                int status = 0;
                return waitpid(pid_, &status, WNOHANG) == pid_;
            },
            std::chrono::seconds(5), std::chrono::milliseconds(5));
        if (!ended) {
            kill(pid_, SIGKILL);
            int status = 0;
            waitpid(pid_, &status, 0);
        }
    }
    if (from_program_ >= 0) {
        close(from_program_);
    }
    if (!dir_.empty() && std::getenv("OUTBOX_TEST_KEEP_OUTPUT") == nullptr) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
}

std::string KafkaMockCluster::log() const {
    return read_text_file(dir_ + "/stderr");
}

std::string KafkaMockCluster::read_line(int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
        size_t newline = buffered_.find('\n');
        if (newline != std::string::npos) {
            std::string line = buffered_.substr(0, newline);
            buffered_.erase(0, newline + 1);
            return line;
        }
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now())
                        .count();
        if (left <= 0) {
            FAIL("no answer from the Kafka mock cluster within " << timeout_ms << " ms\n" << log());
        }
        pollfd p{from_program_, POLLIN, 0};
        int n = ::poll(&p, 1, static_cast<int>(left));
        if (n < 0 && errno != EINTR) {
            FAIL("poll failed: " << std::strerror(errno));
        }
        if (n <= 0) {
            continue;
        }
        char chunk[4096];
        ssize_t got = read(from_program_, chunk, sizeof chunk);
        if (got == 0) {
            FAIL("the Kafka mock cluster ended\n" << log());
        }
        if (got > 0) {
            buffered_.append(chunk, static_cast<size_t>(got));
        }
    }
}

void KafkaMockCluster::command(const std::string& line) {
    std::string text = line + "\n";
    size_t written = 0;
    while (written < text.size()) {
        ssize_t n = send(to_program_, text.data() + written, text.size() - written, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            FAIL("cannot write to the Kafka mock cluster: " << std::strerror(errno));
        }
        written += static_cast<size_t>(n);
    }
    std::string answer = read_line(10000);
    INFO("command: " << line);
    REQUIRE(answer == "ok");
}

void KafkaMockCluster::down() {
    command("down");
}
void KafkaMockCluster::up() {
    command("up");
}
void KafkaMockCluster::down(int broker_id) {
    command("down " + std::to_string(broker_id));
}
void KafkaMockCluster::up(int broker_id) {
    command("up " + std::to_string(broker_id));
}
void KafkaMockCluster::set_rtt(int rtt_ms) {
    command("rtt " + std::to_string(rtt_ms));
}
void KafkaMockCluster::create_topic(const std::string& name, int partitions) {
    command("topic " + name + " " + std::to_string(partitions));
}
void KafkaMockCluster::set_topic_error(const std::string& topic, int kafka_error) {
    command("topic-error " + topic + " " + std::to_string(kafka_error));
}
void KafkaMockCluster::fail_next_produce_requests(int kafka_error, int count) {
    command("produce-errors " + std::to_string(kafka_error) + " " + std::to_string(count));
}

} // namespace outbox::test
