#include "supervisor/http_server.h"

#include "supervisor/uv_handle.h"

#include <microhttpd.h>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <unordered_set>

namespace outbox {

namespace {

constexpr int kListenBacklog = 128;
// libmicrohttpd keeps a connection's request head, its read buffer and the response's headers in
// one memory pool per connection; a head that does not fit is refused by the library itself
// (431 or 414). The pool is sized so that every head within max_head_bytes fits with room for the
// read buffer that carries the body through to us, and the exact head limit is ours (431).
constexpr std::size_t kMinimumConnectionMemory = 32 * 1024;
constexpr std::size_t kConnectionMemoryReserve = 16 * 1024;

bool is_token_char(char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return true;
    }
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_valid_header_name(std::string_view name) {
    return !name.empty() && std::all_of(name.begin(), name.end(), is_token_char);
}

bool has_line_break(std::string_view text) {
    return text.find_first_of("\r\n") != std::string_view::npos;
}

char to_lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string lower_case(std::string_view text) {
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(), to_lower);
    return out;
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return to_lower(x) == to_lower(y);
           });
}

// Headers whose value the server (or libmicrohttpd) owns because it depends on framing or on
// the connection; Content-Type has a field of its own in HttpResponse.
bool is_reserved_header(std::string_view name) {
    return equals_ignore_case(name, "content-length") || equals_ignore_case(name, "connection") ||
           equals_ignore_case(name, "server") || equals_ignore_case(name, "content-type") ||
           equals_ignore_case(name, "transfer-encoding") || equals_ignore_case(name, "date");
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = to_lower(c);
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

// Form decoding: '+' is a space and "%XY" a byte; a '%' not followed by two hex digits is kept
// as it is, since a query string is not ours to reject.
std::string form_decode(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '+') {
            out += ' ';
        } else if (c == '%' && i + 2 < text.size() && hex_value(text[i + 1]) >= 0 &&
                   hex_value(text[i + 2]) >= 0) {
            out += static_cast<char>(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2]));
            i += 2;
        } else {
            out += c;
        }
    }
    return out;
}

