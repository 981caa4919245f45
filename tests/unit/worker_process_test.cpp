// The handler process loop, run in a forked child and driven over a real socketpair by the test,
// which plays the supervisor.
#include "common/json.h"
#include "common/protocol.h"
#include "worker/broker_message.h"
#include "worker/sink.h"
#include "worker/subscriber.h"
#include "worker/worker_process.h"

#include <catch2/catch.hpp>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace outbox;
using namespace std::chrono_literals;

namespace {

constexpr auto kDeadline = 10s;

int64_t realtime_us() {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    return int64_t{now.tv_sec} * 1000000 + now.tv_nsec / 1000;
}

Event sample_event(const std::string& type, const std::string& id = "ob_1") {
    Event event;
    event.id = id;
    event.event_log_id = "el_1";
    event.event_key = "key-1";
    event.tenant_id = "tenant-a";
    event.event_type = type;
    event.payload_json = R"({"n": 12345678901234567890})";
    event.correlation_id = "corr-1";
    event.created_at = "2024-05-01T12:00:00.000000Z";
    event.attempt = 2;
    return event;
}

std::string event_frame(uint64_t seq, const Event& event, long timeout_ms = 30000) {
    return encode_event_frame(seq, timeout_ms, encode_event_fields(event_fields_of(event)));
}

std::string event_frame(uint64_t seq, const std::string& type) {
    return event_frame(seq, sample_event(type, "ob_" + std::to_string(seq)));
}

// The one frame in `bytes`, which must hold exactly one.
Frame decode_frame_for_test(const std::string& bytes) {
    FrameDecoder decoder;
    decoder.feed(bytes.data(), bytes.size());
    FrameDecoder::Next next = decoder.next();
    REQUIRE(next.status == FrameDecoder::Status::frame);
    REQUIRE(decoder.buffered() == 0);
    return std::move(next.frame);
}

// A pipe whose ends close themselves; used to let a handler in the child wait for the test.
struct Pipe {
    int read_end = -1;
    int write_end = -1;
    Pipe() {
        int fds[2];
        REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
        read_end = fds[0];
        write_end = fds[1];
    }
    ~Pipe() {
        close_read();
        close_write();
    }
    Pipe(const Pipe&) = delete;
    Pipe& operator=(const Pipe&) = delete;
    void close_read() {
        if (read_end >= 0) {
            ::close(read_end);
            read_end = -1;
        }
    }
    void close_write() {
        if (write_end >= 0) {
            ::close(write_end);
            write_end = -1;
        }
    }
};

// Blocks until the pipe's write end is closed everywhere (end of file). In the child this is how a
// handler holds an event "running" until the test lets it finish.
void wait_for_eof(int fd) {
    char byte;
    for (;;) {
        const ssize_t n = ::read(fd, &byte, 1);
        if (n == 0 || (n < 0 && errno != EINTR)) {
            return;
        }
    }
}

void write_byte(int fd) {
    const char byte = 's';
    while (::write(fd, &byte, 1) < 0 && errno == EINTR) {
    }
}

// What the test reads from the child.
struct Received {
    enum class Kind { frame, eof, timeout, error } kind = Kind::timeout;
    Frame frame;
    std::string error;
};

// A handler process under test: forked on construction, killed and reaped on destruction if the
// test did not see it exit, so that no child outlives a failed test.
class WorkerUnderTest {
  public:
    WorkerUnderTest(std::vector<Subscriber> subscribers, std::function<void()> child_setup = {}) {
        int fds[2];
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
        // Output buffered now would be written a second time by the child when it flushes.
        std::cout.flush();
        std::fflush(nullptr);
        pid_ = fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            // The child keeps only its own end: holding the test's end would hide its closing.
            ::close(fds[0]);
            if (child_setup) {
                child_setup();
            }
            run_worker_process(fds[1], subscribers, WorkerProcessOptions{"handler[test]"});
        }
        ::close(fds[1]);
        fd_ = fds[0];
    }

    ~WorkerUnderTest() {
        close_channel();
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
            }
        }
    }

    WorkerUnderTest(const WorkerUnderTest&) = delete;
    WorkerUnderTest& operator=(const WorkerUnderTest&) = delete;

    pid_t pid() const { return pid_; }

    void send(const std::string& bytes) {
        size_t written = 0;
        while (written < bytes.size()) {
            const ssize_t n =
                ::send(fd_, bytes.data() + written, bytes.size() - written, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            REQUIRE(n > 0);
            written += static_cast<size_t>(n);
        }
    }

    void close_channel() {
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }

    Received receive(std::chrono::milliseconds timeout = kDeadline) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        Received received;
        for (;;) {
            FrameDecoder::Next next = decoder_.next();
            if (next.status == FrameDecoder::Status::frame) {
                received.kind = Received::Kind::frame;
                received.frame = std::move(next.frame);
                return received;
            }
            if (next.status == FrameDecoder::Status::error) {
                received.kind = Received::Kind::error;
                received.error = next.error;
                return received;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                received.kind = Received::Kind::timeout;
                return received;
            }
            pollfd pfd{fd_, POLLIN, 0};
            if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) {
                continue;
            }
            char chunk[4096];
            const ssize_t n = ::read(fd_, chunk, sizeof chunk);
            if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                received.kind = Received::Kind::eof;
                return received;
            }
            if (n > 0) {
                decoder_.feed(chunk, static_cast<size_t>(n));
            }
        }
    }

    ResultMsg receive_result() {
        Received received = receive();
        REQUIRE(received.kind == Received::Kind::frame);
        const auto result = decode_result(received.frame);
        INFO(result.error());
        REQUIRE(result.ok());
        return result.value();
    }

    void expect_hello() {
        Received received = receive();
        REQUIRE(received.kind == Received::Kind::frame);
        const auto hello = decode_hello(received.frame);
        REQUIRE(hello.ok());
        CHECK(hello.value().pid == pid_);
        CHECK(hello.value().protocol == kProtocolVersion);
    }

    // The child's wait status once it has exited, or nullopt at the deadline. Polls waitpid
    // because a child's exit has no descriptor to wait on portably.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout = kDeadline) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            int status = 0;
            const pid_t done = waitpid(pid_, &status, WNOHANG);
            if (done == pid_) {
                reaped_ = true;
                return status;
            }
            if (std::chrono::steady_clock::now() >= deadline) {
                return std::nullopt;
            }
            std::this_thread::sleep_for(2ms);
        }
    }

    void expect_exit_code(int code) {
        const std::optional<int> status = wait_exit();
        REQUIRE(status.has_value());
        INFO("wait status " << *status);
        REQUIRE(WIFEXITED(*status));
        CHECK(WEXITSTATUS(*status) == code);
    }

  private:
    pid_t pid_ = -1;
    int fd_ = -1;
    bool reaped_ = false;
    FrameDecoder decoder_;
};

