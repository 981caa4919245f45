// The exec handler against real commands (/bin/sh and coreutils): outcomes, stdin, environment,
// stderr tail, timeouts, and that no process of the command outlives a call.
#include "common/protocol.h"
#include "worker/exec_handler.h"

#include <catch2/catch.hpp>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

outbox::Event make_event(std::string payload_json = R"({"sku":"A-1"})") {
    outbox::Event event;
    event.id = "ob_1";
    event.event_log_id = "el_1";
    event.event_key = "order-1";
    event.event_type = "order.created";
    event.tenant_id = "tenant-a";
    event.payload_json = std::move(payload_json);
    event.created_at = "2024-05-01T12:00:00.000000Z";
    event.attempt = 3;
    return event;
}

outbox::Result run(std::vector<std::string> command, long timeout_ms = 10000,
                   std::vector<std::pair<std::string, std::string>> env = {},
                   const outbox::Event& event = make_event()) {
    outbox::ExecHandlerOptions options;
    options.command = std::move(command);
    options.env = std::move(env);
    options.timeout_ms = timeout_ms;
    return outbox::run_exec_handler(options, event);
}

// A private directory for files the commands write, removed with everything in it.
class TempDir {
  public:
    TempDir() {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "exec-handler-test-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    std::string file(const std::string& name) const { return (path_ / name).string(); }

  private:
    std::filesystem::path path_;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream content;
    content << in.rdbuf();
    return content.str();
}

// Polls `condition` until it holds or `limit` passes; the result of the last evaluation.
template <typename Condition>
bool wait_for(Condition condition, std::chrono::milliseconds limit = 5000ms) {
    const auto deadline = Clock::now() + limit;
    while (!condition()) {
        if (Clock::now() >= deadline) {
            return condition();
        }
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

bool process_gone(pid_t pid) {
    return ::kill(pid, 0) == -1 && errno == ESRCH;
}

// Whether any process of group `pgid` is still alive. Zombies do not count: a descendant killed
// with its group is reparented to init, and when init reaps it is none of the handler's business
// (some container inits take seconds).
bool process_group_alive(pid_t pgid) {
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may contain anything, so the
        // fields are read after its last parenthesis.
        const std::string stat = read_file(entry.path().string() + "/stat");
        const auto close = stat.rfind(')');
        if (close == std::string::npos) {
            continue; // the process ended while the directory was being listed
        }
        std::istringstream fields(stat.substr(close + 1));
        char state = 0;
        long ppid = 0, pgrp = 0;
        if (fields >> state >> ppid >> pgrp && pgrp == pgid && state != 'Z' && state != 'X') {
            return true;
        }
    }
    return false;
}

pid_t read_pid(const std::string& path) {
    const std::string text = read_file(path);
    REQUIRE_FALSE(text.empty());
    return static_cast<pid_t>(std::stol(text));
}

} // namespace

TEST_CASE("exec: exit 0 is success", "[exec_handler]") {
    const outbox::Result result = run({"true"});
    CHECK(result.outcome == outbox::Outcome::success);
    CHECK(result.error.empty());
}

TEST_CASE("exec: exit 65 is a permanent failure carrying the stderr tail", "[exec_handler]") {
    const outbox::Result result = run({"sh", "-c", "echo 'bad payload' >&2; exit 65"});
    CHECK(result.outcome == outbox::Outcome::permanent);
    CHECK(result.error == "exit code 65: bad payload");
}

TEST_CASE("exec: another exit code is retryable with the stderr tail", "[exec_handler]") {
    const outbox::Result result =
        run({"sh", "-c", "echo 'first line' >&2; echo 'upstream down' >&2; exit 3"});
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "exit code 3: first line\nupstream down");
    CHECK(result.retry_after_ms == 0);
}

TEST_CASE("exec: an exit code without stderr output is named alone", "[exec_handler]") {
    const outbox::Result result = run({"sh", "-c", "exit 7"});
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "exit code 7");
}

TEST_CASE("exec: only the last 2 KiB of a long stderr are kept", "[exec_handler]") {
    const outbox::Result result =
        run({"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo ' END' >&2; exit 1"});
    REQUIRE(result.outcome == outbox::Outcome::retry);
    REQUIRE(result.error.starts_with("exit code 1: xxx"));
    CHECK(result.error.ends_with("xxx END"));
    CHECK(result.error.size() <=
          std::string("exit code 1: ").size() + outbox::kExecStderrTailBytes);
}