// Splits a request target into path and query (RFC 9112 3.2): origin form ("/a?b"), absolute
// form ("http://host/a?b", which a client must send to a proxy and a server must accept) and the
// asterisk form of OPTIONS. False for anything else (the authority form of CONNECT, garbage) and
// for bytes that a target cannot contain.
bool split_target(std::string_view target, std::string& path, std::string& query) {
    for (char c : target) {
        auto byte = static_cast<unsigned char>(c);
        if (byte <= 0x20 || byte >= 0x7f) {
            return false;
        }
    }
    if (target == "*") {
        path = "*";
        return true;
    }
    std::size_t fragment = target.find('#');
    if (fragment != std::string_view::npos) {
        target = target.substr(0, fragment);
    }
    if (target.size() >= 7 &&
        (equals_ignore_case(target.substr(0, 7), "http://") ||
         (target.size() >= 8 && equals_ignore_case(target.substr(0, 8), "https://")))) {
        target.remove_prefix(target.find("://") + 3);
        std::size_t authority_end = target.find_first_of("/?");
        target = authority_end == std::string_view::npos ? std::string_view()
                                                         : target.substr(authority_end);
        if (target.empty() || target.front() == '?') {
            path = "/";
            query = target.empty() ? std::string() : std::string(target.substr(1));
            return true;
        }
    }
    if (target.empty() || target.front() != '/') {
        return false;
    }
    std::size_t question = target.find('?');
    path = std::string(target.substr(0, question));
    query = question == std::string_view::npos ? std::string()
                                               : std::string(target.substr(question + 1));
    return true;
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

std::string address_text(const sockaddr* address) {
    char text[INET6_ADDRSTRLEN] = {0};
    if (address == nullptr) {
        return {};
    }
    if (address->sa_family == AF_INET) {
        uv_ip4_name(reinterpret_cast<const sockaddr_in*>(address), text, sizeof text);
    } else if (address->sa_family == AF_INET6) {
        uv_ip6_name(reinterpret_cast<const sockaddr_in6*>(address), text, sizeof text);
    }
    return text;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
// libmicrohttpd's messages: refused requests, failed sends, resource shortages. Each concerns one
// client, so they are debug-level news.
void log_from_library(void*, const char* format, va_list arguments) {
    char message[512];
    int length = std::vsnprintf(message, sizeof message, format, arguments);
    if (length < 0) {
        return;
    }
    std::string_view text(
        message, std::min<std::size_t>(static_cast<std::size_t>(length), sizeof message - 1));
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
        text.remove_suffix(1);
    }
    spdlog::debug("HTTP (libmicrohttpd): {}", text);
}
#pragma GCC diagnostic pop

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
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
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

const std::string* HttpRequest::header(std::string_view lower_name) const {
    for (const auto& [name, value] : headers) {
        if (name == lower_name) {
            return &value;
        }
    }
    return nullptr;
}

std::optional<std::string> HttpRequest::query_param(std::string_view name) const {
    std::string_view rest = query;
    while (!rest.empty()) {
        std::size_t end = rest.find('&');
        std::string_view pair = rest.substr(0, end);
        rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
        std::size_t equals = pair.find('=');
        std::string key = form_decode(pair.substr(0, equals));
        if (key == name) {
            return equals == std::string_view::npos ? std::string()
                                                    : form_decode(pair.substr(equals + 1));
        }
    }
    return std::nullopt;
}

void HttpRouter::get(std::string path, Route route) {
    handle("GET", std::move(path),
           [route = std::move(route)](const HttpRequest& request, HttpReply reply) {
               reply.send(route(request));
           });
}

void HttpRouter::handle(std::string method, std::string path, AsyncRoute route) {
    routes_.push_back(Entry{std::move(method), std::move(path), std::move(route)});
}

void HttpRouter::dispatch(const HttpRequest& request, HttpReply reply) const {
    auto matches = [&request](const std::string& pattern) {
        if (!pattern.empty() && pattern.back() == '*') {
            return std::string_view(request.path)
                .starts_with(std::string_view(pattern).substr(0, pattern.size() - 1));
        }
        return pattern == request.path;
    };
    std::vector<std::string> allowed;
    for (const Entry& entry : routes_) {
        if (!matches(entry.path)) {
            continue;
        }
        if (entry.method == request.method || (request.method == "HEAD" && entry.method == "GET")) {
            entry.route(request, std::move(reply));
            return;
        }
        auto allow = [&allowed](const std::string& method) {
            if (std::find(allowed.begin(), allowed.end(), method) == allowed.end()) {
                allowed.push_back(method);
            }
        };
        allow(entry.method);
        if (entry.method == "GET") {
            allow("HEAD");
        }
    }
    if (allowed.empty()) {
        reply.send(http_status_response(404));
        return;
    }
    HttpResponse response = http_status_response(405);
    std::string allow_header;
    for (const std::string& method : allowed) {
        allow_header += allow_header.empty() ? method : ", " + method;
    }
    response.headers.emplace_back("Allow", std::move(allow_header));
    reply.send(std::move(response));
}

namespace http_server_detail {

class Server;

} // namespace http_server_detail

// What a dispatched request and its HttpReply share. `server` is cleared when the reply can no
// longer reach a client: the request completed (answered, or the client went away) or the server
// closed.
struct HttpReply::State {
    http_server_detail::Server* server = nullptr;
    MHD_Connection* connection = nullptr;
    bool suspended = false; // the connection waits in MHD_suspend_connection() for send()
    bool sent = false;
    HttpResponse response;
};

namespace http_server_detail {

class Server {
  public:
    Server(uv_loop_t* loop, HttpServerLimits limits, HttpServer::Handler handler)
        : loop_(loop), limits_(limits), handler_(std::move(handler)) {}

    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    ~Server() {
        if (!closing_) {
            closing_ = true;
            abandon_replies();
            poll_.close();
        }
        stop_daemon();
        // The handle wrappers close themselves; their memory is freed by the loop.
    }

    int listen(const std::string& host, int port);
    int bound_port() const { return daemon_ != nullptr && !closing_ ? port_ : 0; }
    std::size_t connection_count() const { return connections_.size(); }
    void close(std::function<void()> on_closed);
    void send(HttpReply::State& state, HttpResponse response);

  private:
    // One per open connection (libmicrohttpd's socket context), for connection_count() and for
    // the request deadline.
    struct Connection {
        MHD_Connection* connection = nullptr;
        int fd = -1;
        // When the current request must have arrived, or its response have been sent (loop
        // time, ms); 0 while the handler holds the request. libmicrohttpd's own timeout only
        // measures inactivity, which a client trickling a byte at a time (slowloris) or reading
        // its response a byte at a time never reaches.
        std::uint64_t deadline = 0;
        bool cut = false;
        bool read_shut = false; // see notice_ends_of_stream()
    };

    // One per request, from its request line (libmicrohttpd's URI log callback) until
    // libmicrohttpd reports the request finished.
    struct Request {
        std::string target;
        // Where the target began in libmicrohttpd's copy of the request line, which it keeps in
        // place for as long as the request lives (its method pointer points into it too).
        const char* target_in_line = nullptr;
        HttpRequest request;
        bool head_checked = false;
        bool body_too_large = false;
        std::shared_ptr<HttpReply::State> state; // once dispatched
    };

    static void* on_request_line(void* self, const char* uri, MHD_Connection*) noexcept;
    static MHD_Result on_access(void* self, MHD_Connection* connection, const char* url,
                                const char* method, const char* version, const char* upload_data,
                                std::size_t* upload_data_size, void** request_context) noexcept;
    static void on_request_completed(void* self, MHD_Connection* connection, void** request_context,
                                     MHD_RequestTerminationCode reason) noexcept;
    static void on_connection(void* self, MHD_Connection* connection, void** socket_context,
                              MHD_ConnectionNotificationCode code) noexcept;

    bool handle_access(MHD_Connection* connection, Request& request, const char* method,
                       const char* upload_data, std::size_t* upload_data_size);
    int check_head(MHD_Connection* connection, Request& request, const char* method);
    bool dispatch(MHD_Connection* connection, Request& request);
    // `close`: the server refused the request, and the connection closes after the answer: a
    // client that sent something unacceptable may be out of step with the framing.
    bool queue(MHD_Connection* connection, const HttpResponse& response, bool close = false);

    bool method_is_whole(const Request& request, const char* method) const;
    Connection* connection_of(MHD_Connection* connection) const;
    void set_deadline(MHD_Connection* connection, std::uint64_t deadline);
    void notice_ends_of_stream();
    std::uint64_t next_deadline() const { return uv_now(loop_) + limits_.idle_timeout_ms; }

    void run() noexcept;
    void request_run();
    void arm_timers();
    void cut_overdue_connections();
    void abandon_replies();
    void stop_daemon();
    void run_closed_callbacks();

    uv_loop_t* loop_;
    HttpServerLimits limits_;
    HttpServer::Handler handler_;
    MHD_Daemon* daemon_ = nullptr;
    int port_ = 0;
    Poll poll_;            // libmicrohttpd's epoll descriptor
    Timer timer_;          // MHD_get_timeout(), or "run soon" after a resume
    Timer deadline_timer_; // the earliest request deadline
    Timer closer_;         // calls the on_closed callbacks from the loop
    std::unordered_set<Connection*> connections_;
    // Replies of requests that are still attached to a connection.
    std::unordered_set<HttpReply::State*> replies_;
    bool listening_ = false; // listen() succeeded once
    bool in_run_ = false;
    bool run_requested_ = false;
    bool closing_ = false;
    bool closed_ = false; // every handle closed and the callbacks run
    std::vector<std::function<void()>> on_closed_;
};

int Server::listen(const std::string& host, int port) {
    if (listening_ || closing_ || port < 0 || port > 65535) {
        return UV_EINVAL;
    }
    sockaddr_storage address;
    if (!resolve_listen_address(host, port, address)) {
        return UV_EINVAL;
    }
    // The socket is bound here rather than by libmicrohttpd so that a bind error reaches the
    // caller as an error code (libmicrohttpd only logs it) and host parsing stays what it was.
    int fd = ::socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    // As libuv does for TCP servers: a restarted service can bind while connections of its
    // previous life linger in TIME_WAIT. Two listeners on one address still get EADDRINUSE.
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t length = address.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0 ||
        ::listen(fd, kListenBacklog) != 0) {
        int error = errno;
        ::close(fd);
        return -error;
    }
    sockaddr_storage bound{};
    socklen_t bound_length = sizeof bound;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_length) != 0) {
        int error = errno;
        ::close(fd);
        return -error;
    }
    port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (address.ss_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    auto timeout_s = static_cast<unsigned int>(
        std::max<std::uint64_t>(1, (limits_.idle_timeout_ms + 999) / 1000));
    std::size_t memory =
        std::max(kMinimumConnectionMemory, 2 * limits_.max_head_bytes + kConnectionMemoryReserve);
    // No internal thread: libmicrohttpd runs only inside MHD_run(), which the loop calls.
    // The logger comes first so that libmicrohttpd uses it for messages about the options too.
    auto connection_limit = static_cast<unsigned int>(limits_.max_connections);
    // clang-format off
    daemon_ = MHD_start_daemon(
        flags, 0, nullptr, nullptr, &Server::on_access, this,
        MHD_OPTION_EXTERNAL_LOGGER, &log_from_library, nullptr,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_LIMIT, connection_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory,
        MHD_OPTION_URI_LOG_CALLBACK, &Server::on_request_line, this,
        MHD_OPTION_NOTIFY_COMPLETED, &Server::on_request_completed, this,
        MHD_OPTION_NOTIFY_CONNECTION, &Server::on_connection, this,
        MHD_OPTION_END);
    // clang-format on
    if (daemon_ == nullptr) {
        // Whether libmicrohttpd closed the socket depends on where it failed; leaking one
        // descriptor on this path is better than closing one that may have been reused.
        spdlog::error("HTTP: libmicrohttpd failed to start");
        return UV_EIO;
    }
    const MHD_DaemonInfo* info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_EPOLL_FD);
    int rc = info == nullptr ? UV_EIO : poll_.open(loop_, info->epoll_fd, [this](int status, int) {
        if (status < 0) {
            spdlog::debug("HTTP poll failed: {}", uv_strerror(status));
        }
        run();
    });
    if (rc != 0) {
        stop_daemon();
        return rc;
    }
    poll_.start(UV_READABLE);
    timer_ = Timer(loop_, [this] { run(); });
    deadline_timer_ = Timer(loop_, [this] {
        cut_overdue_connections();
        run();
    });
    listening_ = true;
    arm_timers();
    return 0;
}

