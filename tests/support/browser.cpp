#include "tests/support/browser.h"

#include "tests/support/process.h"

#include <catch2/catch.hpp>
#include <cjson/cJSON.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <pthread.h>
#include <thread>

namespace outbox::test {

namespace {

using Clock = std::chrono::steady_clock;

struct JsonDeleter {
    void operator()(cJSON* json) const { cJSON_Delete(json); }
};
using JsonPtr = std::unique_ptr<cJSON, JsonDeleter>;

std::string print_json(const cJSON* json) {
    if (json == nullptr) {
        return "null";
    }
    char* text = cJSON_PrintUnformatted(json);
    std::string out = text ? text : "null";
    cJSON_free(text);
    return out;
}

std::string string_field(const cJSON* object, const char* name) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, name);
    return cJSON_IsString(item) && item->valuestring ? item->valuestring : "";
}

// Writes everything, or returns false (errno set). A browser that died must not kill the test
// with SIGPIPE: the signal is blocked on this thread while writing, and one raised by the write
// is consumed before it is unblocked (changing the process-wide disposition would affect every
// other test).
bool write_all(int fd, const char* data, size_t size) {
    sigset_t pipe_signal;
    sigemptyset(&pipe_signal);
    sigaddset(&pipe_signal, SIGPIPE);
    sigset_t old_mask;
    pthread_sigmask(SIG_BLOCK, &pipe_signal, &old_mask);
    bool ok = true;
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            int err = errno;
            if (err == EPIPE) {
                timespec zero{};
                sigtimedwait(&pipe_signal, nullptr, &zero);
            }
            errno = err;
            ok = false;
            break;
        }
        data += n;
        size -= static_cast<size_t>(n);
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    errno = err;
    return ok;
}

std::string base64_decode(const std::string& in) {
    static const std::string alphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve(in.size() * 3 / 4);
    unsigned int buffer = 0;
    int bits = 0;
    for (char c : in) {
        if (c == '=') {
            break;
        }
        size_t value = alphabet.find(c);
        if (value == std::string::npos) {
            continue; // line breaks and the like
        }
        buffer = (buffer << 6) | static_cast<unsigned int>(value);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((buffer >> bits) & 0xff));
        }
    }
    return out;
}

// The text of a console call's arguments, as the DevTools console would show them.
std::string describe_arguments(const cJSON* args) {
    std::string text;
    const cJSON* arg = nullptr;
    cJSON_ArrayForEach(arg, args) {
        if (!text.empty()) {
            text += ' ';
        }
        const cJSON* value = cJSON_GetObjectItemCaseSensitive(arg, "value");
        if (cJSON_IsString(value)) {
            text += value->valuestring;
        } else if (value != nullptr) {
            text += print_json(value);
        } else {
            std::string description = string_field(arg, "description");
            text += description.empty() ? string_field(arg, "type") : description;
        }
    }
    return text;
}

} // namespace

// A JSON string is a valid JavaScript string literal (since ES2019 even with U+2028 and U+2029
// unescaped, which cJSON leaves as they are).
std::string js_string(const std::string& text) {
    JsonPtr s(cJSON_CreateString(text.c_str()));
    return print_json(s.get());
}

struct Browser::Reply {
    JsonPtr result; // the "result" object of the answer
};

std::optional<std::string> find_chromium() {
    const char* configured = std::getenv("OUTBOX_TEST_CHROMIUM");
    std::string path = configured && *configured ? configured : "/usr/bin/chromium";
    struct stat st {};
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || access(path.c_str(), X_OK) != 0) {
        return std::nullopt;
    }
    return path;
}

