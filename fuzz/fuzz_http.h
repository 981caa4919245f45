// Fuzz entry for the supervisor's HTTP server (supervisor/http_server.h, libmicrohttpd driven from
// a libuv loop). fuzz/fuzz_http.cpp hands it libFuzzer's inputs;
// tests/unit/fuzz_regressions_test.cpp replays saved inputs.
//
// The server parses requests inside a connection, behind a real socket, so the input goes the way
// a client's bytes do: one HttpServer, started once on its own loop and bound to 127.0.0.1 on a
// free port, gets a new TCP connection per input. The client writes the input (in pieces of a size
// picked from the input's hash, so that requests are split across reads), shuts down its sending
// side and reads until the server closes, running the server's loop in between from this same
// thread. Everything is bounded: the server's own limits are small (so that inputs of a few
// hundred bytes reach them), and a connection that outlives kConnectionDeadline is a server that
// failed to time out, which aborts like any broken invariant.
//
// What the client received is then parsed as HTTP responses: every response must be well-formed
// and carry the server's headers, there is one per request the handler saw (in order, with no
// body for HEAD) plus at most one final error, and the server holds no connection afterwards.
// Finally a GET /health on a new connection must be answered 200: whatever the input did, the
// server still serves.
#pragma once

#include "fuzz/fuzz_check.h"
#include "supervisor/http_server.h"
#include "supervisor/uv_handle.h"

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
    return limits;
}

// Far beyond idle_timeout_ms (libmicrohttpd counts its timeout in whole seconds), the longest the
// server may legitimately keep a connection whose client has stopped sending, so that a slow
// machine does not fail the run.
inline constexpr std::chrono::seconds kConnectionDeadline{10};

