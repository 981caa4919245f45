// The supervisor's HTTP server, run on a real libuv loop in the test thread and driven by real
// client sockets from a second thread. Catch2's assertions are not thread-safe, so the client
// thread only records what it saw; the test thread asserts afterwards.
#include "supervisor/http_server.h"
#include "supervisor/uv_handle.h"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace outbox;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;

// Runs the loop in this thread while a client runs in another, and checks at the end that
// every handle was closed.
class LoopHarness {
  public:
    LoopHarness() {
        REQUIRE(uv_loop_init(&loop) == 0);
        REQUIRE(uv_async_init(&loop, &wakeup_, [](uv_async_t*) {}) == 0);
        // The tick makes uv_run(UV_RUN_ONCE) return regularly so that deadlines are checked even
        // when nothing else happens.
        REQUIRE(uv_timer_init(&loop, &tick_) == 0);
        REQUIRE(uv_timer_start(
                    &tick_, [](uv_timer_t*) {}, 10, 10) == 0);
    }

    LoopHarness(const LoopHarness&) = delete;
    LoopHarness& operator=(const LoopHarness&) = delete;

    ~LoopHarness() {
        if (client_.joinable()) {
            client_.join();
        }
    }

    uv_loop_t loop{};

    // Starts `client` in its own thread. An exception it throws is reported by join().
    void start(std::function<void()> client) {
        client_done_ = false;
        client_error_.clear();
        client_ = std::thread([this, client = std::move(client)] {
            try {
                client();
            } catch (const std::exception& e) {
                client_error_ = e.what();
            } catch (...) {
                client_error_ = "unknown exception";
            }
            client_done_ = true;
            uv_async_send(&wakeup_);
        });
    }

    // Runs the loop until `condition` holds or `timeout` passes; returns whether it held.
    bool run_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
        auto deadline = Clock::now() + timeout;
        while (!condition()) {
            if (Clock::now() >= deadline) {
                return false;
            }
            uv_run(&loop, UV_RUN_ONCE);
        }
        return true;
    }

    // Runs the loop until the client thread has finished, then joins it. The client's sockets
    // have their own timeouts, so a client stuck on a broken server still ends.
    void join(std::chrono::milliseconds timeout = 15s) {
        bool in_time = run_until([this] { return client_done_.load(); }, timeout);
        run_until([this] { return client_done_.load(); }, 60s);
        client_.join();
        CHECK(in_time);
        if (!client_error_.empty()) {
            FAIL("client: " << client_error_);
        }
    }

    void run_client(std::function<void()> client, std::chrono::milliseconds timeout = 15s) {
        start(std::move(client));
        join(timeout);
    }

    // Closes the server and the harness's own handles, and checks that the loop has nothing
    // left: uv_loop_close() fails while any handle is open.
    void close_server_and_loop(HttpServer& server) {
        bool closed = false;
        server.close([&closed] { closed = true; });
        REQUIRE(run_until([&closed] { return closed; }, 5s));
        CHECK(server.connection_count() == 0);
        close_loop();
    }

    void close_loop() {
        uv_close(reinterpret_cast<uv_handle_t*>(&wakeup_), nullptr);
        uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
        uv_run(&loop, UV_RUN_DEFAULT);
        REQUIRE(uv_loop_close(&loop) == 0);
    }

  private:
    uv_async_t wakeup_{};
    uv_timer_t tick_{};
    std::thread client_;
    std::atomic<bool> client_done_{false};
    std::string client_error_;
};

// --- the client side (runs in the client thread; throws instead of asserting) ---

struct ClientResponse {
    int status = 0;
    std::map<std::string, std::string> headers; // names lower-cased
    std::string body;

    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

int connect_to(int port, int family = AF_INET) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
    timeval timeout{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    int rc;
    if (family == AF_INET) {
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(static_cast<uint16_t>(port));
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        rc = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    } else {
        sockaddr_in6 address{};
        address.sin6_family = AF_INET6;
        address.sin6_port = htons(static_cast<uint16_t>(port));
        address.sin6_addr = in6addr_loopback;
        rc = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    }
    if (rc != 0) {
        int error = errno;
        close(fd);
        throw std::runtime_error(std::string("connect: ") + std::strerror(error));
    }
    return fd;
}

// Sends everything; false if the server stopped accepting data (it may close on purpose).
bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t sent = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        data.remove_prefix(static_cast<std::size_t>(sent));
    }
    return true;
}

// Reads until the server closes the connection (or an error, such as a reset).
std::string read_until_close(int fd) {
    std::string data;
    char buffer[16384];
    for (;;) {
        ssize_t got = recv(fd, buffer, sizeof buffer, 0);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                throw std::runtime_error("timed out waiting for the server to close");
            }
            return data;
        }
        data.append(buffer, static_cast<std::size_t>(got));
    }
}

// True when the server closed the connection (orderly or by reset) without sending anything.
bool closed_without_data(int fd) {
    char byte;
    for (;;) {
        ssize_t got = recv(fd, &byte, 1, 0);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            throw std::runtime_error("timed out waiting for the server to close");
        }
        return got == 0 || (got < 0 && (errno == ECONNRESET || errno == EPIPE));
    }
}

