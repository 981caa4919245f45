// The `amqp` handler kind (SPEC 4): RabbitMQ through rabbitmq-c, persistent messages, mandatory
// routing and publisher confirms.
//
// One connection and one channel (number 1) per sink, in confirm mode. publish() writes
// basic.publish and gives the publication the next delivery tag of the channel (1, 2, ...); the
// broker answers each tag with basic.ack (the message is routed and, being persistent, written to
// disk by every durable queue it reached) or basic.nack, possibly several tags at once
// (`multiple`). poll() reads those frames without blocking and completes the publications.
//
// An unroutable message (mandatory, but no queue bound for its routing key) still gets a
// basic.ack, preceded by a basic.return that names no delivery tag. The returned message's
// content header carries our message-id (the Outbox id), which is how the return is matched to
// its publication; the ack that follows then completes that publication as a permanent failure.
//
// rabbitmq-c is single-threaded: it reads only when called, and may hold frames it has already
// read in its own buffer, where the socket no longer shows them. So wait_fd() is not the socket
// but an epoll descriptor of our own, holding the socket, an eventfd that is signalled while
// completions are queued and a timerfd armed for the oldest publication's deadline. poll()
// always drains everything rabbitmq-c has buffered before returning, so a process that sleeps on
// wait_fd() never sleeps with frames read and not yet handled.
//
// Heartbeats are turned off (the client proposes 0): the handler process calls into the sink
// only while it has publications, so it could not answer the broker's heartbeats while idle and
// the broker would close every idle connection. A dead connection is found instead by reading
// before each publication (EOF, or the broker's connection.close), by TCP keepalive, and by the
// per-publication deadline.
#include "common/backoff.h"
#include "common/fd.h"
#include "worker/sink.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <system_error>
#include <utility>
#include <vector>

