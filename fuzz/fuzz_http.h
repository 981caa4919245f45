// Fuzz entry for the supervisor's HTTP server (supervisor/http_server.h). fuzz/fuzz_http.cpp
// hands it libFuzzer's inputs; tests/unit/fuzz_regressions_test.cpp replays saved inputs.
//
// The server keeps its parsing inside the connection, behind a real socket, so the input goes
// the way a client's bytes do: one HttpServer, started once on its own loop and bound to
// 127.0.0.1 on a free port, gets a new TCP connection per input. The client writes the input (in
// pieces of a size picked from the input's hash, so that requests are split across reads), shuts
// down its sending side and reads until the server closes, running the server's loop in between
// from this same thread. Everything is bounded: the server's own limits are small (so that inputs
// of a few hundred bytes reach them), and a connection that outlives kConnectionDeadline is a
// server that failed to time out, which aborts like any broken invariant.
//
// What the client received is then parsed as HTTP responses: every response must be well-formed
// and carry the server's headers, there is one per request the handler saw (in order, with no
// body for HEAD) plus at most one final error, and the server holds no connection afterwards.
#pragma once

#include "fuzz/fuzz_check.h"
#include "supervisor/http_server.h"

#include <http_parser.h>
#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace outbox::fuzz {

namespace http_detail {

using Clock = std::chrono::steady_clock;

// Limits small enough that a short input crosses each of them.
inline HttpServerLimits fuzz_limits() {
    HttpServerLimits limits;
    limits.max_head_bytes = 512;
    limits.max_headers = 8;
    limits.max_body_bytes = 64;
    limits.max_connections = 4;
    limits.idle_timeout_ms = 1000;
    limits.max_requests_per_connection = 6;
    limits.max_unsent_bytes = 4096;
    limits.linger_timeout_ms = 200;
    return limits;
}

// Far beyond idle_timeout_ms plus linger_timeout_ms, the longest the server may legitimately keep
// a connection whose client has stopped sending, so that a slow machine does not fail the run.
inline constexpr std::chrono::seconds kConnectionDeadline{10};

// Bigger than max_unsent_bytes, so that two pipelined requests for it pause the parser.
inline constexpr std::size_t kLargeBodyBytes = 6000;

struct RequestSeen {
    std::string method;
    std::string path;
};

// The server and its loop serve every input: starting a server per input would cost a bind and a
// port each time. Under libFuzzer they live as long as the process; the replay test closes them
// with close_fixture() to check that the server leaves nothing open.
struct Fixture {
    uv_loop_t loop{};
    HttpServer* server = nullptr;
    int port = 0;
    // The requests the handler received during the current input, in order.
    std::vector<RequestSeen> requests;
};

inline Fixture*& fixture_slot() {
    static Fixture* instance = nullptr;
    return instance;
}

inline Fixture& fixture() {
    Fixture*& slot = fixture_slot();
    if (slot == nullptr) {
        auto* created = new Fixture;
        if (uv_loop_init(&created->loop) != 0) {
            throw std::runtime_error("uv_loop_init failed");
        }
        HttpRouter router;
        router.get("/healthz", [](const HttpRequest&) {
            HttpResponse response;
            response.body = "ok\n";
            return response;
        });
        router.get("/metrics", [](const HttpRequest&) {
            HttpResponse response;
            response.content_type = "text/plain; version=0.0.4";
            response.body.assign(kLargeBodyBytes, 'm');
            return response;
        });
        router.get("/headers", [](const HttpRequest&) {
            // Headers the server must drop: it owns Content-Length, and a line break would
            // let a handler inject headers.
            HttpResponse response;
            response.status = 503;
            response.body = "unavailable\n";
            response.headers = {{"Retry-After", "1"},
                                {"Content-Length", "0"},
                                {"X-Split", "a\r\nInjected: yes"},
                                {"Bad Name", "x"}};
            return response;
        });
        router.get("/throw", [](const HttpRequest&) -> HttpResponse {
            throw std::runtime_error("handler failure wanted by the fuzz target");
        });
        router.get("/empty", [](const HttpRequest&) {
            HttpResponse response;
            response.status = 204;
            response.content_type.clear();
            return response;
        });
        created->server =
            new HttpServer(&created->loop, fuzz_limits(),
                           [created, router = std::move(router)](const HttpRequest& request) {
                               created->requests.push_back({request.method, request.path});
                               return router.dispatch(request);
                           });
        if (created->server->listen("127.0.0.1", 0) != 0) {
            throw std::runtime_error("the fuzzed HTTP server cannot listen on 127.0.0.1");
        }
        created->port = created->server->bound_port();
        slot = created;
    }
    return *slot;
}

// Closes the server and then the loop, which fails when the server left a handle open. The next
// fixture() starts afresh.
inline void close_fixture() {
    Fixture*& slot = fixture_slot();
    if (slot == nullptr) {
        return;
    }
    bool closed = false;
    slot->server->close([&closed] { closed = true; });
    const auto deadline = Clock::now() + kConnectionDeadline;
    while (!closed) {
        OUTBOX_FUZZ_CHECK(Clock::now() < deadline, "the HTTP server did not finish closing");
        uv_run(&slot->loop, UV_RUN_ONCE);
    }
    delete slot->server;
    const int rc = uv_loop_close(&slot->loop);
    OUTBOX_FUZZ_CHECK(rc == 0, "the HTTP server left a handle open on its loop");
    delete slot;
    slot = nullptr;
}

inline std::uint64_t fnv1a(std::string_view bytes) {
    std::uint64_t hash = 14695981039346656037ULL;
    for (const char c : bytes) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
    }
    return hash;
}