// Takes one response off the front of `buffer`, reading more from `fd` when needed. With
// `fd` < 0 it only parses what is in the buffer. `head_only` is for responses to HEAD.
std::optional<ClientResponse> take_response(int fd, std::string& buffer, bool head_only = false) {
    auto fill = [&]() {
        if (fd < 0) {
            return false;
        }
        char chunk[16384];
        ssize_t got;
        do {
            got = recv(fd, chunk, sizeof chunk, 0);
        } while (got < 0 && errno == EINTR);
        if (got <= 0) {
            return false;
        }
        buffer.append(chunk, static_cast<std::size_t>(got));
        return true;
    };
    std::size_t head_end;
    while ((head_end = buffer.find("\r\n\r\n")) == std::string::npos) {
        if (!fill()) {
            return std::nullopt;
        }
    }
    ClientResponse response;
    std::string head = buffer.substr(0, head_end);
    std::size_t line_end = head.find("\r\n");
    std::string status_line = head.substr(0, line_end);
    if (!status_line.starts_with("HTTP/1.1 ") || status_line.size() < 12) {
        throw std::runtime_error("bad status line: " + status_line);
    }
    response.status = std::stoi(status_line.substr(9, 3));
    std::size_t position = line_end == std::string::npos ? head.size() : line_end + 2;
    while (position < head.size()) {
        std::size_t next = head.find("\r\n", position);
        if (next == std::string::npos) {
            next = head.size();
        }
        std::string line = head.substr(position, next - position);
        std::size_t colon = line.find(':');
        if (colon == std::string::npos) {
            throw std::runtime_error("bad header line: " + line);
        }
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(' '));
        if (response.headers.contains(name)) {
            throw std::runtime_error("duplicate header: " + name);
        }
        response.headers[name] = value;
        position = next + 2;
    }
    if (!response.headers.contains("content-length")) {
        throw std::runtime_error("response without Content-Length");
    }
    std::size_t length = head_only ? 0 : std::stoul(response.headers["content-length"]);
    std::size_t body_start = head_end + 4;
    while (buffer.size() < body_start + length) {
        if (!fill()) {
            throw std::runtime_error("connection ended inside a response body");
        }
    }
    response.body = buffer.substr(body_start, length);
    buffer.erase(0, body_start + length);
    return response;
}

std::string lower(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return text;
}

// Whether the server sends nothing on `fd` within `wait` (the connection stays open and silent).
bool silent_for(int fd, std::chrono::milliseconds wait) {
    pollfd readable{fd, POLLIN, 0};
    return ::poll(&readable, 1, static_cast<int>(wait.count())) == 0;
}

// One request on a fresh connection that asks to be closed afterwards; everything the server
// sent is in `raw`.
struct Exchange {
    std::optional<ClientResponse> response;
    std::string raw;
};

Exchange exchange_once(int port, const std::string& request, bool head_only = false) {
    int fd = connect_to(port);
    Exchange result;
    send_all(fd, request);
    result.raw = read_until_close(fd);
    close(fd);
    std::string buffer = result.raw;
    result.response = take_response(-1, buffer, head_only);
    if (!buffer.empty()) {
        throw std::runtime_error("bytes after the response: " + std::to_string(buffer.size()));
    }
    return result;
}

std::string get(const std::string& target, const std::string& extra_headers = "") {
    return "GET " + target + " HTTP/1.1\r\nHost: test\r\n" + extra_headers + "\r\n";
}

constexpr std::size_t kBigBodySize = 1024 * 1024;

// The endpoints the tests use, built on HttpRouter the way the supervisor's are.
struct TestService {
    int calls = 0;
    HttpRouter router;

    TestService() {
        router.get("/health", [](const HttpRequest&) {
            return HttpResponse{.status = 200,
                                .content_type = "application/json",
                                .body = R"({"status":"ok"})",
                                .headers = {{"Cache-Control", "no-store"}}};
        });
        router.get("/echo", [](const HttpRequest& request) {
            return HttpResponse{.status = 200,
                                .content_type = "text/plain",
                                .body = request.method + " " + request.path + " " + request.query,
                                .headers = {}};
        });
        router.get("/big", [](const HttpRequest&) {
            return HttpResponse{.status = 200,
                                .content_type = "application/octet-stream",
                                .body = std::string(kBigBodySize, 'x'),
                                .headers = {}};
        });
        router.get("/throws", [](const HttpRequest&) -> HttpResponse {
            throw std::runtime_error("handler bug");
        });
        router.get("/bad-header", [](const HttpRequest&) {
            return HttpResponse{.status = 200,
                                .content_type = "text/plain",
                                .body = "ok",
                                .headers = {{"X-Injected", "a\r\nSet-Cookie: evil=1"},
                                            {"Content-Length", "99"},
                                            {"X-Fine", "yes"}}};
        });
    }

    HttpServer::Handler handler() {
        return [this](const HttpRequest& request, HttpReply reply) {
            ++calls;
            router.dispatch(request, std::move(reply));
        };
    }
};

HttpServerLimits test_limits() {
    return HttpServerLimits{};
}

} // namespace

