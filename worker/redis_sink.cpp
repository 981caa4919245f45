// The `redis` handler kind (SPEC 4, "Message brokers"): XADD to a Redis stream with hiredis,
// pipelined.
//
// One connection per sink, opened on the first publish() in the handler process. A publication
// appends its XADD to the connection's output buffer and writes what the socket takes; poll()
// reads the replies. Redis answers the commands of one connection in the order it received them,
// so the pending publications form a FIFO and each reply completes the oldest. That is also why
// a publication whose reply does not come in time fails together with everything behind it, and
// the connection is dropped: a reply arriving after that could no longer be matched to its
// command.
//
// What "acknowledged" means for Redis: the XADD reply says that this server executed the
// command, nothing more. Whether the entry survives depends on the server's configuration, which
// the reply does not show: with `appendonly yes` and `appendfsync always` (what the tests run),
// Redis writes and fsyncs the command to its append-only file before it sends the reply, so an
// acknowledged entry survives a crash of the server or the machine; with `appendfsync everysec`
// (Redis's default once the AOF is on) the last second of acknowledged entries can be lost with
// the machine; without the AOF, everything since the last RDB snapshot. Replication is
// asynchronous: an entry acknowledged by a primary that fails before its replica received it is
// lost in the failover. The operator chooses; the sink cannot do better than the server's own
// durability.
//
// Duplicates: Redis streams have no broker-side deduplication. A re-publication after a lost
// reply (a timeout, a connection lost after Redis executed the XADD, a handler process that
// crashed between publish and record) adds a second entry with a new stream id. Every entry
// carries the Outbox id in its `outbox-id` field: a consumer drops repeats by it.
//
// wait_fd() is an epoll descriptor that stays the same for the sink's life, holding the socket
// of the current connection (readable: replies to read; writable while output is left over) and
// a timerfd armed at the oldest pending publication's deadline, so that a handler process waiting
// on it wakes up for a timeout even when the server sends nothing at all.
#include "worker/redis_sink.h"

#include "common/backoff.h"
#include "common/fd.h"
#include "worker/sink.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstring>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

namespace outbox {

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

std::optional<std::string> percent_decode(std::string_view text) {
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '%') {
            out += text[i];
            continue;
        }
        if (i + 2 >= text.size()) {
            return std::nullopt;
        }
        int high = hex_value(text[i + 1]);
        int low = hex_value(text[i + 2]);
        if (high < 0 || low < 0) {
            return std::nullopt;
        }
        out += static_cast<char>(high * 16 + low);
        i += 2;
    }
    return out;
}

bool parse_int(std::string_view text, int min, int max, int& out) {
    int value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < min ||
        value > max) {
        return false;
    }
    out = value;
    return true;
}

} // namespace

std::optional<RedisUrl> parse_redis_url(std::string_view url, std::string& error) {
    constexpr std::string_view scheme = "redis://";
    if (url.substr(0, scheme.size()) != scheme) {
        error = "a Redis URL starts with redis://";
        return std::nullopt;
    }
    std::string_view rest = url.substr(scheme.size());
    RedisUrl out;
    size_t slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);

    size_t at = authority.rfind('@');
    if (at != std::string_view::npos) {
        std::string_view userinfo = authority.substr(0, at);
        authority = authority.substr(at + 1);
        size_t colon = userinfo.find(':');
        std::optional<std::string> user;
        std::optional<std::string> password;
        if (colon == std::string_view::npos) {
            password = percent_decode(userinfo);
        } else {
            if (colon > 0) {
                user = percent_decode(userinfo.substr(0, colon));
                if (!user) {
                    error = "invalid percent-encoding in the user of the Redis URL";
                    return std::nullopt;
                }
            }
            password = percent_decode(userinfo.substr(colon + 1));
        }
        if (!password) {
            error = "invalid percent-encoding in the password of the Redis URL";
            return std::nullopt;
        }
        out.user = user;
        out.password = password;
    }

    std::string_view port;
    if (!authority.empty() && authority.front() == '[') {
        size_t close = authority.find(']');
        if (close == std::string_view::npos) {
            error = "unclosed '[' in the host of the Redis URL";
            return std::nullopt;
        }
        out.host = std::string(authority.substr(1, close - 1));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') {
                error = "unexpected text after the host of the Redis URL";
                return std::nullopt;
            }
            port = after.substr(1);
            if (port.empty()) {
                error = "empty port in the Redis URL";
                return std::nullopt;
            }
        }
    } else {
        size_t colon = authority.rfind(':');
        out.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port = authority.substr(colon + 1);
            if (port.empty()) {
                error = "empty port in the Redis URL";
                return std::nullopt;
            }
        }
    }
    if (out.host.empty()) {
        error = "no host in the Redis URL";
        return std::nullopt;
    }
    if (!port.empty() && !parse_int(port, 1, 65535, out.port)) {
        error = "invalid port in the Redis URL: " + std::string(port);
        return std::nullopt;
    }
    if (!path.empty() && !parse_int(path, 0, INT_MAX, out.db)) {
        error = "invalid database number in the Redis URL: " + std::string(path) +
                " (redis://host:port/<db>)";
        return std::nullopt;
    }
    return out;
}