Subscriber subscriber(std::string name, std::vector<std::string> patterns, Handler handler) {
    Subscriber s;
    s.name = std::move(name);
    s.patterns = std::move(patterns);
    s.timeout_ms = 30000;
    s.handler = std::move(handler);
    return s;
}

// The subscribers every test's handler process has.
std::vector<Subscriber> standard_subscribers() {
    std::vector<Subscriber> subscribers;
    subscribers.push_back(subscriber("ok", {"ok.*"}, [](const Event&) { return Result::ok(); }));
    subscribers.push_back(subscriber(
        "busy", {"retry.*"}, [](const Event&) { return Result::retry("downstream busy", 1500); }));
    subscribers.push_back(subscriber("thrower", {"throw.std"}, [](const Event&) -> Result {
        throw std::runtime_error("boom");
    }));
    subscribers.push_back(
        subscriber("int-thrower", {"throw.int"}, [](const Event&) -> Result { throw 42; }));
    subscribers.push_back(subscriber(
        "strict", {"perm.*"}, [](const Event&) { return Result::permanent("payload rejected"); }));
    // Reports what it received, so the test can check the decoded Event.
    subscribers.push_back(subscriber("echo", {"echo"}, [](const Event& e) {
        const auto nullable = [](const std::optional<std::string>& text) {
            return text ? "'" + *text + "'" : std::string("NULL");
        };
        return Result::retry(e.id + "|" + e.event_log_id + "|" + nullable(e.event_key) + "|" +
                             e.tenant_id + "|" + nullable(e.project_id) + "|" + e.event_type + "|" +
                             e.payload_json + "|" + e.metadata_json + "|" +
                             nullable(e.correlation_id) + "|" + e.created_at + "|" +
                             std::to_string(e.attempt));
    }));
    // Reports the event object an exec or http handler would receive.
    subscribers.push_back(
        subscriber("json", {"json"}, [](const Event& e) { return Result::permanent(e.json()); }));
    // Reports the size of what it received, for events too large to echo.
    subscribers.push_back(subscriber("measure", {"measure"}, [](const Event& e) {
        return Result::retry(std::to_string(e.payload_json.size()) + " " +
                             std::to_string(e.json().size()));
    }));
    // Order and early stop: "first" runs for every chain.*, "second" fails chain.fail, "third"
    // fails every chain.* it reaches.
    subscribers.push_back(
        subscriber("first", {"chain.*"}, [](const Event&) { return Result::ok(); }));
    subscribers.push_back(subscriber("second", {"chain.fail"},
                                     [](const Event&) { return Result::retry("second failed"); }));
    subscribers.push_back(subscriber("third", {"chain.*"},
                                     [](const Event&) { return Result::permanent("third ran"); }));
    subscribers.push_back(subscriber("sleeper", {"sleep"}, [](const Event&) {
        // The handler's own work, not synchronisation: it gives durationUs a known lower bound.
        std::this_thread::sleep_for(30ms);
        return Result::ok();
    }));
    return subscribers;
}

} // namespace

TEST_CASE("handler process says HELLO and answers every kind of outcome", "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();

    struct Case {
        std::string type;
        Outcome outcome;
        std::string error;
        long retry_after_ms;
    };
    const std::vector<Case> cases = {
        {"ok.created", Outcome::success, "", 0},
        {"retry.x", Outcome::retry, "subscriber busy: downstream busy", 1500},
        {"throw.std", Outcome::retry, "subscriber thrower: boom", 0},
        {"throw.int", Outcome::retry, "subscriber int-thrower: unknown exception", 0},
        {"perm.x", Outcome::permanent, "subscriber strict: payload rejected", 0},
        {"chain.fail", Outcome::retry, "subscriber second: second failed", 0},
        {"chain.other", Outcome::permanent, "subscriber third: third ran", 0},
        {"nobody.here", Outcome::retry,
         "no subscriber matches event type nobody.here in this handler process", 0},
    };
    uint64_t seq = 100;
    for (const Case& c : cases) {
        INFO("event type " << c.type);
        const int64_t before = realtime_us();
        worker.send(event_frame(seq, c.type));
        const ResultMsg result = worker.receive_result();
        const int64_t after = realtime_us();
        CHECK(result.seq == seq);
        CHECK(result.outcome == c.outcome);
        CHECK(result.error == c.error);
        CHECK(result.retry_after_ms == c.retry_after_ms);
        CHECK(result.started_at_us >= before);
        CHECK(result.started_at_us <= after);
        CHECK(result.duration_us >= 0);
        CHECK(result.duration_us <= after - before);
        ++seq;
    }

    worker.send(event_frame(1, "sleep"));
    const ResultMsg slept = worker.receive_result();
    CHECK(slept.outcome == Outcome::success);
    CHECK(slept.duration_us >= 30000);

    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
}

TEST_CASE("handlers receive the decoded event", "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    worker.send(event_frame(7, sample_event("echo", "ob_77"), 1000));
    const ResultMsg result = worker.receive_result();
    CHECK(result.seq == 7);
    CHECK(result.error == "subscriber echo: ob_77|el_1|'key-1'|tenant-a|NULL|echo|"
                          "{\"n\": 12345678901234567890}|null|'corr-1'|"
                          "2024-05-01T12:00:00.000000Z|2");

    // Null and empty strings arrive as they were sent.
    Event event = sample_event("echo", "ob_78");
    event.event_key.reset();
    event.project_id = "";
    event.correlation_id.reset();
    event.metadata_json = R"({"m": [1, 2]})";
    worker.send(event_frame(8, event));
    CHECK(worker.receive_result().error ==
          "subscriber echo: ob_78|el_1|NULL|tenant-a|''|echo|{\"n\": 12345678901234567890}|"
          "{\"m\": [1, 2]}|NULL|2024-05-01T12:00:00.000000Z|2");
}

TEST_CASE("exec and http handlers get SPEC 2's object, payload verbatim", "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    worker.send(event_frame(9, sample_event("json", "ob_9")));
    const ResultMsg result = worker.receive_result();
    CHECK(result.outcome == Outcome::permanent);
    CHECK(result.error ==
          "subscriber json: "
          R"({"id":"ob_9","eventLogId":"el_1","eventKey":"key-1","tenantId":"tenant-a",)"
          R"("projectId":null,"eventType":"json","payload":{"n": 12345678901234567890},)"
          R"("metadata":null,"correlationId":"corr-1","createdAt":"2024-05-01T12:00:00.000000Z",)"
          R"("attempt":2})");
}

