#include "worker/exec_handler.h"

#include "common/fd.h"
#include "common/protocol.h"
#include "worker/broker_message.h"

#include <spdlog/spdlog.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>

namespace outbox {

namespace {

using Clock = std::chrono::steady_clock;

// Descriptors of the command's pipes and its pidfd (common/fd.h).
using Fd = UniqueFd;

// The child dup2()s its pipe ends onto 0 and 2; if an end already were 0, 1 or 2 (a handler
// process started with a closed stdio descriptor), dup2 onto itself would keep its close-on-exec
// flag and the command would start without that descriptor. Keeping every end above 2 avoids it.
[[nodiscard]] bool move_above_stdio(int& fd) {
    if (fd > 2) {
        return true;
    }
    int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int saved_errno = errno;
    ::close(fd);
    fd = moved;
    errno = saved_errno;
    return moved >= 0;
}

[[nodiscard]] bool make_pipe(Fd& read_end, Fd& write_end) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        return false;
    }
    bool moved = move_above_stdio(fds[0]);
    moved = move_above_stdio(fds[1]) && moved;
    read_end = Fd(fds[0]);
    write_end = Fd(fds[1]);
    return moved;
}

bool set_nonblocking(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

std::string signal_description(int signal_number) {
    std::string text = "killed by signal " + std::to_string(signal_number);
    if (const char* abbreviation = ::sigabbrev_np(signal_number)) {
        text += " (SIG";
        text += abbreviation;
        text += ")";
    }
    return text;
}

// The handler process's environment, then the configured entries, then the event variables; a
// later entry replaces an earlier one with the same name.
std::vector<std::string> build_environment(const ExecHandlerOptions& options, const Event& event) {
    std::vector<std::string> entries;
    std::unordered_map<std::string, std::size_t> index_by_name;
    auto put = [&](std::string entry) {
        std::string name = entry.substr(0, entry.find('='));
        auto [it, inserted] = index_by_name.try_emplace(std::move(name), entries.size());
        if (inserted) {
            entries.push_back(std::move(entry));
        } else {
            entries[it->second] = std::move(entry);
        }
    };
    for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
        // A trace context the service itself was started with describes the service's start, not
        // the event: the command gets the event's own, or none.
        const std::string_view text = *entry;
        if (text.starts_with("TRACEPARENT=") || text.starts_with("TRACESTATE=")) {
            continue;
        }
        put(*entry);
    }
    for (const auto& [name, value] : options.env) {
        put(name + "=" + value);
    }
    put("OUTBOX_EVENT_ID=" + event.id);
    put("OUTBOX_EVENT_TYPE=" + event.event_type);
    put("OUTBOX_ATTEMPT=" + std::to_string(event.attempt));
    // SPEC 4, "Trace context": the event's W3C trace context, as OpenTelemetry's environment
    // carrier names it.
    if (std::optional<TraceContext> trace = trace_context_of(event.metadata_json)) {
        put("TRACEPARENT=" + trace->traceparent);
        if (trace->tracestate) {
            put("TRACESTATE=" + *trace->tracestate);
        }
    }
    return entries;
}

// The paths execve() tries, in order, like execvp(): the program itself when it contains a
// slash, else each directory of PATH. The list is built before fork() because the child may only
// call async-signal-safe functions, and PATH is taken from the command's own environment so that
// an `env` entry setting PATH decides where the program is found, as it would in a shell.
std::vector<std::string> executable_candidates(const std::string& program,
                                               const std::vector<std::string>& environment) {
    if (program.find('/') != std::string::npos) {
        return {program};
    }
    std::string search_path = "/usr/local/bin:/usr/bin:/bin";
    for (const auto& entry : environment) {
        if (entry.starts_with("PATH=")) {
            search_path = entry.substr(5);
        }
    }
    std::vector<std::string> candidates;
    std::size_t start = 0;
    while (start <= search_path.size()) {
        std::size_t end = search_path.find(':', start);
        if (end == std::string::npos) {
            end = search_path.size();
        }
        // An empty PATH element means the current directory, as POSIX specifies.
        std::string directory = search_path.substr(start, end - start);
        candidates.push_back((directory.empty() ? std::string(".") : directory) + "/" + program);
        start = end + 1;
    }
    return candidates;
}