// How the input is cut into writes: at once, or in pieces that split request lines, header names
// and bodies across the server's reads. The growing sequence keeps the number of writes small.
inline std::vector<std::size_t> write_pieces(std::string_view input) {
    switch (fnv1a(input) % 4) {
    case 0:
        return {};
    case 1:
        return {1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181};
    case 2:
        return {3, 7, 64};
    default:
        return {16};
    }
}

// A client socket connected to the fixture's port; the kernel completes the handshake on its own,
// before the server's loop accepts.
inline int connect_client(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    OUTBOX_FUZZ_CHECK(fd >= 0, "cannot create the client socket");
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
        OUTBOX_FUZZ_CHECK(errno == EINPROGRESS, "cannot connect to the fuzzed HTTP server");
        pollfd writable{fd, POLLOUT, 0};
        OUTBOX_FUZZ_CHECK(::poll(&writable, 1, 5000) == 1, "connecting timed out");
        int error = 0;
        socklen_t length = sizeof error;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
        OUTBOX_FUZZ_CHECK(error == 0, "cannot connect to the fuzzed HTTP server");
    }
    return fd;
}

// Waits for the client socket (none when `client` is -1, which poll() skips) or the loop's
// backend, at most until the loop's next timer, then runs whatever the loop has ready.
inline void run_loop_once(uv_loop_t* loop, int client, bool want_write) {
    pollfd fds[2] = {{uv_backend_fd(loop), POLLIN, 0},
                     {client, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), 0}};
    int timeout = uv_backend_timeout(loop);
    if (timeout < 0 || timeout > 50) {
        timeout = 50;
    }
    ::poll(fds, 2, timeout);
    uv_run(loop, UV_RUN_NOWAIT);
}

// Reads what is available; false once the server has closed (or reset) the connection.
inline bool drain(int fd, std::string& received) {
    char buffer[16384];
    for (;;) {
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n > 0) {
            received.append(buffer, static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            return true;
        }
        // 0 is the server's FIN; an error (a reset after an error response) ends it too.
        return false;
    }
}

