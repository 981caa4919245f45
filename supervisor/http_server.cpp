#include "supervisor/http_server.h"

#include <http_parser.h>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <climits>
#include <cstring>
#include <exception>
#include <utility>

namespace outbox {

namespace {

constexpr std::size_t kReadBufferSize = 64 * 1024;
constexpr int kListenBacklog = 128;
// Each header line costs its name and value plus ": " and CRLF, which the parser's callbacks do
// not report; counting them keeps the head limit close to the bytes actually received.
constexpr std::size_t kHeaderLineOverhead = 4;

bool is_token_char(char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return true;
    }
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_valid_header_name(std::string_view name) {
    if (name.empty()) {
        return false;
    }
    for (char c : name) {
        if (!is_token_char(c)) {
            return false;
        }
    }
    return true;
}

bool has_line_break(std::string_view text) {
    return text.find_first_of("\r\n") != std::string_view::npos;
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i];
        char y = b[i];
        if (x >= 'A' && x <= 'Z') {
            x = static_cast<char>(x - 'A' + 'a');
        }
        if (y >= 'A' && y <= 'Z') {
            y = static_cast<char>(y - 'A' + 'a');
        }
        if (x != y) {
            return false;
        }
    }
    return true;
}

// Headers whose value the server owns because it depends on framing or on the connection.
bool is_reserved_header(std::string_view name) {
    return equals_ignore_case(name, "content-length") || equals_ignore_case(name, "connection") ||
           equals_ignore_case(name, "server") || equals_ignore_case(name, "content-type") ||
           equals_ignore_case(name, "transfer-encoding");
}

// Serialises a response. `omit_body` is for HEAD: the headers describe the body that a GET would
// have received, as RFC 9110 section 9.3.2 asks, but the body itself is not sent.
std::string serialize_response(const HttpResponse& response, bool omit_body, bool keep_alive,
                               bool http_1_0) {
    int status = response.status;
    const HttpResponse* source = &response;
    HttpResponse replacement;
    // A status outside 200..599 would be either meaningless or an interim response, which cannot
    // carry the body that follows; the handler is broken, so the client gets a 500 instead.
    if (status < 200 || status > 599) {
        spdlog::error("HTTP handler returned invalid status {}; answering 500", status);
        replacement = http_status_response(500);
        source = &replacement;
        status = 500;
    }
    std::string content_type = source->content_type;
    if (content_type.empty() || has_line_break(content_type)) {
        content_type = "application/octet-stream";
    }

    std::string out;
    out.reserve(160 + (omit_body ? 0 : source->body.size()));
    out += "HTTP/1.1 ";
    out += std::to_string(status);
    out += ' ';
    out += http_reason_phrase(status);
    out += "\r\nServer: outbox-worker\r\nContent-Type: ";
    out += content_type;
    out += "\r\nContent-Length: ";
    out += std::to_string(source->body.size());
    out += "\r\n";
    for (const auto& [name, value] : source->headers) {
        if (!is_valid_header_name(name) || has_line_break(value) || is_reserved_header(name)) {
            spdlog::debug("HTTP response header '{}' dropped: invalid or owned by the server",
                          name);
            continue;
        }
        out += name;
        out += ": ";
        out += value;
        out += "\r\n";
    }
    if (!keep_alive) {
        out += "Connection: close\r\n";
    } else if (http_1_0) {
        // HTTP/1.0 connections close by default; a client that asked for keep-alive must be told
        // that it got it, or it will wait for the end of the connection to find the body's end.
        out += "Connection: keep-alive\r\n";
    }
    out += "\r\n";
    if (!omit_body) {
        out += source->body;
    }
    return out;
}

// Fills `address` from a host literal; false when the host is not one this server accepts.
bool resolve_listen_address(const std::string& host, int port, sockaddr_storage& address) {
    std::string literal = host;
    if (literal == "localhost") {
        literal = "127.0.0.1";
    }
    if (literal.size() >= 2 && literal.front() == '[' && literal.back() == ']') {
        literal = literal.substr(1, literal.size() - 2);
    }
    std::memset(&address, 0, sizeof address);
    if (uv_ip4_addr(literal.c_str(), port, reinterpret_cast<sockaddr_in*>(&address)) == 0) {
        return true;
    }
    return uv_ip6_addr(literal.c_str(), port, reinterpret_cast<sockaddr_in6*>(&address)) == 0;
}

} // namespace

