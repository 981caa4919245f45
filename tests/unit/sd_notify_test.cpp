// The systemd notification protocol: a datagram socket bound by the test stands in for systemd
// and receives what the notifier sends.
#include "supervisor/sd_notify.h"

#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>

using namespace outbox;

namespace {

// A bound AF_UNIX datagram socket, as systemd's notification socket is.
class FakeSystemd {
  public:
    // `name` is a path, or an abstract name written with a leading '@'.
    explicit FakeSystemd(const std::string& name) : name_(name) {
        fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        REQUIRE(name.size() < sizeof address.sun_path);
        std::memcpy(address.sun_path, name.data(), name.size());
        if (name[0] == '@') {
            address.sun_path[0] = '\0';
        }
        socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
        REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&address), length) == 0);
    }

    FakeSystemd(const FakeSystemd&) = delete;
    FakeSystemd& operator=(const FakeSystemd&) = delete;

    ~FakeSystemd() {
        close(fd_);
        if (name_[0] == '/') {
            unlink(name_.c_str());
        }
    }

    // The next datagram, or nullopt if none arrives within `timeout_ms`.
    std::optional<std::string> receive(int timeout_ms = 5000) {
        pollfd poller{fd_, POLLIN, 0};
        if (poll(&poller, 1, timeout_ms) != 1) {
            return std::nullopt;
        }
        char buffer[4096];
        ssize_t got = recv(fd_, buffer, sizeof buffer, 0);
        if (got < 0) {
            return std::nullopt;
        }
        return std::string(buffer, static_cast<std::size_t>(got));
    }

    // Whether a datagram is waiting right now.
    bool pending() {
        pollfd poller{fd_, POLLIN, 0};
        return poll(&poller, 1, 0) == 1;
    }

  private:
    std::string name_;
    int fd_ = -1;
};

class TempDir {
  public:
    TempDir() {
        char pattern[] = "/tmp/outbox-sd-notify-XXXXXX";
        REQUIRE(mkdtemp(pattern) != nullptr);
        path_ = pattern;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() { rmdir(path_.c_str()); }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

std::string unique_abstract_name() {
    std::random_device random;
    return "@outbox-sd-notify-test-" + std::to_string(getpid()) + "-" + std::to_string(random());
}

} // namespace

TEST_CASE("systemd notifier sends READY, STATUS, STOPPING and WATCHDOG", "[sd_notify]") {
    TempDir dir;
    FakeSystemd systemd(dir.path() + "/notify");
    SystemdNotifier notifier(dir.path() + "/notify", "", "");
    REQUIRE(notifier.enabled());

    notifier.ready();
    CHECK(systemd.receive() == "READY=1");
    notifier.status("claimed 3 events, 2 workers busy");
    CHECK(systemd.receive() == "STATUS=claimed 3 events, 2 workers busy");
    // A line break would start a new assignment, so it must not reach systemd.
    notifier.status("first\nsecond\r\nREADY=1");
    CHECK(systemd.receive() == "STATUS=first second  READY=1");
    notifier.stopping();
    CHECK(systemd.receive() == "STOPPING=1");
    notifier.watchdog();
    CHECK(systemd.receive() == "WATCHDOG=1");
    CHECK(notifier.notify("EXTEND_TIMEOUT_USEC=5000000"));
    CHECK(systemd.receive() == "EXTEND_TIMEOUT_USEC=5000000");
    CHECK_FALSE(systemd.pending());
}

TEST_CASE("systemd notifier reaches an abstract socket", "[sd_notify]") {
    std::string name = unique_abstract_name();
    FakeSystemd systemd(name);
    SystemdNotifier notifier(name, "", "");
    REQUIRE(notifier.enabled());
    notifier.ready();
    CHECK(systemd.receive() == "READY=1");
    notifier.watchdog();
    CHECK(systemd.receive() == "WATCHDOG=1");
}

TEST_CASE("systemd notifier reads its environment", "[sd_notify]") {
    TempDir dir;
    std::string path = dir.path() + "/notify";
    FakeSystemd systemd(path);
    REQUIRE(setenv("NOTIFY_SOCKET", path.c_str(), 1) == 0);
    REQUIRE(setenv("WATCHDOG_USEC", "3000000", 1) == 0);
    REQUIRE(setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1) == 0);
    SystemdNotifier notifier;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");

    REQUIRE(notifier.enabled());
    CHECK(notifier.watchdog_usec() == 3000000u);
    notifier.ready();
    CHECK(systemd.receive() == "READY=1");

    SystemdNotifier without_environment;
    CHECK_FALSE(without_environment.enabled());
    CHECK_FALSE(without_environment.watchdog_usec());
    // Calls on a disabled notifier are harmless no-ops.
    without_environment.ready();
    without_environment.watchdog();
    CHECK_FALSE(without_environment.notify("READY=1"));
}

TEST_CASE("systemd notifier honours WATCHDOG_PID", "[sd_notify]") {
    std::string self = std::to_string(getpid());
    CHECK(SystemdNotifier("", "2000000", "").watchdog_usec() == 2000000u);
    CHECK(SystemdNotifier("", "2000000", self).watchdog_usec() == 2000000u);
    // Inherited from another process: the watchdog belongs to that process.
    CHECK_FALSE(SystemdNotifier("", "2000000", std::to_string(getpid() + 1)).watchdog_usec());
    CHECK_FALSE(SystemdNotifier("", "2000000", "not-a-pid").watchdog_usec());
    CHECK_FALSE(SystemdNotifier("", "0", "").watchdog_usec());
    CHECK_FALSE(SystemdNotifier("", "-5", "").watchdog_usec());
    CHECK_FALSE(SystemdNotifier("", "12abc", "").watchdog_usec());
    CHECK_FALSE(SystemdNotifier("", "", "").watchdog_usec());
}

TEST_CASE("systemd notifier ignores unusable addresses", "[sd_notify]") {
    CHECK_FALSE(SystemdNotifier("relative/path", "", "").enabled());
    CHECK_FALSE(SystemdNotifier("vsock:2:1234", "", "").enabled());
    CHECK_FALSE(SystemdNotifier("@", "", "").enabled());
    CHECK_FALSE(SystemdNotifier("/" + std::string(200, 'x'), "", "").enabled());

    // A well-formed address where nobody listens: sending fails without blocking or throwing.
    SystemdNotifier nobody("/nonexistent-outbox-test/notify", "", "");
    REQUIRE(nobody.enabled());
    CHECK_FALSE(nobody.notify("READY=1"));
    nobody.ready();
}

TEST_CASE("systemd notifier stays silent in a forked child", "[sd_notify]") {
    TempDir dir;
    std::string path = dir.path() + "/notify";
    FakeSystemd systemd(path);
    SystemdNotifier notifier(path, "", "");
    REQUIRE(notifier.enabled());

    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // The handler process: its notification must be dropped. A second notifier created in
        // the child then sends a marker, which must be the first datagram systemd sees.
        notifier.ready();
        SystemdNotifier own(path, "", "");
        own.notify("MARKER=child");
        _exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(systemd.receive() == "MARKER=child");
    CHECK_FALSE(systemd.pending());
}
