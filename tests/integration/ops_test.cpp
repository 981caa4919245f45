// The operator's view of a running service, black-box: the HTTP endpoint (health, readiness,
// Prometheus metrics, the enhanced JSON, hostile requests), the systemd notification protocol,
// SIGHUP reloads, retention, the periodic metrics log line and the log formats. Every test runs
// the real binary (or the example application) against a real PostgreSQL, waits on conditions
// with deadlines, and ends with a clean stop: exit 0 and nothing left PROCESSING.
#include "tests/integration/engine_support.h"

#include "common/json.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

using namespace outbox::test;
using outbox::Json;

namespace {

// ---- a plain HTTP client ----------------------------------------------------------------------

struct HttpReply {
    int status = 0;   // 0 when no complete response arrived (refused, reset, timed out)
    std::string head; // status line and headers, lower-cased
    std::string body;
    std::string raw; // everything received, for failure messages
};

// Parses what arrived so far; true once a whole response (head and Content-Length body) is there.
bool parse_reply(HttpReply& reply) {
    size_t end = reply.raw.find("\r\n\r\n");
    if (reply.raw.rfind("HTTP/1.", 0) != 0 || end == std::string::npos) {
        return false;
    }
    std::string head = reply.raw.substr(0, end);
    std::transform(head.begin(), head.end(), head.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    size_t length_at = head.find("\r\ncontent-length:");
    if (length_at == std::string::npos) {
        return false;
    }
    size_t length = std::stoul(head.substr(length_at + 17));
    if (reply.raw.size() < end + 4 + length) {
        return false;
    }
    reply.head = head;
    reply.status = std::atoi(reply.raw.c_str() + reply.raw.find(' ') + 1);
    reply.body = reply.raw.substr(end + 4, length);
    return true;
}

// Sends `request` to 127.0.0.1:port and reads the response. Reading goes on while sending, so a
// server that answers an oversized request early and then closes is seen answering rather than
// only as a reset. Never fails the test itself: the caller judges the reply.
HttpReply http_exchange(int port, const std::string& request,
                        std::chrono::milliseconds timeout = 5s) {
    HttpReply reply;
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return reply;
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto left_ms = [&] {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        return static_cast<int>(std::max<long>(0, left.count()));
    };
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 &&
        errno != EINPROGRESS) {
        ::close(fd);
        return reply;
    }
    size_t sent = 0;
    bool connected = false;
    char buffer[16384];
    while (left_ms() > 0) {
        pollfd p{fd, static_cast<short>(POLLIN | (sent < request.size() ? POLLOUT : 0)), 0};
        if (::poll(&p, 1, left_ms()) <= 0) {
            continue;
        }
        if (!connected && (p.revents & (POLLOUT | POLLIN | POLLERR | POLLHUP))) {
            int error = 0;
            socklen_t len = sizeof error;
            ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
            if (error != 0) {
                break; // refused: nobody listens
            }
            connected = true;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
            if (n > 0) {
                reply.raw.append(buffer, static_cast<size_t>(n));
                if (parse_reply(reply)) {
                    break;
                }
                continue;
            }
            if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                break; // closed or reset
            }
        }
        if ((p.revents & POLLOUT) && sent < request.size()) {
            ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += static_cast<size_t>(n);
            } else if (errno != EAGAIN && errno != EINTR) {
                sent = request.size(); // the server stopped reading; what it said may still arrive
            }
        }
    }
    ::close(fd);
    if (reply.status == 0) {
        parse_reply(reply);
    }
    return reply;
}

HttpReply http_request(int port, const std::string& method, const std::string& path) {
    return http_exchange(port, method + " " + path +
                                   " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
}

HttpReply http_get(int port, const std::string& path) {
    return http_request(port, "GET", path);
}

// The body as JSON; nullptr when it is not JSON.
Json json_body(const HttpReply& reply) {
    return outbox::json_parse(reply.body);
}

double json_number(const cJSON* object, const char* key) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsNumber(item) ? item->valuedouble : -1;
}

// ---- Prometheus -------------------------------------------------------------------------------

const std::string kPrometheusParser =
    std::string(OUTBOX_SOURCE_DIR) + "/tests/unit/prometheus_parse.py";

// The families of one /metrics scrape as the reference Python client parsed them; nullptr when
// the scrape failed or the parser rejected the text (the reason goes to `why`).
Json scrape_metrics(int port, std::string& why) {
    HttpReply reply = http_get(port, "/metrics");
    if (reply.status != 200) {
        why = "GET /metrics: " + reply.raw;
        return nullptr;
    }
    SpawnOptions o;
    o.args = {kPrometheusParser, "--json"};
    o.stdin_text = reply.body;
    // Debian's interpreter: python3-prometheus-client is installed for it only.
    RunResult parsed = run_process("/usr/bin/python3", o, 30s);
    if (!parsed.status.exited_with(0)) {
        why = "prometheus_parse.py " + parsed.status.describe() + ": " + parsed.err + "\n" +
              reply.body;
        return nullptr;
    }
    return outbox::json_parse(parsed.out);
}