std::string_view http_reason_phrase(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

HttpResponse http_status_response(int status) {
    HttpResponse response;
    response.status = status;
    response.content_type = "text/plain; charset=utf-8";
    response.body = std::string(http_reason_phrase(status)) + "\n";
    return response;
}

void HttpRouter::get(std::string path, Route route) {
    routes_.emplace_back(std::move(path), std::move(route));
}

HttpResponse HttpRouter::dispatch(const HttpRequest& request) const {
    for (const auto& [path, route] : routes_) {
        if (path != request.path) {
            continue;
        }
        if (request.method != "GET" && request.method != "HEAD") {
            HttpResponse response = http_status_response(405);
            response.headers.emplace_back("Allow", "GET, HEAD");
            return response;
        }
        return route(request);
    }
    return http_status_response(404);
}

// What every handle wrapper shares with the server: a pointer that the server's destructor
// clears, so that close callbacks running after it know not to report back.
struct HttpServer::Link {
    HttpServer* server;
};

struct HttpServer::Listener {
    uv_tcp_t handle{};
    std::shared_ptr<Link> link;

    explicit Listener(std::shared_ptr<Link> shared) : link(std::move(shared)) {}
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    static void on_closed(uv_handle_t* handle) noexcept {
        auto* listener = static_cast<Listener*>(handle->data);
        std::shared_ptr<Link> link = std::move(listener->link);
        delete listener;
        if (link->server != nullptr) {
            link->server->handle_closed();
        }
    }
};

// A connection accepted only to be closed because the server is at its connection limit.
struct HttpServer::RefusedSocket {
    uv_tcp_t handle{};
    std::shared_ptr<Link> link;

    explicit RefusedSocket(std::shared_ptr<Link> shared) : link(std::move(shared)) {}
    RefusedSocket(const RefusedSocket&) = delete;
    RefusedSocket& operator=(const RefusedSocket&) = delete;

    static void on_closed(uv_handle_t* handle) noexcept {
        auto* socket = static_cast<RefusedSocket*>(handle->data);
        std::shared_ptr<Link> link = std::move(socket->link);
        delete socket;
        if (link->server != nullptr) {
            link->server->handle_closed();
        }
    }
};

// One client connection: its socket, its deadline timer and the parser state. Allocated on
// accept and deleted by the close callback of whichever of its two handles closes last.
struct HttpServer::Connection {
    enum class State {
        reading,       // parsing requests and answering them
        flushing,      // the last response is queued; input is discarded until it is sent
        shutting_down, // the write side is being shut down after the last response
        lingering,     // discarding input until the client closes, or the linger timeout
    };

    struct WriteRequest {
        uv_write_t request{};
        std::string data;
        Connection* connection = nullptr;
    };

    uv_tcp_t tcp{};
    uv_timer_t timer{};
    uv_shutdown_t shutdown_request{};
    std::shared_ptr<Link> link;
    HttpServer* server; // valid while !closing: the server closes its connections before it dies
    int handles_open = 0;
    bool closing = false;
    bool reading_started = false;
    bool paused = false;
    bool peer_finished = false;
    State state = State::reading;
    std::size_t writes_in_flight = 0;
    std::size_t requests_served = 0;

    http_parser parser{};
    // Input received while parsing was paused for backpressure; parsed when the client has read
    // enough of its responses. At most one read buffer's worth.
    std::string unparsed;

    // The request being parsed.
    std::string url;
    std::size_t head_bytes = 0;
    std::size_t header_count = 0;
    std::size_t body_bytes = 0;
    bool in_header_field = false;
    bool in_message = false;
    // Set by a parser callback that rejects the request, so that the error response can say why.
    int error_status = 0;
    // Set when the message just completed is the last one this connection will serve; parsing
    // then stops through a callback error that is not a protocol error.
    bool last_message_done = false;

    Connection(HttpServer* owner, std::shared_ptr<Link> shared)
        : link(std::move(shared)), server(owner) {
        http_parser_init(&parser, HTTP_REQUEST);
        parser.data = this;
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    const HttpServerLimits& limits() const { return server->limits_; }

    // Closes both handles now, abandoning queued writes (their callbacks report UV_ECANCELED).
    void close_now() noexcept {
        if (closing) {
            return;
        }
        closing = true;
        server->forget(this);
        uv_close(reinterpret_cast<uv_handle_t*>(&tcp), on_handle_closed);
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_handle_closed);
    }

    static void on_handle_closed(uv_handle_t* handle) noexcept {
        auto* connection = static_cast<Connection*>(handle->data);
        std::shared_ptr<Link> shared = connection->link;
        if (--connection->handles_open == 0) {
            delete connection;
        }
        if (shared->server != nullptr) {
            shared->server->handle_closed();
        }
    }

    void arm_timer(std::uint64_t timeout_ms) { uv_timer_start(&timer, on_timer, timeout_ms, 0); }

    static void on_timer(uv_timer_t* handle) noexcept {
        auto* connection = static_cast<Connection*>(handle->data);
        if (connection->state == State::lingering) {
            spdlog::debug("HTTP connection closed after lingering");
        } else {
            spdlog::debug("HTTP connection closed: no complete request within {} ms",
                          connection->limits().idle_timeout_ms);
        }
        connection->close_now();
    }

    void start_reading() {
        if (reading_started || closing) {
            return;
        }
        int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp), on_alloc, on_read);
        if (rc < 0) {
            spdlog::debug("HTTP uv_read_start failed: {}", uv_strerror(rc));
            close_now();
            return;
        }
        reading_started = true;
    }

    void stop_reading() {
        if (!reading_started) {
            return;
        }
        uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
        reading_started = false;
    }

    static void on_alloc(uv_handle_t* handle, std::size_t, uv_buf_t* buffer) noexcept {
        auto* connection = static_cast<Connection*>(handle->data);
        if (connection->closing) {
            *buffer = uv_buf_init(nullptr, 0);
            return;
        }
        *buffer = uv_buf_init(connection->server->read_buffer_.get(),
                              static_cast<unsigned int>(kReadBufferSize));
    }

    static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) noexcept {
        auto* connection = static_cast<Connection*>(stream->data);
        if (connection->closing) {
            return;
        }
        try {
            connection->handle_read(nread, buffer);
        } catch (const std::exception& e) {
            spdlog::error("HTTP connection failed: {}", e.what());
            connection->close_now();
        } catch (...) {
            spdlog::error("HTTP connection failed with an unknown exception");
            connection->close_now();
        }
    }

    void handle_read(ssize_t nread, const uv_buf_t* buffer) {
        if (nread == 0) {
            return;
        }
        if (nread == UV_EOF) {
            on_peer_finished();
            return;
        }
        if (nread < 0) {
            spdlog::debug("HTTP read failed: {}", uv_strerror(static_cast<int>(nread)));
            close_now();
            return;
        }
        if (state != State::reading) {
            // After the last response, input is only drained so that closing does not reset
            // the connection under the response.
            return;
        }
        if (paused) {
            // Reading stops when parsing pauses, but keep anything that still arrives in order.
            unparsed.append(buffer->base, static_cast<std::size_t>(nread));
            return;
        }
        feed(buffer->base, static_cast<std::size_t>(nread));
    }

    void on_peer_finished() {
        stop_reading();
        peer_finished = true;
        switch (state) {
        case State::reading:
            if (in_message) {
                spdlog::debug("HTTP client closed in the middle of a request");
            }
            // The client has sent everything it will send; answer what it asked, then close.
            state = State::flushing;
            flush_then_close();
            break;
        case State::flushing:
        case State::shutting_down:
            break; // flush_then_close() or on_shutdown() sees peer_finished
        case State::lingering:
            close_now();
            break;
        }
    }

    void feed(const char* data, std::size_t length) {
        std::size_t consumed = http_parser_execute(&parser, &settings(), data, length);
        if (closing) {
            return; // the handler closed the server, and with it this connection
        }
        http_errno error = HTTP_PARSER_ERRNO(&parser);
        if (error == HPE_OK) {
            return;
        }
        if (error == HPE_PAUSED) {
            unparsed.assign(data + consumed, length - consumed);
            stop_reading();
            return;
        }
        if (last_message_done) {
            finish();
            return;
        }
        int status = error_status;
        if (status == 0) {
            status = error == HPE_HEADER_OVERFLOW ? 431 : 400;
        }
        spdlog::debug("HTTP request rejected with {}: {}", status,
                      status == 400 || error == HPE_HEADER_OVERFLOW ? http_errno_description(error)
                                                                    : http_reason_phrase(status));
        send(serialize_response(http_status_response(status), false, false, false));
        finish();
    }

    // Stops serving requests: the responses already queued are sent, then the connection is
    // shut down and closed.
    void finish() {
        if (closing) {
            return;
        }
        state = State::flushing;
        paused = false;
        unparsed.clear();
        if (!peer_finished) {
            start_reading(); // to drain input and to notice a reset early
        }
        flush_then_close();
    }

    void flush_then_close() {
        if (closing || state != State::flushing || writes_in_flight > 0) {
            return;
        }
        if (peer_finished) {
            close_now();
            return;
        }
        state = State::shutting_down;
        int rc = uv_shutdown(&shutdown_request, reinterpret_cast<uv_stream_t*>(&tcp), on_shutdown);
        if (rc < 0) {
            spdlog::debug("HTTP shutdown failed: {}", uv_strerror(rc));
            close_now();
        }
    }

    static void on_shutdown(uv_shutdown_t* request, int status) noexcept {
        auto* connection = static_cast<Connection*>(request->handle->data);
        if (connection->closing) {
            return;
        }
        if (status < 0 || connection->peer_finished) {
            if (status < 0) {
                spdlog::debug("HTTP shutdown failed: {}", uv_strerror(status));
            }
            connection->close_now();
            return;
        }
        connection->state = State::lingering;
        connection->arm_timer(connection->limits().linger_timeout_ms);
    }

    void send(std::string data) {
        if (closing) {
            return;
        }
        auto* write = new WriteRequest;
        write->data = std::move(data);
        write->connection = this;
        uv_buf_t buffer =
            uv_buf_init(write->data.data(), static_cast<unsigned int>(write->data.size()));
        int rc =
            uv_write(&write->request, reinterpret_cast<uv_stream_t*>(&tcp), &buffer, 1, on_write);
        if (rc < 0) {
            delete write;
            spdlog::debug("HTTP write failed: {}", uv_strerror(rc));
            close_now();
            return;
        }
        ++writes_in_flight;
    }

    static void on_write(uv_write_t* request, int status) noexcept {
        auto* write = reinterpret_cast<WriteRequest*>(request);
        Connection* connection = write->connection;
        delete write;
        --connection->writes_in_flight;
        if (connection->closing) {
            return;
        }
        if (status < 0) {
            spdlog::debug("HTTP write failed: {}", uv_strerror(status));
            connection->close_now();
            return;
        }
        try {
            connection->after_write();
        } catch (const std::exception& e) {
            spdlog::error("HTTP connection failed: {}", e.what());
            connection->close_now();
        } catch (...) {
            spdlog::error("HTTP connection failed with an unknown exception");
            connection->close_now();
        }
    }

    void after_write() {
        if (state == State::flushing) {
            flush_then_close();
            return;
        }
        if (state == State::reading && paused &&
            tcp.write_queue_size <= limits().max_unsent_bytes / 2) {
            resume();
        }
    }

    // Parses what arrived while paused, then reads again unless that paused parsing anew.
    void resume() {
        paused = false;
        http_parser_pause(&parser, 0);
        std::string input = std::move(unparsed);
        unparsed.clear();
        if (!input.empty()) {
            feed(input.data(), input.size());
        }
        if (!closing && state == State::reading && !paused) {
            start_reading();
        }
    }

    // Builds the request from what the parser delivered; false when the target is unusable.
    bool build_request(HttpRequest& request) const {
        auto method = static_cast<http_method>(parser.method);
        request.method = http_method_str(method);
        if (url == "*") {
            request.path = "*"; // "OPTIONS *" addresses the server itself, not a resource
            return true;
        }
        http_parser_url parts;
        http_parser_url_init(&parts);
        if (http_parser_parse_url(url.data(), url.size(), method == HTTP_CONNECT ? 1 : 0, &parts) !=
            0) {
            return false;
        }
        if ((parts.field_set & (1U << UF_PATH)) != 0) {
            request.path = url.substr(parts.field_data[UF_PATH].off, parts.field_data[UF_PATH].len);
        } else {
            request.path = "/";
        }
        if ((parts.field_set & (1U << UF_QUERY)) != 0) {
            request.query =
                url.substr(parts.field_data[UF_QUERY].off, parts.field_data[UF_QUERY].len);
        }
        return true;
    }

    HttpResponse call_handler(const HttpRequest& request) {
        try {
            return server->handler_(request);
        } catch (const std::exception& e) {
            spdlog::error("HTTP handler for {} {} failed: {}", request.method, request.path,
                          e.what());
        } catch (...) {
            spdlog::error("HTTP handler for {} {} failed with an unknown exception", request.method,
                          request.path);
        }
        return http_status_response(500);
    }

    // --- http_parser callbacks (a non-zero return stops the parser with an error) ---

    int on_message_begin() {
        url.clear();
        head_bytes = 0;
        header_count = 0;
        body_bytes = 0;
        in_header_field = false;
        in_message = true;
        error_status = 0;
        return 0;
    }

    int count_head_bytes(std::size_t length) {
        head_bytes += length;
        if (head_bytes > limits().max_head_bytes) {
            error_status = 431;
            return -1;
        }
        return 0;
    }

    int on_url(const char* data, std::size_t length) {
        if (count_head_bytes(length) != 0) {
            return -1;
        }
        url.append(data, length);
        return 0;
    }

    int on_header_field(std::size_t length) {
        // The parser may report one name in several pieces when it spans reads; a new header
        // starts only after a value.
        if (!in_header_field) {
            in_header_field = true;
            if (++header_count > limits().max_headers) {
                error_status = 431;
                return -1;
            }
            length += kHeaderLineOverhead;
        }
        return count_head_bytes(length);
    }

    int on_header_value(std::size_t length) {
        in_header_field = false;
        return count_head_bytes(length);
    }

    int on_headers_complete() {
        // Only HTTP/1.x is spoken here; a later minor version is compatible (RFC 9110 2.5).
        if (parser.http_major != 1) {
            error_status = 505;
            return -1;
        }
        // Refuse a declared oversized body before reading any of it. ULLONG_MAX means that no
        // Content-Length was given (a chunked body is counted as it arrives).
        if (parser.content_length != ULLONG_MAX &&
            parser.content_length > limits().max_body_bytes) {
            error_status = 413;
            return -1;
        }
        return 0;
    }

    int on_body(std::size_t length) {
        body_bytes += length;
        if (body_bytes > limits().max_body_bytes) {
            error_status = 413;
            return -1;
        }
        return 0;
    }

    int on_message_complete() {
        in_message = false;
        ++requests_served;
        HttpRequest request;
        if (!build_request(request)) {
            error_status = 400;
            return -1;
        }
        HttpResponse response = call_handler(request);
        if (closing) {
            return -1;
        }
        // An upgrade (or CONNECT) hands the rest of the stream to another protocol, which this
        // server does not speak, so the connection ends after answering.
        bool keep_alive = http_should_keep_alive(&parser) != 0 && parser.upgrade == 0 &&
                          requests_served < limits().max_requests_per_connection &&
                          !server->closing_;
        bool http_1_0 = parser.http_major == 1 && parser.http_minor == 0;
        send(serialize_response(response, parser.method == HTTP_HEAD, keep_alive, http_1_0));
        if (closing) {
            return -1;
        }
        arm_timer(limits().idle_timeout_ms);
        if (!keep_alive) {
            last_message_done = true;
            return -1;
        }
        if (tcp.write_queue_size > limits().max_unsent_bytes) {
            paused = true;
            http_parser_pause(&parser, 1);
        }
        return 0;
    }

    template <typename F>
    static int guarded(http_parser* parser, F&& callback) noexcept {
        auto* connection = static_cast<Connection*>(parser->data);
        try {
            return callback(*connection);
        } catch (const std::exception& e) {
            spdlog::error("HTTP request handling failed: {}", e.what());
        } catch (...) {
            spdlog::error("HTTP request handling failed with an unknown exception");
        }
        connection->error_status = 500;
        return -1;
    }

    static const http_parser_settings& settings() {
        static const http_parser_settings table = [] {
            http_parser_settings s;
            http_parser_settings_init(&s);
            s.on_message_begin = [](http_parser* p) {
                return guarded(p, [](Connection& c) { return c.on_message_begin(); });
            };
            s.on_url = [](http_parser* p, const char* data, std::size_t length) {
                return guarded(p, [&](Connection& c) { return c.on_url(data, length); });
            };
            s.on_header_field = [](http_parser* p, const char*, std::size_t length) {
                return guarded(p, [&](Connection& c) { return c.on_header_field(length); });
            };
            s.on_header_value = [](http_parser* p, const char*, std::size_t length) {
                return guarded(p, [&](Connection& c) { return c.on_header_value(length); });
            };
            s.on_headers_complete = [](http_parser* p) {
                return guarded(p, [](Connection& c) { return c.on_headers_complete(); });
            };
            s.on_body = [](http_parser* p, const char*, std::size_t length) {
                return guarded(p, [&](Connection& c) { return c.on_body(length); });
            };
            s.on_message_complete = [](http_parser* p) {
                return guarded(p, [](Connection& c) { return c.on_message_complete(); });
            };
            return s;
        }();
        return table;
    }
};