void Server::run() noexcept {
    if (daemon_ == nullptr) {
        return;
    }
    in_run_ = true;
    run_requested_ = false;
    MHD_run(daemon_);
    in_run_ = false;
    if (closing_) {
        // close() was called from a handler, inside MHD_run(), where the daemon cannot stop.
        stop_daemon();
        return;
    }
    notice_ends_of_stream();
    arm_timers();
}

void Server::request_run() {
    run_requested_ = true;
    if (!in_run_) {
        timer_.start(0);
    }
}

void Server::arm_timers() {
    if (daemon_ == nullptr) {
        return;
    }
    MHD_UNSIGNED_LONG_LONG timeout = 0;
    if (run_requested_) {
        timer_.start(0);
    } else if (MHD_get_timeout(daemon_, &timeout) == MHD_YES) {
        timer_.start(static_cast<std::uint64_t>(timeout));
    } else {
        timer_.stop();
    }
    std::uint64_t earliest = 0;
    for (const Connection* c : connections_) {
        if (c->deadline != 0 && !c->cut && (earliest == 0 || c->deadline < earliest)) {
            earliest = c->deadline;
        }
    }
    if (earliest == 0) {
        deadline_timer_.stop();
        return;
    }
    std::uint64_t now = uv_now(loop_);
    deadline_timer_.start(earliest > now ? earliest - now : 0);
}