TEST_CASE("a payload nested 100,000 deep is delivered, not a crash", "[worker_process]") {
    // No JSON parser runs on the event in the handler process, so no nesting limit can turn a
    // deep payload into a dead process (which would be charged as a crash and brake respawns).
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    Event deep = sample_event("measure", "ob_deep");
    deep.payload_json = std::string(100000, '[') + std::string(100000, ']');
    worker.send(event_frame(1, deep));
    const ResultMsg result = worker.receive_result();
    CHECK(result.seq == 1);
    CHECK(result.error ==
          "subscriber measure: 200000 " + std::to_string(event_object_json(deep).size()));

    Event objects = sample_event("ok.deep", "ob_objects");
    objects.payload_json.clear();
    for (int i = 0; i < 100000; ++i) {
        objects.payload_json += "{\"a\":";
    }
    objects.payload_json += "1" + std::string(100000, '}');
    worker.send(event_frame(2, objects));
    CHECK(worker.receive_result().outcome == Outcome::success);

    // The process is still the same one, and still answers.
    worker.send(event_frame(3, "ok.after"));
    const ResultMsg after = worker.receive_result();
    CHECK(after.seq == 3);
    CHECK(after.outcome == Outcome::success);
    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
}

TEST_CASE("pipelined events are answered in order", "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    // One write with several EVENTs, as a supervisor that pipelines sends them.
    worker.send(event_frame(1, "ok.a") + event_frame(2, "perm.b") + event_frame(3, "ok.c") +
                event_frame(4, "retry.d"));
    const std::vector<std::pair<uint64_t, Outcome>> expected = {
        {1, Outcome::success}, {2, Outcome::permanent}, {3, Outcome::success}, {4, Outcome::retry}};
    for (const auto& [seq, outcome] : expected) {
        const ResultMsg result = worker.receive_result();
        CHECK(result.seq == seq);
        CHECK(result.outcome == outcome);
    }
}

TEST_CASE("a malformed event object fails that event permanently and nothing else",
          "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    // Well framed, with a valid envelope, but the fields stop after the id.
    Event event = sample_event("ok.x", "ob_5");
    const std::string fields = encode_event_fields(event_fields_of(event));
    worker.send(encode_event_frame(5, 1000, fields.substr(0, 4 + event.id.size() + 2)));
    const ResultMsg bad = worker.receive_result();
    CHECK(bad.seq == 5);
    CHECK(bad.outcome == Outcome::permanent);
    CHECK_THAT(bad.error, Catch::Contains("malformed event") && Catch::Contains("eventLogId"));

    event.attempt = 0;
    worker.send(event_frame(55, event));
    const ResultMsg zero = worker.receive_result();
    CHECK(zero.seq == 55);
    CHECK(zero.outcome == Outcome::permanent);
    CHECK_THAT(zero.error, Catch::Contains("\"attempt\" is 0"));

    worker.send(event_frame(6, "ok.after"));
    const ResultMsg good = worker.receive_result();
    CHECK(good.seq == 6);
    CHECK(good.outcome == Outcome::success);
}

TEST_CASE("QUIT ends the handler process with exit code 0", "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    worker.send(event_frame(1, "ok.x"));
    CHECK(worker.receive_result().seq == 1);
    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
}

TEST_CASE("QUIT takes effect after every event sent before it", "[worker_process]") {
    Pipe gate;    // the handler of "hold" runs until the test closes the write end
    Pipe started; // the handler of "hold" writes a byte here when it starts
    std::vector<Subscriber> subscribers = standard_subscribers();
    subscribers.push_back(subscriber("holder", {"hold"}, [&](const Event&) {
        write_byte(started.write_end);
        wait_for_eof(gate.read_end);
        return Result::ok();
    }));
    WorkerUnderTest worker(subscribers, [&] {
        gate.close_write();
        started.close_read();
    });
    gate.close_read();
    started.close_write();
    worker.expect_hello();

    worker.send(event_frame(1, "hold"));
    pollfd pfd{started.read_end, POLLIN, 0};
    REQUIRE(poll(&pfd, 1, 10000) == 1);

    // Event 1 is running; events 2 and 3 and the QUIT queue up behind it in one write. The
    // supervisor counts on the queued events being run and answered before the process exits.
    worker.send(event_frame(2, "ok.queued") + event_frame(3, "perm.queued") + encode_quit());
    gate.close_write();

    const ResultMsg first = worker.receive_result();
    CHECK(first.seq == 1);
    CHECK(first.outcome == Outcome::success);
    const ResultMsg second = worker.receive_result();
    CHECK(second.seq == 2);
    CHECK(second.outcome == Outcome::success);
    const ResultMsg third = worker.receive_result();
    CHECK(third.seq == 3);
    CHECK(third.outcome == Outcome::permanent);
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
}

TEST_CASE("a malformed frame from the supervisor is exit code 2", "[worker_process]") {
    std::string garbage;
    SECTION("length too large") {
        garbage = std::string("\x7f\xff\xff\xff", 4);
    }
    SECTION("length zero") {
        garbage = std::string("\0\0\0\0", 4);
    }
    SECTION("unknown type") {
        garbage = std::string("\0\0\0\3X{}", 7);
    }
    SECTION("EVENT envelope cut short") {
        garbage = std::string("\0\0\0\5E\0\0\0\1", 9);
    }
    SECTION("EVENT timeout out of range") {
        garbage = std::string("\0\0\0\x11"
                              "E\0\0\0\0\0\0\0\1\x80\0\0\0\0\0\0\0",
                              21);
    }
    SECTION("QUIT with a body") {
        garbage = std::string("\0\0\0\3Q{}", 7);
    }
    SECTION("a frame only the handler process sends") {
        garbage = encode_result(ResultMsg{1, Outcome::success, "", 0, 1, 1, {}});
    }
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    worker.send(garbage);
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitProtocolError);
}

TEST_CASE("closing the channel ends the handler process with exit code 0", "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    worker.close_channel();
    worker.expect_exit_code(kWorkerExitOk);
}

TEST_CASE("a supervisor gone while an event runs is exit code 0, not SIGPIPE", "[worker_process]") {
    Pipe gate;
    Pipe started;
    std::vector<Subscriber> subscribers = standard_subscribers();
    subscribers.push_back(subscriber("holder", {"hold"}, [&](const Event&) {
        write_byte(started.write_end);
        wait_for_eof(gate.read_end);
        return Result::ok();
    }));
    WorkerUnderTest worker(subscribers, [&] {
        gate.close_write();
        started.close_read();
    });
    gate.close_read();
    started.close_write();
    worker.expect_hello();

    worker.send(event_frame(1, "hold"));
    pollfd pfd{started.read_end, POLLIN, 0};
    REQUIRE(poll(&pfd, 1, 10000) == 1);
    // The RESULT of the running event is written to a closed channel: EPIPE, which would be a
    // SIGPIPE death if the process did not ignore the signal.
    worker.close_channel();
    gate.close_write();
    worker.expect_exit_code(kWorkerExitOk);
}

