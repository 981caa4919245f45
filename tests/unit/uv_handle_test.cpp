// supervisor/uv_handle.h: handles freed only after libuv lets go of them, closing from inside a
// handle's own callback, and close_loop() naming the handles a caller forgot to close.
#include "supervisor/uv_handle.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>

using namespace outbox;

TEST_CASE("uv_handle: a timer fires, re-arms, and closes itself from its own callback",
          "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    int fired = 0;
    Timer timer;
    timer = Timer(&loop, [&] {
        if (++fired == 3) {
            timer.close(); // the callback object must survive its own close
        }
    });
    timer.start(1, 1);
    CHECK(timer.active());
    uv_run(&loop, UV_RUN_DEFAULT); // returns once the timer is closed
    CHECK(fired == 3);
    CHECK_FALSE(timer.is_open());
    timer.start(1); // a closed timer ignores start()
    CHECK(close_loop(&loop).empty());
}

TEST_CASE("uv_handle: a handle destroyed before its callback was due never runs it",
          "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    bool ran = false;
    {
        Timer timer(&loop, [&] { ran = true; });
        timer.start(0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_FALSE(ran);
    CHECK(close_loop(&loop).empty());
}

TEST_CASE("uv_handle: moving a wrapper moves ownership, not the handle", "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    int fired = 0;
    Timer a(&loop, [&] { ++fired; });
    a.start(0);
    Timer b = std::move(a);
    CHECK_FALSE(a.is_open());
    CHECK(b.is_open());
    uv_run(&loop, UV_RUN_ONCE);
    CHECK(fired == 1);
    b.close();
    CHECK(close_loop(&loop).empty());
}

TEST_CASE("uv_handle: close_loop names the handles left open", "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    Timer forgotten(&loop, [] {});
    Check check(&loop, [] {});
    std::string leaked = close_loop(&loop);
    CHECK(leaked.find("timer") != std::string::npos);
    CHECK(leaked.find("check") != std::string::npos);
    forgotten.close();
    check.close();
    CHECK(close_loop(&loop).empty());
}

TEST_CASE("uv_handle: a poll watches a socket, and a signal handle delivers its signal",
          "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    Poll poll;
    int events_seen = 0;
    REQUIRE(poll.open(&loop, fds[0], [&](int status, int events) {
        CHECK(status == 0);
        events_seen |= events;
        poll.close();
    }) == 0);
    CHECK(poll.fd() == fds[0]);
    poll.start(UV_READABLE);
    REQUIRE(::write(fds[1], "x", 1) == 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK((events_seen & UV_READABLE) != 0);
    ::close(fds[0]);
    ::close(fds[1]);

    int got = 0;
    Signal sig;
    sig = Signal(&loop, SIGUSR2, [&](int signum) {
        got = signum;
        sig.close();
    });
    ::raise(SIGUSR2);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(got == SIGUSR2);
    CHECK(close_loop(&loop).empty());
}

TEST_CASE("uv_handle: a pipe reads through its one buffer, writes, and reports end of file",
          "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    Pipe pipe;
    REQUIRE(pipe.open(&loop, fds[0]) == 0);
    CHECK(pipe.fd() == fds[0]);
    std::string got;
    const char* buffer_seen = nullptr;
    bool buffer_reused = true;
    ssize_t end = 0;
    REQUIRE(pipe.read_start(4, [&](ssize_t nread, const char* data) {
        if (nread < 0) {
            end = nread;
            pipe.close(); // from the pipe's own callback
            return;
        }
        CHECK(nread <= 4);
        buffer_reused = buffer_reused && (buffer_seen == nullptr || buffer_seen == data);
        buffer_seen = data;
        got.append(data, static_cast<size_t>(nread));
    }) == 0);
    int written = 1;
    REQUIRE(pipe.write("ping", [&](int status) { written = status; }) == 0);
    REQUIRE(::write(fds[1], "0123456789", 10) == 10);
    REQUIRE(::shutdown(fds[1], SHUT_WR) == 0);
    uv_run(&loop, UV_RUN_DEFAULT); // ends once the pipe closed itself at end of file
    CHECK(got == "0123456789");
    CHECK(buffer_reused); // three reads of at most 4 bytes, all into the same buffer
    CHECK(end == UV_EOF);
    CHECK(written == 0);
    char echo[8] = {};
    CHECK(::read(fds[1], echo, sizeof echo) == 4);
    CHECK(std::string(echo) == "ping");
    CHECK_FALSE(pipe.is_open());
    CHECK(pipe.fd() == -1);
    CHECK(pipe.write("late") == UV_EBADF);
    CHECK(::read(fds[1], echo, sizeof echo) == 0); // closing the pipe closed its descriptor
    ::close(fds[1]);
    CHECK(close_loop(&loop).empty());
}

TEST_CASE("uv_handle: closing a pipe cancels its queued writes and frees their bytes",
          "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    int callbacks = 0;
    {
        Pipe pipe;
        REQUIRE(pipe.open(&loop, fds[0]) == 0);
        // Nobody reads the other end: the socket buffer fills, and the writes behind the first
        // stay queued in libuv, pointing at their bytes.
        for (int i = 0; i < 8; ++i) {
            REQUIRE(pipe.write(std::string(1 << 20, 'x'), [&](int) { ++callbacks; }) == 0);
        }
        uv_run(&loop, UV_RUN_NOWAIT);
    } // destroyed with writes in flight: libuv cancels them while closing
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(callbacks == 0); // a closed pipe runs none of its callbacks
    ::close(fds[1]);
    CHECK(close_loop(&loop).empty());
}

TEST_CASE("uv_handle: a pipe that cannot open leaves the descriptor to its caller", "[uv_handle]") {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    Pipe first;
    REQUIRE(first.open(&loop, fds[0]) == 0);
    REQUIRE(first.read_start(16, [](ssize_t, const char*) {}) == 0);
    Pipe second;
    CHECK(second.open(&loop, fds[0]) == UV_EEXIST); // the loop watches fds[0] already
    CHECK_FALSE(second.is_open());
    uv_run(&loop, UV_RUN_NOWAIT);          // the failed pipe's close completes
    CHECK(::fcntl(fds[0], F_GETFD) != -1); // still open: `second` never took it
    first.close();
    CHECK(::fcntl(fds[0], F_GETFD) == -1); // closed with `first`, its owner
    ::close(fds[1]);
    CHECK(close_loop(&loop).empty());
}