void Server::cut_overdue_connections() {
    std::uint64_t now = uv_now(loop_);
    for (Connection* c : connections_) {
        if (c->deadline != 0 && !c->cut && c->deadline <= now) {
            // libmicrohttpd owns the descriptor and cannot be asked to drop a connection from
            // outside a callback; shutting the socket down makes its next read see the end of
            // the stream, and it closes the connection itself.
            spdlog::debug("HTTP connection closed: no complete request within {} ms",
                          limits_.idle_timeout_ms);
            ::shutdown(c->fd, SHUT_RDWR);
            c->cut = true;
        }
    }
}

// libmicrohttpd hands the method over as a C string, but tells HEAD from other methods by the
// whole token before the first space: a method with a NUL byte in it ("HEAD\0x") would reach the
// handler as "HEAD" while the library sends the body as for an unknown method. In the request
// line, the method's end is followed by the NUL that replaced the first space, then only spaces
// up to the target; anything else there means the token held a NUL.
bool Server::method_is_whole(const Request& request, const char* method) const {
    if (method == nullptr || request.target_in_line == nullptr) {
        return false;
    }
    const char* end = method + std::strlen(method);
    if (request.target_in_line <= end ||
        static_cast<std::size_t>(request.target_in_line - end) > limits_.max_head_bytes) {
        return true; // not one buffer after all: nothing to tell
    }
    return std::all_of(end + 1, request.target_in_line, [](char c) { return c == ' '; });
}