// The value of the sample named `name` whose labels are exactly `labels`, in any family.
std::optional<double> sample_value(const Json& families, const std::string& name,
                                   const std::map<std::string, std::string>& labels = {}) {
    if (!families) {
        return std::nullopt;
    }
    const cJSON* family = nullptr;
    cJSON_ArrayForEach(family, families.get()) {
        const cJSON* sample = nullptr;
        cJSON_ArrayForEach(sample, cJSON_GetObjectItemCaseSensitive(family, "samples")) {
            if (outbox::json_string(sample, "name") != name) {
                continue;
            }
            std::map<std::string, std::string> have;
            const cJSON* label = nullptr;
            cJSON_ArrayForEach(label, cJSON_GetObjectItemCaseSensitive(sample, "labels")) {
                have[label->string] = cJSON_IsString(label) ? label->valuestring : "";
            }
            const cJSON* value = cJSON_GetObjectItemCaseSensitive(sample, "value");
            if (have == labels && cJSON_IsNumber(value)) {
                return value->valuedouble;
            }
        }
    }
    return std::nullopt;
}

std::string family_type(const Json& families, const std::string& family) {
    const cJSON* f =
        families ? cJSON_GetObjectItemCaseSensitive(families.get(), family.c_str()) : nullptr;
    return f ? outbox::json_string(f, "type").value_or("") : "";
}

// Row counts and the DLQ are read every 5 s: wait until a scrape shows `value` for a sample.
bool wait_for_sample(int port, const std::string& name,
                     const std::map<std::string, std::string>& labels, double value,
                     std::chrono::milliseconds timeout = 20s) {
    return wait_until(
        [&] {
            std::string why;
            Json families = scrape_metrics(port, why);
            return sample_value(families, name, labels) == value;
        },
        timeout, 200ms);
}

// ---- the rest ---------------------------------------------------------------------------------

// Dead-letter rows written directly, as if earlier failures had put them there.
void insert_dlq_rows(const TestDatabase& db, int n, const std::string& prefix) {
    db.exec(
        R"(INSERT INTO "DlqEventLog" (id, "originalId", "eventKey", "tenantId", "eventType", payload,
                                          "failureReason", "retryCount")
               SELECT ')" +
        prefix + R"(-' || g, 'outbox-' || g, ')" + prefix + R"(-key-' || g, 'tenant-1',
                      'broken.thing', '{}'::jsonb, 'downstream rejected it', 5
                 FROM generate_series(1, )" +
        std::to_string(n) + ") g");
}

RunResult health_command(int port) {
    // A container health check runs with the instance's environment; the command needs only the
    // HTTP address, not the database.
    return run_process(OUTBOX_BINARY,
                       command({"health"}, {{"OUTBOX_HTTP_HOST", "127.0.0.1"},
                                            {"OUTBOX_HTTP_PORT", std::to_string(port)},
                                            {"DATABASE_URL", std::nullopt}}),
                       30s);
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
    }
    return lines;
}

size_t occurrences(const std::string& text, const std::string& needle) {
    size_t n = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
        ++n;
    }
    return n;
}

// The receiving end of systemd's notification socket: a datagram socket bound to a path, with
// SO_PASSCRED so that every datagram carries its sender's pid, as systemd sees it.
class NotifySocket {
  public:
    struct Datagram {
        std::string text;
        pid_t pid = 0;
    };

    NotifySocket() : path_(temp_path("notify.sock")) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        REQUIRE(path_.size() < sizeof address.sun_path);
        std::memcpy(address.sun_path, path_.c_str(), path_.size() + 1);
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
        int on = 1;
        REQUIRE(::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) == 0);
    }
    ~NotifySocket() {
        ::close(fd_);
        ::unlink(path_.c_str());
    }
    NotifySocket(const NotifySocket&) = delete;
    NotifySocket& operator=(const NotifySocket&) = delete;

    const std::string& path() const { return path_; }

    // Everything received so far, in arrival order.
    const std::vector<Datagram>& received() {
        for (;;) {
            char text[4096];
            alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
            iovec iov{text, sizeof text};
            msghdr msg{};
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control;
            msg.msg_controllen = sizeof control;
            ssize_t n = ::recvmsg(fd_, &msg, 0);
            if (n < 0) {
                break;
            }
            Datagram d;
            d.text.assign(text, static_cast<size_t>(n));
            for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                    ucred cred;
                    std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
                    d.pid = cred.pid;
                }
            }
            datagrams_.push_back(std::move(d));
        }
        return datagrams_;
    }

    long count(const std::string& text) {
        const auto& all = received();
        return std::count_if(all.begin(), all.end(),
                             [&](const Datagram& d) { return d.text == text; });
    }

    // Index of the first datagram starting with `prefix`, or -1.
    long first(const std::string& prefix) {
        const auto& all = received();
        for (size_t i = 0; i < all.size(); ++i) {
            if (all[i].text.rfind(prefix, 0) == 0) {
                return static_cast<long>(i);
            }
        }
        return -1;
    }

  private:
    std::string path_;
    int fd_ = -1;
    std::vector<Datagram> datagrams_;
};

} // namespace