TEST_CASE("exec: a command killed by a signal is retryable and names the signal",
          "[exec_handler]") {
    const outbox::Result result = run({"sh", "-c", "echo 'about to crash' >&2; kill -SEGV $$"});
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "killed by signal 11 (SIGSEGV): about to crash");
}

TEST_CASE("exec: a hanging command times out promptly and leaves no process", "[exec_handler]") {
    TempDir dir;
    const std::string pid_file = dir.file("pid");
    // The shell, and a background sleep in its process group, both outlive the timeout.
    const auto started = Clock::now();
    const outbox::Result result =
        run({"sh", "-c", "sleep 30 & echo $$ > \"$1\"; wait", "sh", pid_file}, 300);
    const auto elapsed = Clock::now() - started;

    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "timed out after 300 ms");
    CHECK(elapsed >= 300ms);
    CHECK(elapsed < 2000ms);

    REQUIRE(wait_for([&] { return !read_file(pid_file).empty(); }));
    const pid_t pid = read_pid(pid_file);
    CHECK(process_gone(pid)); // reaped by the handler, not just killed
    CHECK(wait_for([&] { return !process_group_alive(pid); }));
}

TEST_CASE("exec: background processes do not outlive a successful command", "[exec_handler]") {
    TempDir dir;
    const std::string pid_file = dir.file("pid");
    const outbox::Result result =
        run({"sh", "-c", "sleep 30 & echo $$ > \"$1\"; exit 0", "sh", pid_file});
    CHECK(result.outcome == outbox::Outcome::success);
    const pid_t pid = read_pid(pid_file);
    CHECK(process_gone(pid));
    CHECK(wait_for([&] { return !process_group_alive(pid); }));
}

TEST_CASE("exec: the event JSON arrives on stdin, complete", "[exec_handler]") {
    TempDir dir;
    const std::string out = dir.file("stdin");
    const outbox::Event event =
        make_event(R"({"sku": "A-1", "qty": 2, "id": 12345678901234567890})");
    const outbox::Result result = run({"sh", "-c", "cat > \"$1\"", "sh", out}, 10000, {}, event);
    REQUIRE(result.outcome == outbox::Outcome::success);
    // SPEC 2's object, fields in order, the payload verbatim (an integer no double holds).
    CHECK(read_file(out) ==
          R"({"id":"ob_1","eventLogId":"el_1","eventKey":"order-1","tenantId":"tenant-a",)"
          R"("projectId":null,"eventType":"order.created",)"
          R"("payload":{"sku": "A-1", "qty": 2, "id": 12345678901234567890},"metadata":null,)"
          R"("correlationId":null,"createdAt":"2024-05-01T12:00:00.000000Z","attempt":3})");
    CHECK(read_file(out) == event.json());
}

TEST_CASE("exec: a 1 MiB event goes through stdin", "[exec_handler]") {
    TempDir dir;
    const std::string out = dir.file("stdin");
    const outbox::Event event = make_event("\"" + std::string(1024 * 1024, 'p') + "\"");
    const outbox::Result result = run({"sh", "-c", "cat > \"$1\"", "sh", out}, 10000, {}, event);
    REQUIRE(result.outcome == outbox::Outcome::success);
    CHECK(read_file(out).size() == event.json().size());
}

TEST_CASE("exec: a payload nested 100,000 deep reaches the command verbatim", "[exec_handler]") {
    // Nothing in the handler process parses the payload, so no nesting limit applies to it: the
    // command gets the text and decides for itself.
    TempDir dir;
    const std::string out = dir.file("stdin");
    const std::string payload = std::string(100000, '[') + std::string(100000, ']');
    const outbox::Event event = make_event(payload);
    const outbox::Result result = run({"sh", "-c", "cat > \"$1\"", "sh", out}, 10000, {}, event);
    REQUIRE(result.outcome == outbox::Outcome::success);
    const std::string received = read_file(out);
    CHECK(received == event.json());
    CHECK(received.find(",\"payload\":" + payload + ",\"metadata\":null,") != std::string::npos);
}