Server::Connection* Server::connection_of(MHD_Connection* connection) const {
    const MHD_ConnectionInfo* info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info == nullptr ? nullptr : static_cast<Connection*>(info->socket_context);
}

void Server::set_deadline(MHD_Connection* connection, std::uint64_t deadline) {
    if (Connection* c = connection_of(connection)) {
        c->deadline = deadline;
    }
}

void* Server::on_request_line(void*, const char* uri, MHD_Connection*) noexcept {
    try {
        auto* request = new Request;
        request->target = uri == nullptr ? "" : uri;
        request->target_in_line = uri;
        return request;
    } catch (...) {
        return nullptr; // on_access closes the connection
    }
}

MHD_Result Server::on_access(void* self, MHD_Connection* connection, const char*,
                             const char* method, const char*, const char* upload_data,
                             std::size_t* upload_data_size, void** request_context) noexcept {
    auto* server = static_cast<Server*>(self);
    auto* request = static_cast<Request*>(*request_context);
    if (request == nullptr) {
        return MHD_NO;
    }
    try {
        return server->handle_access(connection, *request, method, upload_data, upload_data_size)
                   ? MHD_YES
                   : MHD_NO;
    } catch (const std::exception& e) {
        spdlog::error("HTTP request handling failed: {}", e.what());
    } catch (...) {
        spdlog::error("HTTP request handling failed with an unknown exception");
    }
    return MHD_NO;
}

// libmicrohttpd calls this when the head is complete (first call), once per piece of body, when
// the body is complete, and again after each MHD_resume_connection() until a response is queued.
// False closes the connection without a response.
bool Server::handle_access(MHD_Connection* connection, Request& request, const char* method,
                           const char* upload_data, std::size_t* upload_data_size) {
    if (closing_) {
        return false;
    }
    if (!request.head_checked) {
        request.head_checked = true;
        request.request.method = method == nullptr ? "" : method;
        int status = check_head(connection, request, method);
        // A response queued now, before the body, also tells libmicrohttpd to skip the body and
        // close the connection after answering.
        return status == 0 || queue(connection, http_status_response(status), true);
    }
    if (*upload_data_size != 0) {
        std::size_t size = *upload_data_size;
        *upload_data_size = 0;
        if (request.body_too_large) {
            return true; // discarded; the request deadline bounds how long this may go on
        }
        if (request.request.body.size() + size > limits_.max_body_bytes) {
            request.body_too_large = true;
            std::string().swap(request.request.body);
            return true;
        }
        request.request.body.append(upload_data, size);
        return true;
    }
    if (request.body_too_large) {
        return queue(connection, http_status_response(413), true);
    }
    if (!request.state) {
        return dispatch(connection, request);
    }
    // Resumed by send(), or by close() with the reply abandoned.
    HttpReply::State& state = *request.state;
    if (state.server == nullptr) {
        return false;
    }
    if (!state.sent) {
        MHD_suspend_connection(connection);
        state.suspended = true;
        return true;
    }
    return queue(connection, state.response);
}