// ---- HTTP -------------------------------------------------------------------------------------

TEST_CASE("/health, /ready and /api/metrics/enhanced follow the service's state", "[ops]") {
    TestDatabase db;
    db.migrate();
    int port = free_tcp_port();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["h.*"], "log": {}}])");
    // Two events nobody here takes, written two minutes ago: the backlog age must show them.
    write_events(db, "elsewhere.thing", 2);
    db.exec(R"(UPDATE "Outbox" SET "createdAt" = now() - interval '120 seconds')");
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"OUTBOX_HTTP_PORT", std::to_string(port)},
                         {"OUTBOX_DLQ_ALERT_THRESHOLD", "9"}});
    REQUIRE(service.wait_ready());
    INFO(service.log());

    HttpReply ready = http_get(port, "/ready");
    CHECK(ready.status == 200);
    CHECK(ready.body.find("ready") != std::string::npos);

    HttpReply health = http_get(port, "/health");
    INFO(health.raw);
    REQUIRE(health.status == 200);
    CHECK(health.head.find("content-type: application/json") != std::string::npos);
    Json body = json_body(health);
    REQUIRE(body);
    CHECK(outbox::json_string(body.get(), "status") == "healthy");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body.get(), "database")));
    RunResult healthy = health_command(port);
    INFO(healthy.out << healthy.err);
    CHECK(healthy.status.exited_with(0));

    write_events(db, "h.done", 3);
    REQUIRE(wait_for_count(db, kCompleted, 3));

    // At the threshold (9 rows) the service is still healthy: only rows above it fail /health.
    insert_dlq_rows(db, 9, "first");
    Json enhanced;
    REQUIRE(wait_until(
        [&] {
            enhanced = json_body(http_get(port, "/api/metrics/enhanced"));
            return enhanced &&
                   json_number(cJSON_GetObjectItemCaseSensitive(enhanced.get(), "outbox"), "dlq") ==
                       9;
        },
        20s, 100ms));
    {
        const cJSON* outbox = cJSON_GetObjectItemCaseSensitive(enhanced.get(), "outbox");
        INFO(outbox::json_print(enhanced.get()));
        CHECK(outbox::json_string(enhanced.get(), "health") == "healthy");
        CHECK(json_number(outbox, "pending") == 2);
        CHECK(json_number(outbox, "completed") == 3);
        CHECK(json_number(outbox, "backlogAgeSeconds") >= 120);
        CHECK(json_number(outbox, "backlogAgeSeconds") < 600);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(enhanced.get(), "databaseUp")));
        CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(enhanced.get(), "metrics")));
    }
    CHECK(http_get(port, "/health").status == 200);
    {
        // The same counts in Prometheus form, with the events left for other deployments by type.
        std::string why;
        Json families = scrape_metrics(port, why);
        INFO(why);
        REQUIRE(families);
        CHECK(sample_value(families, "outbox_dlq_rows") == 9.0);
        CHECK(sample_value(families, "outbox_unsubscribed_events",
                           {{"event_type", "elsewhere.thing"}}) == 2.0);
        CHECK(sample_value(families, "outbox_backlog_age_seconds") >= 120.0);
    }

    // One more row crosses the threshold.
    insert_dlq_rows(db, 1, "second");
    REQUIRE(wait_until([&] { return http_get(port, "/health").status == 503; }, 20s, 100ms));
    health = http_get(port, "/health");
    body = json_body(health);
    REQUIRE(body);
    CHECK(outbox::json_string(body.get(), "status") == "unhealthy");
    CHECK(health.body.find("dead-letter queue has 10 rows, above the threshold of 9") !=
          std::string::npos);
    RunResult unhealthy = health_command(port);
    CHECK(unhealthy.status.exited_with(1));
    CHECK(unhealthy.out.find("dead-letter queue has 10 rows") != std::string::npos);
    // Ten DLQ rows: no longer "healthy" by the enhanced grade, but "degraded".
    enhanced = json_body(http_get(port, "/api/metrics/enhanced"));
    REQUIRE(enhanced);
    CHECK(outbox::json_string(enhanced.get(), "health") == "degraded");

    // Emptying the DLQ makes the service healthy again.
    db.exec(R"(DELETE FROM "DlqEventLog")");
    REQUIRE(wait_until([&] { return http_get(port, "/health").status == 200; }, 20s, 100ms));
    CHECK(health_command(port).status.exited_with(0));
    stop_cleanly(service, db);
}

