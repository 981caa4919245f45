// A headless Chromium for the console's browser tests, driven over the DevTools protocol.
//
//     Browser browser;                               // FAILs the test when Chromium is missing
//     browser.navigate("http://127.0.0.1:" + std::to_string(port) + "/");
//     REQUIRE(browser.wait_for("document.querySelector('#count-pending').textContent === '3'",
//                              20s));
//     browser.click("#dlq-retry-selected");
//     browser.type("#login-token", "secret");
//     CHECK(browser.evaluate_string("document.title") == "outbox-worker console");
//     browser.screenshot("build/test-artifacts/console/overview.png");
//     CHECK(browser.errors().empty());
//
// Chromium runs with --remote-debugging-pipe: it reads commands from its fd 3 and writes answers
// and events to its fd 4, each message one JSON text ended by a NUL byte, so no websocket and no
// port is involved. The driver attaches to the first page target with a flattened session and
// enables the Page, Runtime and Log domains; console calls, uncaught exceptions and the browser's
// own error log (failed loads, Content-Security-Policy refusals) are collected as they arrive.
//
// Everything is synchronous and happens on the calling thread: a call sends one command and reads
// messages until its answer arrives, recording the events read meanwhile. Every read has a
// deadline; a command without an answer in time, a protocol error or a dead browser fails the
// current test with the browser's own log in the message.
//
// Chromium starts in a process group of its own with a throw-away profile directory, dies with
// the test process (PR_SET_PDEATHSIG), and the destructor kills the whole group (renderers and
// helpers included), reaps the browser and removes the profile. A Browser belongs to the thread
// that created it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

struct cJSON;

namespace outbox::test {

// A JavaScript string literal that evaluates to `text` exactly, for building expressions from
// values: "document.querySelector(" + js_string(selector) + ")".
std::string js_string(const std::string& text);

// The Chromium binary the tests use: $OUTBOX_TEST_CHROMIUM when set, else /usr/bin/chromium;
// nullopt when it is not an executable file.
std::optional<std::string> find_chromium();

struct BrowserOptions {
    int window_width = 1280;
    int window_height = 900;
    // The page's viewport (and so the screenshots), set exactly with
    // Emulation.setDeviceMetricsOverride: the window's size includes what headless Chromium
    // reserves for its invisible browser frame.
    int viewport_width = 1280;
    int viewport_height = 800;
    // The default deadline of a single protocol command (navigation, evaluation, screenshot).
    std::chrono::milliseconds command_timeout = std::chrono::seconds(30);
};

class Browser {
  public:
    explicit Browser(BrowserOptions options = {});
    ~Browser();
    Browser(const Browser&) = delete;
    Browser& operator=(const Browser&) = delete;

    // Loads `url` and waits for its load event. A change of the fragment only (the console's
    // routes) is a same-document navigation with no load event: it returns once the navigation is
    // done. A failed navigation (connection refused, bad URL) fails the test.
    void navigate(const std::string& url);

    // Evaluates `expression` in the page (awaiting a promise) and returns its value as JSON text
    // ("null" for undefined). An exception thrown by the expression fails the test.
    std::string evaluate(const std::string& expression);
    std::string evaluate_string(const std::string& expression); // the value must be a string
    bool evaluate_bool(const std::string& expression);          // the value must be a boolean
    double evaluate_number(const std::string& expression);      // the value must be a number

    // Evaluates `condition` (awaited when it is a promise) until it is true or `timeout` has
    // passed; an exception while evaluating counts as false (the element may not exist yet). The
    // last exception or value is kept in last_wait_detail() for the failure message.
    [[nodiscard]] bool wait_for(const std::string& condition, std::chrono::milliseconds timeout);
    const std::string& last_wait_detail() const { return last_wait_detail_; }

    // A real mouse click in the middle of the first element matching `selector`, scrolled into
    // view first. Fails the test when no element matches or it has no size (hidden).
    void click(const std::string& selector);
    // Focuses the element, clears its value and inserts `text` as typed input.
    void type(const std::string& selector, const std::string& text);

    // A PNG of the viewport, written to `path` (parent directories created).
    void screenshot(const std::string& path);

    // "level: text" of every console call since start (or the last clear), in order.
    const std::vector<std::string>& console_messages();
    // Uncaught exceptions and unhandled rejections of the page, and the browser's error-level log
    // entries (a refused script, a failed request), since start (or the last clear).
    const std::vector<std::string>& errors();
    void clear_messages();

    // Chromium's own stderr, for INFO() when a check fails.
    std::string log_text() const;
    pid_t pid() const { return pid_; }

  private:
    struct Reply;

    void attach_to_page();
    void shut_down();
    int send_command(const std::string& method, cJSON* params, bool to_page);
    Reply await_reply(int id, std::chrono::steady_clock::time_point deadline);
    Reply command(const std::string& method, cJSON* params, bool to_page = true);
    // Reads and handles messages until the deadline; returns false when nothing arrived.
    bool pump(std::chrono::steady_clock::time_point deadline);
    void handle_event(const cJSON* message);
    std::optional<std::string> try_evaluate(const std::string& expression, std::string& error);
    void drain_events();
    [[noreturn]] void fail(const std::string& what) const;

    BrowserOptions options_;
    std::string profile_dir_;
    std::string log_path_;
    pid_t pid_ = -1;
    int to_browser_ = -1;
    int from_browser_ = -1;
    std::string inbox_;
    std::vector<std::string> pending_; // complete messages read but not yet handled
    int next_id_ = 1;
    std::string session_id_;
    std::string main_frame_id_;
    bool load_fired_ = false;
    std::vector<std::string> console_;
    std::vector<std::string> errors_;
    std::string last_wait_detail_;
};

} // namespace outbox::test