TEST_CASE("dispatch_event runs matching subscribers in order", "[worker_process]") {
    std::vector<std::string> calls;
    std::vector<Subscriber> subscribers;
    subscribers.push_back(subscriber("a", {"order.*"}, [&](const Event&) {
        calls.push_back("a");
        return Result::ok();
    }));
    subscribers.push_back(subscriber("b", {"invoice.*"}, [&](const Event&) {
        calls.push_back("b");
        return Result::ok();
    }));
    subscribers.push_back(subscriber("c", {"*"}, [&](const Event&) {
        calls.push_back("c");
        return Result::retry("", -5);
    }));
    subscribers.push_back(subscriber("d", {"*"}, [&](const Event&) {
        calls.push_back("d");
        return Result::ok();
    }));
    Event event;
    event.event_type = "order.paid";
    const DispatchResult dispatched = dispatch_event(subscribers, event);
    CHECK(calls == std::vector<std::string>{"a", "c"});
    CHECK(dispatched.result.outcome == Outcome::retry);
    CHECK(dispatched.result.error == "subscriber c: failed without an error message");
    CHECK(dispatched.result.retry_after_ms == 0);
    // What ran, in order, up to and including the failure; "d" never ran.
    REQUIRE(dispatched.ran.size() == 2);
    CHECK(dispatched.ran[0].name == "a");
    CHECK(dispatched.ran[0].outcome == Outcome::success);
    CHECK(dispatched.ran[1].name == "c");
    CHECK(dispatched.ran[1].outcome == Outcome::retry);
    CHECK(dispatched.skipped == 0);

    calls.clear();
    subscribers.erase(subscribers.begin() + 2);
    const DispatchResult all = dispatch_event(subscribers, event);
    CHECK(all.result.outcome == Outcome::success);
    CHECK(calls == std::vector<std::string>{"a", "d"});
    REQUIRE(all.ran.size() == 2);
    CHECK(all.ran[1].name == "d");
    CHECK(all.ran[1].outcome == Outcome::success);
}

TEST_CASE("dispatch_event skips the subscribers that already succeeded", "[worker_process]") {
    std::vector<std::string> calls;
    const auto recording = [&](const std::string& name, std::vector<std::string> patterns,
                               Result result) {
        return subscriber(name, std::move(patterns), [&calls, name, result](const Event&) {
            calls.push_back(name);
            return result;
        });
    };
    std::vector<Subscriber> subscribers;
    subscribers.push_back(recording("search", {"order.*"}, Result::ok()));
    subscribers.push_back(recording("mail", {"*.paid"}, Result::permanent("no address")));
    subscribers.push_back(recording("ledger", {"order.paid"}, Result::ok()));
    subscribers.push_back(recording("other", {"invoice.*"}, Result::ok()));
    Event event;
    event.event_type = "order.paid";

    SECTION("the ones done are not run, the rest run in order") {
        const DispatchResult dispatched = dispatch_event(subscribers, event, {"search"});
        CHECK(calls == std::vector<std::string>{"mail"});
        CHECK(dispatched.skipped == 1);
        CHECK(dispatched.result.outcome == Outcome::permanent);
        CHECK(dispatched.result.error == "subscriber mail: no address");
        REQUIRE(dispatched.ran.size() == 1);
        CHECK(dispatched.ran[0].name == "mail");
        CHECK(dispatched.ran[0].outcome == Outcome::permanent);
    }
    SECTION("a failure that already succeeded is passed, and the later ones run") {
        const DispatchResult dispatched = dispatch_event(subscribers, event, {"mail", "search"});
        CHECK(calls == std::vector<std::string>{"ledger"});
        CHECK(dispatched.skipped == 2);
        CHECK(dispatched.result.outcome == Outcome::success);
        REQUIRE(dispatched.ran.size() == 1);
        CHECK(dispatched.ran[0].name == "ledger");
        CHECK(dispatched.ran[0].outcome == Outcome::success);
    }
    SECTION("every matching subscriber done: success without running anything") {
        // "other" and "gone" are in the record too: names that match nothing here change nothing.
        const DispatchResult dispatched =
            dispatch_event(subscribers, event, {"gone", "ledger", "mail", "other", "search"});
        CHECK(calls.empty());
        CHECK(dispatched.skipped == 3);
        CHECK(dispatched.result.outcome == Outcome::success);
        CHECK(dispatched.result.error.empty());
        CHECK(dispatched.ran.empty());
    }
    SECTION("names that only look alike are not skipped") {
        const DispatchResult dispatched =
            dispatch_event(subscribers, event, {"Search", "search ", "mai", "ledger2"});
        CHECK(calls == std::vector<std::string>{"search", "mail"});
        CHECK(dispatched.skipped == 0);
    }
    SECTION("no matching subscriber is still a retry, whatever the record says") {
        event.event_type = "refund.created";
        const DispatchResult dispatched = dispatch_event(subscribers, event, {"search"});
        CHECK(calls.empty());
        CHECK(dispatched.result.outcome == Outcome::retry);
        CHECK(dispatched.result.error ==
              "no subscriber matches event type refund.created in this handler process");
        CHECK(dispatched.ran.empty());
        CHECK(dispatched.skipped == 0);
    }
}

TEST_CASE("dispatch_event compares names as RESULT carried them", "[worker_process]") {
    // The supervisor records the names RESULT carried, which encode_result bounded and made valid
    // UTF-8: a code subscriber with a long or broken name must still be found in the record.
    const std::string long_name(kMaxSubscriberNameBytes + 500, 'n');
    const std::string broken_name = "caf\xc3";
    int runs = 0;
    std::vector<Subscriber> subscribers;
    for (const std::string& name : {long_name, broken_name}) {
        subscribers.push_back(subscriber(name, {"x"}, [&runs](const Event&) {
            ++runs;
            return Result::ok();
        }));
    }
    Event event;
    event.event_type = "x";
    const DispatchResult first = dispatch_event(subscribers, event);
    CHECK(runs == 2);
    REQUIRE(first.ran.size() == 2);
    const std::string frame = encode_result(ResultMsg{1, Outcome::success, "", 0, 0, 0, first.ran});
    const auto carried = decode_result(decode_frame_for_test(frame));
    REQUIRE(carried.ok());
    SubscriberNames recorded;
    for (const SubscriberOutcome& outcome : carried.value().subscribers) {
        recorded.insert(outcome.name);
    }
    CHECK_FALSE(recorded.contains(long_name));
    CHECK_FALSE(recorded.contains(broken_name));

    runs = 0;
    const DispatchResult second = dispatch_event(subscribers, event, recorded);
    CHECK(runs == 0);
    CHECK(second.skipped == 2);
    CHECK(second.result.outcome == Outcome::success);
}