Browser::Browser(BrowserOptions options) : options_(options) {
    auto chromium = find_chromium();
    if (!chromium) {
        FAIL("Chromium is not installed (no executable /usr/bin/chromium, or $OUTBOX_TEST_CHROMIUM "
             "names none): the browser tests need it. On Debian: apt-get install chromium "
             "(make deps does).");
    }
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/outbox-browser-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
        FAIL("mkdtemp failed: " << std::strerror(errno));
    }
    profile_dir_ = pattern;
    log_path_ = profile_dir_ + "/chromium.log";
    std::string user_data = profile_dir_ + "/profile";
    std::filesystem::create_directory(user_data);

    std::vector<std::string> args = {
        *chromium,
        "--headless=new",
        // Tests may run as root, where Chromium's sandbox refuses to start.
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--user-data-dir=" + user_data,
        "--window-size=" + std::to_string(options_.window_width) + "," +
            std::to_string(options_.window_height),
        "--remote-debugging-pipe",
        // Containers often have a small /dev/shm; the page must not crash for want of it.
        "--disable-dev-shm-usage",
        // Nothing talks to the network but the page under test.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--password-store=basic",
        "--use-mock-keychain",
        // Timers of a page keep their pace (the console polls every 2 s) on a loaded machine.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        "--hide-scrollbars",
        "about:blank",
    };
    std::vector<char*> argv;
    for (auto& a : args) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);

    int to_browser[2];
    int from_browser[2];
    if (pipe2(to_browser, O_CLOEXEC) != 0 || pipe2(from_browser, O_CLOEXEC) != 0) {
        FAIL("pipe2 failed: " << std::strerror(errno));
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        FAIL("fork failed: " << std::strerror(errno));
    }
    if (pid == 0) {
        // Between fork and exec only async-signal-safe calls: everything was prepared above.
        setpgid(0, 0);
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
        // The pipe ends may themselves be 3 or 4: move them out of the way before placing them
        // there (dup2 onto itself would also keep close-on-exec set).
        int commands = fcntl(to_browser[0], F_DUPFD, 10);
        int answers = fcntl(from_browser[1], F_DUPFD, 10);
        int in = open("/dev/null", O_RDONLY);
        int log = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
        if (commands < 0 || answers < 0 || in < 0 || log < 0 || dup2(in, 0) < 0 ||
            dup2(log, 1) < 0 || dup2(log, 2) < 0 || dup2(commands, 3) < 0 || dup2(answers, 4) < 0) {
            _exit(127);
        }
        // Nothing else of the test process (database connections, other servers' pipes)
        // reaches the browser.
        if (close_range(5, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
            long max = sysconf(_SC_OPEN_MAX);
            for (int fd = 5; fd < (max > 0 && max < 65536 ? max : 65536); ++fd) {
                fcntl(fd, F_SETFD, FD_CLOEXEC);
            }
        }
        execv(argv[0], argv.data());
        _exit(127);
    }
    pid_ = pid;
    setpgid(pid_, pid_);
    close(to_browser[0]);
    close(from_browser[1]);
    to_browser_ = to_browser[1];
    from_browser_ = from_browser[0];
    try {
        attach_to_page();
    } catch (...) {
        // The destructor does not run after a constructor throws: stop the browser here.
        shut_down();
        throw;
    }
}