// Parses the bytes the client received as a sequence of HTTP/1.1 responses. The parser's
// callbacks only record the first problem they see (a check may throw, and an exception must not
// cross http_parser's C frames); check() reports it.
class ResponseChecker {
  public:
    explicit ResponseChecker(const std::vector<RequestSeen>& requests) : requests_(requests) {
        http_parser_init(&parser_, HTTP_RESPONSE);
        parser_.data = this;
        http_parser_settings_init(&settings_);
        settings_.on_message_begin = [](http_parser* p) {
            self(p)->current_ = Response{};
            return 0;
        };
        settings_.on_header_field = [](http_parser* p, const char* data, std::size_t length) {
            Response& response = self(p)->current_;
            if (response.in_value) {
                self(p)->finish_header();
            }
            response.field.append(data, length);
            return 0;
        };
        settings_.on_header_value = [](http_parser* p, const char* data, std::size_t length) {
            Response& response = self(p)->current_;
            response.in_value = true;
            response.value.append(data, length);
            return 0;
        };
        settings_.on_headers_complete = [](http_parser* p) {
            return self(p)->headers_complete();
        };
        settings_.on_body = [](http_parser* p, const char*, std::size_t length) {
            self(p)->current_.body_bytes += length;
            return 0;
        };
        settings_.on_message_complete = [](http_parser* p) {
            return self(p)->message_complete();
        };
    }

    void check(const std::string& received) {
        const std::size_t parsed =
            http_parser_execute(&parser_, &settings_, received.data(), received.size());
        report_problem();
        OUTBOX_FUZZ_CHECK(HTTP_PARSER_ERRNO(&parser_) == HPE_OK && parsed == received.size(),
                          "the server sent something that is not an HTTP response");
        // The end of the stream must fall between two responses.
        http_parser_execute(&parser_, &settings_, nullptr, 0);
        report_problem();
        OUTBOX_FUZZ_CHECK(HTTP_PARSER_ERRNO(&parser_) == HPE_OK,
                          "the server closed in the middle of a response");
        OUTBOX_FUZZ_CHECK(responses_ == requests_.size() || responses_ == requests_.size() + 1,
                          "not one response per request (plus at most one error)");
        for (const RequestSeen& request : requests_) {
            OUTBOX_FUZZ_CHECK(!request.method.empty(), "a request without a method");
            OUTBOX_FUZZ_CHECK(!request.path.empty() &&
                                  request.path.find_first_of("?\r\n") == std::string::npos &&
                                  (request.path.front() == '/' || request.path.front() == '*'),
                              "a request path that is not a path");
        }
    }

  private:
    struct Response {
        std::string field;
        std::string value;
        bool in_value = false;
        std::size_t content_lengths = 0;
        std::uint64_t content_length = 0;
        std::size_t servers = 0;
        bool server_is_ours = false;
        std::size_t content_types = 0;
        std::uint64_t body_bytes = 0;
    };

    static ResponseChecker* self(http_parser* parser) {
        return static_cast<ResponseChecker*>(parser->data);
    }

    // Stops the parser at the first problem; the message must be a string literal.
    int fail(const char* problem) {
        if (problem_ == nullptr) {
            problem_ = problem;
        }
        return -1;
    }

    void report_problem() const {
        if (problem_ != nullptr) {
            invariant_failed("a response as the server must send it", problem_, __FILE__, __LINE__);
        }
    }

    bool is_head() const {
        return responses_ < requests_.size() && requests_[responses_].method == "HEAD";
    }