HttpServer::HttpServer(uv_loop_t* loop, HttpServerLimits limits, Handler handler)
    : loop_(loop), limits_(limits), handler_(std::move(handler)),
      link_(std::make_shared<Link>(Link{this})),
      read_buffer_(std::make_unique<char[]>(kReadBufferSize)) {}

HttpServer::~HttpServer() {
    if (listener_ != nullptr) {
        uv_close(reinterpret_cast<uv_handle_t*>(&listener_->handle), Listener::on_closed);
        listener_ = nullptr;
    }
    std::vector<Connection*> open(connections_.begin(), connections_.end());
    for (Connection* connection : open) {
        connection->close_now();
    }
    link_->server = nullptr;
}

int HttpServer::listen(const std::string& host, int port) {
    if (listener_ != nullptr || closing_ || port < 0 || port > 65535) {
        return UV_EINVAL;
    }
    sockaddr_storage address;
    if (!resolve_listen_address(host, port, address)) {
        return UV_EINVAL;
    }
    auto* listener = new Listener(link_);
    int rc = uv_tcp_init(loop_, &listener->handle);
    if (rc < 0) {
        delete listener;
        return rc;
    }
    listener->handle.data = listener;
    ++open_handles_;
    rc = uv_tcp_bind(&listener->handle, reinterpret_cast<const sockaddr*>(&address), 0);
    if (rc == 0) {
        // libuv reports some bind errors (EADDRINUSE) only when listening starts.
        rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener->handle), kListenBacklog,
                       on_connection);
    }
    if (rc < 0) {
        uv_close(reinterpret_cast<uv_handle_t*>(&listener->handle), Listener::on_closed);
        return rc;
    }
    listener_ = listener;
    return 0;
}