TEST_CASE("parse_subscribers_done reads a JSON array of strings and nothing else",
          "[worker_process]") {
    SECTION("what PostgreSQL's to_json(text[]) prints") {
        const auto names = parse_subscribers_done(R"(["search","mail","caf\u00e9 \"x\"\\"])");
        REQUIRE(names.has_value());
        CHECK(*names == SubscriberNames{"search", "mail", "caf\xc3\xa9 \"x\"\\"});
        CHECK(parse_subscribers_done("[]") == SubscriberNames{});
        CHECK(parse_subscribers_done(" [ \"a\" , \"a\" ]\n") == SubscriberNames{"a"});
        CHECK(parse_subscribers_done(R"j(["handlers.json#2 (exec)"])j") ==
              SubscriberNames{"handlers.json#2 (exec)"});
    }
    SECTION("anything else is refused as a whole") {
        for (const char* text : {"", "null", "not json", "\"search\"", R"({"0": "search"})",
                                 R"(["search", 1])", R"(["search", null])", R"([["search"]])",
                                 R"(["search"] ["mail"])", R"(["search",])", "{search,mail}"}) {
            INFO(text);
            CHECK_FALSE(parse_subscribers_done(text).has_value());
        }
    }
}

TEST_CASE("the handler process skips what an EVENT names as done and reports what ran",
          "[worker_process]") {
    WorkerUnderTest worker(standard_subscribers());
    worker.expect_hello();
    uint64_t seq = 0;
    // "chain.fail" reaches "first" (ok), "second" (retry) and, past it, "third" (permanent).
    const auto run = [&](std::optional<std::string> done) {
        EventDelivery delivery{sample_event("chain.fail", "ob_chain"), std::move(done)};
        worker.send(
            encode_event_frame(++seq, 30000, encode_event_fields(event_fields_of(delivery))));
        const ResultMsg result = worker.receive_result();
        CHECK(result.seq == seq);
        return result;
    };
    const auto ran = [](const ResultMsg& result) {
        std::vector<std::pair<std::string, Outcome>> out;
        for (const SubscriberOutcome& entry : result.subscribers) {
            out.emplace_back(entry.name, entry.outcome);
        }
        return out;
    };
    using Ran = std::vector<std::pair<std::string, Outcome>>;

    const ResultMsg fresh = run(std::nullopt);
    CHECK(fresh.outcome == Outcome::retry);
    CHECK(fresh.error == "subscriber second: second failed");
    CHECK(ran(fresh) == Ran{{"first", Outcome::success}, {"second", Outcome::retry}});

    const ResultMsg after_first = run(R"(["first"])");
    CHECK(after_first.outcome == Outcome::retry);
    CHECK(after_first.error == "subscriber second: second failed");
    CHECK(ran(after_first) == Ran{{"second", Outcome::retry}});

    const ResultMsg after_second = run(R"(["second","first"])");
    CHECK(after_second.outcome == Outcome::permanent);
    CHECK(after_second.error == "subscriber third: third ran");
    CHECK(ran(after_second) == Ran{{"third", Outcome::permanent}});

    const ResultMsg all_done = run(R"(["first","second","third"])");
    CHECK(all_done.outcome == Outcome::success);
    CHECK(all_done.error.empty());
    CHECK(all_done.retry_after_ms == 0);
    CHECK(all_done.subscribers.empty());

    // A list that is not a JSON array of strings counts as nothing done: everything runs again.
    for (const char* malformed : {R"(["first", 2])", "{first}", R"("first")"}) {
        INFO(malformed);
        const ResultMsg result = run(std::string(malformed));
        CHECK(result.outcome == Outcome::retry);
        CHECK(ran(result) == Ran{{"first", Outcome::success}, {"second", Outcome::retry}});
    }

    // A lone success is reported too: the supervisor needs no list then, but it is the same rule.
    worker.send(event_frame(++seq, "ok.created"));
    const ResultMsg ok = worker.receive_result();
    CHECK(ok.outcome == Outcome::success);
    CHECK(ran(ok) == Ran{{"ok", Outcome::success}});

    // An unusable event ran nothing.
    worker.send(encode_event_frame(++seq, 1000, std::string(3, 'x')));
    const ResultMsg bad = worker.receive_result();
    CHECK(bad.outcome == Outcome::permanent);
    CHECK(bad.subscribers.empty());

    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
}

// ---- broker subscribers: many publications in flight -------------------------------------------

namespace {

void write_line(int fd, const std::string& line) {
    // One write per line: lines below PIPE_BUF from several writers never interleave.
    const std::string bytes = line + "\n";
    size_t written = 0;
    while (written < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        written += static_cast<size_t>(n);
    }
}

// A sink for the handler process under test, scripted by the test through a pipe. A thread of
// its own reads the commands and completes publications in whatever order the test says: it only
// queues each outcome and wakes the loop through an eventfd, as a client library's thread does,
// and poll() runs the callbacks on the loop's thread (worker/sink.h). Without a wait_fd the loop
// has to find the outcomes by polling. It reports what it sees, one line each, on another pipe.
//
// Commands: "ok <id>", "retry <id> <error>", "permanent <id> <error>" complete the publication of
// the event <id>; "down" and "up" take the connection away and give it back. While down, publish()
// fails at once, as a real sink waiting to reconnect does.
// Reports: "publish <id> pending=<n> key=<key or -> destination=<d>", "closed".
class ScriptedSink final : public Sink {
  public:
    ScriptedSink(int commands_fd, int reports_fd, bool with_wait_fd, bool starts_down)
        : commands_fd_(commands_fd), reports_fd_(reports_fd), with_wait_fd_(with_wait_fd),
          up_(!starts_down), wake_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
          stop_fd_(eventfd(0, EFD_CLOEXEC)) {
        thread_ = std::thread([this] { read_commands(); });
    }

    ~ScriptedSink() override {
        const uint64_t one = 1;
        static_cast<void>(::write(stop_fd_, &one, sizeof one));
        thread_.join();
        ::close(wake_fd_);
        ::close(stop_fd_);
        write_line(reports_fd_, "closed");
    }

    void publish(const BrokerMessage& message, Done done) override {
        {
            std::lock_guard lock(mutex_);
            // The first publication opens the connection; from then on the sink is connected
            // whenever the broker is up, as a client library that reconnects by itself is.
            used_ = true;
            if (up_) {
                waiting_.emplace(message.id, std::move(done));
                write_line(reports_fd_, "publish " + message.id + " pending=" +
                                            std::to_string(waiting_.size() + ready_.size()) +
                                            " key=" + message.key.value_or("-") +
                                            " destination=" + message.destination);
                return;
            }
        }
        done(Result::retry("scripted: not connected to the test broker"));
    }

    void poll(int timeout_ms) override {
        if (timeout_ms > 0) {
            pollfd pfd{wake_fd_, POLLIN, 0};
            ::poll(&pfd, 1, timeout_ms);
        }
        uint64_t count = 0;
        static_cast<void>(::read(wake_fd_, &count, sizeof count));
        std::vector<std::pair<Done, Result>> ready;
        {
            std::lock_guard lock(mutex_);
            ready.swap(ready_);
        }
        for (auto& [done, result] : ready) {
            done(std::move(result));
        }
    }