namespace {

using Clock = std::chrono::steady_clock;

// How long publish() may block opening the connection (bounded further by the publication
// timeout), as worker/sink.h allows: connect, AUTH and SELECT together.
constexpr long kConnectTimeoutMs = 3000;

long ms_until(Clock::time_point when, Clock::time_point now) {
    if (when <= now) {
        return 0;
    }
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(when - now).count();
    return static_cast<long>((us + 999) / 1000);
}

struct ContextDeleter {
    void operator()(redisContext* c) const { redisFree(c); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

std::string reply_text(const redisReply* reply) {
    return reply->str != nullptr ? std::string(reply->str, reply->len) : std::string();
}

// The error replies that describe a passing state of the server or of the connection; the others
// (WRONGTYPE, ERR for a malformed command or a bad MAXLEN, NOPERM for a stream the ACL user may
// not write, ...) come back the same on every retry of this message.
bool is_retryable_error(std::string_view text) {
    std::string_view code = text.substr(0, text.find(' '));
    static constexpr std::string_view kPassing[] = {
        "OOM",        // maxmemory reached with a policy that cannot evict: back-pressure
        "LOADING",    // the server is loading its data set after a restart
        "BUSY",       // a script or function is running
        "MASTERDOWN", // a replica that lost its primary
        "READONLY",   // a replica (the primary moved in a failover)
        "TRYAGAIN",   // a cluster resharding
        "CLUSTERDOWN",
        "NOREPLICAS", // min-replicas-to-write not met
        "MISCONF",    // the server cannot persist (disk full, RDB errors): writes refused for now
        // The server wants a password the URL does not give: the sink's configuration is wrong,
        // not the message, as when a connection is refused; like that, it is not the event's
        // fault and must not send every event to the DLQ.
        "NOAUTH",
    };
    if (std::find(std::begin(kPassing), std::end(kPassing), code) != std::end(kPassing)) {
        return true;
    }
    // A server that requires a password cuts an unauthenticated client short with "ERR Protocol
    // error: unauthenticated multibulk length" when a command has many arguments (an XADD with
    // its fields), before it gets as far as NOAUTH: the same missing password.
    return text.find("Protocol error: unauthenticated") != std::string_view::npos;
}

class RedisSink final : public Sink {
  public:
    explicit RedisSink(RedisSinkOptions options) : options_(std::move(options)) {
        std::string error;
        url_ = parse_redis_url(options_.url, error);
        if (url_) {
            where_ =
                "redis://" +
                (url_->host.find(':') != std::string::npos ? "[" + url_->host + "]" : url_->host) +
                ":" + std::to_string(url_->port) + "/" + std::to_string(url_->db);
        } else {
            url_error_ = error;
        }
        // Descriptors are not a connection: creating them here is allowed by worker/sink.h's
        // "nothing connects in the constructor", and wait_fd() can then stay the same for life.
        epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
        timer_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
        if (epoll_.is_open() && timer_.is_open()) {
            struct epoll_event ev = {};
            ev.events = EPOLLIN;
            ev.data.fd = timer_.get();
            epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, timer_.get(), &ev);
        }
    }

    ~RedisSink() override = default; // closes the connection; pending Dones are not called

    RedisSink(const RedisSink&) = delete;
    RedisSink& operator=(const RedisSink&) = delete;

    void publish(const BrokerMessage& message, Done done) override;
    void poll(int timeout_ms) override;
    [[nodiscard]] size_t pending() const override { return pending_.size(); }
    [[nodiscard]] int wait_fd() const override { return epoll_.get(); }
    [[nodiscard]] bool connected() const override { return ctx_ != nullptr; }
    [[nodiscard]] std::optional<std::string> check(long timeout_ms) override;

  private:
    struct Pending {
        Done done;
        std::string stream;
        Clock::time_point deadline;
    };
    using Ready = std::vector<std::pair<Done, Result>>;

    bool connect_now(long timeout_ms);
    bool roundtrip(const std::vector<std::vector<std::string>>& commands,
                   Clock::time_point deadline, std::vector<ReplyPtr>& replies, std::string& error);
    std::optional<std::string> not_connected();
    std::string not_connected_text() const;
    void drop_connection(const std::string& reason, Ready& ready);
    void schedule_reconnect();
    bool flush_output(Ready& ready);
    void read_replies(Ready& ready);
    void update_interest();
    void arm_timer();
    Result classify(const redisReply* reply, const std::string& stream) const;
    static void run(Ready& ready);

    RedisSinkOptions options_;
    std::optional<RedisUrl> url_;
    std::string url_error_;
    std::string where_; // the URL without its password

    ContextPtr ctx_;
    bool output_pending_ = false; // the socket did not take the whole output buffer
    bool watching_output_ = false;
    UniqueFd epoll_;
    UniqueFd timer_;
    std::deque<Pending> pending_; // in the order of their commands on the connection

    Backoff backoff_{BackoffPolicy{kSinkReconnectInitialMs, kSinkReconnectMaxMs, 2.0, 0.1}};
    int failed_connects_ = 0;
    Clock::time_point next_connect_{};
    std::string last_error_;
};

void RedisSink::run(Ready& ready) {
    Ready batch;
    batch.swap(ready);
    for (auto& [done, result] : batch) {
        done(std::move(result));
    }
}

void RedisSink::schedule_reconnect() {
    ++failed_connects_;
    next_connect_ = Clock::now() + std::chrono::milliseconds(backoff_.delay_ms(failed_connects_));
}

bool RedisSink::connect_now(long timeout_ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(std::max(1L, timeout_ms));
    std::string error;
    // Non-blocking from the start: the connection is waited for here with a deadline, and the
    // sink never blocks on the socket afterwards.
    ContextPtr c(redisConnectNonBlock(url_->host.c_str(), url_->port));
    if (!c) {
        error = "cannot allocate a connection";
    } else if (c->err != 0) {
        error = c->errstr;
    } else {
        struct pollfd pfd = {c->fd, POLLOUT, 0};
        int rc = 0;
        do {
            rc = ::poll(&pfd, 1, static_cast<int>(ms_until(deadline, Clock::now())));
        } while (rc < 0 && errno == EINTR);
        int so_error = 0;
        socklen_t len = sizeof so_error;
        if (rc == 0) {
            error = "connection timed out after " + std::to_string(timeout_ms) + " ms";
        } else if (rc < 0 || getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0) {
            error = std::strerror(errno);
        } else if (so_error != 0) {
            error = std::strerror(so_error);
        }
    }
    if (error.empty()) {
        redisEnableKeepAlive(c.get());
        ctx_ = std::move(c);
        std::vector<std::vector<std::string>> setup;
        if (url_->password) {
            if (url_->user) {
                setup.push_back({"AUTH", *url_->user, *url_->password});
            } else {
                setup.push_back({"AUTH", *url_->password});
            }
        }
        if (url_->db != 0) {
            setup.push_back({"SELECT", std::to_string(url_->db)});
        }
        std::vector<ReplyPtr> replies;
        if (!roundtrip(setup, deadline, replies, error)) {
            ctx_.reset();
        } else {
            for (size_t i = 0; i < replies.size(); ++i) {
                if (replies[i]->type == REDIS_REPLY_ERROR) {
                    error = setup[i][0] + ": " + reply_text(replies[i].get());
                    ctx_.reset();
                    break;
                }
            }
        }
    }
    if (!ctx_) {
        last_error_ = error;
        schedule_reconnect();
        return false;
    }
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.fd = ctx_->fd;
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, ctx_->fd, &ev);
    watching_output_ = false;
    output_pending_ = false;
    failed_connects_ = 0;
    last_error_.clear();
    return true;
}

// Sends `commands` and waits for their replies, before any publication is pending (connection
// setup, check()).
bool RedisSink::roundtrip(const std::vector<std::vector<std::string>>& commands,
                          Clock::time_point deadline, std::vector<ReplyPtr>& replies,
                          std::string& error) {
    for (const auto& command : commands) {
        std::vector<const char*> argv;
        std::vector<size_t> lens;
        for (const auto& arg : command) {
            argv.push_back(arg.data());
            lens.push_back(arg.size());
        }
        if (redisAppendCommandArgv(ctx_.get(), static_cast<int>(argv.size()), argv.data(),
                                   lens.data()) != REDIS_OK) {
            error = ctx_->errstr;
            return false;
        }
    }
    bool written = false;
    while (replies.size() < commands.size()) {
        if (!written) {
            int done = 0;
            if (redisBufferWrite(ctx_.get(), &done) != REDIS_OK) {
                error = ctx_->errstr;
                return false;
            }
            written = done != 0;
        }
        void* reply = nullptr;
        if (redisGetReplyFromReader(ctx_.get(), &reply) != REDIS_OK) {
            error = ctx_->errstr;
            return false;
        }
        if (reply != nullptr) {
            replies.emplace_back(static_cast<redisReply*>(reply));
            continue;
        }
        auto now = Clock::now();
        if (now >= deadline) {
            error = "no reply from the server in time";
            return false;
        }
        struct pollfd pfd = {ctx_->fd, static_cast<short>(POLLIN | (written ? 0 : POLLOUT)), 0};
        int rc = ::poll(&pfd, 1, static_cast<int>(ms_until(deadline, now)));
        if (rc < 0 && errno != EINTR) {
            error = std::strerror(errno);
            return false;
        }
        if (rc > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0 &&
            redisBufferRead(ctx_.get()) != REDIS_OK) {
            error = ctx_->errstr;
            return false;
        }
    }
    return true;
}

std::string RedisSink::not_connected_text() const {
    std::string text = "redis: not connected to " + where_ + ": " +
                       (last_error_.empty() ? std::string("connection lost") : last_error_);
    long next = ms_until(next_connect_, Clock::now());
    if (next > 0) {
        text += "; next attempt in " + std::to_string(next) + " ms";
    }
    return text;
}

std::optional<std::string> RedisSink::not_connected() {
    if (ctx_) {
        return std::nullopt;
    }
    if (Clock::now() < next_connect_) {
        return not_connected_text();
    }
    if (connect_now(std::min(kConnectTimeoutMs, std::max(1L, options_.timeout_ms)))) {
        return std::nullopt;
    }
    return not_connected_text();
}

void RedisSink::drop_connection(const std::string& reason, Ready& ready) {
    if (ctx_) {
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, ctx_->fd, nullptr);
        ctx_.reset();
    }
    output_pending_ = false;
    watching_output_ = false;
    // Each of them may or may not have been executed: retrying may add a second entry, which a
    // consumer drops by its outbox-id field.
    for (Pending& p : pending_) {
        ready.emplace_back(std::move(p.done),
                           Result::retry("redis: XADD to " + p.stream + ": " + reason));
    }
    pending_.clear();
    last_error_ = reason;
    schedule_reconnect();
    arm_timer();
}