namespace outbox {

namespace {

using Clock = std::chrono::steady_clock;

// The blocking part of publish(): TCP connect, login, channel.open, confirm.select and the
// exchange check together, on the first publication and after a connection was lost.
constexpr long kConnectTimeoutMs = 5000;
// A missing exchange fails publications permanently at once; after this long the next
// publication reconnects and checks again, so that an exchange created later is found.
constexpr long kExchangeRecheckMs = 1000;
// How long the destructor waits for the broker's connection.close-ok.
constexpr long kCloseTimeoutMs = 1000;
constexpr amqp_channel_t kChannel = 1;
constexpr int kFrameMax = 131072;
// AMQP short strings (routing key, exchange, message-id, type, content-type) hold 255 bytes.
constexpr size_t kShortStringMax = 255;

amqp_bytes_t bytes_of(const std::string& text) {
    return amqp_bytes_t{text.size(), const_cast<char*>(text.data())};
}

std::string string_of(amqp_bytes_t bytes) {
    return bytes.len == 0 ? std::string()
                          : std::string(static_cast<const char*>(bytes.bytes), bytes.len);
}

long ms_until(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return std::max<long>(0, static_cast<long>(left.count()));
}

timeval timeval_of(long ms) {
    return timeval{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
}

// "404 NOT_FOUND - no exchange 'orders' in vhost '/'": the broker's reply code and text (the text
// starts with the reply's name).
std::string describe_close(uint16_t code, amqp_bytes_t text) {
    return std::to_string(code) + " " + string_of(text);
}

// One line for a failed RPC (login, channel.open, confirm.select, exchange.declare).
std::string describe_reply(const amqp_rpc_reply_t& reply) {
    switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return "no error";
    case AMQP_RESPONSE_NONE:
        return "no reply from the broker";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return amqp_error_string2(reply.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            auto* close = static_cast<amqp_connection_close_t*>(reply.reply.decoded);
            return describe_close(close->reply_code, close->reply_text);
        }
        if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            auto* close = static_cast<amqp_channel_close_t*>(reply.reply.decoded);
            return describe_close(close->reply_code, close->reply_text);
        }
        return "unexpected method from the broker";
    }
    return "unknown reply";
}

bool is_channel_close(const amqp_rpc_reply_t& reply, uint16_t code) {
    return reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
           reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
           static_cast<amqp_channel_close_t*>(reply.reply.decoded)->reply_code == code;
}

// rabbitmq-c's text for a status, with the system's reason for a socket error ("a socket error
// occurred (Connection reset by peer)"). Called right after the failing call, while errno still
// holds what its recv() or send() set.
std::string library_error(int status) {
    int saved = errno;
    std::string text = amqp_error_string2(status);
    if (status == AMQP_STATUS_SOCKET_ERROR && saved != 0) {
        text += std::string(" (") + std::strerror(saved) + ")";
    }
    return text;
}

std::string quoted(const std::string& text) {
    return "\"" + text + "\"";
}

// Where to connect, from the URL. The password is kept for login only: no error names it, and
// errors name the broker as host:port.
struct Target {
    std::string host;
    int port = 5672;
    std::string user;
    std::string password;
    std::string vhost;
    std::string where; // host:port, for messages
};

std::optional<Target> parse_target(const std::string& url, std::string& error) {
    // amqp_parse_url decodes in place and points into the buffer it is given.
    std::vector<char> buffer(url.begin(), url.end());
    buffer.push_back('\0');
    amqp_connection_info info{};
    if (amqp_parse_url(buffer.data(), &info) != AMQP_STATUS_OK) {
        error = "the URL is not a valid amqp:// URL";
        return std::nullopt;
    }
    if (info.ssl) {
        error = "amqps:// (TLS) URLs are not supported";
        return std::nullopt;
    }
    Target target;
    target.host = info.host;
    target.port = info.port;
    target.user = info.user;
    target.password = info.password;
    // "amqp://host/" has an empty path, which RabbitMQ's URI spec reads as the vhost "". No vhost
    // can have that name, and everyone who writes it means the default vhost "/".
    target.vhost = *info.vhost == '\0' ? "/" : info.vhost;
    bool ipv6 = target.host.find(':') != std::string::npos;
    target.where =
        (ipv6 ? "[" + target.host + "]" : target.host) + ":" + std::to_string(target.port);
    return target;
}

// A TCP connection made here rather than by amqp_socket_open_noblock, for two reasons: the
// error then says what failed ("Connection refused") instead of rabbitmq-c's "a socket error
// occurred", and keepalive can be tuned to find a dead broker while the connection is idle. The
// socket is non-blocking, as rabbitmq-c expects (it waits with poll() itself).
UniqueFd connect_tcp(const Target& target, Clock::time_point deadline, std::string& error) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    std::string port = std::to_string(target.port);
    int rc = getaddrinfo(target.host.c_str(), port.c_str(), &hints, &found);
    if (rc != 0) {
        error = "cannot resolve " + target.host + ": " + gai_strerror(rc);
        return {};
    }
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> addresses(found, freeaddrinfo);
    error = "no address for " + target.host;
    for (addrinfo* address = found; address != nullptr; address = address->ai_next) {
        UniqueFd fd(socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                           address->ai_protocol));
        if (!fd.is_open()) {
            error = std::string("socket: ") + std::strerror(errno);
            continue;
        }
        int one = 1;
        int idle_s = 30;
        int interval_s = 10;
        int probes = 3;
        setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd.get(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s);
        setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s);
        setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
        if (connect(fd.get(), address->ai_addr, address->ai_addrlen) == 0) {
            return fd;
        }
        if (errno != EINPROGRESS) {
            error = std::strerror(errno);
            continue;
        }
        pollfd waiting{fd.get(), POLLOUT, 0};
        int ready;
        do {
            ready = ::poll(&waiting, 1, static_cast<int>(ms_until(deadline)));
        } while (ready < 0 && errno == EINTR);
        if (ready == 0) {
            error = "connection timed out";
            continue;
        }
        int socket_error = 0;
        socklen_t length = sizeof socket_error;
        if (ready < 0 || getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &socket_error, &length) != 0) {
            error = std::strerror(errno);
            continue;
        }
        if (socket_error != 0) {
            error = std::strerror(socket_error);
            continue;
        }
        return fd;
    }
    return {};
}