int Server::check_head(MHD_Connection* connection, Request& request, const char* method) {
    HttpRequest& r = request.request;
    if (!split_target(request.target, r.path, r.query) || !method_is_whole(request, method)) {
        return 400;
    }
    MHD_get_connection_values_n(
        connection, MHD_HEADER_KIND,
        [](void* out, MHD_ValueKind, const char* key, std::size_t key_size, const char* value,
           std::size_t value_size) noexcept {
            try {
                static_cast<HttpRequest*>(out)->headers.emplace_back(
                    lower_case(std::string_view(key, key_size)),
                    value == nullptr ? std::string() : std::string(value, value_size));
                return MHD_YES;
            } catch (...) {
                return MHD_NO;
            }
        },
        &r);
    const MHD_ConnectionInfo* address =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (address != nullptr) {
        r.client_address = address_text(address->client_addr);
    }
    std::size_t content_lengths = 0;
    bool chunked = false;
    for (const auto& [name, value] : r.headers) {
        if (!is_valid_header_name(name)) {
            return 400;
        }
        content_lengths += name == "content-length" ? 1 : 0;
        chunked = chunked || name == "transfer-encoding";
    }
    // Two framings for one body (RFC 9112 6.3) are how requests are smuggled past a proxy that
    // picks the other one; libmicrohttpd picks one silently, so refuse them here.
    if (content_lengths > 1 || (content_lengths == 1 && chunked)) {
        return 400;
    }
    const MHD_ConnectionInfo* head_size =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (r.headers.size() > limits_.max_headers ||
        (head_size != nullptr && head_size->header_size > limits_.max_head_bytes)) {
        return 431;
    }
    // libmicrohttpd has checked the value's syntax; refuse a declared oversized body before
    // reading any of it. A chunked body is counted as it arrives.
    if (const std::string* length = r.header("content-length")) {
        std::uint64_t declared = 0;
        auto [end, error] =
            std::from_chars(length->data(), length->data() + length->size(), declared);
        if (error != std::errc() || declared > limits_.max_body_bytes) {
            return 413;
        }
    }
    return 0;
}

bool Server::dispatch(MHD_Connection* connection, Request& request) {
    auto state = std::make_shared<HttpReply::State>();
    state->server = this;
    state->connection = connection;
    request.state = state;
    replies_.insert(state.get());
    // The handler may take its time (a database query); the deadline is for the client.
    set_deadline(connection, 0);
    try {
        handler_(request.request, HttpReply(state));
    } catch (const std::exception& e) {
        spdlog::error("HTTP handler for {} {} failed: {}", request.request.method,
                      request.request.path, e.what());
        HttpReply(state).send(http_status_response(500));
    } catch (...) {
        spdlog::error("HTTP handler for {} {} failed with an unknown exception",
                      request.request.method, request.request.path);
        HttpReply(state).send(http_status_response(500));
    }
    if (closing_ || state->server == nullptr) {
        return false; // the handler closed the server
    }
    if (state->sent) {
        set_deadline(connection, next_deadline());
        return queue(connection, state->response);
    }
    MHD_suspend_connection(connection);
    state->suspended = true;
    return true;
}