TEST_CASE("http server answers GET with the handler's response", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();
    REQUIRE(port > 0);

    Exchange health;
    Exchange echo;
    harness.run_client([&] {
        health = exchange_once(port, get("/health", "Connection: close\r\n"));
        echo = exchange_once(port, get("/echo?a=1&b=%20x", "Connection: close\r\n"));
    });

    REQUIRE(health.response);
    CHECK(health.response->status == 200);
    CHECK(health.response->body == R"({"status":"ok"})");
    CHECK(health.response->header("content-length") == "15");
    CHECK(health.response->header("content-type") == "application/json");
    CHECK(health.response->header("server") == "outbox-worker");
    CHECK(health.response->header("cache-control") == "no-store");
    CHECK(health.response->header("connection") == "close");
    REQUIRE(echo.response);
    CHECK(echo.response->body == "GET /echo a=1&b=%20x");
    CHECK(service.calls == 2);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server leaves 404 and 405 to the handler's router", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    Exchange unknown;
    Exchange post;
    Exchange post_with_body;
    Exchange post_unknown;
    harness.run_client([&] {
        unknown = exchange_once(port, get("/nope", "Connection: close\r\n"));
        post = exchange_once(port, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
                                   "Connection: close\r\n\r\n");
        post_with_body =
            exchange_once(port, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n"
                                "Connection: close\r\n\r\nhello world");
        post_unknown = exchange_once(port, "DELETE /nope HTTP/1.1\r\nHost: t\r\n"
                                           "Connection: close\r\n\r\n");
    });

    REQUIRE(unknown.response);
    CHECK(unknown.response->status == 404);
    REQUIRE(post.response);
    CHECK(post.response->status == 405);
    CHECK(post.response->header("allow") == "GET, HEAD");
    REQUIRE(post_with_body.response);
    CHECK(post_with_body.response->status == 405);
    REQUIRE(post_unknown.response);
    CHECK(post_unknown.response->status == 404);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server answers HEAD with the GET headers and no body", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    Exchange head;
    harness.run_client([&] {
        head = exchange_once(port, "HEAD /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                             true);
    });

    REQUIRE(head.response);
    CHECK(head.response->status == 200);
    CHECK(head.response->header("content-length") == "15");
    CHECK(head.response->body.empty());
    // exchange_once() checked that nothing followed the head before the server closed.
    CHECK(head.raw.ends_with("\r\n\r\n"));

    harness.close_server_and_loop(server);
}

TEST_CASE("http server keeps a connection alive across requests", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::vector<ClientResponse> responses;
    int fd = -1;
    harness.run_client([&] {
        fd = connect_to(port);
        std::string buffer;
        for (int i = 1; i <= 2; ++i) {
            send_all(fd, get("/echo?n=" + std::to_string(i)));
            auto response = take_response(fd, buffer);
            if (!response) {
                throw std::runtime_error("connection closed after request " + std::to_string(i));
            }
            responses.push_back(*response);
        }
        // HTTP/1.0 asks for keep-alive explicitly and must be told it got it.
        send_all(fd, "GET /echo?n=3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        auto response = take_response(fd, buffer);
        if (!response) {
            throw std::runtime_error("connection closed after the HTTP/1.0 request");
        }
        responses.push_back(*response);
    });

    REQUIRE(responses.size() == 3);
    CHECK(responses[0].body == "GET /echo n=1");
    CHECK(responses[1].body == "GET /echo n=2");
    CHECK(responses[0].header("connection").empty());
    CHECK(responses[2].body == "GET /echo n=3");
    // libmicrohttpd spells it "Keep-Alive"; header values of this kind are case-insensitive.
    CHECK(lower(responses[2].header("connection")) == "keep-alive");
    // The same connection served all of them and is still open.
    CHECK(server.connection_count() == 1);
    close(fd);
    CHECK(harness.run_until([&] { return server.connection_count() == 0; }, 5s));

    harness.close_server_and_loop(server);
}

TEST_CASE("http server closes HTTP/1.0 connections by default and honours Connection: close",
          "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::string raw_1_0;
    std::string raw_close;
    harness.run_client([&] {
        int fd = connect_to(port);
        // A second request after the first must not be answered: the server closes.
        send_all(fd, "GET /echo?v=10 HTTP/1.0\r\n\r\n");
        raw_1_0 = read_until_close(fd);
        close(fd);
        fd = connect_to(port);
        send_all(fd, get("/echo?v=11", "Connection: close\r\n") + get("/echo?v=ignored"));
        raw_close = read_until_close(fd);
        close(fd);
    });

    std::string buffer = raw_1_0;
    auto first = take_response(-1, buffer);
    REQUIRE(first);
    CHECK(first->header("connection") == "close");
    CHECK(buffer.empty());
    buffer = raw_close;
    auto second = take_response(-1, buffer);
    REQUIRE(second);
    CHECK(second->body == "GET /echo v=11");
    CHECK(second->header("connection") == "close");
    CHECK(buffer.empty());
    CHECK(service.calls == 2);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server answers pipelined requests in order", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::string raw;
    harness.run_client([&] {
        int fd = connect_to(port);
        send_all(fd, get("/echo?n=1") + get("/nope") +
                         "HEAD /echo?n=3 HTTP/1.1\r\nHost: t\r\n\r\n" + get("/echo?n=4") +
                         get("/echo?n=5", "Connection: close\r\n"));
        raw = read_until_close(fd);
        close(fd);
    });

    std::string buffer = raw;
    auto r1 = take_response(-1, buffer);
    auto r2 = take_response(-1, buffer);
    auto r3 = take_response(-1, buffer, true);
    auto r4 = take_response(-1, buffer);
    auto r5 = take_response(-1, buffer);
    REQUIRE((r1 && r2 && r3 && r4 && r5));
    CHECK(r1->body == "GET /echo n=1");
    CHECK(r2->status == 404);
    CHECK(r3->status == 200);
    CHECK(r3->header("content-length") == std::to_string(std::string("HEAD /echo n=3").size()));
    CHECK(r4->body == "GET /echo n=4");
    CHECK(r5->body == "GET /echo n=5");
    CHECK(buffer.empty());

    harness.close_server_and_loop(server);
}

TEST_CASE("http server refuses malformed requests and closes", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServerLimits limits = test_limits();
    limits.idle_timeout_ms = 500;
    HttpServer server(&harness.loop, limits, service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    // Answered 400: by libmicrohttpd (a header line without a colon), or by the server (a target
    // with a space, a repeated Content-Length, Content-Length beside Transfer-Encoding: both are
    // ways to smuggle a request past a proxy that reads the framing differently).
    std::vector<std::string> answered = {
        "GET /health HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n",
        "GET /he alth HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET he/alth HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
        "\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n",
        // libmicrohttpd 0.9.75 repeats the head of this one (fuzz/fuzz_http.h); the status holds.
        "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        // A NUL inside the method, which would make the handler see "HEAD".
        std::string("HEAD\0x /health HTTP/1.1\r\nHost: t\r\n\r\n", 36),
    };
    // Closed without an answer: libmicrohttpd drops a request line without a target at once,
    // and bytes that never end a line (the start of a TLS ClientHello) at the request deadline.
    std::vector<std::string> dropped = {
        "GARBAGE\r\n\r\n",
        "\x16\x03\x01\x02",
    };
    std::vector<std::string> answered_raws;
    std::vector<std::string> dropped_raws;
    Exchange after;
    harness.run_client([&] {
        for (const auto* list : {&answered, &dropped}) {
            for (const std::string& request : *list) {
                int fd = connect_to(port);
                send_all(fd, request);
                (list == &answered ? answered_raws : dropped_raws).push_back(read_until_close(fd));
                close(fd);
            }
        }
        after = exchange_once(port, get("/health", "Connection: close\r\n"));
    });

    REQUIRE(answered_raws.size() == answered.size());
    for (std::size_t i = 0; i < answered_raws.size(); ++i) {
        INFO("request " << i << ": " << answered[i]);
        std::string buffer = answered_raws[i];
        auto response = take_response(-1, buffer);
        REQUIRE(response);
        CHECK(response->status == 400);
        CHECK(lower(response->header("connection")) == "close");
    }
    for (const std::string& raw : dropped_raws) {
        CHECK(raw.empty());
    }
    REQUIRE(after.response);
    CHECK(after.response->status == 200);
    CHECK(service.calls == 1);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server answers HTTP versions other than 1.x with 505", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    Exchange future;
    Exchange later_minor;
    harness.run_client([&] {
        future = exchange_once(port, "GET /health HTTP/2.0\r\nHost: t\r\n\r\n");
        later_minor = exchange_once(port, "GET /health HTTP/1.2\r\nConnection: close\r\n\r\n");
    });

    REQUIRE(future.response);
    CHECK(future.response->status == 505);
    REQUIRE(later_minor.response);
    CHECK(later_minor.response->status == 200);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server refuses oversized heads with 431 and keeps serving", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::string huge_headers_raw;
    std::string huge_value_raw;
    std::string many_headers_raw;
    std::string long_url_raw;
    Exchange after;
    harness.run_client([&] {
        // One megabyte of headers, sent in full: the server must answer once it has seen 8 KiB
        // and drain the rest, so that the client can read why it was refused.
        std::string request = "GET /health HTTP/1.1\r\nHost: t\r\n";
        while (request.size() < 1024 * 1024) {
            request +=
                "X-Pad-" + std::to_string(request.size()) + ": " + std::string(100, 'a') + "\r\n";
        }
        request += "\r\n";
        int fd = connect_to(port);
        send_all(fd, request);
        huge_headers_raw = read_until_close(fd);
        close(fd);

        fd = connect_to(port);
        send_all(fd,
                 "GET /health HTTP/1.1\r\nX-Big: " + std::string(1024 * 1024, 'b') + "\r\n\r\n");
        huge_value_raw = read_until_close(fd);
        close(fd);

        std::string many = "GET /health HTTP/1.1\r\n";
        for (int i = 0; i < 101; ++i) {
            many += "X-" + std::to_string(i) + ": v\r\n";
        }
        many += "\r\n";
        fd = connect_to(port);
        send_all(fd, many);
        many_headers_raw = read_until_close(fd);
        close(fd);

        fd = connect_to(port);
        send_all(fd, get("/" + std::string(9000, 'u')));
        long_url_raw = read_until_close(fd);
        close(fd);

        after = exchange_once(port, get("/health", "Connection: close\r\n"));
    });

    for (const std::string* raw :
         {&huge_headers_raw, &huge_value_raw, &many_headers_raw, &long_url_raw}) {
        std::string buffer = *raw;
        auto response = take_response(-1, buffer);
        REQUIRE(response);
        CHECK(response->status == 431);
        CHECK(response->header("connection") == "close");
    }
    REQUIRE(after.response);
    CHECK(after.response->status == 200);
    CHECK(service.calls == 1);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server accepts up to the header count limit", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    Exchange exchange;
    harness.run_client([&] {
        std::string request = "GET /health HTTP/1.1\r\nConnection: close\r\n";
        for (int i = 0; i < 99; ++i) {
            request += "X-" + std::to_string(i) + ": v\r\n";
        }
        exchange = exchange_once(port, request + "\r\n");
    });

    REQUIRE(exchange.response);
    CHECK(exchange.response->status == 200);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server refuses oversized bodies with 413", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServerLimits limits = test_limits();
    limits.max_body_bytes = 4 * 1024;
    HttpServer server(&harness.loop, limits, service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::string declared_raw;
    std::string chunked_raw;
    harness.run_client([&] {
        int fd = connect_to(port);
        send_all(fd, "POST /health HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
        declared_raw = read_until_close(fd);
        close(fd);

        // A chunked body declares no length and is counted as it arrives.
        fd = connect_to(port);
        std::string chunked = "POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (int i = 0; i < 10; ++i) {
            chunked += "400\r\n" + std::string(1024, 'c') + "\r\n";
        }
        chunked += "0\r\n\r\n";
        send_all(fd, chunked);
        chunked_raw = read_until_close(fd);
        close(fd);
    });

    for (const std::string* raw : {&declared_raw, &chunked_raw}) {
        std::string buffer = *raw;
        auto response = take_response(-1, buffer);
        REQUIRE(response);
        CHECK(response->status == 413);
    }
    CHECK(service.calls == 0);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server answers 500 when the handler throws or misbehaves", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    Exchange thrown;
    Exchange bad_header;
    harness.run_client([&] {
        thrown = exchange_once(port, get("/throws", "Connection: close\r\n"));
        bad_header = exchange_once(port, get("/bad-header", "Connection: close\r\n"));
    });

    REQUIRE(thrown.response);
    CHECK(thrown.response->status == 500);
    REQUIRE(bad_header.response);
    CHECK(bad_header.response->status == 200);
    CHECK(bad_header.response->header("content-length") == "2");
    CHECK(bad_header.response->header("x-fine") == "yes");
    CHECK(bad_header.response->header("x-injected").empty());
    CHECK(bad_header.response->header("set-cookie").empty());

    harness.close_server_and_loop(server);
}

TEST_CASE("http server holds connections beyond the connection limit back", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServerLimits limits = test_limits();
    limits.max_connections = 2;
    HttpServer server(&harness.loop, limits, service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    // At the limit libmicrohttpd stops accepting: a third client completes its handshake with
    // the kernel but waits, unanswered, in the listen backlog until a connection closes.
    bool third_waited = false;
    std::optional<ClientResponse> third_response;
    int a = -1;
    int b = -1;
    harness.run_client([&] {
        std::string buffer;
        a = connect_to(port);
        send_all(a, get("/echo?c=a"));
        if (!take_response(a, buffer)) {
            throw std::runtime_error("first connection not served");
        }
        b = connect_to(port);
        send_all(b, get("/echo?c=b"));
        if (!take_response(b, buffer)) {
            throw std::runtime_error("second connection not served");
        }
        int c = connect_to(port);
        send_all(c, get("/echo?c=c"));
        third_waited = silent_for(c, 300ms);
        close(a);
        std::string third_buffer;
        third_response = take_response(c, third_buffer);
        close(c);
    });

    CHECK(third_waited);
    REQUIRE(third_response);
    CHECK(third_response->body == "GET /echo c=c");
    CHECK(server.connection_count() <= 2);
    close(b);
    CHECK(harness.run_until([&] { return server.connection_count() == 0; }, 5s));

    harness.close_server_and_loop(server);
}

TEST_CASE("http server closes clients that do not complete a request in time", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServerLimits limits = test_limits();
    limits.idle_timeout_ms = 300;
    HttpServer server(&harness.loop, limits, service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    auto elapsed_ms = [](Clock::time_point start) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    };
    long silent_ms = 0;
    bool silent_closed = false;
    long trickle_ms = 0;
    long idle_keepalive_ms = 0;
    bool idle_keepalive_closed = false;
    harness.run_client([&] {
        // Half a request, then silence.
        auto start = Clock::now();
        int fd = connect_to(port);
        send_all(fd, "GET /health HTTP/1.1\r\nHost: t\r\n");
        silent_closed = closed_without_data(fd);
        silent_ms = elapsed_ms(start);
        close(fd);

        // Slowloris: a byte every 50 ms keeps data flowing but never completes the head.
        start = Clock::now();
        fd = connect_to(port);
        std::string header = "GET /health HTTP/1.1\r\nX-Slow: ";
        send_all(fd, header);
        while (send(fd, "a", 1, MSG_NOSIGNAL) == 1 && elapsed_ms(start) < 5000) {
            std::this_thread::sleep_for(50ms);
        }
        trickle_ms = elapsed_ms(start);
        close(fd);

        // A kept-alive connection that sends nothing more is closed as well.
        fd = connect_to(port);
        std::string buffer;
        send_all(fd, get("/health"));
        if (!take_response(fd, buffer)) {
            throw std::runtime_error("keep-alive request not served");
        }
        start = Clock::now();
        idle_keepalive_closed = closed_without_data(fd);
        idle_keepalive_ms = elapsed_ms(start);
        close(fd);
    });

    CHECK(silent_closed);
    CHECK(silent_ms >= 250);
    CHECK(silent_ms < 3000);
    // The trickle stops when a send fails because the server has closed the connection.
    CHECK(trickle_ms < 3000);
    CHECK(idle_keepalive_closed);
    CHECK(idle_keepalive_ms >= 150);
    CHECK(idle_keepalive_ms < 3000);
    CHECK(service.calls == 1);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server stops reading from a client that does not read its responses", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    // 64 pipelined requests for 1 MiB each: far more than the kernel's socket buffers hold, so
    // a server that parsed all of them at once would queue 64 MiB for this one client.
    constexpr int kRequests = 64;
    std::atomic<bool> sent{false};
    std::atomic<bool> may_read{false};
    int complete = 0;
    harness.start([&] {
        int fd = connect_to(port);
        std::string requests;
        for (int i = 0; i < kRequests - 1; ++i) {
            requests += get("/big");
        }
        requests += get("/big", "Connection: close\r\n");
        send_all(fd, requests);
        sent = true;
        while (!may_read) {
            std::this_thread::sleep_for(5ms);
        }
        std::string buffer;
        while (auto response = take_response(fd, buffer)) {
            if (response->status != 200 || response->body.size() != kBigBodySize) {
                throw std::runtime_error("unexpected response while draining");
            }
            ++complete;
        }
        close(fd);
    });

    REQUIRE(harness.run_until([&] { return sent.load(); }, 5s));
    // Give the server every chance to run ahead; it must not answer everything while the client
    // is not reading.
    harness.run_until([&] { return service.calls >= kRequests; }, 500ms);
    CHECK(service.calls < kRequests / 2);
    may_read = true;
    harness.join();

    CHECK(complete == kRequests);
    CHECK(service.calls == kRequests);

    harness.close_server_and_loop(server);
}

TEST_CASE("http server close() ends every connection and reports when all is closed", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    int idle = -1;
    int partial = -1;
    harness.run_client([&] {
        idle = connect_to(port);
        std::string buffer;
        send_all(idle, get("/health"));
        if (!take_response(idle, buffer)) {
            throw std::runtime_error("request not served");
        }
        partial = connect_to(port);
        send_all(partial, "GET /health HTTP/1.1\r\n");
    });
    REQUIRE(harness.run_until([&] { return server.connection_count() == 2; }, 5s));

    bool closed = false;
    int closed_calls = 0;
    server.close([&] {
        closed = true;
        ++closed_calls;
    });
    REQUIRE(harness.run_until([&] { return closed; }, 5s));
    CHECK(closed_calls == 1);
    CHECK(server.connection_count() == 0);
    CHECK(server.bound_port() == 0);

    bool idle_closed = false;
    bool partial_closed = false;
    harness.run_client([&] {
        idle_closed = closed_without_data(idle);
        partial_closed = closed_without_data(partial);
        close(idle);
        close(partial);
    });
    CHECK(idle_closed);
    CHECK(partial_closed);

    // A second close() after everything is closed calls back at once.
    bool again = false;
    server.close([&] { again = true; });
    CHECK(again);
    harness.close_loop();
}

TEST_CASE("http server destroyed without close() still frees its handles", "[http]") {
    LoopHarness harness;
    TestService service;
    auto server = std::make_unique<HttpServer>(&harness.loop, test_limits(), service.handler());
    REQUIRE(server->listen("127.0.0.1", 0) == 0);
    int port = server->bound_port();
    int fd = -1;
    harness.run_client([&] { fd = connect_to(port); });
    REQUIRE(harness.run_until([&] { return server->connection_count() == 1; }, 5s));

    server.reset();
    harness.close_loop();
    close(fd);
}

TEST_CASE("http server listens on IPv6 and localhost and reports bind errors", "[http]") {
    LoopHarness harness;
    TestService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    HttpServer second(&harness.loop, test_limits(), service.handler());
    HttpServer invalid(&harness.loop, test_limits(), service.handler());

    CHECK(invalid.listen("not-an-address", 0) == UV_EINVAL);
    CHECK(invalid.listen("127.0.0.1", 70000) == UV_EINVAL);

    int rc = server.listen("[::1]", 0);
    bool ipv6 = rc == 0;
    if (!ipv6) {
        // A machine without IPv6 loopback: check localhost instead.
        WARN("IPv6 loopback unavailable: " << uv_strerror(rc));
        REQUIRE(server.listen("localhost", 0) == 0);
    }
    int port = server.bound_port();
    REQUIRE(port > 0);
    CHECK(second.listen(ipv6 ? "::1" : "127.0.0.1", port) == UV_EADDRINUSE);
    REQUIRE(second.listen("localhost", 0) == 0);
    int second_port = second.bound_port();

    std::string raw;
    Exchange local;
    harness.run_client([&] {
        int fd = connect_to(port, ipv6 ? AF_INET6 : AF_INET);
        send_all(fd, get("/health", "Connection: close\r\n"));
        raw = read_until_close(fd);
        close(fd);
        local = exchange_once(second_port, get("/health", "Connection: close\r\n"));
    });
    CHECK(raw.starts_with("HTTP/1.1 200 OK\r\n"));
    REQUIRE(local.response);
    CHECK(local.response->status == 200);

    int pending = 3;
    for (HttpServer* s : {&server, &second, &invalid}) {
        s->close([&pending] { --pending; });
    }
    REQUIRE(harness.run_until([&] { return pending == 0; }, 5s));
    harness.close_loop();
}

namespace {

// Routes that answer later, drop their reply or echo the request, for the asynchronous paths.
struct AsyncService {
    int calls = 0;
    HttpRouter router;
    std::vector<HttpReply> held; // replies of GET /later, answered by the test

    AsyncService() {
        router.handle("GET", "/later", [this](const HttpRequest&, HttpReply reply) {
            held.push_back(std::move(reply));
        });
        router.handle("GET", "/drop", [](const HttpRequest&, HttpReply) {});
        router.handle("POST", "/echo", [](const HttpRequest& request, HttpReply reply) {
            std::string headers;
            for (const auto& [name, value] : request.headers) {
                headers += name + "=" + value + ";";
            }
            const std::string* custom = request.header("x-custom");
            reply.send(HttpResponse{.status = 200,
                                    .content_type = "text/plain",
                                    .body = std::to_string(request.body.size()) + " " +
                                            std::to_string(std::hash<std::string>{}(request.body)),
                                    .headers = {{"X-Custom-Seen", custom ? *custom : "-"},
                                                {"X-Client", request.client_address},
                                                {"X-Headers", headers}}});
        });
        router.handle("POST", "/api/events/*", [](const HttpRequest& request, HttpReply reply) {
            reply.send(HttpResponse{.status = 202,
                                    .content_type = "text/plain",
                                    .body = "event action " + request.path,
                                    .headers = {}});
        });
        router.get("/api/events/*", [](const HttpRequest& request) {
            return HttpResponse{.status = 200,
                                .content_type = "text/plain",
                                .body = "event " + request.path,
                                .headers = {}};
        });
        router.handle("POST", "/api/pause", [](const HttpRequest&, HttpReply reply) {
            reply.send(HttpResponse{
                .status = 200, .content_type = "text/plain", .body = "paused", .headers = {}});
        });
    }

    HttpServer::Handler handler() {
        return [this](const HttpRequest& request, HttpReply reply) {
            ++calls;
            router.dispatch(request, std::move(reply));
        };
    }
};

} // namespace

TEST_CASE("http server sends a reply that the handler answers later", "[http]") {
    LoopHarness harness;
    AsyncService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::optional<ClientResponse> first;
    std::optional<ClientResponse> second;
    int fd = -1;
    harness.start([&] {
        fd = connect_to(port);
        std::string buffer;
        send_all(fd, get("/later"));
        first = take_response(fd, buffer);
        // The same connection serves the next request once the suspended one is answered.
        send_all(fd, get("/later", "Connection: close\r\n"));
        second = take_response(fd, buffer);
        close(fd);
    });
    REQUIRE(harness.run_until([&] { return service.held.size() == 1; }, 5s));
    // The request is held while the loop goes on; a timer answers it, as a database reply would.
    REQUIRE(service.held[0].pending());
    Timer answer(&harness.loop, [&] {
        service.held[0].send(HttpResponse{
            .status = 201, .content_type = "text/plain", .body = "made", .headers = {}});
    });
    answer.start(50);
    REQUIRE(harness.run_until([&] { return service.held.size() == 2; }, 5s));
    CHECK_FALSE(service.held[0].pending());
    service.held[1].send(http_status_response(503));
    // A second send() on one reply does nothing.
    service.held[1].send(http_status_response(200));
    harness.join();

    REQUIRE(first);
    CHECK(first->status == 201);
    CHECK(first->body == "made");
    CHECK(first->header("server") == "outbox-worker");
    REQUIRE(second);
    CHECK(second->status == 503);
    CHECK(second->body == "Service Unavailable\n");
    answer.close();
    service.held.clear();
    harness.close_server_and_loop(server);
}

TEST_CASE("http server drops a reply whose client has gone", "[http]") {
    LoopHarness harness;
    AsyncService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    harness.run_client([&] {
        int fd = connect_to(port);
        send_all(fd, get("/later"));
        int other = connect_to(port);
        send_all(other, get("/later"));
        close(fd);
        close(other);
    });
    REQUIRE(harness.run_until([&] { return service.held.size() == 2; }, 5s));
    // A suspended connection is not watched, so the server learns that its client left only
    // when it writes the answer, or (for the second) when the reply is dropped unsent.
    service.held[0].send(HttpResponse{.status = 200,
                                      .content_type = "text/plain",
                                      .body = std::string(100000, 'x'),
                                      .headers = {}});
    CHECK_FALSE(service.held[0].pending());
    service.held.clear();
    CHECK(harness.run_until([&] { return server.connection_count() == 0; }, 5s));

    // The server is none the worse.
    Exchange after;
    harness.run_client([&] {
        after = exchange_once(port, "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n"
                                    "Connection: close\r\n\r\nhi");
    });
    REQUIRE(after.response);
    CHECK(after.response->status == 200);
    harness.close_server_and_loop(server);
}

TEST_CASE("http server answers 500 for a reply destroyed unsent", "[http]") {
    LoopHarness harness;
    AsyncService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    Exchange dropped_at_once;
    std::optional<ClientResponse> dropped_later;
    harness.start([&] {
        dropped_at_once = exchange_once(port, get("/drop", "Connection: close\r\n"));
        int fd = connect_to(port);
        std::string buffer;
        send_all(fd, get("/later", "Connection: close\r\n"));
        dropped_later = take_response(fd, buffer);
        close(fd);
    });
    REQUIRE(harness.run_until([&] { return service.held.size() == 1; }, 5s));
    service.held.clear(); // destroys the held reply
    harness.join();

    REQUIRE(dropped_at_once.response);
    CHECK(dropped_at_once.response->status == 500);
    REQUIRE(dropped_later);
    CHECK(dropped_later->status == 500);
    CHECK(dropped_later->header("server") == "outbox-worker");
    harness.close_server_and_loop(server);
}

TEST_CASE("http server hands the handler the whole body, headers and client", "[http]") {
    LoopHarness harness;
    AsyncService service;
    HttpServerLimits limits = test_limits();
    limits.max_body_bytes = 40000;
    HttpServer server(&harness.loop, limits, service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::string body;
    for (int i = 0; body.size() < 40000; ++i) {
        body += std::to_string(i) + ",";
    }
    body.resize(40000); // exactly the limit
    const std::string expected =
        std::to_string(body.size()) + " " + std::to_string(std::hash<std::string>{}(body));
    std::string chunked_body;
    for (std::size_t at = 0; at < body.size(); at += 3000) {
        std::string piece = body.substr(at, 3000);
        char size[16];
        std::snprintf(size, sizeof size, "%zx", piece.size());
        chunked_body += std::string(size) + "\r\n" + piece + "\r\n";
    }
    chunked_body += "0\r\n\r\n";

    std::optional<ClientResponse> declared;
    std::optional<ClientResponse> chunked;
    std::optional<ClientResponse> over;
    harness.run_client([&] {
        int fd = connect_to(port);
        std::string buffer;
        // The body arrives in pieces across many reads.
        std::string head = "POST /echo HTTP/1.1\r\nHost: t\r\nX-CUSTOM: Mixed Case\r\n"
                           "x-second: 2\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n";
        send_all(fd, head);
        for (std::size_t at = 0; at < body.size(); at += 7000) {
            send_all(fd, std::string_view(body).substr(at, 7000));
            std::this_thread::sleep_for(2ms);
        }
        declared = take_response(fd, buffer);
        send_all(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
                         chunked_body);
        chunked = take_response(fd, buffer);
        // One byte over the limit.
        send_all(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
                         chunked_body.substr(0, chunked_body.size() - 5) + "1\r\nx\r\n0\r\n\r\n");
        over = take_response(fd, buffer);
        close(fd);
    });

    REQUIRE(declared);
    CHECK(declared->status == 200);
    CHECK(declared->body == expected);
    CHECK(declared->header("x-custom-seen") == "Mixed Case");
    CHECK(declared->header("x-client") == "127.0.0.1");
    // Names lower-cased, in the order sent.
    CHECK(declared->header("x-headers").starts_with("host=t;x-custom=Mixed Case;x-second=2;"));
    REQUIRE(chunked);
    CHECK(chunked->body == expected);
    CHECK(chunked->header("x-custom-seen") == "-");
    REQUIRE(over);
    CHECK(over->status == 413);
    CHECK(lower(over->header("connection")) == "close");
    CHECK(service.calls == 2);
    harness.close_server_and_loop(server);
}

TEST_CASE("http request decodes query parameters and finds headers", "[http]") {
    HttpRequest request;
    request.query = "a=1&b=hello+world%21&c&d=%zz%4&e=%41%42&a=2&f%5B%5D=x&empty=";
    request.headers = {{"content-type", "application/json"}, {"x-twice", "1"}, {"x-twice", "2"}};
    CHECK(request.query_param("a") == "1");
    CHECK(request.query_param("b") == "hello world!");
    CHECK(request.query_param("c") == "");
    CHECK(request.query_param("d") == "%zz%4");
    CHECK(request.query_param("e") == "AB");
    CHECK(request.query_param("f[]") == "x");
    CHECK(request.query_param("empty") == "");
    CHECK_FALSE(request.query_param("missing"));
    CHECK_FALSE(HttpRequest{}.query_param("a"));
    REQUIRE(request.header("content-type") != nullptr);
    CHECK(*request.header("content-type") == "application/json");
    CHECK(*request.header("x-twice") == "1");
    CHECK(request.header("Content-Type") == nullptr); // the caller passes the lower-case name
}

TEST_CASE("http router matches prefixes and answers 405 with the allowed methods", "[http]") {
    LoopHarness harness;
    AsyncService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    std::map<std::string, Exchange> exchanges;
    const std::vector<std::pair<std::string, std::string>> requests = {
        {"post-event", "POST /api/events/42/retry HTTP/1.1\r\nContent-Length: 0\r\n"},
        {"get-event", "GET /api/events/42 HTTP/1.1\r\n"},
        {"head-event", "HEAD /api/events/42 HTTP/1.1\r\n"},
        {"delete-event", "DELETE /api/events/42 HTTP/1.1\r\n"},
        {"get-pause", "GET /api/pause HTTP/1.1\r\n"},
        {"post-pause", "POST /api/pause HTTP/1.1\r\nContent-Length: 0\r\n"},
        {"prefix-itself", "GET /api/events/ HTTP/1.1\r\n"},
        {"not-prefix", "GET /api/events HTTP/1.1\r\n"},
        {"pause-longer", "POST /api/pause/x HTTP/1.1\r\nContent-Length: 0\r\n"},
    };
    harness.run_client([&] {
        for (const auto& [name, head] : requests) {
            exchanges[name] =
                exchange_once(port, head + "Connection: close\r\n\r\n", head.starts_with("HEAD"));
        }
    });

    auto status = [&](const std::string& name) {
        REQUIRE(exchanges[name].response);
        return exchanges[name].response->status;
    };
    CHECK(status("post-event") == 202);
    CHECK(exchanges["post-event"].response->body == "event action /api/events/42/retry");
    CHECK(status("get-event") == 200);
    CHECK(exchanges["get-event"].response->body == "event /api/events/42");
    CHECK(status("head-event") == 200);
    CHECK(status("delete-event") == 405);
    CHECK(exchanges["delete-event"].response->header("allow") == "POST, GET, HEAD");
    CHECK(status("get-pause") == 405);
    CHECK(exchanges["get-pause"].response->header("allow") == "POST");
    CHECK(status("post-pause") == 200);
    CHECK(status("prefix-itself") == 200);
    CHECK(status("not-prefix") == 404);
    CHECK(status("pause-longer") == 404);
    harness.close_server_and_loop(server);
}

TEST_CASE("http server close() abandons a suspended request", "[http]") {
    LoopHarness harness;
    AsyncService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    int fd = -1;
    harness.run_client([&] {
        fd = connect_to(port);
        send_all(fd, get("/later"));
    });
    REQUIRE(harness.run_until([&] { return service.held.size() == 1; }, 5s));
    CHECK(server.connection_count() == 1);

    bool closed = false;
    server.close([&] { closed = true; });
    // At once, not only when the loop has run: the reply can no longer reach anyone.
    CHECK_FALSE(service.held[0].pending());
    service.held[0].send(http_status_response(200)); // does nothing
    REQUIRE(harness.run_until([&] { return closed; }, 5s));
    CHECK(server.connection_count() == 0);
    CHECK(server.bound_port() == 0);
    service.held.clear();

    bool client_saw_close = false;
    harness.run_client([&] {
        client_saw_close = closed_without_data(fd);
        close(fd);
    });
    CHECK(client_saw_close);
    harness.close_loop();
}

TEST_CASE("http server may be closed by its handler", "[http]") {
    LoopHarness harness;
    bool closed = false;
    std::unique_ptr<HttpServer> server;
    server = std::make_unique<HttpServer>(&harness.loop, test_limits(),
                                          [&](const HttpRequest&, HttpReply reply) {
                                              reply.send(http_status_response(200));
                                              server->close([&] { closed = true; });
                                          });
    REQUIRE(server->listen("127.0.0.1", 0) == 0);
    int port = server->bound_port();

    std::string raw;
    harness.start([&] {
        int fd = connect_to(port);
        send_all(fd, get("/"));
        raw = read_until_close(fd);
        close(fd);
    });
    REQUIRE(harness.run_until([&] { return closed; }, 5s));
    harness.join();
    // Closing abandons the answer the handler had just sent.
    CHECK(raw.empty());
    server.reset();
    harness.close_loop();
}

TEST_CASE("http server answers a client that half-closes and then lets it go", "[http]") {
    LoopHarness harness;
    AsyncService service;
    HttpServer server(&harness.loop, test_limits(), service.handler());
    REQUIRE(server.listen("127.0.0.1", 0) == 0);
    int port = server.bound_port();

    // The end of the stream arrives with the requests, in one read; the server must still
    // answer every request, the held one too, and then close well before its 10 s timeout.
    std::string raw;
    Clock::time_point start;
    long closed_after_ms = 0;
    harness.start([&] {
        int fd = connect_to(port);
        start = Clock::now();
        send_all(fd, "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi" + get("/later"));
        shutdown(fd, SHUT_WR);
        raw = read_until_close(fd);
        closed_after_ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
        close(fd);
    });
    REQUIRE(harness.run_until([&] { return service.held.size() == 1; }, 5s));
    Timer answer(&harness.loop, [&] {
        service.held[0].send(HttpResponse{
            .status = 200, .content_type = "text/plain", .body = "late", .headers = {}});
    });
    answer.start(100);
    harness.join();

    std::string buffer = raw;
    auto first = take_response(-1, buffer);
    auto second = take_response(-1, buffer);
    REQUIRE((first && second));
    CHECK(first->status == 200);
    CHECK(second->body == "late");
    CHECK(buffer.empty());
    CHECK(closed_after_ms < 3000);
    CHECK(harness.run_until([&] { return server.connection_count() == 0; }, 5s));
    answer.close();
    service.held.clear();
    harness.close_server_and_loop(server);
}