TEST_CASE(
    "unknown paths, other methods and hostile requests get a 4xx and the service keeps answering",
    "[ops]") {
    TestDatabase db;
    db.migrate();
    int port = free_tcp_port();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["h.*"], "log": {}}])");
    Service service(db,
                    {{"OUTBOX_HANDLERS", handlers}, {"OUTBOX_HTTP_PORT", std::to_string(port)}});
    REQUIRE(service.wait_ready());
    INFO(service.log());
    REQUIRE(http_get(port, "/health").status == 200);

    CHECK(http_get(port, "/no/such/path").status == 404);
    CHECK(http_get(port, "/healthz").status == 404);
    HttpReply post = http_request(port, "POST", "/health");
    CHECK(post.status == 405);
    CHECK(post.head.find("allow: get, head") != std::string::npos);
    CHECK(http_request(port, "DELETE", "/metrics").status == 405);

    HttpReply malformed = http_exchange(port, "THIS IS NOT HTTP AT ALL\r\n\r\n");
    INFO(malformed.raw);
    CHECK(malformed.status == 400);
    CHECK(http_get(port, "/health").status == 200);

    // 1 MB of headers: refused with 431 once the head passes its limit (a server may instead
    // close the connection, which shows here as no response). Either way it must not hurt.
    std::string huge =
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + std::string(1 << 20, 'a') +
        "\r\n\r\n";
    HttpReply oversized = http_exchange(port, huge, 10s);
    INFO(oversized.raw.substr(0, 200));
    CHECK((oversized.status == 431 || oversized.status == 0));
    CHECK(oversized.status != 200);
    // Many headers of ordinary size, past the header count limit.
    std::string many = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    for (int i = 0; i < 500; ++i) {
        many += "X-H" + std::to_string(i) + ": v\r\n";
    }
    // This request is small enough to arrive whole before the answer, so the 431 cannot be lost
    // to a reset.
    HttpReply too_many = http_exchange(port, many + "\r\n");
    CHECK(too_many.status == 431);

    CHECK(http_get(port, "/health").status == 200);
    CHECK(http_get(port, "/ready").status == 200);
    CHECK(service.process().is_running());
    stop_cleanly(service, db);
}

TEST_CASE("/ready is 503 while the service drains", "[ops]") {
    TestDatabase db;
    db.migrate();
    int port = free_tcp_port();
    std::string started = temp_path("started");
    // The event runs for six seconds: long enough to ask /ready while the drain waits for it.
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["long.*"],
        "exec": {"command": ["sh", "-c", "cat >/dev/null; touch )" +
                                               started + R"(; sleep 6"]}}])");
    Service service(db,
                    {{"OUTBOX_HANDLERS", handlers}, {"OUTBOX_HTTP_PORT", std::to_string(port)}});
    REQUIRE(service.wait_ready());
    INFO(service.log());
    REQUIRE(http_get(port, "/ready").status == 200);

    write_events(db, "long.job", 1);
    REQUIRE(wait_until([&] { return ::access(started.c_str(), F_OK) == 0; }, 20s));
    service.process().send_signal(SIGTERM);
    HttpReply draining;
    REQUIRE(wait_until(
        [&] {
            draining = http_get(port, "/ready");
            return draining.status == 503;
        },
        5s, 50ms));
    CHECK(draining.body.find("draining") != std::string::npos);
    // The drain waited for the running event, which completed.
    auto status = service.process().wait_exit(30s);
    REQUIRE(status.has_value());
    CHECK(status->exited_with(0));
    CHECK(db.count(kCompleted) == 1);
    CHECK(db.count(kProcessing) == 0);
}

TEST_CASE("without its database the service is starting and unhealthy, and stops cleanly",
          "[ops]") {
    TestDatabase db; // only for the helpers: the service is pointed at a port where nothing listens
    int port = free_tcp_port();
    int nowhere = free_tcp_port();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["*"], "log": {}}])");
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"OUTBOX_HTTP_PORT", std::to_string(port)},
                         {"DATABASE_URL", "postgresql://outbox:not-this-secret@127.0.0.1:" +
                                              std::to_string(nowhere) + "/outbox"}});
    INFO(service.log());
    HttpReply health;
    REQUIRE(wait_until(
        [&] {
            health = http_get(port, "/health");
            return health.status != 0;
        },
        20s, 100ms));
    CHECK(health.status == 503);
    CHECK(health.body.find("database unreachable") != std::string::npos);
    HttpReply ready = http_get(port, "/ready");
    CHECK(ready.status == 503);
    CHECK(ready.body.find("starting") != std::string::npos);
    CHECK(health_command(port).status.exited_with(1));
    std::string why;
    Json families = scrape_metrics(port, why);
    INFO(why);
    REQUIRE(families);
    CHECK(sample_value(families, "outbox_database_up") == 0.0);

    auto status = service.stop();
    REQUIRE(status.has_value());
    CHECK(status->exited_with(0));
    CHECK(service.log().find("not-this-secret") == std::string::npos);
}