void Server::send(HttpReply::State& state, HttpResponse response) {
    state.sent = true;
    state.response = std::move(response);
    if (!state.suspended) {
        return; // still inside the handler: dispatch() queues it
    }
    state.suspended = false;
    set_deadline(state.connection, next_deadline());
    MHD_resume_connection(state.connection);
    // libmicrohttpd wakes its epoll set on a resume, but only MHD_run() acts on it: make sure
    // it runs soon, whatever the loop is doing now.
    request_run();
}

bool Server::queue(MHD_Connection* connection, const HttpResponse& response, bool close) {
    const HttpResponse* source = &response;
    HttpResponse replacement;
    // A status outside 200..599 would be either meaningless or an interim response, which cannot
    // carry the body that follows; the handler is broken, so the client gets a 500 instead.
    if (response.status < 200 || response.status > 599) {
        spdlog::error("HTTP handler returned invalid status {}; answering 500", response.status);
        replacement = http_status_response(500);
        source = &replacement;
    }
    std::string content_type = source->content_type;
    if (content_type.empty() || has_line_break(content_type)) {
        content_type = "application/octet-stream";
    }
    MHD_Response* mhd_response = MHD_create_response_from_buffer(
        source->body.size(), const_cast<char*>(source->body.data()), MHD_RESPMEM_MUST_COPY);
    if (mhd_response == nullptr) {
        return false;
    }
    bool ok =
        MHD_add_response_header(mhd_response, "Server", "outbox-worker") == MHD_YES &&
        MHD_add_response_header(mhd_response, "Content-Type", content_type.c_str()) == MHD_YES;
    if (close) {
        ok = ok && MHD_add_response_header(mhd_response, "Connection", "close") == MHD_YES;
    }
    for (const auto& [name, value] : source->headers) {
        if (!is_valid_header_name(name) || has_line_break(value) || is_reserved_header(name) ||
            value.find('\0') != std::string::npos) {
            spdlog::debug("HTTP response header '{}' dropped: invalid or owned by the server",
                          name);
            continue;
        }
        ok = ok && MHD_add_response_header(mhd_response, name.c_str(), value.c_str()) == MHD_YES;
    }
    ok = ok && MHD_queue_response(connection, static_cast<unsigned int>(source->status),
                                  mhd_response) == MHD_YES;
    MHD_destroy_response(mhd_response);
    return ok;
}

void Server::on_request_completed(void* self, MHD_Connection* connection, void** request_context,
                                  MHD_RequestTerminationCode) noexcept {
    auto* server = static_cast<Server*>(self);
    auto* request = static_cast<Request*>(*request_context);
    *request_context = nullptr;
    if (request != nullptr) {
        if (request->state) {
            request->state->server = nullptr;
            request->state->suspended = false;
            server->replies_.erase(request->state.get());
        }
        delete request;
    }
    // A kept-alive connection must complete its next request in time as well.
    server->set_deadline(connection, server->next_deadline());
}

void Server::notice_ends_of_stream() {
    // libmicrohttpd 0.9.75 takes a short read to mean that the socket is drained, so an end of
    // stream that arrives together with data (a client that half-closes after sending) goes
    // unnoticed, and the connection stays open until its timeout. Where only the end of the
    // stream is left in the socket, shutting down our reading side wakes libmicrohttpd's epoll
    // set again: its next read sees the end and closes the connection, after answering whatever
    // complete requests it still holds, since the writing side stays open.
    for (Connection* c : connections_) {
        char byte;
        if (!c->read_shut && c->fd >= 0 && ::recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
            ::shutdown(c->fd, SHUT_RD);
            c->read_shut = true;
        }
    }
}

void Server::on_connection(void* self, MHD_Connection* connection, void** socket_context,
                           MHD_ConnectionNotificationCode code) noexcept {
    auto* server = static_cast<Server*>(self);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        try {
            auto* c = new Connection;
            c->connection = connection;
            const MHD_ConnectionInfo* info =
                MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
            c->fd = info == nullptr ? -1 : info->connect_fd;
            c->deadline = server->next_deadline();
            server->connections_.insert(c);
            *socket_context = c;
        } catch (...) {
            *socket_context = nullptr;
        }
        return;
    }
    auto* c = static_cast<Connection*>(*socket_context);
    *socket_context = nullptr;
    if (c != nullptr) {
        server->connections_.erase(c);
        delete c;
    }
    // At its connection limit libmicrohttpd takes the listening socket out of its epoll set and
    // puts it back at the start of a later MHD_run(); without a run now, a client waiting in the
    // backlog would wait for the next timeout.
    server->request_run();
}