// One rabbitmq-c connection state with its socket; destroying it closes the socket without the
// closing handshake.
class Connection {
  public:
    Connection() : state_(amqp_new_connection()) {}
    ~Connection() {
        if (state_ != nullptr) {
            amqp_destroy_connection(state_);
        }
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    amqp_connection_state_t get() const { return state_; }
    int fd() const { return amqp_get_sockfd(state_); }

    // connection.close and a bounded wait for close-ok, so that the broker logs a clean close
    // rather than "client unexpectedly closed TCP connection".
    void close_gracefully() {
        timeval timeout = timeval_of(kCloseTimeoutMs);
        amqp_set_rpc_timeout(state_, &timeout);
        amqp_connection_close(state_, AMQP_REPLY_SUCCESS);
    }

  private:
    amqp_connection_state_t state_;
};

enum class OpenOutcome { connected, failed, exchange_missing };

struct Opened {
    OpenOutcome outcome = OpenOutcome::failed;
    std::unique_ptr<Connection> connection;
    std::string error; // failed: why; exchange_missing: the broker's reply
};

// Connects, logs in, opens channel 1 in confirm mode and checks that the exchange exists, all
// before `deadline`.
Opened open_connection(const Target& target, const std::string& exchange,
                       Clock::time_point deadline) {
    Opened opened;
    auto connection = std::make_unique<Connection>();
    if (connection->get() == nullptr) {
        opened.error = "out of memory";
        return opened;
    }
    std::string error;
    UniqueFd fd = connect_tcp(target, deadline, error);
    if (!fd.is_open()) {
        opened.error = error;
        return opened;
    }
    amqp_socket_t* socket = amqp_tcp_socket_new(connection->get());
    if (socket == nullptr) {
        opened.error = "out of memory";
        return opened;
    }
    amqp_tcp_socket_set_sockfd(socket, fd.release());

    // connection.blocked: the broker tells us when it stops reading from publishers (memory or
    // disk alarm), so that publications fail as back-pressure instead of waiting on a full
    // socket.
    amqp_table_entry_t capability_entries[] = {
        {amqp_cstring_bytes("connection.blocked"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}}};
    amqp_table_t capabilities{1, capability_entries};
    amqp_table_entry_t property_entries[] = {
        {amqp_cstring_bytes("capabilities"), {AMQP_FIELD_KIND_TABLE, {.table = capabilities}}},
        {amqp_cstring_bytes("connection_name"),
         {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("outbox-worker")}}}};
    amqp_table_t properties{2, property_entries};