TEST_CASE("/metrics is valid Prometheus text with the right numbers", "[ops]") {
    TestDatabase db;
    db.migrate();
    int port = free_tcp_port();
    write_events(db, "example.ok", 30);
    // One attempt allowed: the crash sends it straight to the DLQ.
    write_events(db, "example.crash", 1, 1);
    Service service(db, {{"OUTBOX_HTTP_PORT", std::to_string(port)}}, OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 30));
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    // Row counts are read every 5 s.
    REQUIRE(wait_for_sample(port, "outbox_rows", {{"status", "COMPLETED"}}, 30));
    REQUIRE(wait_for_sample(port, "outbox_dlq_rows", {}, 1));

    HttpReply raw = http_get(port, "/metrics");
    CHECK(raw.head.find("content-type: text/plain; version=0.0.4") != std::string::npos);
    std::string why;
    Json families = scrape_metrics(port, why);
    INFO(why);
    REQUIRE(families);
    INFO(outbox::json_print(families.get()));
    CHECK(sample_value(families, "outbox_events_completed_total", {{"event_type", "example.ok"}}) ==
          30.0);
    CHECK(sample_value(families, "outbox_events_completed_total",
                       {{"event_type", "example.crash"}}) == std::nullopt);
    CHECK(sample_value(families, "outbox_events_dead_lettered_total",
                       {{"event_type", "example.crash"}}) == 1.0);
    CHECK(sample_value(families, "outbox_rows", {{"status", "COMPLETED"}}) == 30.0);
    CHECK(sample_value(families, "outbox_rows", {{"status", "FAILED"}}) == 1.0);
    CHECK(sample_value(families, "outbox_rows", {{"status", "PENDING"}}) == 0.0);
    CHECK(sample_value(families, "outbox_rows", {{"status", "PROCESSING"}}) == 0.0);
    CHECK(sample_value(families, "outbox_dlq_rows") == 1.0);
    CHECK(sample_value(families, "outbox_database_up") == 1.0);
    CHECK(sample_value(families, "outbox_events_in_flight") == 0.0);
    CHECK(family_type(families, "outbox_event_latency_seconds") == "histogram");
    CHECK(sample_value(families, "outbox_event_latency_seconds_count") == 30.0);
    CHECK(sample_value(families, "outbox_event_latency_seconds_bucket", {{"le", "+Inf"}}) == 30.0);
    CHECK(family_type(families, "outbox_handler_duration_seconds") == "histogram");
    CHECK(sample_value(families, "outbox_handler_duration_seconds_count",
                       {{"event_type", "example.ok"}}) == 30.0);
    // The crashed handler process was replaced, and the restart counted by its reason.
    CHECK(sample_value(families, "outbox_worker_restarts_total", {{"reason", "crashed"}}) == 1.0);
    CHECK(family_type(families, "outbox_events_completed") == "counter");
    CHECK(family_type(families, "outbox_rows") == "gauge");

    Json enhanced = json_body(http_get(port, "/api/metrics/enhanced"));
    REQUIRE(enhanced);
    // One FAILED row and one DLQ row: degraded, not healthy.
    CHECK(outbox::json_string(enhanced.get(), "health") == "degraded");
    CHECK(json_number(cJSON_GetObjectItemCaseSensitive(enhanced.get(), "outbox"),
                      "backlogAgeSeconds") == 0);
    stop_cleanly(service, db);
}

// ---- systemd ----------------------------------------------------------------------------------

TEST_CASE("systemd hears READY, STATUS, WATCHDOG and STOPPING, from the supervisor only", "[ops]") {
    TestDatabase db;
    db.migrate();
    NotifySocket notify;
    std::string seen = temp_path("notify-env.txt");
    // The exec command reports whether it was given the notification socket: a handler's child
    // that inherited it could speak for the service.
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["n.*"],
        "exec": {"command": ["sh", "-c", "cat >/dev/null; echo \"${NOTIFY_SOCKET-unset} ${WATCHDOG_USEC-unset}\" >> )" +
                                               seen + R"("]}}])");
    write_events(db, "n.thing", 10);
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"NOTIFY_SOCKET", notify.path()},
                         {"WATCHDOG_USEC", "500000"},
                         {"WATCHDOG_PID", std::nullopt}});
    INFO(service.log());
    REQUIRE(wait_until([&] { return notify.count("READY=1") == 1; }, 20s));
    CHECK(wait_until([&] { return service.log().find("ready:") != std::string::npos; }, 5s));
    REQUIRE(wait_for_count(db, kCompleted, 10));
    REQUIRE(wait_until([&] { return notify.first("STATUS=") >= 0; }, 10s));
    // Pings every 250 ms: three arrive well within three seconds.
    long pings = notify.count("WATCHDOG=1");
    CHECK(wait_until([&] { return notify.count("WATCHDOG=1") >= pings + 3; }, 3s));
    CHECK(notify.first("STOPPING=1") == -1);

    auto status = service.stop();
    REQUIRE(status.has_value());
    CHECK(status->exited_with(0));
    CHECK(db.count(kProcessing) == 0);
    CHECK(notify.count("STOPPING=1") == 1);
    CHECK(notify.first("STOPPING=1") > notify.first("READY=1"));
    CHECK(notify.count("READY=1") == 1);
    for (const auto& d : notify.received()) {
        INFO(d.text);
        CHECK(d.pid == service.process().pid());
        bool known = d.text == "READY=1" || d.text == "STOPPING=1" || d.text == "WATCHDOG=1" ||
                     d.text.rfind("STATUS=", 0) == 0;
        CHECK(known);
    }
    for (const auto& line : lines_of(read_text_file(seen))) {
        CHECK(line == "unset unset");
    }
    CHECK(lines_of(read_text_file(seen)).size() == 10);
}