// Writes what the socket takes of the output buffer. False when the connection failed (and was
// dropped).
bool RedisSink::flush_output(Ready& ready) {
    int done = 0;
    if (redisBufferWrite(ctx_.get(), &done) != REDIS_OK) {
        drop_connection(std::string("connection to ") + where_ + " lost: " + ctx_->errstr, ready);
        return false;
    }
    output_pending_ = done == 0;
    update_interest();
    return true;
}

void RedisSink::update_interest() {
    if (!ctx_ || watching_output_ == output_pending_) {
        return;
    }
    struct epoll_event ev = {};
    ev.events = EPOLLIN | (output_pending_ ? EPOLLOUT : 0u);
    ev.data.fd = ctx_->fd;
    epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, ctx_->fd, &ev);
    watching_output_ = output_pending_;
}

void RedisSink::arm_timer() {
    struct itimerspec spec = {};
    if (!pending_.empty()) {
        // steady_clock is CLOCK_MONOTONIC on Linux, the timerfd's clock.
        auto since = pending_.front().deadline.time_since_epoch();
        auto sec = std::chrono::duration_cast<std::chrono::seconds>(since);
        auto nsec = std::chrono::duration_cast<std::chrono::nanoseconds>(since - sec);
        spec.it_value.tv_sec = sec.count();
        spec.it_value.tv_nsec = nsec.count();
        if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) {
            spec.it_value.tv_nsec = 1; // zero would disarm it
        }
    }
    timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr);
}

