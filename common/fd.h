// A file descriptor owned once: closed when its owner goes out of scope, movable, not copyable.
// Every descriptor the project opens by hand (socketpairs, pipes, sockets, files read with open())
// lives in one of these, so no path forgets to close it and none closes it twice.
#pragma once

#include <unistd.h>

#include <utility>

namespace outbox {

class UniqueFd {
  public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    ~UniqueFd() { reset(); }
    UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;

    int get() const { return fd_; }
    bool is_open() const { return fd_ >= 0; }
    // Gives up ownership: the caller closes it (or hands it to something that will).
    [[nodiscard]] int release() { return std::exchange(fd_, -1); }
    // Closes the current descriptor, if any, and owns `fd` instead.
    void reset(int fd = -1) {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = fd;
    }

  private:
    int fd_ = -1;
};

} // namespace outbox
