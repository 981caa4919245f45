// Real processes for black-box tests: the outbox-worker binary, the example application, or the
// test binary itself as a helper child.
//
//     ChildProcess worker(OUTBOX_BINARY, {.args = {"run"},
//                                         .env = {{"DATABASE_URL", db.url()},
//                                                 {"OUTBOX_HTTP_PORT", std::to_string(port)}}});
//     REQUIRE(wait_until([&] { return worker.stderr_text().find("ready") != std::string::npos; },
//                        10s));
//     worker.send_signal(SIGTERM);
//     auto status = worker.wait_exit(30s);
//     REQUIRE(status);
//     CHECK(status->exited_with(0));
//
// stdout and stderr go to files in a temporary directory, readable while the process runs. The
// child starts in a process group of its own, with default signal dispositions, an empty signal
// mask and stdin from /dev/null (or from `stdin_text`), and is SIGKILLed if the thread that
// started it dies. The destructor SIGKILLs the whole process group if anything is left and reaps
// the child, so a failing test leaves nothing behind.
//
// A ChildProcess belongs to the thread that created it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace outbox::test {

struct ExitStatus {
    int code = -1;  // the exit code when the process exited, else -1
    int signal = 0; // the terminating signal when it was killed, else 0
    bool core_dumped = false;

    bool exited() const { return code >= 0; }
    bool exited_with(int expected) const { return code == expected; }
    bool killed_by(int sig) const { return signal == sig; }
    // "exit code 3" or "signal 9 (Killed)", for failure messages.
    std::string describe() const;
};

struct SpawnOptions {
    std::vector<std::string> args; // argv[1..]; argv[0] is the program
    // Changes to the environment: a value sets the variable, std::nullopt removes it.
    std::map<std::string, std::optional<std::string>> env;
    // Start from this process's environment (true) or from an empty one (false; PATH is kept).
    bool inherit_environment = true;
    std::optional<std::string> stdin_text; // stdin contents; /dev/null when unset
    std::string cwd;                       // working directory; the current one when empty
};

class ChildProcess {
  public:
    // Starts `program` (a path, or a name looked up in PATH). A failure to start (no such file,
    // not executable) fails the current test.
    explicit ChildProcess(std::string program, SpawnOptions options = {});
    ~ChildProcess();
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const { return pid_; }

    // False once the process has exited (and was reaped by this object).
    bool is_running();

    // To the process itself, or to its whole process group (its own children too).
    void send_signal(int sig);
    void signal_group(int sig);

    // Waits up to `timeout` for the process to end. nullopt when it is still running.
    std::optional<ExitStatus> wait_exit(std::chrono::milliseconds timeout);
    // The status once the process ended; nullopt while it runs.
    const std::optional<ExitStatus>& status() const { return status_; }

    // Everything written so far.
    std::string stdout_text() const;
    std::string stderr_text() const;
    const std::string& stdout_path() const { return stdout_path_; }
    const std::string& stderr_path() const { return stderr_path_; }

    // The command line and both outputs, for INFO() when a check fails.
    std::string describe() const;

  private:
    bool reap(int flags);

    std::string program_;
    std::vector<std::string> args_;
    std::string dir_;
    std::string stdout_path_;
    std::string stderr_path_;
    pid_t pid_ = -1;
    std::optional<ExitStatus> status_;
};

struct RunResult {
    ExitStatus status;
    std::string out;
    std::string err;
};

// Runs a program to completion and returns its status and output. A program still running after
// `timeout` is killed and fails the current test.
RunResult run_process(const std::string& program, SpawnOptions options,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Polls `condition` every `interval` until it is true (returns true) or `timeout` has passed
// (returns false, after one last check). Tests wait on conditions with deadlines, never on bare
// sleeps.
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::milliseconds interval = std::chrono::milliseconds(20));

// A TCP port of 127.0.0.1 that was free a moment ago (bound to port 0 and released). Another
// process could take it before the caller binds it, which is unlikely on a test machine.
int free_tcp_port();

// The whole content of a file ("" when it cannot be read).
std::string read_text_file(const std::string& path);

// Whether every thread of process `pid` is stopped (SIGSTOP): kill() returns before the group stop
// is complete, and a thread still running could answer one more request. False for a process
// that does not exist.
bool all_threads_stopped(pid_t pid);

// SIGSTOP to `pid` (or to its process group when `group`), then waits until every thread of `pid`
// is stopped; REQUIREs that within 10 s. The fixtures' pause(): a server that keeps its
// connections open and answers nothing.
void stop_and_wait(pid_t pid, bool group = false);

} // namespace outbox::test