// What the child reports through the status pipe when it cannot run the command.
struct StartFailure {
    int stage = 0; // 0: preparing the child, 1: execve
    int error = 0; // errno
};

// Everything the child needs, prepared before fork() so the child only makes system calls.
struct ChildPlan {
    pid_t parent = 0;
    int stdin_read = -1;
    int stderr_write = -1;
    int status_write = -1;
    int max_fd = 1024;
    std::vector<const char*> candidates;
    char* const* argv = nullptr;
    char* const* envp = nullptr;
};

[[noreturn]] void report_and_exit(int status_fd, int stage, int error) {
    StartFailure failure{stage, error};
    // Nothing more can be done if this write fails: the parent then sees exit code 127 only.
    ssize_t ignored = ::write(status_fd, &failure, sizeof failure);
    (void)ignored;
    ::_exit(127);
}

void close_descriptors_except(int keep, int max_fd) {
    // close_range is one system call; the loop covers kernels older than 5.9. `keep` is above 2.
    const auto kept = static_cast<unsigned>(keep);
    if ((kept == 3 || ::close_range(3, kept - 1, 0) == 0) && ::close_range(kept + 1, ~0U, 0) == 0) {
        return;
    }
    for (int fd = 3; fd < max_fd; ++fd) {
        if (fd != keep) {
            ::close(fd);
        }
    }
}

// Runs in the child between fork() and execve(): async-signal-safe calls only, because the
// parent may have had other threads (a test binary does) whose locks were copied mid-operation.
[[noreturn]] void exec_child(const ChildPlan& plan) {
    // Its own process group, so that a timeout can kill the command together with whatever it
    // started; and SIGKILL when the handler process dies, so that no command outlives it. The
    // getppid() check closes the race in which the parent died before prctl() took effect.
    if (::setpgid(0, 0) != 0) {
        report_and_exit(plan.status_write, 0, errno);
    }
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        report_and_exit(plan.status_write, 0, errno);
    }
    if (::getppid() != plan.parent) {
        ::_exit(127);
    }

    // Ignored signals and the signal mask survive execve(); the command must start with the
    // defaults whatever the handler process had set up for itself (SIGPIPE ignored, say).
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    for (int signal_number = 1; signal_number < NSIG; ++signal_number) {
        ::sigaction(signal_number, &default_action, nullptr);
    }
    sigset_t empty_mask;
    ::sigemptyset(&empty_mask);
    ::sigprocmask(SIG_SETMASK, &empty_mask, nullptr);

    // stdout goes to the handler process's stderr (the log) and must be set up before fd 2 is
    // replaced by the capture pipe. A handler process without a stderr gives the command
    // /dev/null instead, since a command writing to a closed stdout could fail for no reason.
    if (::dup2(2, 1) < 0) {
        int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null_fd < 0 || ::dup2(null_fd, 1) < 0) {
            report_and_exit(plan.status_write, 0, errno);
        }
    }
    if (::dup2(plan.stdin_read, 0) < 0 || ::dup2(plan.stderr_write, 2) < 0) {
        report_and_exit(plan.status_write, 0, errno);
    }
    // The status pipe is close-on-exec, so it is kept here and closes by itself on success.
    close_descriptors_except(plan.status_write, plan.max_fd);

    // The search rules of execvp(): EACCES from one directory is remembered but does not stop the
    // search; an error other than "not here" (ENOEXEC, ENOMEM, ...) does.
    int error = ENOENT;
    bool saw_permission_denied = false;
    for (const char* candidate : plan.candidates) {
        ::execve(candidate, plan.argv, plan.envp);
        error = errno;
        if (error == EACCES) {
            saw_permission_denied = true;
        } else if (error != ENOENT && error != ENOTDIR) {
            break;
        }
    }
    if (saw_permission_denied && (error == ENOENT || error == ENOTDIR)) {
        error = EACCES;
    }
    report_and_exit(plan.status_write, 1, error);
}