// ---- SIGHUP -----------------------------------------------------------------------------------

TEST_CASE("SIGHUP reloads the handlers file without losing or repeating an event", "[ops]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("slow-deliveries.txt");
    // Each slow delivery appends "<outbox id> <handler process pid>" once it is done.
    std::string slow = R"({"eventTypes": ["slow.*"],
        "exec": {"command": ["sh", "-c", "cat >/dev/null; sleep 0.3; echo \"$OUTBOX_EVENT_ID $PPID\" >> )" +
                       record + R"("]}})";
    std::string handlers =
        write_handlers_file(R"([{"eventTypes": ["a.*"], "log": {}}, )" + slow + "]");
    write_events(db, "a.first", 5);
    write_events(db, "b.waiting", 5);
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    REQUIRE(service.wait_ready());
    INFO(service.log());
    REQUIRE(wait_for_count(
        db,
        R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'a.first' AND status = 'COMPLETED')",
        5));
    // b.* has no subscriber yet: reported, and left alone.
    REQUIRE(wait_until([&] { return service.log().find("b.waiting") != std::string::npos; }, 20s));
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'b.waiting' AND status = 'PENDING'
                      AND "retryCount" = 0)") == 5);

    // Reload while slow events are running and queued in the old handler processes.
    write_events(db, "slow.job", 20);
    REQUIRE(wait_until([&] { return read_deliveries(record).ids.size() >= 2; }, 20s));
    std::ofstream(handlers, std::ios::trunc)
        << R"([{"eventTypes": ["a.*"], "log": {}}, {"eventTypes": ["b.*"], "log": {}}, )" + slow +
               "]";
    size_t before_reload = read_deliveries(record).ids.size();
    service.process().send_signal(SIGHUP);
    REQUIRE(wait_until(
        [&] { return service.log().find("SIGHUP: handlers file reloaded") != std::string::npos; },
        10s));
    CHECK(before_reload < 20);

    REQUIRE(wait_for_count(
        db,
        R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'b.waiting' AND status = 'COMPLETED')",
        5));
    REQUIRE(wait_for_count(
        db,
        R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'slow.job' AND status = 'COMPLETED')",
        20));
    Deliveries d = read_deliveries(record);
    CHECK(d.ids.size() == 20);
    std::set<std::string> expected;
    outbox::PgResult ids = db.exec(R"(SELECT id FROM "Outbox" WHERE "eventType" = 'slow.job')");
    for (int i = 0; i < ids.rows(); ++i) {
        expected.insert(ids.value(i, 0));
    }
    CHECK(std::set<std::string>(d.ids.begin(), d.ids.end()) == expected);
    // The old processes and their replacements both ran some of them.
    CHECK(d.pids.size() >= 3);
    // Nothing was charged an attempt by the reload.
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "retryCount" <> 0)") == 0);

    // An invalid file is refused and the handlers in use stay.
    std::ofstream(handlers, std::ios::trunc) << R"([{"eventTypes": ["a.*"], "log": )";
    service.process().send_signal(SIGHUP);
    REQUIRE(wait_until(
        [&] {
            return service.log().find("SIGHUP: keeping the current handlers") != std::string::npos;
        },
        10s));
    write_events(db, "a.later", 3);
    write_events(db, "b.later", 3);
    REQUIRE(wait_for_count(db, kCompleted, 5 + 5 + 20 + 3 + 3));
    CHECK(occurrences(service.log(), "replacing handler processes") == 1);
    stop_cleanly(service, db);
}

// ---- retention --------------------------------------------------------------------------------

TEST_CASE("retention deletes old COMPLETED rows and keeps EventLog", "[ops]") {
    TestDatabase db;
    db.migrate();
    int port = free_tcp_port();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["r.*"], "log": {}}])");
    write_events(db, "r.old", 6);
    write_events(db, "r.new", 4);
    write_events(db, "r.failed", 1);
    // Completed two hours ago, as far as the table can tell; and a FAILED row of that age, which
    // retention must not touch.
    db.exec(
        R"(UPDATE "Outbox" SET status = 'COMPLETED', "processedAt" = now() - interval '2 hours', "updatedAt" = now()
               WHERE "eventType" = 'r.old')");
    db.exec(
        R"(UPDATE "Outbox" SET status = 'FAILED', "processedAt" = now() - interval '2 hours', "updatedAt" = now(),
                      "lastError" = 'given up' WHERE "eventType" = 'r.failed')");
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"OUTBOX_RETENTION_HOURS", "1"},
                         {"OUTBOX_HTTP_PORT", std::to_string(port)}});
    INFO(service.log());
    REQUIRE(
        wait_for_count(db, R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'r.old')", 0, 30s));
    REQUIRE(wait_for_count(db, kCompleted, 4));
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'r.new' AND status = 'COMPLETED')") ==
        4);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'r.failed')") == 1);
    CHECK(db.count(R"(SELECT count(*) FROM "EventLog")") == 11);
    CHECK(service.log().find("retention: deleted 6 completed events") != std::string::npos);
    std::string why;
    Json families = scrape_metrics(port, why);
    INFO(why);
    CHECK(sample_value(families, "outbox_retention_deleted_total") == 6.0);
    stop_cleanly(service, db);
}