int HttpServer::bound_port() const {
    if (listener_ == nullptr) {
        return 0;
    }
    sockaddr_storage address;
    int length = sizeof address;
    if (uv_tcp_getsockname(&listener_->handle, reinterpret_cast<sockaddr*>(&address), &length) <
        0) {
        return 0;
    }
    if (address.ss_family == AF_INET) {
        return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
    }
    if (address.ss_family == AF_INET6) {
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
    }
    return 0;
}

void HttpServer::on_connection(uv_stream_t* stream, int status) {
    auto* listener = static_cast<Listener*>(stream->data);
    HttpServer* server = listener->link->server;
    if (server == nullptr || server->closing_) {
        return;
    }
    if (status < 0) {
        spdlog::debug("HTTP accept failed: {}", uv_strerror(status));
        return;
    }
    try {
        server->accept_one();
    } catch (const std::exception& e) {
        spdlog::error("HTTP accept failed: {}", e.what());
    } catch (...) {
        spdlog::error("HTTP accept failed with an unknown exception");
    }
}

void HttpServer::accept_one() {
    auto* listen_stream = reinterpret_cast<uv_stream_t*>(&listener_->handle);
    if (connections_.size() >= limits_.max_connections) {
        // Accepting is the only way to take the connection out of the kernel's backlog;
        // leaving it there would make libuv report it again and again.
        auto* refused = new RefusedSocket(link_);
        int rc = uv_tcp_init(loop_, &refused->handle);
        if (rc < 0) {
            delete refused;
            spdlog::debug("HTTP accept failed: {}", uv_strerror(rc));
            return;
        }
        refused->handle.data = refused;
        ++open_handles_;
        rc = uv_accept(listen_stream, reinterpret_cast<uv_stream_t*>(&refused->handle));
        spdlog::debug("HTTP connection refused: {} connections open", connections_.size());
        if (rc < 0) {
            spdlog::debug("HTTP accept failed: {}", uv_strerror(rc));
        }
        uv_close(reinterpret_cast<uv_handle_t*>(&refused->handle), RefusedSocket::on_closed);
        return;
    }

    auto* connection = new Connection(this, link_);
    int rc = uv_tcp_init(loop_, &connection->tcp);
    if (rc < 0) {
        delete connection;
        spdlog::debug("HTTP accept failed: {}", uv_strerror(rc));
        return;
    }
    connection->tcp.data = connection;
    connection->handles_open = 1;
    ++open_handles_;
    rc = uv_timer_init(loop_, &connection->timer);
    if (rc < 0) {
        // The timer is not a handle yet, so only the socket needs closing.
        connection->closing = true;
        uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp), Connection::on_handle_closed);
        spdlog::debug("HTTP accept failed: {}", uv_strerror(rc));
        return;
    }
    connection->timer.data = connection;
    connection->handles_open = 2;
    ++open_handles_;
    connections_.insert(connection);

    rc = uv_accept(listen_stream, reinterpret_cast<uv_stream_t*>(&connection->tcp));
    if (rc < 0) {
        spdlog::debug("HTTP accept failed: {}", uv_strerror(rc));
        connection->close_now();
        return;
    }
    // Responses are written whole; Nagle's algorithm would only delay the last segment of each.
    uv_tcp_nodelay(&connection->tcp, 1);
    connection->arm_timer(limits_.idle_timeout_ms);
    connection->start_reading();
}

