#include "tests/support/process.h"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace outbox::test {

namespace {

std::string find_in_path(const std::string& program) {
    if (program.find('/') != std::string::npos) {
        return program;
    }
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
        if (access(candidate.c_str(), X_OK) == 0) {
            return candidate;
        }
    }
    return program;
}

std::map<std::string, std::string> build_environment(const SpawnOptions& options) {
    std::map<std::string, std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        std::string entry(*e);
        size_t eq = entry.find('=');
        if (eq == std::string::npos) {
            continue;
        }
        std::string name = entry.substr(0, eq);
        // A clean environment still needs PATH to find programs, and the sanitizer settings of a
        // sanitizer build must reach the child too.
        bool keep = options.inherit_environment || name == "PATH" || name == "ASAN_OPTIONS" ||
                    name == "UBSAN_OPTIONS" || name == "LSAN_OPTIONS";
        if (keep) {
            env[name] = entry.substr(eq + 1);
        }
    }
    for (const auto& [name, value] : options.env) {
        if (value) {
            env[name] = *value;
        } else {
            env.erase(name);
        }
    }
    return env;
}

std::string tail(const std::string& text, size_t max) {
    if (text.size() <= max) {
        return text;
    }
    return "[...]" + text.substr(text.size() - max);
}

} // namespace

std::string ExitStatus::describe() const {
    if (exited()) {
        return "exit code " + std::to_string(code);
    }
    if (signal != 0) {
        std::string out = "signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
        if (core_dumped) {
            out += ", core dumped";
        }
        return out;
    }
    return "unknown status";
}

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