    timeval timeout = timeval_of(ms_until(deadline));
    amqp_set_handshake_timeout(connection->get(), &timeout);
    amqp_rpc_reply_t reply = amqp_login_with_properties(
        connection->get(), target.vhost.c_str(), 0, kFrameMax, /*heartbeat=*/0, &properties,
        AMQP_SASL_METHOD_PLAIN, target.user.c_str(), target.password.c_str());
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        opened.error = "login failed: " + describe_reply(reply);
        return opened;
    }

    timeout = timeval_of(ms_until(deadline));
    amqp_set_rpc_timeout(connection->get(), &timeout);
    amqp_channel_open(connection->get(), kChannel);
    reply = amqp_get_rpc_reply(connection->get());
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        opened.error = "channel.open failed: " + describe_reply(reply);
        return opened;
    }
    timeout = timeval_of(ms_until(deadline));
    amqp_set_rpc_timeout(connection->get(), &timeout);
    amqp_confirm_select(connection->get(), kChannel);
    reply = amqp_get_rpc_reply(connection->get());
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        opened.error = "confirm.select failed: " + describe_reply(reply);
        return opened;
    }
    if (!exchange.empty()) {
        timeout = timeval_of(ms_until(deadline));
        amqp_set_rpc_timeout(connection->get(), &timeout);
        // Passive: only checks that the exchange exists (the type is not compared).
        amqp_exchange_declare(connection->get(), kChannel, bytes_of(exchange),
                              amqp_cstring_bytes("direct"), /*passive=*/1, /*durable=*/0,
                              /*auto_delete=*/0, /*internal=*/0, amqp_empty_table);
        reply = amqp_get_rpc_reply(connection->get());
        if (is_channel_close(reply, AMQP_NOT_FOUND)) {
            opened.outcome = OpenOutcome::exchange_missing;
            opened.error = describe_reply(reply);
            return opened;
        }
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            opened.error = "checking the exchange failed: " + describe_reply(reply);
            return opened;
        }
    }
    // No RPC runs on this connection after this point but the closing one.
    timeout = timeval_of(kCloseTimeoutMs);
    amqp_set_rpc_timeout(connection->get(), &timeout);
    opened.outcome = OpenOutcome::connected;
    opened.connection = std::move(connection);
    return opened;
}

class AmqpSink final : public Sink {
  public:
    explicit AmqpSink(AmqpSinkOptions options)
        : options_(std::move(options)),
          backoff_(BackoffPolicy{kSinkReconnectInitialMs, kSinkReconnectMaxMs, 2.0, 0.1}) {
        target_ = parse_target(options_.url, url_error_);
        epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
        ready_event_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
        deadline_timer_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
        if (!epoll_.is_open() || !ready_event_.is_open() || !deadline_timer_.is_open()) {
            throw std::system_error(errno, std::generic_category(), "amqp sink descriptors");
        }
        watch(ready_event_.get());
        watch(deadline_timer_.get());
    }

    ~AmqpSink() override {
        if (connection_) {
            connection_->close_gracefully();
        }
    }

    void publish(const BrokerMessage& message, Done done) override {
        if (auto invalid = validate(message)) {
            done(Result::permanent(*invalid));
            return;
        }
        // Frames that arrived since the last poll() first: a connection the broker closed while
        // we were idle is noticed here, not by losing this publication on it.
        drain();
        if (!connection_) {
            if (auto failure = connect()) {
                done(std::move(*failure));
                return;
            }
        }
        if (blocked_) {
            done(Result::retry("amqp: the broker at " + target_->where +
                               " is blocking publishers: " + *blocked_));
            return;
        }

        amqp_basic_properties_t properties{};
        properties._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                            AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
        properties.content_type = bytes_of(message.content_type);
        properties.delivery_mode = AMQP_DELIVERY_PERSISTENT;
        properties.message_id = bytes_of(message.id);
        std::vector<amqp_table_entry_t> headers;
        headers.reserve(message.headers.size());
        for (const auto& [name, value] : message.headers) {
            amqp_table_entry_t entry{};
            entry.key = bytes_of(name);
            entry.value.kind = AMQP_FIELD_KIND_UTF8;
            entry.value.value.bytes = bytes_of(value);
            headers.push_back(entry);
            if (name == kHeaderEventType && value.size() <= kShortStringMax) {
                properties._flags |= AMQP_BASIC_TYPE_FLAG;
                properties.type = bytes_of(value);
            }
        }
        properties.headers = amqp_table_t{static_cast<int>(headers.size()), headers.data()};

        errno = 0;
        int rc = amqp_basic_publish(connection_->get(), kChannel, bytes_of(options_.exchange),
                                    bytes_of(message.destination), /*mandatory=*/1,
                                    /*immediate=*/0, &properties, bytes_of(message.body));
        if (rc != AMQP_STATUS_OK) {
            // A frame may have been written in part: the connection cannot be used any more.
            std::string why =
                "amqp: publish to " + target_->where + " failed: " + library_error(rc);
            lose_connection(why);
            done(Result::retry(why));
            return;
        }
        bool was_idle = in_flight_.empty();
        in_flight_.emplace(++next_tag_,
                           InFlight{message.id, message.body.size(), std::move(done),
                                    Clock::now() + std::chrono::milliseconds(options_.timeout_ms),
                                    std::nullopt});
        if (was_idle) {
            arm_deadline_timer();
        }
    }