void Browser::attach_to_page() {
    // The page target exists shortly after start; attach to it with a flattened session, so that
    // its commands and events travel on this same pipe, tagged with the session id.
    auto deadline = Clock::now() + options_.command_timeout;
    std::string target_id;
    while (target_id.empty()) {
        Reply targets = command("Target.getTargets", nullptr, false);
        const cJSON* infos = cJSON_GetObjectItemCaseSensitive(targets.result.get(), "targetInfos");
        const cJSON* info = nullptr;
        cJSON_ArrayForEach(info, infos) {
            if (string_field(info, "type") == "page") {
                target_id = string_field(info, "targetId");
                break;
            }
        }
        if (target_id.empty()) {
            if (Clock::now() > deadline) {
                fail("no page target appeared");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
    cJSON* attach = cJSON_CreateObject();
    cJSON_AddStringToObject(attach, "targetId", target_id.c_str());
    cJSON_AddBoolToObject(attach, "flatten", true);
    Reply attached = command("Target.attachToTarget", attach, false);
    session_id_ = string_field(attached.result.get(), "sessionId");
    if (session_id_.empty()) {
        fail("Target.attachToTarget answered no sessionId");
    }
    main_frame_id_ = target_id; // a page target's id is its main frame's id
    command("Page.enable", nullptr);
    command("Runtime.enable", nullptr);
    command("Log.enable", nullptr);
    cJSON* metrics = cJSON_CreateObject();
    cJSON_AddNumberToObject(metrics, "width", options_.viewport_width);
    cJSON_AddNumberToObject(metrics, "height", options_.viewport_height);
    cJSON_AddNumberToObject(metrics, "deviceScaleFactor", 1);
    cJSON_AddBoolToObject(metrics, "mobile", false);
    command("Emulation.setDeviceMetricsOverride", metrics);
}

Browser::~Browser() {
    shut_down();
}

void Browser::shut_down() {
    if (to_browser_ >= 0) {
        close(to_browser_);
        to_browser_ = -1;
    }
    if (from_browser_ >= 0) {
        close(from_browser_);
        from_browser_ = -1;
    }
    if (pid_ > 0) {
        // Renderers, the GPU process and the zygote are in the browser's process group.
        kill(-pid_, SIGKILL);
        int status = 0;
        while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
    }
    if (!profile_dir_.empty() && std::getenv("OUTBOX_TEST_KEEP_OUTPUT") == nullptr) {
        std::error_code ec;
        std::filesystem::remove_all(profile_dir_, ec);
        profile_dir_.clear();
    }
}

std::string Browser::log_text() const {
    std::string text = read_text_file(log_path_);
    return text.size() > 4000 ? "[...]" + text.substr(text.size() - 4000) : text;
}

void Browser::fail(const std::string& what) const {
    FAIL("browser: " << what << "\nchromium's log:\n" << log_text());
    std::abort(); // FAIL throws; this keeps [[noreturn]] honest
}

int Browser::send_command(const std::string& method, cJSON* params, bool to_page) {
    int id = next_id_++;
    JsonPtr message(cJSON_CreateObject());
    cJSON_AddNumberToObject(message.get(), "id", id);
    cJSON_AddStringToObject(message.get(), "method", method.c_str());
    if (params != nullptr) {
        cJSON_AddItemToObject(message.get(), "params", params);
    }
    if (to_page) {
        cJSON_AddStringToObject(message.get(), "sessionId", session_id_.c_str());
    }
    std::string text = print_json(message.get());
    text.push_back('\0');
    if (!write_all(to_browser_, text.data(), text.size())) {
        fail("cannot send " + method + ": " + std::strerror(errno) + " (did Chromium exit?)");
    }
    return id;
}

bool Browser::pump(Clock::time_point deadline) {
    auto now = Clock::now();
    auto wait =
        deadline > now
            ? std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1
            : 0;
    pollfd p{from_browser_, POLLIN, 0};
    int ready = poll(&p, 1, static_cast<int>(wait));
    if (ready < 0 && errno != EINTR) {
        fail(std::string("poll failed: ") + std::strerror(errno));
    }
    if (ready <= 0) {
        return false;
    }
    char buffer[65536];
    ssize_t n = read(from_browser_, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) {
        return true;
    }
    if (n <= 0) {
        fail("Chromium closed the DevTools pipe (it exited or crashed)");
    }
    inbox_.append(buffer, static_cast<size_t>(n));
    size_t start = 0;
    size_t end;
    while ((end = inbox_.find('\0', start)) != std::string::npos) {
        pending_.push_back(inbox_.substr(start, end - start));
        start = end + 1;
    }
    inbox_.erase(0, start);
    return true;
}

Browser::Reply Browser::await_reply(int id, Clock::time_point deadline) {
    while (true) {
        for (size_t i = 0; i < pending_.size(); ++i) {
            JsonPtr message(cJSON_Parse(pending_[i].c_str()));
            if (!message) {
                fail("unparsable DevTools message: " + pending_[i].substr(0, 200));
            }
            const cJSON* message_id = cJSON_GetObjectItemCaseSensitive(message.get(), "id");
            if (!cJSON_IsNumber(message_id)) {
                handle_event(message.get());
                pending_.erase(pending_.begin() + static_cast<long>(i));
                --i;
                continue;
            }
            if (message_id->valueint != id) {
                // The answer to a command whose caller gave up (it failed the test).
                pending_.erase(pending_.begin() + static_cast<long>(i));
                --i;
                continue;
            }
            pending_.erase(pending_.begin() + static_cast<long>(i));
            const cJSON* error = cJSON_GetObjectItemCaseSensitive(message.get(), "error");
            if (error != nullptr) {
                fail("command " + std::to_string(id) + " failed: " + print_json(error));
            }
            Reply reply;
            reply.result.reset(cJSON_DetachItemFromObjectCaseSensitive(message.get(), "result"));
            if (!reply.result) {
                reply.result.reset(cJSON_CreateObject());
            }
            return reply;
        }
        if (Clock::now() >= deadline) {
            fail("no answer to command " + std::to_string(id) + " in time");
        }
        pump(deadline);
    }
}

Browser::Reply Browser::command(const std::string& method, cJSON* params, bool to_page) {
    int id = send_command(method, params, to_page);
    return await_reply(id, Clock::now() + options_.command_timeout);
}

void Browser::handle_event(const cJSON* message) {
    std::string method = string_field(message, "method");
    const cJSON* params = cJSON_GetObjectItemCaseSensitive(message, "params");
    if (method == "Page.loadEventFired") {
        load_fired_ = true;
    } else if (method == "Runtime.consoleAPICalled") {
        std::string type = string_field(params, "type");
        std::string text =
            type + ": " + describe_arguments(cJSON_GetObjectItemCaseSensitive(params, "args"));
        console_.push_back(text);
        if (type == "error" || type == "assert") {
            errors_.push_back("console." + text);
        }
    } else if (method == "Runtime.exceptionThrown") {
        const cJSON* details = cJSON_GetObjectItemCaseSensitive(params, "exceptionDetails");
        std::string text = string_field(details, "text");
        const cJSON* exception = cJSON_GetObjectItemCaseSensitive(details, "exception");
        std::string description = string_field(exception, "description");
        errors_.push_back("uncaught: " + text + (description.empty() ? "" : " " + description) +
                          " at " + string_field(details, "url") + ":" +
                          print_json(cJSON_GetObjectItemCaseSensitive(details, "lineNumber")));
    } else if (method == "Log.entryAdded") {
        const cJSON* entry = cJSON_GetObjectItemCaseSensitive(params, "entry");
        std::string level = string_field(entry, "level");
        std::string text = "log " + level + " (" + string_field(entry, "source") +
                           "): " + string_field(entry, "text") + " " + string_field(entry, "url");
        console_.push_back(text);
        if (level == "error") {
            errors_.push_back(text);
        }
    } else if (method == "Inspector.detached" || method == "Target.detachedFromTarget") {
        errors_.push_back("the page was detached: " + print_json(params));
    }
}

void Browser::drain_events() {
    // Whatever has arrived already, without waiting: console messages and exceptions.
    while (pump(Clock::now())) {
    }
    for (const auto& text : pending_) {
        JsonPtr message(cJSON_Parse(text.c_str()));
        if (message && !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(message.get(), "id"))) {
            handle_event(message.get());
        }
    }
    pending_.clear();
}

void Browser::navigate(const std::string& url) {
    load_fired_ = false;
    cJSON* params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "url", url.c_str());
    Reply reply = command("Page.navigate", params);
    std::string error = string_field(reply.result.get(), "errorText");
    if (!error.empty()) {
        fail("cannot load " + url + ": " + error);
    }
    // A same-document navigation (only the fragment changed) has no loader and no load event.
    if (string_field(reply.result.get(), "loaderId").empty()) {
        return;
    }
    auto deadline = Clock::now() + options_.command_timeout;
    while (!load_fired_) {
        if (Clock::now() >= deadline) {
            fail("no load event for " + url + " in time");
        }
        // Events are handled by await_reply's loop; here they are read directly.
        pump(deadline);
        for (size_t i = 0; i < pending_.size(); ++i) {
            JsonPtr message(cJSON_Parse(pending_[i].c_str()));
            if (message && !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(message.get(), "id"))) {
                handle_event(message.get());
                pending_.erase(pending_.begin() + static_cast<long>(i));
                --i;
            }
        }
    }
}

