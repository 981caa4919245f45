// The systemd notification protocol (sd_notify(3)), written out because it is one datagram per
// message and libsystemd would be a dependency for nothing else.
//
// systemd passes the address of its notification socket in NOTIFY_SOCKET: an absolute path, or
// an abstract socket name written with a leading '@'. Each message is a datagram of
// newline-separated assignments ("READY=1", "STATUS=...", "STOPPING=1", "WATCHDOG=1").
// Without NOTIFY_SOCKET (not started by systemd, or Type= is not notify) every call is a no-op.
//
// Sending never blocks the loop: the socket is non-blocking and a datagram that cannot be sent
// at once (systemd busy, socket gone) is dropped. Failures are logged once, at debug level,
// since a lost STATUS= costs nothing and the watchdog ping repeats.
//
// Handler processes: the supervisor forks them without exec, so they inherit this object's
// environment and, until the pool's fork path closes it, its descriptor (which is
// close-on-exec). A handler process must not notify: systemd would take its messages for the
// service's (NotifyAccess=all) or log them as foreign. Calls made in a process other than the one
// that created the notifier are therefore ignored. The environment variables are left as they
// are; unsetting them is not this class's business.
#pragma once

#include "common/fd.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <sys/types.h>

namespace outbox {

class SystemdNotifier {
  public:
    // Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from the environment.
    SystemdNotifier();
    // The same from explicit values (an empty string stands for an unset variable).
    SystemdNotifier(std::string_view notify_socket, std::string_view watchdog_usec,
                    std::string_view watchdog_pid);
    ~SystemdNotifier();

    SystemdNotifier(const SystemdNotifier&) = delete;
    SystemdNotifier& operator=(const SystemdNotifier&) = delete;

    // True when NOTIFY_SOCKET named a usable address and the socket could be created.
    bool enabled() const { return fd_.is_open(); }

    // READY=1: the service is up (connected, handler processes started).
    void ready();
    // STATUS=<text>: a one-line progress message that `systemctl status` shows. Line breaks
    // would start another assignment, so they are replaced by spaces.
    void status(std::string_view text);
    // STOPPING=1: draining has begun.
    void stopping();
    // WATCHDOG=1: the loop is alive. Send it at about half of watchdog_usec().
    void watchdog();

    // The watchdog period systemd expects pings within, when WATCHDOG_USEC is a positive number
    // and WATCHDOG_PID is either unset or this process's pid (a WATCHDOG_PID of another process
    // means the variables were inherited and the watchdog is not ours).
    std::optional<std::uint64_t> watchdog_usec() const { return watchdog_usec_; }

    // Sends one message of raw assignments; false when it was not sent (disabled, another
    // process, or the send failed).
    bool notify(std::string_view message);

  private:
    UniqueFd fd_;
    pid_t owner_pid_;
    std::string address_; // sockaddr_un bytes, length included
    std::optional<std::uint64_t> watchdog_usec_;
    bool failure_logged_ = false;
};

} // namespace outbox