// Bigger than a socket write usually takes at once on loopback with small buffers, and than the
// connection's memory pool, so that a response is sent in several writes.
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
    // Replies of GET /later, answered from a timer: the path through a suspended connection.
    std::vector<HttpReply> later;
    Timer later_timer;
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
        created->later_timer = Timer(&created->loop, [created] {
            std::vector<HttpReply> replies = std::move(created->later);
            created->later.clear();
            for (HttpReply& reply : replies) {
                HttpResponse response;
                response.body = "later\n";
                reply.send(std::move(response));
            }
        });
        HttpRouter router;
        for (const char* path : {"/health", "/healthz"}) {
            router.get(path, [](const HttpRequest&) {
                HttpResponse response;
                response.body = "ok\n";
                return response;
            });
        }
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
        router.handle("GET", "/later*", [created](const HttpRequest&, HttpReply reply) {
            created->later.push_back(std::move(reply));
            created->later_timer.start(1);
        });
        // A reply dropped unsent: the server answers 500 in its stead.
        router.handle("GET", "/drop", [](const HttpRequest&, HttpReply) {});
        router.handle("POST", "/echo", [](const HttpRequest& request, HttpReply reply) {
            HttpResponse response;
            response.body = request.body;
            for (const char* name : {"x-a", "content-type"}) {
                if (const std::string* value = request.header(name)) {
                    response.body += *value;
                }
            }
            response.body += request.query_param("q").value_or("");
            reply.send(std::move(response));
        });
        created->server = new HttpServer(
            &created->loop, fuzz_limits(),
            [created, router = std::move(router)](const HttpRequest& request, HttpReply reply) {
                created->requests.push_back({request.method, request.path});
                router.dispatch(request, std::move(reply));
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
    slot->later.clear(); // no-ops now: the server has abandoned them
    slot->later_timer.close();
    const auto deadline = Clock::now() + kConnectionDeadline;
    while (!closed) {
        OUTBOX_FUZZ_CHECK(Clock::now() < deadline, "the HTTP server did not finish closing");
        uv_run(&slot->loop, UV_RUN_ONCE);
    }
    delete slot->server;
    uv_run(&slot->loop, UV_RUN_NOWAIT); // the close callbacks of the handles just closed
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

// Parses the bytes the client received as a sequence of HTTP/1.x responses, without a library of
// its own: the server's responses are framed by Content-Length only, which is all it must send.
class ResponseChecker {
  public:
    explicit ResponseChecker(const std::vector<RequestSeen>& requests) : requests_(requests) {}

    void check(std::string_view received) {
        while (!received.empty()) {
            check_one(received);
        }
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
    static bool equals_ignore_case(std::string_view a, std::string_view b) {
        return a.size() == b.size() &&
               std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
                   return std::tolower(static_cast<unsigned char>(x)) ==
                          std::tolower(static_cast<unsigned char>(y));
               });
    }

    // Takes one response off the front of `received`.
    void check_one(std::string_view& received) {
        const std::size_t head_end = received.find("\r\n\r\n");
        OUTBOX_FUZZ_CHECK(head_end != std::string_view::npos,
                          "the server closed in the middle of a response head");
        std::string_view head = received.substr(0, head_end);
        received.remove_prefix(head_end + 4);
        // libmicrohttpd 0.9.75 writes the head of its own error response for an unusable
        // Content-Length twice (its state machine builds the head again after the error). The
        // copy is byte for byte the same; skip it, so that everything else is still checked.
        const bool libraries_head =
            head.find("\r\nServer: outbox-worker") == std::string_view::npos;
        if (libraries_head && received.starts_with(head) &&
            received.substr(head.size()).starts_with("\r\n\r\n")) {
            received.remove_prefix(head.size() + 4);
        }

        const std::size_t line_end = std::min(head.find("\r\n"), head.size());
        const std::string_view status_line = head.substr(0, line_end);
        head.remove_prefix(std::min(head.size(), line_end + 2));
        // libmicrohttpd answers in the request's version, 1.0 or 1.1.
        OUTBOX_FUZZ_CHECK(status_line.size() >= 12 && (status_line.starts_with("HTTP/1.1 ") ||
                                                       status_line.starts_with("HTTP/1.0 ")),
                          "a response that is not HTTP/1.x");
        unsigned status = 0;
        for (std::size_t i = 9; i < 12; ++i) {
            const char c = status_line[i];
            OUTBOX_FUZZ_CHECK(c >= '0' && c <= '9', "a status code that is not three digits");
            status = status * 10 + static_cast<unsigned>(c - '0');
        }
        if (status == 100) {
            // "100 Continue", which libmicrohttpd sends when a request expects it: interim, with
            // no headers, and not an answer.
            OUTBOX_FUZZ_CHECK(head.empty(), "an interim response with headers");
            return;
        }
        OUTBOX_FUZZ_CHECK(status >= 200 && status <= 599,
                          "a response with an interim or invalid status");

        std::size_t content_lengths = 0;
        std::uint64_t content_length = 0;
        std::size_t servers = 0;
        bool server_is_ours = false;
        std::size_t content_types = 0;
        while (!head.empty()) {
            const std::size_t end = std::min(head.find("\r\n"), head.size());
            const std::string_view line = head.substr(0, end);
            head.remove_prefix(std::min(head.size(), end + 2));
            const std::size_t colon = line.find(':');
            OUTBOX_FUZZ_CHECK(colon != std::string_view::npos && colon > 0,
                              "a response header line without a name");
            const std::string_view name = line.substr(0, colon);
            std::string_view value = line.substr(colon + 1);
            while (!value.empty() && value.front() == ' ') {
                value.remove_prefix(1);
            }
            if (equals_ignore_case(name, "Content-Length")) {
                ++content_lengths;
                content_length = std::strtoull(std::string(value).c_str(), nullptr, 10);
            } else if (equals_ignore_case(name, "Server")) {
                ++servers;
                server_is_ours = value == "outbox-worker";
            } else if (equals_ignore_case(name, "Content-Type")) {
                ++content_types;
            } else if (equals_ignore_case(name, "Injected") ||
                       equals_ignore_case(name, "Bad Name")) {
                OUTBOX_FUZZ_CHECK(false, "a handler's invalid header reached the client");
            }
        }

        const bool answers_request = responses_ < requests_.size();
        const bool head_request = answers_request && requests_[responses_].method == "HEAD";
        // libmicrohttpd may leave Content-Length out where no body can follow (RFC 9110 8.6).
        if (status == 204 || status == 304) {
            OUTBOX_FUZZ_CHECK(content_lengths <= 1 && content_length == 0,
                              "a response that cannot have a body announces one");
        } else {
            OUTBOX_FUZZ_CHECK(content_lengths == 1,
                              "a response without exactly one Content-Length");
        }
        if (answers_request) {
            OUTBOX_FUZZ_CHECK(servers == 1 && server_is_ours,
                              "a response without \"Server: outbox-worker\"");
            OUTBOX_FUZZ_CHECK(content_types == 1, "a response without exactly one Content-Type");
        } else {
            // The one response the handler did not write: the server (ours, with our headers) or
            // libmicrohttpd (with its own) refusing a request.
            OUTBOX_FUZZ_CHECK(status == 400 || status == 413 || status == 414 || status == 431 ||
                                  status == 500 || status == 505,
                              "an error response with an unexpected status");
            OUTBOX_FUZZ_CHECK(servers == 0 || (servers == 1 && server_is_ours),
                              "an error response with a foreign Server header");
        }
        // The refused request may have been a HEAD too, which the checker cannot tell: then the
        // error response ends the stream without its body.
        const bool bodiless_refusal = !answers_request && received.empty();
        if (!head_request && !bodiless_refusal) {
            OUTBOX_FUZZ_CHECK(received.size() >= content_length,
                              "the server closed in the middle of a response body");
            received.remove_prefix(static_cast<std::size_t>(content_length));
        }
        ++responses_;
    }

    const std::vector<RequestSeen>& requests_;
    std::size_t responses_ = 0;
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

    // Whatever the input did, the server still answers a well-behaved client.
    std::string health;
    {
        const ClientSocket client(connect_client(f.port));
        const std::string_view request =
            "GET /health HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
        std::size_t written = 0;
        bool open = true;
        while (open) {
            OUTBOX_FUZZ_CHECK(Clock::now() < deadline, "GET /health got no complete answer");
            if (written < request.size()) {
                const ssize_t n = ::send(client.fd(), request.data() + written,
                                         request.size() - written, MSG_NOSIGNAL);
                if (n > 0) {
                    written += static_cast<std::size_t>(n);
                }
            }
            run_loop_once(&f.loop, client.fd(), written < request.size());
            open = drain(client.fd(), health);
        }
    }
    OUTBOX_FUZZ_CHECK(health.starts_with("HTTP/1.1 200 ") && health.ends_with("\r\n\r\nok\n"),
                      "the server no longer answers GET /health after an input");
    while (f.server->connection_count() != 0) {
        OUTBOX_FUZZ_CHECK(Clock::now() < deadline, "the GET /health connection stays open");
        run_loop_once(&f.loop, -1, false);
    }
    f.requests.clear();
}

} // namespace outbox::fuzz