Result RedisSink::classify(const redisReply* reply, const std::string& stream) const {
    std::string where = "redis: XADD to " + stream + ": ";
    switch (reply->type) {
    case REDIS_REPLY_STRING:
        return Result::ok(); // the new entry's id
    case REDIS_REPLY_ERROR: {
        std::string text = reply_text(reply);
        if (is_retryable_error(text)) {
            return Result::retry(where + text);
        }
        return Result::permanent(where + text);
    }
    default:
        return Result::retry(where + "unexpected reply of type " + std::to_string(reply->type));
    }
}

void RedisSink::read_replies(Ready& ready) {
    if (redisBufferRead(ctx_.get()) != REDIS_OK) {
        drop_connection(std::string("connection to ") + where_ + " lost: " + ctx_->errstr, ready);
        return;
    }
    for (;;) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(ctx_.get(), &raw) != REDIS_OK) {
            drop_connection(std::string("protocol error from ") + where_ + ": " + ctx_->errstr,
                            ready);
            return;
        }
        if (raw == nullptr) {
            break;
        }
        ReplyPtr reply(static_cast<redisReply*>(raw));
        if (pending_.empty()) {
            drop_connection("unexpected reply from " + where_, ready);
            return;
        }
        Pending p = std::move(pending_.front());
        pending_.pop_front();
        ready.emplace_back(std::move(p.done), classify(reply.get(), p.stream));
    }
    arm_timer();
}