TEST_CASE("exec: a command that ignores a 1 MiB stdin does not deadlock", "[exec_handler]") {
    const outbox::Event event = make_event("\"" + std::string(1024 * 1024, 'p') + "\"");
    const auto started = Clock::now();
    SECTION("it exits at once") {
        const outbox::Result result = run({"sh", "-c", "exit 0"}, 5000, {}, event);
        CHECK(result.outcome == outbox::Outcome::success);
    }
    SECTION("it closes stdin and keeps working") {
        const outbox::Result result =
            run({"sh", "-c", "exec 0<&-; echo 'no input wanted' >&2; exit 4"}, 5000, {}, event);
        CHECK(result.outcome == outbox::Outcome::retry);
        CHECK(result.error == "exit code 4: no input wanted");
    }
    CHECK(Clock::now() - started < 3000ms);
}

TEST_CASE("exec: the environment is inherited, extended and carries the event", "[exec_handler]") {
    TempDir dir;
    const std::string out = dir.file("env");
    REQUIRE(::setenv("EXEC_HANDLER_TEST_INHERITED", "from-parent", 1) == 0);
    const outbox::Result result =
        run({"sh", "-c",
             "printf '%s|%s|%s|%s|%s' \"$EXEC_HANDLER_TEST_INHERITED\" \"$GREETING\" "
             "\"$OUTBOX_EVENT_ID\" \"$OUTBOX_EVENT_TYPE\" \"$OUTBOX_ATTEMPT\" > \"$1\"",
             "sh", out},
            10000, {{"GREETING", "hello world"}, {"EXEC_HANDLER_TEST_INHERITED", "overridden"}});
    ::unsetenv("EXEC_HANDLER_TEST_INHERITED");
    REQUIRE(result.outcome == outbox::Outcome::success);
    CHECK(read_file(out) == "overridden|hello world|ob_1|order.created|3");
}

