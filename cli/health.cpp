// `outbox-worker health`: GET /health of the running instance, for container health checks. A
// plain blocking socket with a deadline: nothing to set up, nothing left behind, and no dependency
// on libcurl's configuration or proxies.
#include "cli/args.h"
#include "cli/commands.h"
#include "common/fd.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace outbox::cli {

const char* const kHealthUsage = R"(usage: outbox-worker health

Asks the running instance (OUTBOX_HTTP_HOST:OUTBOX_HTTP_PORT) for GET /health, prints the
response body and exits 0 when the answer is 200, else 1 (also when nothing answers within 2 s).
A wildcard host (0.0.0.0, ::) is asked on the loopback address.
)";

namespace {

constexpr std::chrono::milliseconds kTimeout{2000};
constexpr size_t kMaxResponseBytes = 1024 * 1024;

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

bool wait_for(int fd, short events, Clock::time_point deadline) {
    pollfd p{fd, events, 0};
    int r;
    do {
        r = poll(&p, 1, remaining_ms(deadline));
    } while (r < 0 && errno == EINTR);
    return r > 0;
}

// Connects to one resolved address before the deadline; a closed UniqueFd with `error` set
// otherwise.
UniqueFd connect_with_deadline(const addrinfo* ai, Clock::time_point deadline, std::string& error) {
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.is_open()) {
        error = std::strerror(errno);
        return fd;
    }
    if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) {
            error = std::strerror(errno);
            return UniqueFd();
        }
        if (!wait_for(fd.get(), POLLOUT, deadline)) {
            error = "timed out";
            return UniqueFd();
        }
        int so_error = 0;
        socklen_t len = sizeof so_error;
        getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &len);
        if (so_error != 0) {
            error = std::strerror(so_error);
            return UniqueFd();
        }
    }
    return fd;
}

// The body of a chunked response, or nullopt when the chunks are malformed.
std::optional<std::string> dechunk(const std::string& body) {
    std::string out;
    size_t pos = 0;
    while (pos < body.size()) {
        size_t eol = body.find("\r\n", pos);
        if (eol == std::string::npos) {
            return std::nullopt;
        }
        size_t size = 0;
        try {
            size = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
        } catch (const std::exception&) {
            return std::nullopt;
        }
        if (size == 0) {
            return out;
        }
        pos = eol + 2;
        if (pos + size > body.size()) {
            return std::nullopt;
        }
        out.append(body, pos, size);
        pos += size + 2;
    }
    return std::nullopt;
}

} // namespace

int health_command(const std::vector<std::string>& args) {
    ParseResult parsed = parse_args(args, {});
    if (!parsed.error.empty()) {
        return usage_error("health", parsed.error, kHealthUsage);
    }
    if (parsed.args.help) {
        std::fputs(kHealthUsage, stdout);
        return kExitOk;
    }
    // The instance's own configuration says where it listens; the database is not needed.
    std::optional<Config> config = load_cli_config(false);
    if (!config) {
        return kExitConfig;
    }
    if (config->http_port == 0) {
        print_error("health", "the HTTP endpoint is disabled (OUTBOX_HTTP_PORT=0)");
        return kExitFailure;
    }
    std::string host = config->http_host;
    if (host == "0.0.0.0") {
        host = "127.0.0.1";
    } else if (host == "::" || host == "[::]") {
        host = "::1";
    }
    std::string port = std::to_string(config->http_port);
    std::string where =
        (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;

    const auto deadline = Clock::now() + kTimeout;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* resolved = nullptr;
    if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &resolved); rc != 0) {
        print_error("health", "cannot resolve " + host + ": " + gai_strerror(rc));
        return kExitFailure;
    }
    std::string error = "no address";
    UniqueFd socket;
    for (const addrinfo* ai = resolved; ai != nullptr && !socket.is_open(); ai = ai->ai_next) {
        socket = connect_with_deadline(ai, deadline, error);
    }
    freeaddrinfo(resolved);
    if (!socket.is_open()) {
        print_error("health", "cannot connect to " + where + ": " + error);
        return kExitFailure;
    }
    const int fd = socket.get();

    std::string request = "GET /health HTTP/1.1\r\nHost: " + where +
                          "\r\nUser-Agent: outbox-worker-health\r\nAccept: application/json\r\n"
                          "Connection: close\r\n\r\n";
    size_t sent = 0;
    while (sent < request.size()) {
        if (!wait_for(fd, POLLOUT, deadline)) {
            print_error("health", "timed out sending to " + where);
            return kExitFailure;
        }
        ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            print_error("health", "cannot send to " + where + ": " + std::strerror(errno));
            return kExitFailure;
        }
        sent += n > 0 ? static_cast<size_t>(n) : 0;
    }

    std::string response;
    char buf[8192];
    while (response.size() < kMaxResponseBytes) {
        if (!wait_for(fd, POLLIN, deadline)) {
            print_error("health", "no complete answer from " + where + " within 2 s");
            return kExitFailure;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0) {
            break;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;
            }
            print_error("health", "cannot read from " + where + ": " + std::strerror(errno));
            return kExitFailure;
        }
        response.append(buf, static_cast<size_t>(n));
    }

    // "HTTP/1.1 200 OK": the status is the second word of the first line.
    size_t header_end = response.find("\r\n\r\n");
    int status = 0;
    if (response.rfind("HTTP/", 0) == 0) {
        size_t space = response.find(' ');
        if (space != std::string::npos) {
            status = std::atoi(response.c_str() + space + 1);
        }
    }
    if (status == 0 || header_end == std::string::npos) {
        print_error("health", "not an HTTP response from " + where);
        return kExitFailure;
    }
    std::string headers = response.substr(0, header_end);
    for (char& c : headers) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    std::string body = response.substr(header_end + 4);
    if (headers.find("transfer-encoding: chunked") != std::string::npos) {
        body = dechunk(body).value_or(body);
    }
    std::fwrite(body.data(), 1, body.size(), stdout);
    if (!body.empty() && body.back() != '\n') {
        std::fputc('\n', stdout);
    }
    if (status != 200) {
        print_error("health", "unhealthy: HTTP " + std::to_string(status) + " from " + where);
        return kExitFailure;
    }
    return kExitOk;
}

} // namespace outbox::cli