void RedisSink::publish(const BrokerMessage& message, Done done) {
    if (!url_) {
        done(Result::permanent("redis: invalid URL: " + url_error_));
        return;
    }
    Ready ready;
    if (ctx_ && pending_.empty()) {
        // An idle connection may have been closed by the server (a restart, a timeout of idle
        // clients) without anyone reading the socket since. Find out before committing a
        // publication to it, and reconnect at once rather than after a failure.
        read_replies(ready);
        if (!ctx_) {
            next_connect_ = Clock::now();
        }
    }
    if (auto why = not_connected()) {
        // No use retrying before the next connection attempt: say when that is.
        done(Result::retry(*why, ms_until(next_connect_, Clock::now())));
        return;
    }
    // XADD stream [MAXLEN ~ n] * outbox-id <id> outbox-event-type <type> ... key <key>
    //      body <body> content-type <type>
    std::string max_len = options_.max_len ? std::to_string(*options_.max_len) : std::string();
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    auto add = [&](const std::string& arg) {
        argv.push_back(arg.data());
        lens.push_back(arg.size());
    };
    static const std::string kXadd = "XADD", kMaxLen = "MAXLEN", kApprox = "~", kAutoId = "*",
                             kKey = "key", kBody = "body", kContentType = "content-type";
    add(kXadd);
    add(message.destination);
    if (options_.max_len) {
        // "~": Redis trims whole macro nodes only, which is much cheaper than an exact trim;
        // the stream keeps at least max_len entries.
        add(kMaxLen);
        add(kApprox);
        add(max_len);
    }
    add(kAutoId);
    for (const auto& [name, value] : message.headers) {
        add(name);
        add(value);
    }
    if (message.key) {
        add(kKey);
        add(*message.key);
    }
    add(kBody);
    add(message.body);
    add(kContentType);
    add(message.content_type);
    if (redisAppendCommandArgv(ctx_.get(), static_cast<int>(argv.size()), argv.data(),
                               lens.data()) != REDIS_OK) {
        done(Result::retry("redis: XADD to " + message.destination + ": " + ctx_->errstr));
        return;
    }
    pending_.push_back(Pending{std::move(done), message.destination,
                               Clock::now() + std::chrono::milliseconds(options_.timeout_ms)});
    if (pending_.size() == 1) {
        arm_timer();
    }
    flush_output(ready);
    run(ready);
}