TEST_CASE("exec: the event's trace context arrives as TRACEPARENT and TRACESTATE",
          "[exec_handler][trace]") {
    TempDir dir;
    const std::string out = dir.file("trace");
    const std::vector<std::string> command = {
        "sh", "-c", "printf '%s|%s' \"${TRACEPARENT-unset}\" \"${TRACESTATE-unset}\" > \"$1\"",
        "sh", out};
    // The service's own trace context is not the event's: it never reaches the command.
    REQUIRE(::setenv("TRACEPARENT", "00-11111111111111111111111111111111-2222222222222222-01", 1) ==
            0);
    outbox::Event event = make_event();
    event.metadata_json =
        R"({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                              "tracestate": "congo=t61rcWkgMzE"})";
    REQUIRE(run(command, 10000, {}, event).outcome == outbox::Outcome::success);
    CHECK(read_file(out) ==
          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01|congo=t61rcWkgMzE");

    event.metadata_json = R"({"traceparent": "not a traceparent"})";
    REQUIRE(run(command, 10000, {}, event).outcome == outbox::Outcome::success);
    ::unsetenv("TRACEPARENT");
    CHECK(read_file(out) == "unset|unset");
}

TEST_CASE("exec: the command's stdout goes to the handler process's stderr", "[exec_handler]") {
    TempDir dir;
    const std::string captured = dir.file("stderr");
    const int saved_stderr = ::dup(2);
    REQUIRE(saved_stderr >= 0);
    const int file = ::open(captured.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(file >= 0);
    ::dup2(file, 2);
    ::close(file);
    const outbox::Result result = run({"sh", "-c", "echo 'progress report'; exit 2"});
    ::dup2(saved_stderr, 2);
    ::close(saved_stderr);

    CHECK(result.error == "exit code 2"); // stdout is not part of the error
    CHECK(read_file(captured) == "progress report\n");
}

TEST_CASE("exec: a command that cannot be executed is a clear retryable failure",
          "[exec_handler]") {
    SECTION("not in PATH") {
        const outbox::Result result = run({"no-such-command-for-outbox-tests"});
        CHECK(result.outcome == outbox::Outcome::retry);
        CHECK(result.error ==
              "cannot execute \"no-such-command-for-outbox-tests\": not found in PATH");
    }
    SECTION("no such file") {
        const outbox::Result result = run({"/nonexistent/outbox/handler"});
        CHECK(result.outcome == outbox::Outcome::retry);
        CHECK(result.error ==
              "cannot execute \"/nonexistent/outbox/handler\": No such file or directory");
    }
    SECTION("not executable") {
        TempDir dir;
        const std::string script = dir.file("script.sh");
        std::ofstream(script) << "#!/bin/sh\nexit 0\n";
        const outbox::Result result = run({script});
        CHECK(result.outcome == outbox::Outcome::retry);
        CHECK(result.error == "cannot execute \"" + script + "\": Permission denied");
    }
}

TEST_CASE("exec: the child does not inherit the handler process's descriptors", "[exec_handler]") {
    TempDir dir;
    const std::string out = dir.file("fds");
    // A descriptor without close-on-exec, as a careless library might leave behind.
    const int leaked = ::open("/dev/null", O_RDONLY);
    REQUIRE(leaked > 2);
    const outbox::Result result = run({"sh", "-c", "ls /proc/self/fd > \"$1\"", "sh", out});
    ::close(leaked);
    REQUIRE(result.outcome == outbox::Outcome::success);
    // ls lists 0, 1 and 2 and the descriptor it reads the directory through; a fifth entry
    // would be the inherited one.
    std::istringstream listing(read_file(out));
    int count = 0;
    for (std::string line; std::getline(listing, line);) {
        ++count;
    }
    CHECK(count <= 4);
}

TEST_CASE("exec: the handler process keeps working after many runs", "[exec_handler]") {
    // Descriptor or child leaks would show up as a growing /proc/self/fd or lingering children.
    auto count_fds = [] {
        return std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                             std::filesystem::directory_iterator());
    };
    const auto before = count_fds();
    for (int i = 0; i < 20; ++i) {
        REQUIRE(run({"sh", "-c", "cat >/dev/null; exit 1"}).outcome == outbox::Outcome::retry);
    }
    CHECK(count_fds() == before);
    // No child of ours is left, zombie or not.
    const pid_t waited = ::waitpid(-1, nullptr, WNOHANG);
    const int wait_error = errno;
    CHECK(waited == -1);
    CHECK(wait_error == ECHILD);
}

TEST_CASE("exec: error_text_from_output trims, and leaves sanitising to the RESULT encoder",
          "[exec_handler]") {
    CHECK(outbox::error_text_from_output("  plain text \n") == "plain text");
    CHECK(outbox::error_text_from_output("caf\xC3\xA9") == "caf\xC3\xA9");
    // A multi-byte character cut at the front of a tail is dropped, not replaced.
    CHECK(outbox::error_text_from_output("\xA9 rest") == "rest");
    CHECK(outbox::error_text_from_output("\x82\xAC\xA9\x80x") == "\x80x"); // at most 3 dropped
    // Anything else stays as it came: encode_result replaces it, once.
    CHECK(outbox::error_text_from_output(std::string("a\0b", 3)) == std::string("a\0b", 3));
    CHECK(outbox::error_text_from_output("x\xFFy") == "x\xFFy");
    CHECK(outbox::error_text_from_output("") == "");
    CHECK(outbox::error_text_from_output(" \n\t") == "");
}

TEST_CASE("exec: a stderr that is not UTF-8 reaches the supervisor made safe, once",
          "[exec_handler]") {
    const outbox::Result result =
        run({"sh", "-c", "printf 'bad \\377 byte\\n' >&2; exit 3"}, 10000);
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK_THAT(result.error, Catch::EndsWith("bad \xFF byte"));
    outbox::ResultMsg message;
    message.outcome = result.outcome;
    message.error = result.error;
    const std::string frame = outbox::encode_result(message);
    outbox::FrameDecoder decoder;
    decoder.feed(frame.data(), frame.size());
    outbox::FrameDecoder::Next next = decoder.next();
    REQUIRE(next.status == outbox::FrameDecoder::Status::frame);
    const auto received = outbox::decode_result(next.frame);
    REQUIRE(received.ok());
    CHECK_THAT(received.value().error, Catch::EndsWith("bad \xEF\xBF\xBD byte"));
}