    size_t pending() const override {
        std::lock_guard lock(mutex_);
        return waiting_.size() + ready_.size();
    }

    int wait_fd() const override { return with_wait_fd_ ? wake_fd_ : -1; }

    bool connected() const override {
        std::lock_guard lock(mutex_);
        return up_ && used_;
    }

    std::optional<std::string> check(long) override { return std::nullopt; }

  private:
    void read_commands() {
        std::string buffer;
        for (;;) {
            pollfd fds[2] = {{commands_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0) {
                continue;
            }
            if (fds[1].revents != 0) {
                return;
            }
            char chunk[512];
            const ssize_t n = ::read(commands_fd_, chunk, sizeof chunk);
            if (n <= 0) {
                return;
            }
            buffer.append(chunk, static_cast<size_t>(n));
            for (size_t end = buffer.find('\n'); end != std::string::npos;
                 end = buffer.find('\n')) {
                run_command(buffer.substr(0, end));
                buffer.erase(0, end + 1);
            }
        }
    }

    void run_command(const std::string& line) {
        std::istringstream words(line);
        std::string verb, id;
        words >> verb >> id;
        std::string error;
        std::getline(words >> std::ws, error);
        std::lock_guard lock(mutex_);
        if (verb == "down" || verb == "up") {
            up_ = verb == "up";
        } else {
            auto it = waiting_.find(id);
            if (it == waiting_.end()) {
                write_line(reports_fd_, "unknown publication " + id);
                return;
            }
            Result result = verb == "ok"      ? Result::ok()
                            : verb == "retry" ? Result::retry(error)
                                              : Result::permanent(error);
            ready_.emplace_back(std::move(it->second), std::move(result));
            waiting_.erase(it);
        }
        const uint64_t one = 1;
        static_cast<void>(::write(wake_fd_, &one, sizeof one));
    }

    const int commands_fd_;
    const int reports_fd_;
    const bool with_wait_fd_;
    mutable std::mutex mutex_;
    bool up_;
    bool used_ = false;
    std::map<std::string, Done> waiting_;
    std::vector<std::pair<Done, Result>> ready_;
    int wake_fd_;
    int stop_fd_;
    std::thread thread_;
};

// The test's side of a ScriptedSink: commands in, reports out.
class SinkScript {
  public:
    // In the child, before the loop runs: keep only the sink's ends.
    void child_ends() {
        commands_.close_write();
        reports_.close_read();
    }
    // In the test, after the fork: keep only the test's ends.
    void test_ends() {
        commands_.close_read();
        reports_.close_write();
    }

    std::function<std::unique_ptr<Sink>()> factory(bool with_wait_fd, bool starts_down = false) {
        return [commands = commands_.read_end, reports = reports_.write_end, with_wait_fd,
                starts_down] {
            return std::make_unique<ScriptedSink>(commands, reports, with_wait_fd, starts_down);
        };
    }
    int reports_fd() const { return reports_.write_end; }

    void command(const std::string& line) { write_line(commands_.write_end, line); }

    // The next line the child reported; fails the test at the deadline.
    std::string next_report() {
        const auto deadline = std::chrono::steady_clock::now() + kDeadline;
        for (;;) {
            const size_t end = buffer_.find('\n');
            if (end != std::string::npos) {
                std::string line = buffer_.substr(0, end);
                buffer_.erase(0, end + 1);
                return line;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            REQUIRE(left.count() > 0);
            pollfd pfd{reports_.read_end, POLLIN, 0};
            if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) {
                continue;
            }
            char chunk[1024];
            const ssize_t n = ::read(reports_.read_end, chunk, sizeof chunk);
            REQUIRE(n > 0);
            buffer_.append(chunk, static_cast<size_t>(n));
        }
    }

