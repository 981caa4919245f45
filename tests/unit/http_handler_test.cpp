// The http handler against a scripted HTTP server running in the test itself: request contents,
// outcome classification, Retry-After, timeouts, refused connections and connection reuse.
#include "worker/handlers_file.h"
#include "worker/http_handler.h"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct ReceivedRequest {
    std::string request_line;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;

    std::optional<std::string> header(std::string_view name) const {
        for (const auto& [key, value] : headers) {
            if (std::equal(key.begin(), key.end(), name.begin(), name.end(), [](char a, char b) {
                    return std::tolower(static_cast<unsigned char>(a)) ==
                           std::tolower(static_cast<unsigned char>(b));
                })) {
                return value;
            }
        }
        return std::nullopt;
    }
};

// Listens on 127.0.0.1 (a kernel-chosen port) and answers requests with scripted responses, in
// order, on as many connections as the client opens. An empty response means "read the request
// and never answer". The socket is listening before the constructor returns, so a client may
// connect at once; the destructor wakes the thread and joins it, whatever the test did.
class ScriptedHttpServer {
  public:
    explicit ScriptedHttpServer(std::vector<std::string> responses)
        : responses_(std::move(responses)) {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(listen_fd_ >= 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
        REQUIRE(::listen(listen_fd_, 8) == 0);
        socklen_t length = sizeof address;
        REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) == 0);
        port_ = ntohs(address.sin_port);
        REQUIRE(::pipe2(stop_pipe_, O_CLOEXEC) == 0);
        thread_ = std::thread([this] { serve(); });
    }

    ~ScriptedHttpServer() {
        const char wake = 1;
        ssize_t ignored = ::write(stop_pipe_[1], &wake, 1);
        (void)ignored;
        thread_.join();
        ::close(stop_pipe_[0]);
        ::close(stop_pipe_[1]);
        ::close(listen_fd_);
    }
    ScriptedHttpServer(const ScriptedHttpServer&) = delete;
    ScriptedHttpServer& operator=(const ScriptedHttpServer&) = delete;

    std::string url(const std::string& path = "/hook") const {
        return "http://127.0.0.1:" + std::to_string(port_) + path;
    }
    int port() const { return port_; }

    // Waits until `count` requests have arrived; false when the deadline passes first.
    bool wait_for_requests(std::size_t count, std::chrono::milliseconds limit = 5000ms) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, limit, [&] { return requests_.size() >= count; });
    }
    std::vector<ReceivedRequest> requests() const {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    int connections() const {
        std::lock_guard lock(mutex_);
        return connections_;
    }

  private:
    // Waits until `fd` is readable or the test is over; false for the latter.
    bool wait_readable(int fd) {
        pollfd fds[2] = {{fd, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
        for (;;) {
            int ready = ::poll(fds, 2, -1);
            if (ready < 0 && errno == EINTR) {
                continue;
            }
            return ready > 0 && fds[1].revents == 0 && fds[0].revents != 0;
        }
    }

    // Reads one request from `fd` into `request`, keeping bytes of a following one in `pending`.
    // False when the connection ends (or the test does) first.
    bool read_request(int fd, std::string& pending, ReceivedRequest& request) {
        std::size_t head_end;
        while ((head_end = pending.find("\r\n\r\n")) == std::string::npos) {
            if (!receive(fd, pending)) {
                return false;
            }
        }
        std::string head = pending.substr(0, head_end);
        std::size_t line_end = head.find("\r\n");
        request.request_line = head.substr(0, line_end);
        std::size_t content_length = 0;
        while (line_end != std::string::npos) {
            std::size_t start = line_end + 2;
            line_end = head.find("\r\n", start);
            std::string line = head.substr(start, line_end == std::string::npos ? std::string::npos
                                                                                : line_end - start);
            std::size_t colon = line.find(':');
            std::string name = line.substr(0, colon);
            std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
            value.erase(0, value.find_first_not_of(' '));
            request.headers.emplace_back(name, value);
        }
        if (auto length = request.header("Content-Length")) {
            content_length = std::stoul(*length);
        }
        pending.erase(0, head_end + 4);
        while (pending.size() < content_length) {
            if (!receive(fd, pending)) {
                return false;
            }
        }
        request.body = pending.substr(0, content_length);
        pending.erase(0, content_length);
        return true;
    }

    bool receive(int fd, std::string& into) {
        if (!wait_readable(fd)) {
            return false;
        }
        char buffer[65536];
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n <= 0) {
            return false;
        }
        into.append(buffer, static_cast<std::size_t>(n));
        return true;
    }

    void serve() {
        std::size_t next_response = 0;
        int connection = -1;
        std::string pending;
        while (next_response < responses_.size()) {
            if (connection < 0) {
                if (!wait_readable(listen_fd_)) {
                    return;
                }
                connection = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (connection < 0) {
                    continue;
                }
                pending.clear();
                std::lock_guard lock(mutex_);
                ++connections_;
            }
            ReceivedRequest request;
            if (!read_request(connection, pending, request)) {
                ::close(connection);
                connection = -1;
                continue;
            }
            {
                std::lock_guard lock(mutex_);
                requests_.push_back(std::move(request));
            }
            changed_.notify_all();
            const std::string& response = responses_[next_response++];
            if (response.empty()) {
                // Never answer: hold the connection until the client gives up or the test ends.
                std::string ignored;
                while (receive(connection, ignored)) {
                }
                ::close(connection);
                connection = -1;
                continue;
            }
            ssize_t ignored = ::send(connection, response.data(), response.size(), MSG_NOSIGNAL);
            (void)ignored;
        }
        // Keep the last connection open until the client closes it or the test ends, so that a
        // client reusing connections is never cut off mid-test.
        if (connection >= 0) {
            std::string ignored;
            while (receive(connection, ignored)) {
            }
            ::close(connection);
        }
    }

    std::vector<std::string> responses_;
    int listen_fd_ = -1;
    int stop_pipe_[2] = {-1, -1};
    int port_ = 0;
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<ReceivedRequest> requests_;
    int connections_ = 0;
    std::thread thread_;
};

std::string response(int status, const std::string& reason, const std::string& body = "",
                     const std::string& extra_headers = "") {
    return "HTTP/1.1 " + std::to_string(status) + " " + reason +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" +
           body;
}

outbox::Event make_event() {
    outbox::Event event;
    event.id = "ob_42";
    event.event_type = "order.created";
    event.tenant_id = "tenant-a";
    event.attempt = 2;
    event.payload_json = R"({"total": 12.5})";
    return event;
}

outbox::Handler handler_for(const std::string& url, long timeout_ms = 5000,
                            std::vector<std::pair<std::string, std::string>> headers = {},
                            const std::string& method = "POST") {
    outbox::HttpHandlerOptions options;
    options.url = url;
    options.method = method;
    options.headers = std::move(headers);
    options.timeout_ms = timeout_ms;
    return outbox::make_http_handler(std::move(options));
}

} // namespace