int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

// Reaps `pid`, retrying on EINTR; the wait status, or -errno. The child is always our own, so
// waitpid cannot block for long once it has exited or been sent SIGKILL.
int reap(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            return -errno;
        }
    }
    return status;
}

// Has the child exited? Asked without reaping it (WNOWAIT), because its pid must stay reserved
// until its process group has been killed: a reaped pid could be reused, and kill(-pid) would then
// hit a stranger's process group.
bool child_has_exited(pid_t pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid == pid;
}

// Keeps the last bytes of a stream without letting the buffer grow with it.
class TailBuffer {
  public:
    explicit TailBuffer(std::size_t limit) : limit_(limit) {}
    void append(const char* data, std::size_t size) {
        bytes_.append(data, size);
        if (bytes_.size() > 2 * limit_) {
            bytes_.erase(0, bytes_.size() - limit_);
        }
    }
    std::string_view tail() const {
        std::string_view view(bytes_);
        return view.size() > limit_ ? view.substr(view.size() - limit_) : view;
    }

  private:
    std::size_t limit_;
    std::string bytes_;
};

std::string with_tail(std::string message, const TailBuffer& stderr_tail) {
    std::string tail = error_text_from_output(stderr_tail.tail());
    if (!tail.empty()) {
        message += ": ";
        message += tail;
    }
    return message;
}

std::string start_failure_message(const std::string& program, const StartFailure& failure) {
    if (failure.stage == 0) {
        return "cannot start \"" + program + "\": " + std::strerror(failure.error);
    }
    if (failure.error == ENOENT && program.find('/') == std::string::npos) {
        return "cannot execute \"" + program + "\": not found in PATH";
    }
    return "cannot execute \"" + program + "\": " + std::strerror(failure.error);
}

} // namespace

