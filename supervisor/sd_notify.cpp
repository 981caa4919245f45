#include "supervisor/sd_notify.h"

#include <spdlog/spdlog.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace outbox {

namespace {

std::string_view environment(const char* name) {
    const char* value = std::getenv(name);
    return value == nullptr ? std::string_view() : std::string_view(value);
}

// A decimal number with nothing around it; nullopt for anything else.
std::optional<std::uint64_t> parse_unsigned(std::string_view text) {
    std::uint64_t value = 0;
    auto result = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

// The sockaddr_un for NOTIFY_SOCKET as bytes, or an empty string when it is not an address
// this process can use (systemd also knows "vsock:" addresses, which a service on the same host
// never receives).
std::string notify_address(std::string_view socket) {
    if (socket.size() < 2 || (socket.front() != '/' && socket.front() != '@')) {
        return {};
    }
    sockaddr_un address;
    std::memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    // A path needs room for its terminating NUL; an abstract name is counted by the address
    // length instead and may fill the whole array.
    std::size_t limit =
        socket.front() == '/' ? sizeof address.sun_path - 1 : sizeof address.sun_path;
    if (socket.size() > limit) {
        return {};
    }
    std::memcpy(address.sun_path, socket.data(), socket.size());
    if (socket.front() == '@') {
        address.sun_path[0] = '\0';
    }
    std::size_t length = offsetof(sockaddr_un, sun_path) + socket.size();
    return std::string(reinterpret_cast<const char*>(&address), length);
}

} // namespace

SystemdNotifier::SystemdNotifier()
    : SystemdNotifier(environment("NOTIFY_SOCKET"), environment("WATCHDOG_USEC"),
                      environment("WATCHDOG_PID")) {}

SystemdNotifier::SystemdNotifier(std::string_view notify_socket, std::string_view watchdog_usec,
                                 std::string_view watchdog_pid)
    : owner_pid_(getpid()) {
    std::optional<std::uint64_t> usec = parse_unsigned(watchdog_usec);
    if (usec && *usec > 0) {
        if (watchdog_pid.empty()) {
            watchdog_usec_ = usec;
        } else {
            std::optional<std::uint64_t> pid = parse_unsigned(watchdog_pid);
            if (pid && *pid == static_cast<std::uint64_t>(owner_pid_)) {
                watchdog_usec_ = usec;
            }
        }
    }

    if (notify_socket.empty()) {
        return;
    }
    address_ = notify_address(notify_socket);
    if (address_.empty()) {
        spdlog::debug("systemd notifications disabled: unusable NOTIFY_SOCKET '{}'", notify_socket);
        return;
    }
    fd_.reset(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd_.is_open()) {
        spdlog::debug("systemd notifications disabled: socket() failed: {}", std::strerror(errno));
    }
}

SystemdNotifier::~SystemdNotifier() = default;

bool SystemdNotifier::notify(std::string_view message) {
    if (!fd_.is_open() || getpid() != owner_pid_) {
        return false;
    }
    ssize_t sent = sendto(fd_.get(), message.data(), message.size(), MSG_NOSIGNAL,
                          reinterpret_cast<const sockaddr*>(address_.data()),
                          static_cast<socklen_t>(address_.size()));
    if (sent == static_cast<ssize_t>(message.size())) {
        return true;
    }
    if (!failure_logged_) {
        failure_logged_ = true;
        spdlog::debug("systemd notification not sent ({}); later failures are not logged",
                      sent < 0 ? std::strerror(errno) : "short datagram");
    }
    return false;
}

void SystemdNotifier::ready() {
    notify("READY=1");
}

void SystemdNotifier::status(std::string_view text) {
    std::string message = "STATUS=";
    for (char c : text) {
        message += (c == '\n' || c == '\r') ? ' ' : c;
    }
    notify(message);
}

void SystemdNotifier::stopping() {
    notify("STOPPING=1");
}

void SystemdNotifier::watchdog() {
    notify("WATCHDOG=1");
}

} // namespace outbox