    void poll(int timeout_ms) override {
        auto until = Clock::now() + std::chrono::milliseconds(std::max(0, timeout_ms));
        for (;;) {
            service();
            if (!ready_.empty()) {
                run_ready();
                return;
            }
            long left = ms_until(until);
            if (in_flight_.empty() || left == 0) {
                return;
            }
            epoll_event events[4];
            epoll_wait(epoll_.get(), events, 4, static_cast<int>(left));
        }
    }

    size_t pending() const override { return in_flight_.size() + ready_.size(); }

    int wait_fd() const override { return epoll_.get(); }

    bool connected() const override { return connection_ != nullptr; }

    std::optional<std::string> check(long timeout_ms) override {
        if (!target_) {
            return "amqp: " + url_error_;
        }
        if (auto invalid = validate_exchange()) {
            return invalid;
        }
        Opened opened = open_connection(*target_, options_.exchange,
                                        Clock::now() + std::chrono::milliseconds(timeout_ms));
        switch (opened.outcome) {
        case OpenOutcome::connected:
            opened.connection->close_gracefully();
            return std::nullopt;
        case OpenOutcome::exchange_missing:
            return exchange_missing_text(opened.error);
        case OpenOutcome::failed:
            break;
        }
        return "amqp: cannot connect to " + target_->where + ": " + opened.error;
    }

  private:
    struct InFlight {
        std::string id;
        size_t body_size = 0;
        Done done;
        Clock::time_point deadline;
        // Set by a basic.return: the ack that follows completes the publication with this
        // permanent failure.
        std::optional<std::string> rejection;
    };

    // What a returned message is, while its content header and body frames are still to come.
    struct Returned {
        std::string reason;
        bool header_seen = false;
        uint64_t body_left = 0;
    };

    std::optional<std::string> validate_exchange() const {
        if (options_.exchange.size() > kShortStringMax) {
            return "amqp: the exchange name is longer than 255 bytes";
        }
        return std::nullopt;
    }

    // What the broker could never accept, found before anything is sent.
    std::optional<std::string> validate(const BrokerMessage& message) const {
        if (!target_) {
            return "amqp: " + url_error_;
        }
        if (auto invalid = validate_exchange()) {
            return invalid;
        }
        if (message.destination.size() > kShortStringMax) {
            return "amqp: the routing key is longer than 255 bytes: " +
                   message.destination.substr(0, 64) + "...";
        }
        if (message.id.size() > kShortStringMax || message.content_type.size() > kShortStringMax) {
            return "amqp: the message id or content type is longer than 255 bytes";
        }
        return std::nullopt;
    }

    std::string exchange_missing_text(const std::string& reply) const {
        return "amqp: exchange " + quoted(options_.exchange) + " not found (" + reply + ")";
    }

    std::string not_connected_text() const {
        return "amqp: not connected to " + target_->where + ": " + last_error_ +
               "; next attempt in " + std::to_string(ms_until(next_attempt_)) + " ms";
    }

