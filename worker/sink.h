// Message-broker sinks (SPEC 4, "Message brokers"): the handler kinds kafka, nats, amqp and redis.
//
// A broker subscriber of the handlers file becomes a Subscriber whose `broker` is set. The
// subscriber is built in the supervisor (loading the handlers file), but its connection is not:
// BrokerSpec::make_sink is called in the handler process, on the subscriber's first event, so no
// client library state (threads, sockets) exists before fork(). Each handler process therefore
// holds one Sink, one long-lived connection, per broker subscriber.
//
// Publishing is asynchronous, because a broker's acknowledgement takes a round trip and a process
// that waited for each one in turn would be bound by that round trip. The handler process
// (worker/worker_process.cpp) starts a publication with Sink::publish and goes on reading further
// EVENT frames and starting their publications; Sink::poll runs the completions as the broker
// acknowledges. RESULT frames still leave in EVENT order (docs/protocol.md, "Many publications in
// flight"), so crash attribution and the supervisor's bookkeeping are unchanged. Per-key order
// holds because the supervisor never has two events of one ordering key in flight (SPEC 2a); a
// sink keeps the order of what it was given as far as its client library does (Kafka's idempotent
// producer per partition, one connection for NATS, AMQP and Redis).
//
// Threading: a Sink is used from the handler process's one thread. A client library may run its
// own threads (librdkafka, the NATS client); their callbacks must only queue completions, which
// poll() then runs on the caller's thread.
#pragma once

#include "worker/broker_message.h"
#include <outbox/outbox.h>

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace outbox {

// Reconnection backoff of every sink: the first retry of a failed connection after
// kSinkReconnectInitialMs, doubling up to kSinkReconnectMaxMs. While a sink waits to reconnect,
// publish() fails at once (retryable) with the last connection error, so that a broker that is
// down costs an attempt, never a handler timeout, and never holds up other subscribers.
inline constexpr long kSinkReconnectInitialMs = 100;
inline constexpr long kSinkReconnectMaxMs = 5000;

class Sink {
  public:
    // Called exactly once per publish(): with Result::ok() when the broker acknowledged the
    // message durably, Result::retry(...) for connection failures, timeouts and back-pressure,
    // Result::permanent(...) when the broker rejects the message for good (no such stream or
    // exchange, unroutable, too large). The error text starts with what failed, for example
    // "nats: publish to orders.created: no responders (is there a stream for the subject?)".
    using Done = std::function<void(Result)>;

    virtual ~Sink() = default;

    // Starts publishing `message`. Opens the connection first when there is none (lazily, and
    // with the capped backoff above after a failure). Never blocks longer than a connection
    // attempt (bounded by the sink's own connect timeout); `done` may run before publish()
    // returns when the outcome is known at once.
    virtual void publish(const BrokerMessage& message, Done done) = 0;

    // Runs the completions that are ready. When none is ready but some are pending, waits at
    // most `timeout_ms` (0: do not wait) for one.
    virtual void poll(int timeout_ms) = 0;

    // Publications started and not yet completed.
    [[nodiscard]] virtual size_t pending() const = 0;

    // A descriptor that becomes readable when poll() has work to do, for the handler process to
    // wait on beside its channel; -1 when the sink has none (the process then calls poll() every
    // few milliseconds while publications are pending).
    [[nodiscard]] virtual int wait_fd() const { return -1; }

    // Whether the connection is up now. The handler process reports changes to the supervisor
    // (the STATUS frame), which exports them as outbox_sink_connected.
    [[nodiscard]] virtual bool connected() const = 0;

    // For `check-config --connect`: connects (blocking, at most `timeout_ms`), checks what can be
    // checked without publishing (the stream or exchange exists, the topic is known), and returns
    // nullopt or one line saying what is wrong.
    [[nodiscard]] virtual std::optional<std::string> check(long timeout_ms) = 0;
};

// A broker subscriber: how to build its messages and how to open its sink.
struct BrokerSpec {
    std::string kind;        // "kafka", "nats", "amqp", "redis"
    std::string description; // for check-config and logs: "kafka localhost:9092 topic orders"
    MessageOptions message;  // destination template, body mode, CloudEvents source
    // Called in the handler process on the subscriber's first event; never in the supervisor.
    std::function<std::unique_ptr<Sink>()> make_sink;
};

// Per-kind options, as the handlers file gives them (already validated).
struct KafkaSinkOptions {
    std::string brokers;                           // bootstrap.servers
    std::map<std::string, std::string> properties; // extra librdkafka settings, applied last
    long timeout_ms = 30000;                       // message.timeout.ms, below the handler timeout
};
struct NatsSinkOptions {
    std::string url; // nats://host:port, may hold user:password@
    long timeout_ms = 30000;
};
struct AmqpSinkOptions {
    std::string url;      // amqp://user:password@host:port/vhost
    std::string exchange; // "" is the default exchange
    long timeout_ms = 30000;
};
struct RedisSinkOptions {
    std::string url;             // redis://[:password@]host:port[/db]
    std::optional<long> max_len; // XADD MAXLEN ~ n
    long timeout_ms = 30000;
};

// Factories, each in its own file (worker/<kind>_sink.cpp). The destination (topic, subject,
// routing key, stream) comes with each message: BrokerMessage::destination.
std::unique_ptr<Sink> make_kafka_sink(const KafkaSinkOptions& options);
std::unique_ptr<Sink> make_nats_sink(const NatsSinkOptions& options);
std::unique_ptr<Sink> make_amqp_sink(const AmqpSinkOptions& options);
std::unique_ptr<Sink> make_redis_sink(const RedisSinkOptions& options);

// Publishes one message and waits for its outcome: publish(), then poll() until done. For callers
// that have no loop of their own (a broker subscriber called as a plain Handler, tests).
Result publish_and_wait(Sink& sink, const BrokerMessage& message);

} // namespace outbox