Result run_exec_handler(const ExecHandlerOptions& options, const Event& event) {
    if (options.command.empty() || options.command.front().empty()) {
        return Result::permanent("exec handler without a command");
    }
    const auto deadline = Clock::now() + std::chrono::milliseconds(options.timeout_ms);
    const std::string& program = options.command.front();

    std::vector<std::string> environment = build_environment(options, event);
    std::vector<std::string> candidates = executable_candidates(program, environment);
    std::vector<char*> argv;
    for (const auto& argument : options.command) {
        argv.push_back(const_cast<char*>(argument.c_str()));
    }
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (const auto& entry : environment) {
        envp.push_back(const_cast<char*>(entry.c_str()));
    }
    envp.push_back(nullptr);

    Fd stdin_read, stdin_write, stderr_read, stderr_write, status_read, status_write;
    if (!make_pipe(stdin_read, stdin_write) || !make_pipe(stderr_read, stderr_write) ||
        !make_pipe(status_read, status_write)) {
        return Result::retry(std::string("exec handler cannot create a pipe: ") +
                             std::strerror(errno));
    }

    ChildPlan plan;
    plan.parent = ::getpid();
    plan.stdin_read = stdin_read.get();
    plan.stderr_write = stderr_write.get();
    plan.status_write = status_write.get();
    rlimit files{};
    if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
        plan.max_fd = static_cast<int>(std::min<rlim_t>(files.rlim_cur, 1 << 20));
    }
    for (const auto& candidate : candidates) {
        plan.candidates.push_back(candidate.c_str());
    }
    plan.argv = argv.data();
    plan.envp = envp.data();

    // _Fork, not fork: fork() runs the pthread_atfork handlers inherited from the supervisor's
    // libraries, and libuv's child handler closes and re-creates its signal-lock pipe by
    // descriptor number, which in this process are the pipes just made for the command.
    const pid_t pid = ::_Fork();
    if (pid < 0) {
        return Result::retry(std::string("exec handler cannot fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
        exec_child(plan);
    }

    stdin_read.reset();
    stderr_write.reset();
    status_write.reset();

    // A pidfd makes the child's exit one more descriptor to poll. Without one (a kernel older than
    // 5.3) the loop wakes every few milliseconds to ask waitid() instead.
    Fd pidfd(open_pidfd(pid));
    constexpr int kFallbackSliceMs = 10;

    const std::string& input = event.json();
    std::size_t written = 0;
    if (input.empty() || !set_nonblocking(stdin_write.get())) {
        // Without a non-blocking stdin the loop could block in write() past the deadline, so the
        // command gets an empty stdin instead; set_nonblocking cannot fail on a fresh pipe anyway.
        stdin_write.reset();
    }
    if (!set_nonblocking(stderr_read.get())) {
        stderr_read.reset();
    }
    TailBuffer stderr_tail(kExecStderrTailBytes);
    StartFailure start_failure;
    bool start_failed = false;
    ScopedSigpipeBlock sigpipe_block;
    char buffer[65536];

    auto read_stderr = [&] {
        for (;;) {
            ssize_t n = ::read(stderr_read.get(), buffer, sizeof buffer);
            if (n > 0) {
                stderr_tail.append(buffer, static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n == 0 || errno != EAGAIN) {
                stderr_read.reset();
            }
            return;
        }
    };
    auto read_status = [&] {
        ssize_t n;
        do {
            n = ::read(status_read.get(), &start_failure, sizeof start_failure);
        } while (n < 0 && errno == EINTR);
        start_failed = n == static_cast<ssize_t>(sizeof start_failure);
        status_read.reset();
    };

    bool exited = false;
    bool timed_out = false;
    while (!exited) {
        auto remaining = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        if (remaining.count() <= 0) {
            timed_out = true;
            break;
        }
        int wait_ms = static_cast<int>(std::min<long long>(remaining.count(), 1 << 30));
        if (!pidfd.is_open()) {
            wait_ms = std::min(wait_ms, kFallbackSliceMs);
        }

        pollfd fds[4];
        nfds_t count = 0;
        int stdin_slot = -1, stderr_slot = -1, status_slot = -1, pid_slot = -1;
        if (stdin_write.is_open()) {
            stdin_slot = static_cast<int>(count);
            fds[count++] = {stdin_write.get(), POLLOUT, 0};
        }
        if (stderr_read.is_open()) {
            stderr_slot = static_cast<int>(count);
            fds[count++] = {stderr_read.get(), POLLIN, 0};
        }
        if (status_read.is_open()) {
            status_slot = static_cast<int>(count);
            fds[count++] = {status_read.get(), POLLIN, 0};
        }
        if (pidfd.is_open()) {
            pid_slot = static_cast<int>(count);
            fds[count++] = {pidfd.get(), POLLIN, 0};
        }
        int ready = ::poll(fds, count, wait_ms);
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            int error = errno;
            ::kill(-pid, SIGKILL);
            reap(pid);
            return Result::retry(std::string("exec handler cannot poll: ") + std::strerror(error));
        }

        if (stdin_slot >= 0 && fds[stdin_slot].revents != 0) {
            std::size_t chunk = std::min(input.size() - written, sizeof buffer);
            ssize_t n = ::write(stdin_write.get(), input.data() + written, chunk);
            if (n > 0) {
                written += static_cast<std::size_t>(n);
                if (written == input.size()) {
                    stdin_write.reset(); // EOF tells the command the event is complete
                }
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                // EPIPE: the command closed its stdin without reading everything. That is its
                // choice; its exit status decides the outcome.
                stdin_write.reset();
            }
        }
        if (stderr_slot >= 0 && fds[stderr_slot].revents != 0) {
            read_stderr();
        }
        if (status_slot >= 0 && fds[status_slot].revents != 0) {
            read_status();
        }
        exited = pid_slot >= 0 ? (fds[pid_slot].revents & POLLIN) != 0 : child_has_exited(pid);
    }

    // The command has exited (but is not reaped yet, so its pid and process group id cannot be
    // reused) or has run out of time. Either way nothing of its process group may stay behind.
    ::kill(-pid, SIGKILL);
    const int status = reap(pid);

    if (timed_out) {
        // For the log line only: the error path makes the text safe in encode_result.
        std::string tail = bounded_error(error_text_from_output(stderr_tail.tail()));
        if (!tail.empty()) {
            spdlog::warn("exec handler \"{}\" timed out; the end of its stderr: {}", program, tail);
        }
        return Result::retry("timed out after " + std::to_string(options.timeout_ms) + " ms");
    }
    // Output written just before the exit is still in the pipe; the group is dead, so the drain
    // ends at EOF or, if some descendant escaped the group with the pipe open, at EAGAIN.
    if (stderr_read.is_open()) {
        read_stderr();
    }
    if (status_read.is_open()) {
        // The status pipe's only writer was the child, which is gone: this read cannot block.
        read_status();
    }

    if (start_failed) {
        return Result::retry(start_failure_message(program, start_failure));
    }
    if (status < 0) {
        return Result::retry(std::string("exec handler cannot reap its command: ") +
                             std::strerror(-status));
    }
    if (WIFEXITED(status)) {
        const int code = WEXITSTATUS(status);
        if (code == 0) {
            return Result::ok();
        }
        std::string message = with_tail("exit code " + std::to_string(code), stderr_tail);
        if (code == kExecPermanentExitCode) {
            return Result::permanent(std::move(message));
        }
        return Result::retry(std::move(message));
    }
    if (WIFSIGNALED(status)) {
        return Result::retry(with_tail(signal_description(WTERMSIG(status)), stderr_tail));
    }
    return Result::retry("exec handler: unexpected wait status " + std::to_string(status));
}

Handler make_exec_handler(ExecHandlerOptions options) {
    return [options = std::move(options)](const Event& event) {
        return run_exec_handler(options, event);
    };
}

std::string error_text_from_output(std::string_view bytes) {
    std::size_t begin = 0;
    // A tail cut out of a longer stream may start inside a multi-byte sequence: drop those bytes
    // rather than let them become replacement characters later.
    while (begin < bytes.size() && begin < 3 &&
           (static_cast<unsigned char>(bytes[begin]) & 0xC0) == 0x80) {
        ++begin;
    }
    const auto is_space = [](char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
    };
    while (begin < bytes.size() && is_space(bytes[begin])) {
        ++begin;
    }
    std::size_t end = bytes.size();
    while (end > begin && is_space(bytes[end - 1])) {
        --end;
    }
    return std::string(bytes.substr(begin, end - begin));
}

ScopedSigpipeBlock::ScopedSigpipeBlock() {
    sigset_t sigpipe_only;
    ::sigemptyset(&sigpipe_only);
    ::sigaddset(&sigpipe_only, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &sigpipe_only, &previous_mask_);
    sigset_t pending;
    ::sigemptyset(&pending);
    ::sigpending(&pending);
    was_pending_ = ::sigismember(&pending, SIGPIPE) == 1;
}

ScopedSigpipeBlock::~ScopedSigpipeBlock() {
    // A SIGPIPE pending from before belongs to someone else and stays pending. One raised by our
    // own writes is taken off the queue before the old mask would deliver it.
    if (!was_pending_) {
        sigset_t sigpipe_only;
        ::sigemptyset(&sigpipe_only);
        ::sigaddset(&sigpipe_only, SIGPIPE);
        const timespec no_wait{};
        while (::sigtimedwait(&sigpipe_only, nullptr, &no_wait) == SIGPIPE) {
        }
    }
    ::pthread_sigmask(SIG_SETMASK, &previous_mask_, nullptr);
}

} // namespace outbox