    static bool equals_ignore_case(std::string_view a, std::string_view b) {
        return a.size() == b.size() &&
               std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
                   return std::tolower(static_cast<unsigned char>(x)) ==
                          std::tolower(static_cast<unsigned char>(y));
               });
    }

    // Called once a header's name and value are complete: when the next name starts, or when
    // the headers end.
    void finish_header() {
        Response& r = current_;
        if (equals_ignore_case(r.field, "Content-Length")) {
            ++r.content_lengths;
            r.content_length = std::strtoull(r.value.c_str(), nullptr, 10);
        } else if (equals_ignore_case(r.field, "Server")) {
            ++r.servers;
            r.server_is_ours = r.value == "outbox-worker";
        } else if (equals_ignore_case(r.field, "Content-Type")) {
            ++r.content_types;
        } else if (equals_ignore_case(r.field, "Injected")) {
            fail("a handler's header value injected a header line");
        }
        r.field.clear();
        r.value.clear();
        r.in_value = false;
    }

    int headers_complete() {
        if (current_.in_value) {
            finish_header();
        }
        const Response& r = current_;
        if (problem_ != nullptr) {
            return -1;
        }
        if (parser_.http_major != 1 || parser_.http_minor != 1) {
            return fail("a response that is not HTTP/1.1");
        }
        const unsigned status = parser_.status_code;
        if (status < 200 || status > 599) {
            return fail("a response with an interim or invalid status");
        }
        if (r.content_lengths != 1) {
            return fail("a response without exactly one Content-Length");
        }
        if (r.servers != 1 || !r.server_is_ours) {
            return fail("a response without \"Server: outbox-worker\"");
        }
        if (r.content_types != 1) {
            return fail("a response without exactly one Content-Type");
        }
        // The one response the handler did not write: the server refusing a request.
        if (responses_ >= requests_.size() && status != 400 && status != 413 && status != 431 &&
            status != 505 && status != 500) {
            return fail("an error response with an unexpected status");
        }
        // A HEAD response describes a body that it does not carry.
        return is_head() ? 1 : 0;
    }

    int message_complete() {
        if (!is_head() && current_.body_bytes != current_.content_length) {
            return fail("a response body is not as long as its Content-Length");
        }
        ++responses_;
        return 0;
    }

    const std::vector<RequestSeen>& requests_;
    http_parser parser_{};
    http_parser_settings settings_{};
    Response current_;
    std::size_t responses_ = 0;
    const char* problem_ = nullptr;
};

// Closes the client socket however the input ends, a failed check included.
class ClientSocket {
  public:
    explicit ClientSocket(int fd) : fd_(fd) {}
    ~ClientSocket() { ::close(fd_); }
    ClientSocket(const ClientSocket&) = delete;
    ClientSocket& operator=(const ClientSocket&) = delete;
    int fd() const { return fd_; }

  private:
    int fd_;
};

} // namespace http_detail

inline void fuzz_http(std::string_view input) {
    using namespace http_detail;

    Fixture& f = fixture();
    f.requests.clear();
    const auto deadline = Clock::now() + kConnectionDeadline;
    // Under libFuzzer every earlier input ended with no connection open. In the replay test an
    // earlier input may have failed a check with its connection still open; the server closes it
    // once the client socket is gone.
    while (f.server->connection_count() != 0) {
        OUTBOX_FUZZ_CHECK(Clock::now() < deadline, "a connection from an earlier input stays open");
        run_loop_once(&f.loop, -1, false);
    }

    std::string received;
    {
        const ClientSocket client(connect_client(f.port));
        const std::vector<std::size_t> pieces = write_pieces(input);
        std::size_t written = 0;
        std::size_t piece = 0;
        bool sending = true;
        bool open = true;
        while (open) {
            OUTBOX_FUZZ_CHECK(Clock::now() < deadline, "the server kept a finished client's "
                                                       "connection open past its timeouts");
            if (sending && written < input.size()) {
                std::size_t size = input.size() - written;
                if (!pieces.empty()) {
                    size = std::min(size, pieces[piece % pieces.size()]);
                }
                const ssize_t n = ::send(client.fd(), input.data() + written, size, MSG_NOSIGNAL);
                if (n > 0) {
                    written += static_cast<std::size_t>(n);
                    ++piece;
                } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    // The server closed after refusing a request; what it sent is still readable.
                    sending = false;
                }
            }
            if (sending && written == input.size()) {
                ::shutdown(client.fd(), SHUT_WR);
                sending = false;
            }
            run_loop_once(&f.loop, client.fd(), sending);
            open = drain(client.fd(), received);
        }
    }

    // The server may have shut down its side before closing; it must let go once the client has.
    while (f.server->connection_count() != 0) {
        OUTBOX_FUZZ_CHECK(Clock::now() < deadline,
                          "the server kept a connection open after its client closed");
        run_loop_once(&f.loop, -1, false);
    }

    ResponseChecker checker(f.requests);
    checker.check(received);
}

} // namespace outbox::fuzz