// ---- logs -------------------------------------------------------------------------------------

TEST_CASE("the metrics log line carries the row counts", "[ops]") {
    TestDatabase db;
    db.migrate();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["m.ok"], "log": {}},
        {"eventTypes": ["m.bad"], "exec": {"command": ["sh", "-c", "cat >/dev/null; echo rejected >&2; exit 65"]}}])");
    write_events(db, "m.ok", 7);
    write_events(db, "m.bad", 1);
    write_events(db, "m.unowned", 2);
    // Two older DLQ rows, so that the failed and DLQ counts differ and cannot be confused.
    insert_dlq_rows(db, 2, "older");
    Service service(db,
                    {{"OUTBOX_HANDLERS", handlers}, {"OUTBOX_METRICS_LOG_INTERVAL_MS", "1000"}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 7));
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 3, 30s));
    CHECK(wait_until(
        [&] {
            return service.log().find(
                       "metrics: total=10 pending=2 processing=0 completed=7 failed=1 dlq=3") !=
                   std::string::npos;
        },
        20s));
    // About one line a second, not one per count refresh or per event.
    size_t first = occurrences(service.log(), "metrics: ");
    CHECK(wait_until([&] { return occurrences(service.log(), "metrics: ") >= first + 2; }, 5s));
    stop_cleanly(service, db);
}

TEST_CASE("LOG_FORMAT=json writes one JSON object a line and never the password", "[ops]") {
    TestDatabase db;
    db.migrate();
    REQUIRE(!db.password().empty());
    bool uri = GENERATE(true, false);
    std::string handlers =
        write_handlers_file(R"([{"eventTypes": ["j.*"], "log": {"level": "info"}}])");
    write_events(db, "j.thing", 5);
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"DATABASE_URL", uri ? db.url() : db.conninfo()},
                         {"LOG_FORMAT", "json"},
                         {"LOG_LEVEL", "debug"},
                         {"SERVICE_NAME", "ops-json-test"}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 5));
    // A reconnect logs the connection's story again.
    db.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'outbox-worker%'");
    REQUIRE(
        wait_until([&] { return service.log().find("re-established") != std::string::npos; }, 20s));
    stop_cleanly(service, db);

    std::string log = service.log();
    CHECK(log.find(db.password()) == std::string::npos);
    std::vector<std::string> lines = lines_of(log);
    CHECK(lines.size() > 10);
    for (const auto& line : lines) {
        INFO(line);
        Json object = outbox::json_parse(line);
        REQUIRE(cJSON_IsObject(object.get()));
        CHECK(outbox::json_string(object.get(), "timestamp").has_value());
        CHECK(outbox::json_string(object.get(), "level").has_value());
        CHECK(outbox::json_string(object.get(), "service") == "ops-json-test");
        CHECK(outbox::json_string(object.get(), "message").has_value());
    }
    // Handler processes log in the same format (the log handler writes each event).
    CHECK(log.find("j.thing") != std::string::npos);
}

TEST_CASE("under journald, text lines carry syslog priority prefixes", "[ops]") {
    TestDatabase db;
    db.migrate();
    REQUIRE(!db.password().empty());
    std::string handlers =
        write_handlers_file(R"([{"eventTypes": ["j.*"], "log": {"level": "warn"}}])");
    write_events(db, "j.thing", 3);
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"JOURNAL_STREAM", "8:123456"},
                         {"LOG_FORMAT", std::nullopt},
                         {"LOG_LEVEL", "debug"}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 3));
    stop_cleanly(service, db);

    std::string log = service.log();
    CHECK(log.find(db.password()) == std::string::npos);
    std::vector<std::string> lines = lines_of(log);
    REQUIRE(lines.size() > 5);
    std::set<char> priorities;
    for (const auto& line : lines) {
        INFO(line);
        REQUIRE(line.size() > 3);
        CHECK(line[0] == '<');
        CHECK(line[1] >= '0');
        CHECK(line[1] <= '7');
        CHECK(line[2] == '>');
        priorities.insert(line[1]);
    }
    // debug (7), info (6) and the log handler's warn (4) lines all appeared with their own prefix.
    CHECK(priorities.count('7') == 1);
    CHECK(priorities.count('6') == 1);
    CHECK(priorities.count('4') == 1);
}

// ---- completion mode --------------------------------------------------------------------------