std::optional<std::string> Browser::try_evaluate(const std::string& expression,
                                                 std::string& error) {
    cJSON* params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "expression", expression.c_str());
    cJSON_AddBoolToObject(params, "returnByValue", true);
    cJSON_AddBoolToObject(params, "awaitPromise", true);
    cJSON_AddBoolToObject(params, "userGesture", true);
    Reply reply = command("Runtime.evaluate", params);
    const cJSON* details = cJSON_GetObjectItemCaseSensitive(reply.result.get(), "exceptionDetails");
    if (details != nullptr) {
        const cJSON* exception = cJSON_GetObjectItemCaseSensitive(details, "exception");
        std::string description = string_field(exception, "description");
        error = description.empty() ? string_field(details, "text") : description;
        return std::nullopt;
    }
    const cJSON* result = cJSON_GetObjectItemCaseSensitive(reply.result.get(), "result");
    const cJSON* value = cJSON_GetObjectItemCaseSensitive(result, "value");
    return value ? print_json(value) : std::string("null");
}

std::string Browser::evaluate(const std::string& expression) {
    std::string error;
    auto value = try_evaluate(expression, error);
    if (!value) {
        fail("evaluating `" + expression + "` threw: " + error);
    }
    return *value;
}

std::string Browser::evaluate_string(const std::string& expression) {
    std::string json = evaluate(expression);
    JsonPtr value(cJSON_Parse(json.c_str()));
    if (!cJSON_IsString(value.get())) {
        fail("`" + expression + "` is not a string: " + json);
    }
    return value->valuestring;
}