ChildProcess::ChildProcess(std::string program, SpawnOptions options)
    : program_(find_in_path(program)), args_(std::move(options.args)) {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/outbox-proc-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
        FAIL("mkdtemp failed: " << std::strerror(errno));
    }
    dir_ = pattern;
    stdout_path_ = dir_ + "/stdout";
    stderr_path_ = dir_ + "/stderr";
    std::string stdin_path = "/dev/null";
    if (options.stdin_text) {
        stdin_path = dir_ + "/stdin";
        std::ofstream(stdin_path, std::ios::binary) << *options.stdin_text;
    }

    // Everything the child needs is prepared before fork(): between fork and exec a child of a
    // multi-threaded process may only make async-signal-safe calls.
    std::vector<std::string> argv_storage;
    argv_storage.push_back(program_);
    argv_storage.insert(argv_storage.end(), args_.begin(), args_.end());
    std::vector<char*> argv;
    for (auto& a : argv_storage) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    std::vector<std::string> env_storage;
    for (const auto& [name, value] : build_environment(options)) {
        env_storage.push_back(name + "=" + value);
    }
    std::vector<char*> envp;
    for (auto& e : env_storage) {
        envp.push_back(e.data());
    }
    envp.push_back(nullptr);
    const char* cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();

    int error_pipe[2];
    if (pipe2(error_pipe, O_CLOEXEC) != 0) {
        FAIL("pipe2 failed: " << std::strerror(errno));
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        FAIL("fork failed: " << std::strerror(errno));
    }
    if (pid == 0) {
        auto die = [&](int err) {
            ssize_t n = write(error_pipe[1], &err, sizeof err);
            (void)n;
            _exit(127);
        };
        setpgid(0, 0);
        // The child must not outlive a test binary that crashed or was interrupted.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127);
        }
        struct sigaction dfl {};
        dfl.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; ++sig) {
            sigaction(sig, &dfl, nullptr);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);

        int in = open(stdin_path.c_str(), O_RDONLY);
        int out = open(stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
        int err = open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
        if (in < 0 || out < 0 || err < 0) {
            die(errno);
        }
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) {
            die(errno);
        }
        // Descriptors of the test process (database connections, other children's pipes) must
        // not leak into the program under test, which may check what it holds.
        if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
            long max = sysconf(_SC_OPEN_MAX);
            for (int fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); ++fd) {
                fcntl(fd, F_SETFD, FD_CLOEXEC);
            }
        }
        if (cwd != nullptr && chdir(cwd) != 0) {
            die(errno);
        }
        execve(argv[0], argv.data(), envp.data());
        die(errno);
    }
    pid_ = pid;
    // setpgid in the parent too, so that the group exists before signal_group() can be called.
    setpgid(pid_, pid_);
    close(error_pipe[1]);
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(error_pipe[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    close(error_pipe[0]);
    if (n == static_cast<ssize_t>(sizeof child_errno)) {
        int status = 0;
        waitpid(pid_, &status, 0);
        pid_ = -1;
        FAIL("cannot start " << program_ << ": " << std::strerror(child_errno));
    }
}

ChildProcess::~ChildProcess() {
    if (pid_ > 0) {
        // Whatever is left of the group (the program's own children included) goes, then the
        // child itself is reaped so that no zombie remains.
        kill(-pid_, SIGKILL);
        if (!status_) {
            kill(pid_, SIGKILL);
            reap(0);
        }
    }
    if (!dir_.empty() && std::getenv("OUTBOX_TEST_KEEP_OUTPUT") == nullptr) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
}

bool ChildProcess::reap(int flags) {
    if (status_ || pid_ <= 0) {
        return true;
    }
    int raw = 0;
    pid_t r;
    do {
        r = waitpid(pid_, &raw, flags);
    } while (r < 0 && errno == EINTR);
    if (r != pid_) {
        return false;
    }
    ExitStatus s;
    if (WIFEXITED(raw)) {
        s.code = WEXITSTATUS(raw);
    } else if (WIFSIGNALED(raw)) {
        s.signal = WTERMSIG(raw);
        s.core_dumped = WCOREDUMP(raw);
    }
    status_ = s;
    return true;
}

bool ChildProcess::is_running() {
    return !reap(WNOHANG);
}

void ChildProcess::send_signal(int sig) {
    if (!status_ && pid_ > 0) {
        kill(pid_, sig);
    }
}

void ChildProcess::signal_group(int sig) {
    if (pid_ > 0) {
        kill(-pid_, sig);
    }
}

std::optional<ExitStatus> ChildProcess::wait_exit(std::chrono::milliseconds timeout) {
    wait_until([&] { return reap(WNOHANG); }, timeout, std::chrono::milliseconds(5));
    return status_;
}

std::string ChildProcess::stdout_text() const {
    return read_text_file(stdout_path_);
}
std::string ChildProcess::stderr_text() const {
    return read_text_file(stderr_path_);
}

std::string ChildProcess::describe() const {
    std::string command = program_;
    for (const auto& a : args_) {
        command += " " + a;
    }
    std::string out = "command: " + command + "\n";
    out += "status: " + (status_ ? status_->describe() : std::string("running")) + "\n";
    out += "stdout:\n" + tail(stdout_text(), 4000) + "\n";
    out += "stderr:\n" + tail(stderr_text(), 4000);
    return out;
}

RunResult run_process(const std::string& program, SpawnOptions options,
                      std::chrono::milliseconds timeout) {
    ChildProcess child(program, std::move(options));
    auto status = child.wait_exit(timeout);
    if (!status) {
        child.signal_group(SIGKILL);
        child.wait_exit(std::chrono::seconds(5));
        FAIL("still running after " << timeout.count() << " ms, killed\n" << child.describe());
    }
    return {*status, child.stdout_text(), child.stderr_text()};
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::milliseconds interval) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
        if (condition()) {
            return true;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            return condition();
        }
        std::this_thread::sleep_for(interval);
    }
}

int free_tcp_port() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        FAIL("socket failed: " << std::strerror(errno));
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        int err = errno;
        close(fd);
        FAIL("cannot find a free port: " << std::strerror(err));
    }
    close(fd);
    return ntohs(addr.sin_port);
}

// Whether every thread of `pid` is in the stopped state: SIGSTOP returns before the group stop is
// complete, and a thread still running could answer one more request.
bool all_threads_stopped(pid_t pid) {
    std::error_code ec;
    std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    bool any = false;
    for (const auto& entry : std::filesystem::directory_iterator(tasks, ec)) {
        std::string stat = read_text_file(entry.path().string() + "/stat");
        size_t paren = stat.rfind(')');
        if (paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] != 'T') {
            return false;
        }
        any = true;
    }
    return any;
}

void stop_and_wait(pid_t pid, bool group) {
    REQUIRE(::kill(group ? -pid : pid, SIGSTOP) == 0);
    REQUIRE(wait_until([&] { return all_threads_stopped(pid); }, std::chrono::seconds(10),
                       std::chrono::milliseconds(1)));
}

} // namespace outbox::test