void HttpServer::forget(Connection* connection) {
    connections_.erase(connection);
}

void HttpServer::handle_closed() {
    --open_handles_;
    if (closing_ && open_handles_ == 0) {
        run_closed_callbacks();
    }
}

void HttpServer::run_closed_callbacks() {
    // A callback may close() again and so add to the list; each runs once.
    std::vector<std::function<void()>> callbacks = std::move(on_closed_);
    on_closed_.clear();
    for (auto& callback : callbacks) {
        // This usually runs inside a libuv close callback, which an exception must not cross.
        try {
            callback();
        } catch (const std::exception& e) {
            spdlog::error("HTTP server close callback failed: {}", e.what());
        } catch (...) {
            spdlog::error("HTTP server close callback failed with an unknown exception");
        }
    }
}

void HttpServer::close(std::function<void()> on_closed) {
    if (on_closed) {
        on_closed_.push_back(std::move(on_closed));
    }
    if (!closing_) {
        closing_ = true;
        if (listener_ != nullptr) {
            uv_close(reinterpret_cast<uv_handle_t*>(&listener_->handle), Listener::on_closed);
            listener_ = nullptr;
        }
        std::vector<Connection*> open(connections_.begin(), connections_.end());
        for (Connection* connection : open) {
            connection->close_now();
        }
    }
    if (open_handles_ == 0) {
        run_closed_callbacks();
    }
}

} // namespace outbox
