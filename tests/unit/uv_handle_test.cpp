// supervisor/uv_handle.h: handles freed only after libuv lets go of them, closing from inside a
// handle's own callback, and close_loop() naming the handles a caller forgot to close.
#include "supervisor/uv_handle.h"

#include <catch2/catch.hpp>

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

TEST_CASE("uv_handle: a poll watches a socket; a signal handle delivers its signal",
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