void RedisSink::poll(int timeout_ms) {
    auto until = Clock::now() + std::chrono::milliseconds(std::max(0, timeout_ms));
    Ready ready;
    for (;;) {
        uint64_t expirations = 0;
        [[maybe_unused]] ssize_t n = ::read(timer_.get(), &expirations, sizeof expirations);
        if (ctx_ && (!output_pending_ || flush_output(ready))) {
            read_replies(ready);
        }
        auto now = Clock::now();
        if (ctx_ && !pending_.empty() && pending_.front().deadline <= now) {
            // The reply of the oldest command is overdue. The ones behind it cannot be answered
            // before it, and a late reply could no longer be matched to its command once these
            // publications are failed: drop the connection with them.
            drop_connection("no reply within " + std::to_string(options_.timeout_ms) +
                                " ms; connection to " + where_ + " dropped",
                            ready);
        }
        if (!ready.empty() || pending_.empty() || now >= until) {
            break;
        }
        Clock::time_point wake = std::min(until, pending_.front().deadline);
        struct epoll_event events[4];
        int rc = epoll_wait(epoll_.get(), events, 4,
                            static_cast<int>(std::min<long>(ms_until(wake, now), INT_MAX)));
        if (rc < 0 && errno != EINTR) {
            break;
        }
    }
    run(ready);
}

std::optional<std::string> RedisSink::check(long timeout_ms) {
    if (!url_) {
        return "redis: invalid URL: " + url_error_;
    }
    if (!ctx_ && !connect_now(std::max(1L, timeout_ms))) {
        return "redis: cannot connect to " + where_ + ": " + last_error_;
    }
    if (!pending_.empty()) {
        return std::nullopt; // publications in flight: the connection works
    }
    std::vector<ReplyPtr> replies;
    std::string error;
    auto deadline = Clock::now() + std::chrono::milliseconds(std::max(1L, timeout_ms));
    if (!roundtrip({{"PING"}}, deadline, replies, error)) {
        Ready ready;
        drop_connection(error, ready);
        return "redis: PING to " + where_ + " failed: " + error;
    }
    if (replies[0]->type == REDIS_REPLY_ERROR) {
        return "redis: PING to " + where_ + " failed: " + reply_text(replies[0].get());
    }
    return std::nullopt;
}

} // namespace

std::unique_ptr<Sink> make_redis_sink(const RedisSinkOptions& options) {
    return std::make_unique<RedisSink>(options);
}

} // namespace outbox
