// A small HTTP/1.1 server for the supervisor's health, readiness and metrics endpoints.
//
// It runs on the supervisor's libuv loop and must only be used from that loop's thread. Requests
// are parsed by http_parser; the server itself only frames responses. It is built to face clients
// that are broken or hostile without hurting the service: every buffer it keeps is bounded
// (request head, body, headers, unsent responses, connections) and every connection has a
// deadline, so a slow or silent client is closed instead of pinning memory or a descriptor.
//
// Protocol behaviour:
// - HTTP/1.0 and HTTP/1.1, keep-alive (with a per-connection request cap), pipelining (responses
//   in request order), `Connection: close` honoured.
// - The handler sees every well-formed request, whatever its method; HttpRouter answers methods
//   other than GET and HEAD with 405 and unknown paths with 404, so a handler built on it only
//   ever serves GET. A HEAD response carries the headers and Content-Length of the GET response
//   but no body; the server strips the body itself.
// - A request body is read and discarded (no endpoint takes one); a body beyond
//   `max_body_bytes` gets 413, a head beyond `max_head_bytes` or with more than `max_headers`
//   headers gets 431, a version other than HTTP/1.x gets 505, anything http_parser rejects gets
//   400. Each of these closes the connection.
// - Every response carries Content-Length, Content-Type and `Server: outbox-worker`.
//
// Errors (a reset peer, a refused write, a malformed request) are logged at debug level and
// cost the connection concerned, never the server.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace outbox {

struct HttpRequest {
    std::string method; // "GET", "HEAD", "POST", ... as http_parser names it
    std::string path;   // the path of the request target, without the query, not percent-decoded
    std::string query;  // what follows '?', without it; empty when there is none
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

struct HttpServerLimits {
    // Request line plus headers. Beyond it: 431.
    std::size_t max_head_bytes = 8 * 1024;
    // Request header lines. Beyond it: 431.
    std::size_t max_headers = 100;
    // A request body is discarded, but reading an unbounded one would let a client hold the
    // connection busy for as long as it likes. Beyond it: 413.
    std::size_t max_body_bytes = 4 * 1024;
    // Connections open at once. One more is accepted (so that it leaves the kernel's backlog)
    // and closed at once without a response.
    std::size_t max_connections = 64;
    // A connection must complete a request within this time of being accepted or of completing
    // its previous request, or it is closed. Trickling bytes does not extend it (slowloris), and
    // neither does a client that stops reading its responses.
    std::uint64_t idle_timeout_ms = 10'000;
    // Requests served on one keep-alive connection; the last response carries
    // `Connection: close`.
    std::size_t max_requests_per_connection = 1000;
    // While a connection has more than this many response bytes that the kernel has not taken
    // yet, the server stops reading and parsing its requests; it resumes once the client has
    // read enough. This bounds the memory a client that pipelines requests without reading the
    // responses can make the server hold to about this much plus one response.
    std::size_t max_unsent_bytes = 256 * 1024;
    // After an error response the server stops sending and reads and discards what the client
    // still sends, for at most this long, before closing. Closing a socket with unread input
    // makes the kernel send a reset that can destroy the error response before the client reads
    // it; lingering lets the client see why it was refused.
    std::uint64_t linger_timeout_ms = 2'000;
};

// Dispatches GET and HEAD requests by exact path. Unknown paths get 404, known paths with
// another method 405 with `Allow: GET, HEAD`. A HEAD request calls the GET route (the server
// drops the body). The router is a plain value: build it, then move it into the server's handler.
class HttpRouter {
  public:
    using Route = std::function<HttpResponse(const HttpRequest&)>;

    void get(std::string path, Route route);
    HttpResponse dispatch(const HttpRequest& request) const;

  private:
    std::vector<std::pair<std::string, Route>> routes_;
};

// The server. Owned by the supervisor; not copyable or movable, because its handles point back
// at it.
//
// Lifetime: call close() and let the loop run until `on_closed` has been called before
// destroying the server. A server destroyed earlier closes whatever it still has open and
// detaches from it; the handles are then freed by the loop's next run, without a callback.
// The handler must not destroy the server; it may call close().
class HttpServer {
  public:
    using Handler = std::function<HttpResponse(const HttpRequest&)>;

    // The handler runs on the loop thread, once per request, in request order per connection.
    // An exception escaping it is logged and answered with 500.
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

    // Connections currently open (not counting those refused over the limit).
    std::size_t connection_count() const { return connections_.size(); }

    // Stops listening and closes every connection at once, abandoning unsent responses. Calls
    // `on_closed` from the loop once every handle the server opened has been closed, or at once
    // when none is open. Calling it again adds a callback.
    void close(std::function<void()> on_closed);

  private:
    struct Link;
    struct Listener;
    struct RefusedSocket;
    struct Connection;
    friend struct Connection;

    static void on_connection(uv_stream_t* listener, int status);
    void accept_one();
    void handle_closed();
    void run_closed_callbacks();
    void forget(Connection* connection);

    uv_loop_t* loop_;
    HttpServerLimits limits_;
    Handler handler_;
    // Shared with every handle wrapper, so that a close callback can tell whether the server
    // still exists after a premature destruction.
    std::shared_ptr<Link> link_;
    Listener* listener_ = nullptr; // owned by its close callback once closing
    std::unordered_set<Connection*> connections_;
    std::size_t open_handles_ = 0;
    bool closing_ = false;
    std::vector<std::function<void()>> on_closed_;
    // One read buffer for every connection: the loop is single-threaded and a read callback
    // consumes its data before the next allocation, and what a paused connection has not parsed
    // yet is copied into that connection.
    std::unique_ptr<char[]> read_buffer_;
};

} // namespace outbox