    // Opens the connection, or says why the publication fails without one.
    std::optional<Result> connect() {
        auto now = Clock::now();
        if (exchange_missing_ && now < next_attempt_) {
            return Result::permanent(*exchange_missing_);
        }
        if (now < next_attempt_) {
            return Result::retry(not_connected_text());
        }
        long budget = std::min(kConnectTimeoutMs, std::max<long>(options_.timeout_ms, 100));
        Opened opened =
            open_connection(*target_, options_.exchange, now + std::chrono::milliseconds(budget));
        switch (opened.outcome) {
        case OpenOutcome::connected:
            connection_ = std::move(opened.connection);
            exchange_missing_.reset();
            failed_attempts_ = 0;
            next_tag_ = 0;
            watch(connection_->fd());
            // The RPCs of the handshake may have read frames beyond their replies; poll() must
            // see them even though the socket will not show them again.
            if (amqp_frames_enqueued(connection_->get()) ||
                amqp_data_in_buffer(connection_->get())) {
                signal_ready();
            }
            return std::nullopt;
        case OpenOutcome::exchange_missing:
            // The broker is there: no backoff, but no reconnection per publication either.
            exchange_missing_ = exchange_missing_text(opened.error);
            failed_attempts_ = 0;
            next_attempt_ = now + std::chrono::milliseconds(kExchangeRecheckMs);
            return Result::permanent(*exchange_missing_);
        case OpenOutcome::failed:
            break;
        }
        exchange_missing_.reset();
        last_error_ = opened.error;
        next_attempt_ =
            Clock::now() + std::chrono::milliseconds(backoff_.delay_ms(++failed_attempts_));
        return Result::retry(not_connected_text());
    }

    // Everything that can complete publications without waiting: the frames rabbitmq-c has or
    // can read now, and deadlines that passed.
    void service() {
        // Both are level-triggered: clear them, so that waiting on the epoll descriptor does not
        // return at once for what is about to be handled.
        uint64_t count;
        [[maybe_unused]] ssize_t n = read(deadline_timer_.get(), &count, sizeof count);
        n = read(ready_event_.get(), &count, sizeof count);
        drain();
        expire_deadlines();
    }

    // Reads and handles every frame available now. Returns with rabbitmq-c's buffer empty (the
    // read that ends the loop found nothing), so the socket's readability is the whole truth
    // again.
    void drain() {
        while (connection_) {
            amqp_frame_t frame;
            timeval zero{0, 0};
            errno = 0;
            int rc = amqp_simple_wait_frame_noblock(connection_->get(), &frame, &zero);
            if (rc == AMQP_STATUS_TIMEOUT) {
                break;
            }
            if (rc != AMQP_STATUS_OK) {
                lose_connection("amqp: connection to " + target_->where +
                                " lost: " + library_error(rc));
                break;
            }
            handle(frame);
            if (connection_) {
                amqp_maybe_release_buffers_on_channel(connection_->get(), frame.channel);
            }
        }
    }

    void handle(const amqp_frame_t& frame) {
        if (frame.frame_type == AMQP_FRAME_METHOD) {
            handle_method(frame.channel, frame.payload.method);
        } else if (frame.frame_type == AMQP_FRAME_HEADER && returned_ && !returned_->header_seen) {
            auto* properties =
                static_cast<amqp_basic_properties_t*>(frame.payload.properties.decoded);
            if (properties != nullptr && (properties->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)) {
                mark_returned(string_of(properties->message_id), returned_->reason);
            }
            returned_->header_seen = true;
            returned_->body_left = frame.payload.properties.body_size;
            if (returned_->body_left == 0) {
                returned_.reset();
            }
        } else if (frame.frame_type == AMQP_FRAME_BODY && returned_ && returned_->header_seen) {
            uint64_t length = frame.payload.body_fragment.len;
            returned_->body_left -= std::min(length, returned_->body_left);
            if (returned_->body_left == 0) {
                returned_.reset();
            }
        }
    }