bool Browser::evaluate_bool(const std::string& expression) {
    std::string json = evaluate(expression);
    if (json != "true" && json != "false") {
        fail("`" + expression + "` is not a boolean: " + json);
    }
    return json == "true";
}

double Browser::evaluate_number(const std::string& expression) {
    std::string json = evaluate(expression);
    JsonPtr value(cJSON_Parse(json.c_str()));
    if (!cJSON_IsNumber(value.get())) {
        fail("`" + expression + "` is not a number: " + json);
    }
    return value->valuedouble;
}

bool Browser::wait_for(const std::string& condition, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    // A condition may be a promise (a fetch): it is awaited.
    std::string expression = "(async () => { return !!(await (" + condition + ")); })()";
    while (true) {
        std::string error;
        auto value = try_evaluate(expression, error);
        if (value && *value == "true") {
            last_wait_detail_.clear();
            return true;
        }
        last_wait_detail_ =
            value ? "`" + condition + "` was false" : "`" + condition + "` threw: " + error;
        if (Clock::now() >= deadline) {
            return false;
        }
        // Between polls, read the events that arrive (console, exceptions) instead of idling.
        pump(std::min(deadline, Clock::now() + std::chrono::milliseconds(50)));
    }
}

void Browser::click(const std::string& selector) {
    std::string locate = "(() => { const e = document.querySelector(" + js_string(selector) +
                         "); if (!e) return 'missing';"
                         " e.scrollIntoView({block: 'center', inline: 'center'});"
                         " const r = e.getBoundingClientRect();"
                         " if (r.width === 0 || r.height === 0) return 'hidden';"
                         " return [r.left + r.width / 2, r.top + r.height / 2]; })()";
    std::string json = evaluate(locate);
    JsonPtr where(cJSON_Parse(json.c_str()));
    if (!cJSON_IsArray(where.get()) || cJSON_GetArraySize(where.get()) != 2) {
        fail("cannot click " + selector + ": " + json);
    }
    double x = cJSON_GetArrayItem(where.get(), 0)->valuedouble;
    double y = cJSON_GetArrayItem(where.get(), 1)->valuedouble;
    for (const char* type : {"mouseMoved", "mousePressed", "mouseReleased"}) {
        cJSON* params = cJSON_CreateObject();
        cJSON_AddStringToObject(params, "type", type);
        cJSON_AddNumberToObject(params, "x", x);
        cJSON_AddNumberToObject(params, "y", y);
        if (std::strcmp(type, "mouseMoved") != 0) {
            cJSON_AddStringToObject(params, "button", "left");
            cJSON_AddNumberToObject(params, "clickCount", 1);
        }
        command("Input.dispatchMouseEvent", params);
    }
}

void Browser::type(const std::string& selector, const std::string& text) {
    std::string focus = "(() => { const e = document.querySelector(" + js_string(selector) +
                        "); if (!e) return false; e.focus(); e.value = '';"
                        " return document.activeElement === e; })()";
    if (!evaluate_bool(focus)) {
        fail("cannot type into " + selector + ": no such element, or it cannot take the focus");
    }
    cJSON* params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "text", text.c_str());
    command("Input.insertText", params);
}

void Browser::screenshot(const std::string& path) {
    cJSON* params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "format", "png");
    Reply reply = command("Page.captureScreenshot", params);
    std::string png = base64_decode(string_field(reply.result.get(), "data"));
    if (png.size() < 8 || png.compare(1, 3, "PNG") != 0) {
        fail("Page.captureScreenshot returned no PNG");
    }
    std::filesystem::path target(path);
    if (target.has_parent_path()) {
        std::filesystem::create_directories(target.parent_path());
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(png.data(), static_cast<std::streamsize>(png.size()));
    if (!out) {
        fail("cannot write " + path);
    }
}

const std::vector<std::string>& Browser::console_messages() {
    drain_events();
    return console_;
}

const std::vector<std::string>& Browser::errors() {
    drain_events();
    return errors_;
}

void Browser::clear_messages() {
    drain_events();
    console_.clear();
    errors_.clear();
}

} // namespace outbox::test