TEST_CASE("http: 2xx is success, body and headers arrive", "[http_handler]") {
    ScriptedHttpServer server({response(204, "No Content")});
    const outbox::Event event = make_event();
    const outbox::Result result = handler_for(
        server.url(), 5000, {{"Authorization", "Bearer t0ken"}, {"X-Empty", ""}})(event);
    CHECK(result.outcome == outbox::Outcome::success);
    CHECK(result.error.empty());

    REQUIRE(server.wait_for_requests(1));
    const ReceivedRequest request = server.requests().at(0);
    CHECK(request.request_line == "POST /hook HTTP/1.1");
    CHECK(request.body == event.json());
    CHECK(request.header("Idempotency-Key") == "ob_42");
    CHECK(request.header("X-Outbox-Event-Type") == "order.created");
    CHECK(request.header("X-Outbox-Attempt") == "2");
    CHECK(request.header("Content-Type") == "application/json");
    CHECK(request.header("Authorization") == "Bearer t0ken");
    CHECK(request.header("X-Empty") == "");
    CHECK_FALSE(request.header("Expect").has_value());
}

TEST_CASE("http: the event's trace context arrives as traceparent and tracestate",
          "[http_handler][trace]") {
    ScriptedHttpServer server({response(204, "No Content"), response(204, "No Content")});
    outbox::Event event = make_event();
    event.metadata_json =
        R"({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                              "tracestate": "congo=t61rcWkgMzE"})";
    const outbox::Handler handler = handler_for(server.url(), 5000);
    CHECK(handler(event).outcome == outbox::Outcome::success);
    outbox::Event untraced = make_event();
    untraced.metadata_json = R"({"traceparent": "00-0000"})";
    CHECK(handler(untraced).outcome == outbox::Outcome::success);

    REQUIRE(server.wait_for_requests(2));
    const ReceivedRequest traced = server.requests().at(0);
    CHECK(traced.header("traceparent") ==
          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    CHECK(traced.header("tracestate") == "congo=t61rcWkgMzE");
    const ReceivedRequest plain = server.requests().at(1);
    CHECK_FALSE(plain.header("traceparent").has_value());
    CHECK_FALSE(plain.header("tracestate").has_value());
}

TEST_CASE("http: PUT and PATCH send the body under that method", "[http_handler]") {
    const std::string method = GENERATE(as<std::string>{}, "PUT", "PATCH");
    ScriptedHttpServer server({response(200, "OK", "fine")});
    const outbox::Event event = make_event();
    CHECK(handler_for(server.url(), 5000, {}, method)(event).outcome == outbox::Outcome::success);
    REQUIRE(server.wait_for_requests(1));
    CHECK(server.requests().at(0).request_line == method + " /hook HTTP/1.1");
    CHECK(server.requests().at(0).body == event.json());
}

TEST_CASE("http: a configured Content-Type replaces the default", "[http_handler]") {
    ScriptedHttpServer server({response(200, "OK")});
    CHECK(handler_for(server.url(), 5000,
                      {{"content-type", "application/cloudevents+json"}})(make_event())
              .outcome == outbox::Outcome::success);
    REQUIRE(server.wait_for_requests(1));
    const ReceivedRequest request = server.requests().at(0);
    CHECK(request.header("Content-Type") == "application/cloudevents+json");
    CHECK(std::count_if(request.headers.begin(), request.headers.end(), [](const auto& header) {
              return header.first == "Content-Type" || header.first == "content-type";
          }) == 1);
}

TEST_CASE("http: 500 is retryable, the error names status, URL and body", "[http_handler]") {
    ScriptedHttpServer server({response(500, "Internal Server Error", "database is down\n")});
    const outbox::Result result = handler_for(server.url())(make_event());
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "HTTP 500 from " + server.url() + ": database is down");
    CHECK(result.retry_after_ms == 0);
}