    void handle_method(amqp_channel_t channel, const amqp_method_t& method) {
        switch (method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            auto* ack = static_cast<amqp_basic_ack_t*>(method.decoded);
            complete(ack->delivery_tag, ack->multiple != 0, std::nullopt);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            auto* nack = static_cast<amqp_basic_nack_t*>(method.decoded);
            complete(nack->delivery_tag, nack->multiple != 0,
                     "amqp: the broker at " + target_->where +
                         " could not take the message (basic.nack)");
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            auto* returned = static_cast<amqp_basic_return_t*>(method.decoded);
            Returned state;
            if (returned->reply_code == AMQP_NO_ROUTE) {
                state.reason = "amqp: unroutable: exchange " +
                               quoted(string_of(returned->exchange)) + " routing key " +
                               quoted(string_of(returned->routing_key)) + " (" +
                               describe_close(returned->reply_code, returned->reply_text) + ")";
            } else {
                state.reason = "amqp: returned by the broker: exchange " +
                               quoted(string_of(returned->exchange)) + " routing key " +
                               quoted(string_of(returned->routing_key)) + " (" +
                               describe_close(returned->reply_code, returned->reply_text) + ")";
            }
            returned_ = std::move(state);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            auto* close = static_cast<amqp_channel_close_t*>(method.decoded);
            std::string reply = describe_close(close->reply_code, close->reply_text);
            amqp_channel_close_ok_t close_ok{};
            amqp_send_method(connection_->get(), channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
            channel_closed(close->reply_code, reply);
            break;
        }
        case AMQP_CONNECTION_CLOSE_METHOD: {
            auto* close = static_cast<amqp_connection_close_t*>(method.decoded);
            std::string reply = describe_close(close->reply_code, close->reply_text);
            amqp_connection_close_ok_t close_ok{};
            amqp_send_method(connection_->get(), 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &close_ok);
            lose_connection("amqp: the broker at " + target_->where +
                            " closed the connection: " + reply);
            break;
        }
        case AMQP_CONNECTION_BLOCKED_METHOD: {
            auto* blocked = static_cast<amqp_connection_blocked_t*>(method.decoded);
            blocked_ = string_of(blocked->reason);
            break;
        }
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            blocked_.reset();
            break;
        default:
            break;
        }
    }

    // The broker closed our channel because of one publication, and discarded everything
    // published on it after that one. Which publication it was is not said, except for a
    // message that is too large, whose size the reply names. The others are retried: a
    // publication sent before the culprit may well have been routed and stored (its confirm was
    // still to come), and failing it for good would dead-letter a delivered message.
    void channel_closed(uint16_t code, const std::string& reply) {
        std::string why = "amqp: the broker at " + target_->where + " closed the channel: " + reply;
        if (code == AMQP_PRECONDITION_FAILED) {
            // "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1024"
            static const std::string marker = "message size ";
            size_t at = reply.find(marker);
            if (at != std::string::npos && reply.find("larger than") != std::string::npos) {
                size_t size = std::strtoull(reply.c_str() + at + marker.size(), nullptr, 10);
                for (auto& [tag, publication] : in_flight_) {
                    if (publication.body_size == size && !publication.rejection) {
                        publication.rejection = "amqp: message too large: " + reply;
                        break;
                    }
                }
            }
        }
        if (code == AMQP_NOT_FOUND) {
            // The exchange was deleted: the next connection finds that out by its check and
            // fails publications for good from then on.
            why += " (will check that exchange " + quoted(options_.exchange) + " exists)";
        }
        lose_connection(why);
    }

    // The return's message-id names the publication (the oldest in flight with that id that
    // was not already returned).
    void mark_returned(const std::string& id, const std::string& reason) {
        for (auto& [tag, publication] : in_flight_) {
            if (publication.id == id && !publication.rejection) {
                publication.rejection = reason;
                return;
            }
        }
    }

