// The supervisor's HTTP endpoint: health, readiness, metrics and the operator's console (SPEC 6).
//
// libmicrohttpd parses HTTP and manages connections; this file drives it from the supervisor's
// libuv loop, so that nothing here needs a thread of its own. The daemon runs in libmicrohttpd's
// "external event loop" mode with its own epoll set: a uv_poll_t watches that epoll descriptor and
// a uv_timer_t follows MHD_get_timeout(), and both call MHD_run(). Everything runs on the loop's
// thread and must be used from it only.
//
// Requests reach the handler complete (head and body). A handler answers at once or later: it
// receives an HttpReply that it may keep while it waits for the database; the connection is
// suspended meanwhile (MHD_suspend_connection) and resumed when the reply is sent. A reply whose
// client has gone away is dropped without harm; a reply destroyed without being sent answers 500.
//
// Protection against broken or hostile clients is the library's (request-line and header limits,
// per-connection timeouts, a connection limit) plus ours: a body beyond `max_body_bytes` gets 413,
// a request with more than `max_headers` headers or a head beyond `max_head_bytes` gets 431, a
// target that is not a path, a header name that is not a token or a body framed twice (two
// Content-Lengths, or one beside Transfer-Encoding) gets 400, and each of these closes the
// connection. A request must be complete within `idle_timeout_ms` of the connection's start or of
// the previous response, however slowly its bytes trickle in. A method the router does not know
// gets 405, an unknown path 404. Every response the handler or the server writes carries
// Content-Length (except 204 and 304), Content-Type and `Server: outbox-worker`; the few that
// libmicrohttpd writes itself (400 for a line it cannot parse, 414/431 for a head beyond its
// memory, 505 for HTTP/2 and later) carry only Content-Length.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox {

struct HttpRequest {
    std::string method; // "GET", "HEAD", "POST", ...
    std::string path;   // the path of the request target, without the query, not percent-decoded
    std::string query;  // what follows '?', without it; empty when there is none
    // Header names lower-cased, in the order received; values as sent.
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;           // the whole request body (at most HttpServerLimits::max_body_bytes)
    std::string client_address; // the peer's IP address ("127.0.0.1", "::1"), for logs

    // The first header of that (lower-case) name, or nullptr.
    const std::string* header(std::string_view lower_name) const;
    // The value of a query parameter, percent-decoded ('+' is a space), or nullopt when absent.
    std::optional<std::string> query_param(std::string_view name) const;
};

struct HttpResponse {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    // Extra headers. Content-Length, Connection and Server are the server's and must not be
    // given here; a name or value containing CR or LF is dropped (and logged) rather than sent.
    std::vector<std::pair<std::string, std::string>> headers;
};

// The reason phrase of a status code ("Not Found"); "Unknown" for codes it does not know.
std::string_view http_reason_phrase(int status);

// A plain-text response whose body is the reason phrase followed by a newline, for errors.
HttpResponse http_status_response(int status);

// The one answer to one request. Move-only. send() may be called once, from the loop thread, at
// any time while the server exists; after the client has gone (or the server closed) it does
// nothing. Destroying an HttpReply that was never sent answers 500, so a forgotten path cannot
// leave a connection suspended forever.
class HttpReply {
  public:
    struct State; // the server's record of the suspended request
    HttpReply() = default;
    explicit HttpReply(std::shared_ptr<State> state) : state_(std::move(state)) {}
    HttpReply(HttpReply&&) noexcept = default;
    HttpReply& operator=(HttpReply&& other) noexcept;
    HttpReply(const HttpReply&) = delete;
    HttpReply& operator=(const HttpReply&) = delete;
    ~HttpReply();

    void send(HttpResponse response);
    // True while the reply can still reach a client (not sent, client connected, server open).
    bool pending() const;

  private:
    std::shared_ptr<State> state_;
};

struct HttpServerLimits {
    // Request line plus headers (libmicrohttpd's per-connection memory is derived from it).
    // Beyond it: 431 (or, far beyond it, the library's own 431 or 414).
    std::size_t max_head_bytes = 8 * 1024;
    // Request header lines. Beyond it: 431.
    std::size_t max_headers = 100;
    // The request body, which the console's actions use (a JSON list of ids). Beyond it: 413.
    std::size_t max_body_bytes = 64 * 1024;
    // Connections open at once. At the limit the library stops accepting: further clients wait
    // in the kernel's listen backlog until a connection closes.
    std::size_t max_connections = 64;
    // A request must be complete within this time of the connection's start or of the previous
    // response (slowloris), its response sent within this time of the reply (a client that does
    // not read), and a connection idle this long is closed. The time the handler holds a reply
    // does not count. libmicrohttpd's own idle timeout is this rounded up to whole seconds.
    std::uint64_t idle_timeout_ms = 10'000;
};

// Dispatches requests by method and path. A path ending in '*' matches every path that starts
// with what precedes the '*' ("/api/events/*"); otherwise the match is exact. Routes are tried in
// the order added. A HEAD request calls the GET route (the server drops the body). A known path
// with another method gets 405 with `Allow`, an unknown path 404. The router is a plain value:
// build it, then move it into the server's handler.
class HttpRouter {
  public:
    using Route = std::function<HttpResponse(const HttpRequest&)>;
    using AsyncRoute = std::function<void(const HttpRequest&, HttpReply)>;

    // A GET (and HEAD) route that answers at once.
    void get(std::string path, Route route);
    // A route for one method that may answer later.
    void handle(std::string method, std::string path, AsyncRoute route);
    void dispatch(const HttpRequest& request, HttpReply reply) const;

  private:
    struct Entry {
        std::string method;
        std::string path;
        AsyncRoute route;
    };
    std::vector<Entry> routes_;
};

// The server. Owned by the supervisor; not copyable or movable, because libmicrohttpd and the
// libuv handles point back at it.
//
// Lifetime: call close() and let the loop run until `on_closed` has been called before
// destroying the server. A server destroyed earlier stops the daemon and detaches its handles.
// The handler must not destroy the server; it may call close().
class HttpServer {
  public:
    using Handler = std::function<void(const HttpRequest&, HttpReply)>;

    // The handler runs on the loop thread, once per complete request. An exception escaping it is
    // logged and answered with 500.
    HttpServer(uv_loop_t* loop, HttpServerLimits limits, Handler handler);
    ~HttpServer();

    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;
    HttpServer(HttpServer&&) = delete;
    HttpServer& operator=(HttpServer&&) = delete;

    // Binds and listens. `host` is an IPv4 or IPv6 literal (brackets allowed: "[::1]") or
    // "localhost" (127.0.0.1, resolved without DNS so that it cannot block the loop); port 0
    // picks a free port (see bound_port()). Returns 0 or a negative libuv error code (UV_EINVAL
    // for an unusable host, UV_EADDRINUSE, ...). After a success, further calls fail with
    // UV_EINVAL: a server listens on one address.
    [[nodiscard]] int listen(const std::string& host, int port);

    // The port actually bound, or 0 when not listening.
    int bound_port() const;

    // Connections currently open.
    std::size_t connection_count() const;

    // Stops listening and closes every connection, abandoning unsent responses (pending
    // HttpReplys become no-ops at once). Calls `on_closed` from the loop once the daemon has
    // stopped and every handle has been closed (libuv frees them before uv_run() returns), or at
    // once when the server never listened or has finished closing. Calling it again adds a
    // callback.
    void close(std::function<void()> on_closed);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace outbox