TEST_CASE("OUTBOX_ON_COMPLETE=delete deletes delivered rows, keeps the failures and the history",
          "[ops]") {
    TestDatabase db;
    db.migrate();
    int port = free_tcp_port();
    std::string mark = temp_path("flaky-mark");
    // del.ok succeeds; del.flaky fails once, then succeeds; del.bad is rejected for good.
    std::string handlers = write_handlers_file(R"([
        {"eventTypes": ["del.ok"], "log": {}},
        {"eventTypes": ["del.flaky"], "exec": {"command": ["sh", "-c",
            "test -f )" + mark + R"( || { touch )" +
                                               mark + R"(; echo 'not yet' >&2; exit 1; }"]}},
        {"eventTypes": ["del.bad"], "exec": {"command": ["sh", "-c",
            "echo 'rejected' >&2; exit 65"]}}])");
    write_events(db, "del.ok", 300);
    write_events(db, "del.flaky", 1);
    write_events(db, "del.bad", 2);
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"OUTBOX_ON_COMPLETE", "delete"},
                         {"OUTBOX_HTTP_PORT", std::to_string(port)}});
    INFO(service.log());
    // Every delivered row is gone, the rejected ones stay FAILED beside their DLQ rows, and the
    // EventLog keeps all 303 events.
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "Outbox")", 2, 60s));
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'FAILED'
                        AND "eventType" = 'del.bad')") == 2);
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 2);
    CHECK(db.count(R"(SELECT count(*) FROM "EventLog")") == 303);
    CHECK(db.count(kCompleted) == 0);
    // The metrics count completions, not rows; the JSON says what "completed" means here.
    REQUIRE(
        wait_for_sample(port, "outbox_events_completed_total", {{"event_type", "del.ok"}}, 300));
    std::string why;
    Json families = scrape_metrics(port, why);
    INFO(why);
    CHECK(sample_value(families, "outbox_events_completed_total", {{"event_type", "del.flaky"}}) ==
          1.0);
    CHECK(sample_value(families, "outbox_events_retried_total", {{"event_type", "del.flaky"}}) ==
          1.0);
    Json enhanced = json_body(http_get(port, "/api/metrics/enhanced"));
    REQUIRE(enhanced);
    const cJSON* outbox_obj = cJSON_GetObjectItemCaseSensitive(enhanced.get(), "outbox");
    CHECK(outbox::json_string(outbox_obj, "onComplete") == "delete");
    CHECK(json_number(outbox_obj, "completedByThisInstance") == 301);
    stop_cleanly(service, db);
}

TEST_CASE("a blocked ordering key shows in outbox_blocked_keys and the log, and never slows others",
          "[ops][ordering]") {
    TestDatabase db;
    db.migrate();
    int port = free_tcp_port();
    std::string handlers = write_handlers_file(
        R"([{"name": "fails", "eventTypes": ["poison.*"],
             "exec": {"command": ["sh", "-c", "cat >/dev/null; echo refused >&2; exit 1"]}},
            {"name": "ok", "eventTypes": ["fine.*"], "log": {"level": "debug"}}])");
    // Key k1: a head that always fails, then an event that must wait for it. Key k2: free.
    db.exec(R"(SELECT outbox_write_event('p1', 't', 'poison.pill', '{}', p_max_retries => 1000,
                                         p_ordering_key => 'k1'))");
    db.exec(R"(SELECT outbox_write_event('w1', 't', 'fine.after', '{}', p_ordering_key => 'k1'))");
    db.exec(R"(SELECT outbox_write_event('f' || g, 't', 'fine.other', '{}', p_ordering_key => 'k2')
                 FROM generate_series(1, 20) g)");
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"OUTBOX_HTTP_PORT", std::to_string(port)},
                         {"OUTBOX_LEASE_MS", "1000"},
                         {"OUTBOX_MAX_DELAY_MS", "200"}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 20));
    REQUIRE(wait_for_sample(port, "outbox_blocked_keys", {}, 1));
    Json enhanced = json_body(http_get(port, "/api/metrics/enhanced"));
    REQUIRE(enhanced);
    CHECK(json_number(cJSON_GetObjectItemCaseSensitive(enhanced.get(), "outbox"), "blockedKeys") ==
          1);
    REQUIRE(wait_until(
        [&] { return service.log().find("blocked for longer than a lease") != std::string::npos; },
        20s));
    CHECK(service.log().find("k1 (") != std::string::npos);
    // The event behind the failing head was never attempted.
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" o JOIN "EventLog" e ON e.id = o."eventLogId"
                       WHERE e."eventKey" = 'w1' AND o.status = 'PENDING' AND o."retryCount" = 0)") ==
          1);
    // An operator deletes the poisoned row: the key moves on and the waiting event is delivered.
    db.exec(R"(DELETE FROM "Outbox" o USING "EventLog" e
                WHERE e.id = o."eventLogId" AND e."eventKey" = 'p1')");
    REQUIRE(wait_for_count(db, kCompleted, 21));
    REQUIRE(wait_for_sample(port, "outbox_blocked_keys", {}, 0));
    stop_cleanly(service, db);
}