    // basic.ack or basic.nack for `tag` (and every tag below it when `multiple`). `nack` is the
    // retry reason of a nack.
    void complete(uint64_t tag, bool multiple, const std::optional<std::string>& nack) {
        auto finish = [&](InFlight& publication) {
            Result result = publication.rejection ? Result::permanent(*publication.rejection)
                            : nack                ? Result::retry(*nack)
                                                  : Result::ok();
            enqueue(std::move(publication.done), std::move(result));
        };
        if (multiple) {
            auto end = in_flight_.upper_bound(tag);
            for (auto it = in_flight_.begin(); it != end; ++it) {
                finish(it->second);
            }
            in_flight_.erase(in_flight_.begin(), end);
        } else if (auto it = in_flight_.find(tag); it != in_flight_.end()) {
            finish(it->second);
            in_flight_.erase(it);
        }
        arm_deadline_timer();
    }

    // A publication without a confirm by its deadline: the broker or the path to it is stuck.
    // The connection is dropped, which fails the other publications on it too (their confirms
    // would arrive on a connection we no longer read).
    void expire_deadlines() {
        if (in_flight_.empty() || in_flight_.begin()->second.deadline > Clock::now()) {
            return;
        }
        lose_connection("amqp: no confirmation from the broker at " + target_->where + " within " +
                        std::to_string(options_.timeout_ms) + " ms");
    }

    // Fails every publication in flight (retryable, with `why`) and forgets the connection. The
    // next publication reconnects at once; only a failed attempt starts the backoff.
    void lose_connection(const std::string& why) {
        for (auto& [tag, publication] : in_flight_) {
            enqueue(std::move(publication.done), publication.rejection
                                                     ? Result::permanent(*publication.rejection)
                                                     : Result::retry(why));
        }
        in_flight_.clear();
        arm_deadline_timer();
        returned_.reset();
        blocked_.reset();
        if (connection_) {
            epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, connection_->fd(), nullptr);
            connection_.reset();
        }
    }

    void enqueue(Done done, Result result) {
        if (ready_.empty()) {
            signal_ready();
        }
        ready_.emplace_back(std::move(done), std::move(result));
    }

    void signal_ready() {
        uint64_t one = 1;
        [[maybe_unused]] ssize_t n = write(ready_event_.get(), &one, sizeof one);
    }

    // Runs the queued completions. A callback may call publish() again, which may queue more:
    // those wait for the next poll(), the eventfd says so.
    void run_ready() {
        // Cleared before the callbacks run: what they queue signals it again.
        uint64_t count;
        [[maybe_unused]] ssize_t n = read(ready_event_.get(), &count, sizeof count);
        std::deque<std::pair<Done, Result>> batch;
        batch.swap(ready_);
        for (auto& [done, result] : batch) {
            done(std::move(result));
        }
    }

    void arm_deadline_timer() {
        itimerspec spec{};
        if (!in_flight_.empty()) {
            auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
                in_flight_.begin()->second.deadline - Clock::now());
            long long ns = std::max<long long>(left.count(), 1);
            spec.it_value.tv_sec = static_cast<time_t>(ns / 1000000000);
            spec.it_value.tv_nsec = static_cast<long>(ns % 1000000000);
        }
        timerfd_settime(deadline_timer_.get(), 0, &spec, nullptr);
    }

    void watch(int fd) {
        epoll_event event{};
        event.events = EPOLLIN;
        event.data.fd = fd;
        epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event);
    }

    AmqpSinkOptions options_;
    std::optional<Target> target_;
    std::string url_error_;
    Backoff backoff_;

    UniqueFd epoll_;
    UniqueFd ready_event_;
    UniqueFd deadline_timer_;

    std::unique_ptr<Connection> connection_;
    uint64_t next_tag_ = 0;
    std::map<uint64_t, InFlight> in_flight_;
    std::deque<std::pair<Done, Result>> ready_;
    std::optional<Returned> returned_;
    std::optional<std::string> blocked_;

    int failed_attempts_ = 0;
    Clock::time_point next_attempt_{};
    std::string last_error_;
    std::optional<std::string> exchange_missing_;
};

} // namespace

std::unique_ptr<Sink> make_amqp_sink(const AmqpSinkOptions& options) {
    return std::make_unique<AmqpSink>(options);
}

} // namespace outbox