  private:
    Pipe commands_;
    Pipe reports_;
    std::string buffer_;
};

Subscriber broker_subscriber(std::string name, std::vector<std::string> patterns,
                             std::function<std::unique_ptr<Sink>()> make_sink,
                             const std::string& destination = "orders.${eventType}") {
    auto spec = std::make_shared<BrokerSpec>();
    spec->kind = "scripted";
    spec->description = "scripted test broker";
    std::string error;
    std::optional<DestinationTemplate> parsed = DestinationTemplate::parse(destination, error);
    REQUIRE(parsed.has_value());
    spec->message.destination = std::move(*parsed);
    spec->message.body = BodyMode::payload;
    spec->make_sink = std::move(make_sink);
    // The handler process publishes through the sink; calling this would be a bug, and the
    // event's error would say so.
    Subscriber s = subscriber(std::move(name), std::move(patterns), [](const Event&) -> Result {
        throw std::logic_error("the handler of a broker subscriber was called");
    });
    s.broker = std::move(spec);
    return s;
}

// What the handler process sends: RESULTs, and STATUSes in between.
struct Answer {
    std::optional<ResultMsg> result;
    std::optional<StatusMsg> status;
};

Answer receive_answer(WorkerUnderTest& worker) {
    Received received = worker.receive();
    REQUIRE(received.kind == Received::Kind::frame);
    Answer answer;
    if (received.frame.type == MessageType::status) {
        const auto status = decode_status(received.frame);
        INFO(status.error());
        REQUIRE(status.ok());
        answer.status = status.value();
    } else {
        const auto result = decode_result(received.frame);
        INFO(result.error());
        REQUIRE(result.ok());
        answer.result = result.value();
    }
    return answer;
}

StatusMsg receive_status(WorkerUnderTest& worker) {
    Answer answer = receive_answer(worker);
    REQUIRE(answer.status.has_value());
    return *answer.status;
}

ResultMsg receive_result_only(WorkerUnderTest& worker) {
    Answer answer = receive_answer(worker);
    REQUIRE(answer.result.has_value());
    return *answer.result;
}

using Ran = std::vector<std::pair<std::string, Outcome>>;

Ran ran_of(const ResultMsg& result) {
    Ran out;
    for (const SubscriberOutcome& entry : result.subscribers) {
        out.emplace_back(entry.name, entry.outcome);
    }
    return out;
}

std::string pub_event_frame(uint64_t seq, const std::string& type = "pub.x") {
    return event_frame(seq, sample_event(type, "ob_" + std::to_string(seq)));
}

} // namespace

TEST_CASE("broker publications: many in flight, completed out of order, answered in EVENT order",
          "[worker_process][sink]") {
    const bool with_wait_fd = GENERATE(true, false);
    INFO("sink with a wait_fd: " << with_wait_fd);
    SinkScript script;
    std::vector<Subscriber> subscribers;
    subscribers.push_back(broker_subscriber("bus", {"pub.*"}, script.factory(with_wait_fd)));
    WorkerUnderTest worker(subscribers, [&] { script.child_ends(); });
    script.test_ends();
    worker.expect_hello();

    constexpr uint64_t kEvents = 16;
    std::string frames;
    for (uint64_t seq = 1; seq <= kEvents; ++seq) {
        frames += pub_event_frame(seq);
    }
    worker.send(frames);
    // Every event's publication is started before any is complete: the sink holds them all.
    for (uint64_t seq = 1; seq <= kEvents; ++seq) {
        CHECK(script.next_report() == "publish ob_" + std::to_string(seq) +
                                          " pending=" + std::to_string(seq) +
                                          " key=key-1 destination=orders.pub.x");
    }
    // The first publication connected the sink.
    const StatusMsg first = receive_status(worker);
    CHECK(first.sink == "bus");
    CHECK(first.connected);
    CHECK(first.reason == "connected");

    const auto outcome_of = [](uint64_t seq) {
        return seq % 5 == 0 ? Outcome::permanent : seq % 3 == 0 ? Outcome::retry : Outcome::success;
    };
    for (uint64_t seq = kEvents; seq >= 2; --seq) {
        const std::string id = "ob_" + std::to_string(seq);
        switch (outcome_of(seq)) {
        case Outcome::success:
            script.command("ok " + id);
            break;
        case Outcome::retry:
            script.command("retry " + id + " busy " + std::to_string(seq));
            break;
        case Outcome::permanent:
            script.command("permanent " + id + " rejected " + std::to_string(seq));
            break;
        }
    }
    // A connection change after those outcomes: its STATUS is the next frame, so no RESULT left
    // while the oldest event (seq 1) was still publishing, although every younger one was done.
    script.command("down");
    const StatusMsg down = receive_status(worker);
    CHECK_FALSE(down.connected);
    CHECK_FALSE(down.reason.empty());

    script.command("up");
    script.command("ok ob_1");
    std::vector<StatusMsg> statuses;
    for (uint64_t seq = 1; seq <= kEvents;) {
        Answer answer = receive_answer(worker);
        if (answer.status) {
            statuses.push_back(*answer.status);
            continue;
        }
        const ResultMsg& result = *answer.result;
        INFO("seq " << seq);
        CHECK(result.seq == seq);
        CHECK(result.outcome == outcome_of(seq));
        switch (outcome_of(seq)) {
        case Outcome::success:
            CHECK(result.error.empty());
            break;
        case Outcome::retry:
            CHECK(result.error == "subscriber bus: busy " + std::to_string(seq));
            break;
        case Outcome::permanent:
            CHECK(result.error == "subscriber bus: rejected " + std::to_string(seq));
            break;
        }
        CHECK(ran_of(result) == Ran{{"bus", outcome_of(seq)}});
        ++seq;
    }
    // The sink came back; whether its STATUS came before or after the RESULTs depends on when the
    // loop looked, but it comes exactly once.
    if (statuses.empty()) {
        statuses.push_back(receive_status(worker));
    }
    REQUIRE(statuses.size() == 1);
    CHECK(statuses[0].connected);

    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
    // QUIT closes the sink's connection before the process exits.
    CHECK(script.next_report() == "closed");
}

TEST_CASE("broker and synchronous subscribers: synchronous ones run only for the oldest event",
          "[worker_process][sink]") {
    // "audit" runs before the publication of every mix.* event and "after" once it succeeded;
    // pub.* events are published only. Both synchronous subscribers report when they run, and
    // "audit" then waits for a byte on the gate, so that the test can look at what the process
    // sent while a synchronous handler runs.
    SinkScript script;
    Pipe gate;
    const int reports = script.reports_fd();
    std::vector<Subscriber> subscribers;
    subscribers.push_back(subscriber("audit", {"mix.*"}, [&gate, reports](const Event& e) {
        write_line(reports, "audit " + e.id);
        char byte;
        while (::read(gate.read_end, &byte, 1) < 0 && errno == EINTR) {
        }
        return Result::ok();
    }));
    subscribers.push_back(broker_subscriber("bus", {"mix.*", "pub.*"}, script.factory(true)));
    subscribers.push_back(subscriber("after", {"mix.*"}, [reports](const Event& e) {
        write_line(reports, "after " + e.id);
        return Result::ok();
    }));
    WorkerUnderTest worker(subscribers, [&] {
        script.child_ends();
        gate.close_write();
    });
    script.test_ends();
    gate.close_read();
    worker.expect_hello();

    worker.send(pub_event_frame(1, "mix.a") + pub_event_frame(2) + pub_event_frame(3) +
                pub_event_frame(4, "mix.b"));
    CHECK(script.next_report() == "audit ob_1");
    write_byte(gate.write_end);
    // Events 2 and 3 start publishing while event 1 waits for its own: they have no synchronous
    // subscriber before their broker one. Event 4 does, and is not the oldest: it waits.
    CHECK(script.next_report() == "publish ob_1 pending=1 key=key-1 destination=orders.mix.a");
    CHECK(script.next_report() == "publish ob_2 pending=2 key=key-1 destination=orders.pub.x");
    CHECK(script.next_report() == "publish ob_3 pending=3 key=key-1 destination=orders.pub.x");
    CHECK(receive_status(worker).connected);

    script.command("ok ob_3");
    script.command("retry ob_2 later");
    script.command("ok ob_1");
    // Event 1 goes on to "after"; once it is answered, event 4 is the oldest and runs "audit".
    CHECK(script.next_report() == "after ob_1");
    CHECK(script.next_report() == "audit ob_4");
    // "audit" of event 4 is holding the process now: the RESULTs of events 1 to 3 were sent
    // before it started, so that its time limit and a crash in it are charged to event 4 alone.
    const ResultMsg first = receive_result_only(worker);
    CHECK(first.seq == 1);
    CHECK(first.outcome == Outcome::success);
    CHECK(ran_of(first) ==
          Ran{{"audit", Outcome::success}, {"bus", Outcome::success}, {"after", Outcome::success}});
    const ResultMsg second = receive_result_only(worker);
    CHECK(second.seq == 2);
    CHECK(second.outcome == Outcome::retry);
    CHECK(second.error == "subscriber bus: later");
    CHECK(ran_of(second) == Ran{{"bus", Outcome::retry}});
    const ResultMsg third = receive_result_only(worker);
    CHECK(third.seq == 3);
    CHECK(third.outcome == Outcome::success);
    CHECK(ran_of(third) == Ran{{"bus", Outcome::success}});

    write_byte(gate.write_end);
    CHECK(script.next_report() == "publish ob_4 pending=1 key=key-1 destination=orders.mix.b");
    script.command("permanent ob_4 no such stream");
    // The failed publication ends the event: "after" does not run for it.
    const ResultMsg fourth = receive_result_only(worker);
    CHECK(fourth.seq == 4);
    CHECK(fourth.outcome == Outcome::permanent);
    CHECK(fourth.error == "subscriber bus: no such stream");
    CHECK(ran_of(fourth) == Ran{{"audit", Outcome::success}, {"bus", Outcome::permanent}});

    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
    CHECK(script.next_report() == "closed");
}

TEST_CASE("QUIT takes effect once every publication in flight is answered",
          "[worker_process][sink]") {
    SinkScript script;
    std::vector<Subscriber> subscribers;
    subscribers.push_back(broker_subscriber("bus", {"pub.*"}, script.factory(true)));
    WorkerUnderTest worker(subscribers, [&] { script.child_ends(); });
    script.test_ends();
    worker.expect_hello();

    worker.send(pub_event_frame(1) + pub_event_frame(2) + pub_event_frame(3) + encode_quit());
    for (int seq = 1; seq <= 3; ++seq) {
        CHECK_THAT(script.next_report(),
                   Catch::StartsWith("publish ob_" + std::to_string(seq) + " "));
    }
    CHECK(receive_status(worker).connected);
    script.command("ok ob_2");
    script.command("retry ob_3 timed out");
    script.command("ok ob_1");
    const ResultMsg first = receive_result_only(worker);
    CHECK(first.seq == 1);
    CHECK(first.outcome == Outcome::success);
    const ResultMsg second = receive_result_only(worker);
    CHECK(second.seq == 2);
    CHECK(second.outcome == Outcome::success);
    const ResultMsg third = receive_result_only(worker);
    CHECK(third.seq == 3);
    CHECK(third.outcome == Outcome::retry);
    CHECK(third.error == "subscriber bus: timed out");
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
    CHECK(script.next_report() == "closed");
}

TEST_CASE("STATUS reports a sink's connection changes, once each", "[worker_process][sink]") {
    const bool with_wait_fd = GENERATE(true, false);
    INFO("sink with a wait_fd: " << with_wait_fd);
    SinkScript script;
    std::vector<Subscriber> subscribers;
    subscribers.push_back(
        broker_subscriber("bus", {"pub.*"}, script.factory(with_wait_fd, /*starts_down=*/true)));
    WorkerUnderTest worker(subscribers, [&] { script.child_ends(); });
    script.test_ends();
    worker.expect_hello();

    // The first publication finds the broker down: a retryable failure at once, and the first
    // STATUS says why.
    worker.send(pub_event_frame(1));
    const ResultMsg refused = receive_result_only(worker);
    CHECK(refused.seq == 1);
    CHECK(refused.outcome == Outcome::retry);
    CHECK(refused.error == "subscriber bus: scripted: not connected to the test broker");
    const StatusMsg never = receive_status(worker);
    CHECK(never.sink == "bus");
    CHECK_FALSE(never.connected);
    CHECK(never.reason == "scripted: not connected to the test broker");

    // The connection comes back while nothing is in flight: the idle process reports it.
    script.command("up");
    const StatusMsg back = receive_status(worker);
    CHECK(back.connected);
    CHECK(back.reason == "connected");

    worker.send(pub_event_frame(2));
    CHECK_THAT(script.next_report(), Catch::StartsWith("publish ob_2 pending=1"));
    script.command("ok ob_2");
    const ResultMsg published = receive_result_only(worker);
    CHECK(published.seq == 2);
    CHECK(published.outcome == Outcome::success);

    script.command("down");
    const StatusMsg lost = receive_status(worker);
    CHECK_FALSE(lost.connected);
    CHECK(lost.reason == "connection lost");

    // Refused again: no second STATUS for the same state.
    worker.send(pub_event_frame(3));
    const ResultMsg again = receive_result_only(worker);
    CHECK(again.seq == 3);
    CHECK(again.outcome == Outcome::retry);

    script.command("up");
    const StatusMsg reconnected = receive_status(worker);
    CHECK(reconnected.connected);

    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
}

TEST_CASE("a broker subscriber fails for the message it cannot build or the sink it cannot make",
          "[worker_process][sink]") {
    SinkScript script;
    std::vector<Subscriber> subscribers;
    subscribers.push_back(
        broker_subscriber("keyed", {"keyed.*"}, script.factory(true), "orders.${orderingKey}"));
    subscribers.push_back(
        broker_subscriber("broken", {"broken.throws"}, []() -> std::unique_ptr<Sink> {
            throw std::runtime_error("no client library");
        }));
    subscribers.push_back(
        broker_subscriber("empty", {"broken.null"}, [] { return std::unique_ptr<Sink>(); }));
    WorkerUnderTest worker(subscribers, [&] { script.child_ends(); });
    script.test_ends();
    worker.expect_hello();

    // No ordering key for ${orderingKey}: the event will never have one, so this is permanent.
    worker.send(pub_event_frame(1, "keyed.a"));
    const ResultMsg unbuildable = receive_result_only(worker);
    CHECK(unbuildable.outcome == Outcome::permanent);
    CHECK_THAT(unbuildable.error,
               Catch::StartsWith("subscriber keyed: ") && Catch::Contains("orderingKey"));
    CHECK(ran_of(unbuildable) == Ran{{"keyed", Outcome::permanent}});

    // With one, it is the destination and the key (worker/broker_message.h).
    Event ordered = sample_event("keyed.a", "ob_2");
    ordered.ordering_key = "customer-42";
    worker.send(event_frame(2, ordered));
    CHECK(script.next_report() ==
          "publish ob_2 pending=1 key=customer-42 destination=orders.customer-42");
    CHECK(receive_status(worker).connected);
    script.command("ok ob_2");
    CHECK(receive_result_only(worker).outcome == Outcome::success);

    // A subscriber already done is skipped, as any subscriber: nothing is published.
    EventDelivery done{ordered, std::string(R"(["keyed"])")};
    done.event.id = "ob_3";
    worker.send(encode_event_frame(3, 30000, encode_event_fields(event_fields_of(done))));
    const ResultMsg skipped = receive_result_only(worker);
    CHECK(skipped.seq == 3);
    CHECK(skipped.outcome == Outcome::success);
    CHECK(skipped.subscribers.empty());

    worker.send(pub_event_frame(4, "broken.throws"));
    const ResultMsg thrown = receive_result_only(worker);
    CHECK(thrown.outcome == Outcome::retry);
    CHECK(thrown.error == "subscriber broken: cannot create the scripted sink: no client library");
    worker.send(pub_event_frame(5, "broken.null"));
    const ResultMsg null = receive_result_only(worker);
    CHECK(null.outcome == Outcome::retry);
    CHECK(null.error == "subscriber empty: cannot create the scripted sink: no sink returned");

    worker.send(encode_quit());
    CHECK(worker.receive().kind == Received::Kind::eof);
    worker.expect_exit_code(kWorkerExitOk);
    // Nothing was published for event 3.
    CHECK(script.next_report() == "closed");
}