TEST_CASE("http: the error never shows credentials or the query", "[http_handler]") {
    ScriptedHttpServer server({response(503, "Service Unavailable")});
    const std::string url =
        "http://user:s3cret@127.0.0.1:" + std::to_string(server.port()) + "/hook?token=abc#frag";
    const outbox::Result result = handler_for(url)(make_event());
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "HTTP 503 from " + server.url());
}

TEST_CASE("http: only the first 512 bytes of the body are kept", "[http_handler]") {
    ScriptedHttpServer server({response(502, "Bad Gateway", std::string(600, 'b') + "TAIL")});
    const outbox::Result result = handler_for(server.url())(make_event());
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "HTTP 502 from " + server.url() + ": " + std::string(512, 'b'));
}

TEST_CASE("http: 429 with Retry-After is retryable after that delay", "[http_handler]") {
    ScriptedHttpServer server(
        {response(429, "Too Many Requests", "slow down", "Retry-After: 2\r\n")});
    const outbox::Result result = handler_for(server.url())(make_event());
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.retry_after_ms == 2000);
    CHECK(result.error == "HTTP 429 from " + server.url() + ": slow down");
}

TEST_CASE("http: 408 is retryable", "[http_handler]") {
    ScriptedHttpServer server({response(408, "Request Timeout")});
    CHECK(handler_for(server.url())(make_event()).outcome == outbox::Outcome::retry);
}

TEST_CASE("http: other 4xx are permanent and Retry-After is ignored there", "[http_handler]") {
    ScriptedHttpServer server(
        {response(400, "Bad Request", R"({"error":"missing sku"})", "Retry-After: 30\r\n")});
    const outbox::Result result = handler_for(server.url())(make_event());
    CHECK(result.outcome == outbox::Outcome::permanent);
    CHECK(result.error == "HTTP 400 from " + server.url() + R"(: {"error":"missing sku"})");
    CHECK(result.retry_after_ms == 0);
}

TEST_CASE("http: redirects are not followed and are permanent", "[http_handler]") {
    ScriptedHttpServer server(
        {response(301, "Moved Permanently", "", "Location: http://127.0.0.1:1/elsewhere\r\n")});
    const outbox::Result result = handler_for(server.url())(make_event());
    CHECK(result.outcome == outbox::Outcome::permanent);
    CHECK(result.error == "HTTP 301 from " + server.url());
    CHECK(server.requests().size() == 1);
}

TEST_CASE("http: a server that never answers times out", "[http_handler]") {
    ScriptedHttpServer server({""});
    const auto started = Clock::now();
    const outbox::Result result = handler_for(server.url(), 300)(make_event());
    const auto elapsed = Clock::now() - started;
    CHECK(result.outcome == outbox::Outcome::retry);
    INFO(result.error);
    CHECK(result.error.starts_with("timed out after 300 ms: POST " + server.url()));
    // libcurl keeps time in whole milliseconds and may fire its timeout up to one early, as
    // measured here (seen: 299.45 ms).
    CHECK(elapsed >= 299ms);
    CHECK(elapsed < 2000ms);
    CHECK(server.requests().size() == 1);
}