void Server::abandon_replies() {
    // libmicrohttpd must not stop with suspended connections (MHD_suspend_connection's docs):
    // resume them, and since their replies are now dead, on_access closes them if it runs first.
    for (HttpReply::State* state : replies_) {
        state->server = nullptr;
        if (state->suspended) {
            state->suspended = false;
            MHD_resume_connection(state->connection);
        }
    }
    replies_.clear();
}

void Server::stop_daemon() {
    MHD_Daemon* daemon = std::exchange(daemon_, nullptr);
    if (daemon == nullptr) {
        return;
    }
    // The loop must stop watching the epoll descriptor before libmicrohttpd closes it.
    poll_.close();
    timer_.close();
    deadline_timer_.close();
    // Closes every connection (reporting each as completed and closed) and both descriptors.
    MHD_stop_daemon(daemon);
    for (Connection* c : connections_) {
        delete c;
    }
    connections_.clear();
}

void Server::close(std::function<void()> on_closed) {
    if (on_closed) {
        on_closed_.push_back(std::move(on_closed));
    }
    if (!closing_) {
        closing_ = true;
        abandon_replies();
        poll_.close();
        if (!in_run_) {
            stop_daemon();
        } // else run() stops the daemon once MHD_run() has returned
        if (listening_) {
            closer_ = Timer(loop_, [this] {
                closer_.close();
                closed_ = true;
                run_closed_callbacks();
            });
            closer_.start(0);
        } else {
            closed_ = true;
        }
    }
    if (closed_) {
        run_closed_callbacks();
    }
}

void Server::run_closed_callbacks() {
    // A callback may close() again and so add to the list; each runs once.
    std::vector<std::function<void()>> callbacks = std::move(on_closed_);
    on_closed_.clear();
    for (auto& callback : callbacks) {
        // This runs inside a libuv callback, which an exception must not cross.
        try {
            callback();
        } catch (const std::exception& e) {
            spdlog::error("HTTP server close callback failed: {}", e.what());
        } catch (...) {
            spdlog::error("HTTP server close callback failed with an unknown exception");
        }
    }
}

} // namespace http_server_detail

HttpReply& HttpReply::operator=(HttpReply&& other) noexcept {
    if (this != &other) {
        if (pending()) {
            send(http_status_response(500));
        }
        state_ = std::move(other.state_);
    }
    return *this;
}

HttpReply::~HttpReply() {
    if (pending()) {
        // While an exception unwinds a handler the server logs the exception itself.
        if (std::uncaught_exceptions() == 0) {
            spdlog::warn("HTTP reply dropped without an answer; answering 500");
        }
        send(http_status_response(500));
    }
}

void HttpReply::send(HttpResponse response) {
    if (!pending()) {
        return;
    }
    state_->server->send(*state_, std::move(response));
}

bool HttpReply::pending() const {
    return state_ && state_->server != nullptr && !state_->sent;
}

struct HttpServer::Impl final : http_server_detail::Server {
    using http_server_detail::Server::Server;
};

HttpServer::HttpServer(uv_loop_t* loop, HttpServerLimits limits, Handler handler)
    : impl_(std::make_unique<Impl>(loop, limits, std::move(handler))) {}

HttpServer::~HttpServer() = default;

int HttpServer::listen(const std::string& host, int port) {
    return impl_->listen(host, port);
}

int HttpServer::bound_port() const {
    return impl_->bound_port();
}

std::size_t HttpServer::connection_count() const {
    return impl_->connection_count();
}

void HttpServer::close(std::function<void()> on_closed) {
    impl_->close(std::move(on_closed));
}

} // namespace outbox