TEST_CASE("http: a refused connection is retryable", "[http_handler]") {
    // A socket bound but not listening: connecting to its port is refused, and no other test
    // can take the port while it is held.
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    socklen_t length = sizeof address;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0);
    const std::string url = "http://127.0.0.1:" + std::to_string(ntohs(address.sin_port)) + "/hook";

    const outbox::Result result = handler_for(url)(make_event());
    ::close(fd);
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error.starts_with("POST " + url + " failed: "));
    INFO(result.error);
    CHECK(result.error.find("refused") != std::string::npos);
}

TEST_CASE("http: consecutive events reuse one connection", "[http_handler]") {
    ScriptedHttpServer server(
        {response(200, "OK"), response(500, "Internal Server Error"), response(201, "Created")});
    outbox::Handler handler = handler_for(server.url());
    outbox::Handler copy = handler; // copies share the connection too
    CHECK(handler(make_event()).outcome == outbox::Outcome::success);
    CHECK(copy(make_event()).outcome == outbox::Outcome::retry);
    CHECK(handler(make_event()).outcome == outbox::Outcome::success);
    REQUIRE(server.wait_for_requests(3));
    CHECK(server.connections() == 1);
}

TEST_CASE("http: headers from a handlers file with ${VAR} reach the server", "[http_handler]") {
    ScriptedHttpServer server({response(200, "OK")});
    const std::string json = R"([{"eventTypes": ["order.*"], "http": {"url": ")" + server.url() +
                             R"(", "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"}}}])";
    outbox::HandlersFileResult loaded = outbox::parse_handlers_json(
        json, "handlers.json", 5000, [](const char* name) -> std::optional<std::string> {
            if (std::string_view(name) == "HOOK_TOKEN") {
                return "from-env";
            }
            return std::nullopt;
        });
    INFO(loaded.error);
    REQUIRE(loaded.subscribers.has_value());
    CHECK(loaded.subscribers->at(0).handler(make_event()).outcome == outbox::Outcome::success);
    REQUIRE(server.wait_for_requests(1));
    CHECK(server.requests().at(0).header("Authorization") == "Bearer from-env");
}

TEST_CASE("http: status classification", "[http_handler]") {
    using outbox::Outcome;
    for (long status : {200L, 201L, 202L, 204L, 299L}) {
        CHECK(outbox::classify_http_status(status) == Outcome::success);
    }
    for (long status : {408L, 429L, 500L, 502L, 503L, 504L, 599L}) {
        CHECK(outbox::classify_http_status(status) == Outcome::retry);
    }
    for (long status : {100L, 300L, 301L, 302L, 304L, 400L, 401L, 403L, 404L, 409L, 410L, 422L}) {
        CHECK(outbox::classify_http_status(status) == Outcome::permanent);
    }
}

TEST_CASE("http: Retry-After parsing", "[http_handler]") {
    const std::time_t now = 1445412470; // 2015-10-21 07:27:50 UTC
    CHECK(outbox::parse_retry_after_ms("2", now) == 2000);
    CHECK(outbox::parse_retry_after_ms(" 120 ", now) == 120000);
    CHECK(outbox::parse_retry_after_ms("0", now) == 0);
    CHECK(outbox::parse_retry_after_ms("", now) == 0);
    CHECK(outbox::parse_retry_after_ms("soon", now) == 0);
    CHECK(outbox::parse_retry_after_ms("-5", now) == 0);
    CHECK(outbox::parse_retry_after_ms("99999999999999999999", now) ==
          outbox::kHttpMaxRetryAfterMs);
    CHECK(outbox::parse_retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", now) == 10000);
    CHECK(outbox::parse_retry_after_ms("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0); // past
}

TEST_CASE("http: URL checks and redaction", "[http_handler]") {
    CHECK_FALSE(outbox::http_url_problem("https://hooks.example.com/a?b=c").has_value());
    CHECK_FALSE(outbox::http_url_problem("HTTP://example.com").has_value());
    CHECK(outbox::http_url_problem("ftp://example.com/") == "must start with http:// or https://");
    CHECK(outbox::http_url_problem("file:///etc/passwd") == "must start with http:// or https://");
    CHECK(outbox::http_url_problem("not a url") == "is not a valid URL");
    CHECK(outbox::redact_url("https://u:p@example.com:8443/hook?key=1#x") ==
          "https://example.com:8443/hook");
    CHECK(outbox::redact_url("http://example.com/a/b") == "http://example.com/a/b");
}
