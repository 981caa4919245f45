// outbox-worker public API.
//
// An application links the `outbox` library, registers handlers in code and runs the same service
// as the `outbox-worker` binary (supervisor plus forked handler processes) from its own main:
//
//     int main(int argc, char** argv) {
//         outbox::Worker worker;
//         worker.subscribe({{"shopify.*"}, [](const outbox::Event& e) {
//             sync_product(e.payload_json);
//             return outbox::Result::ok();
//         }});
//         return worker.main(argc, argv);   // run, migrate, emit, dlq, stats, ...
//     }
//
// Handlers run in handler processes, never in the supervisor: a handler that crashes, leaks or
// hangs costs one attempt of the event it was running and nothing else. Handlers are registered
// before main()/run() and are inherited by the handler processes through fork(), so a handler may
// capture state prepared before that point; it must not rely on threads started before it.
#pragma once

#include <libpq-fe.h>

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace outbox {

// One delivery of one event, as SPEC section 2 describes it: the fields, decoded from the channel
// without parsing any JSON. payload_json and metadata_json are JSON texts exactly as PostgreSQL
// wrote them (jsonb), so a handler that parses them sees every digit of a 64-bit integer.
struct Event {
    std::string id;           // "Outbox".id, stable across attempts: use it for idempotency
    std::string event_log_id; // "EventLog".id
    std::optional<std::string> event_key; // the application's idempotency key; null only for an
                                          // "Outbox" row whose "EventLog" row is missing
    std::string tenant_id;
    std::optional<std::string> project_id; // nullopt when the column is NULL
    std::string event_type;
    std::string payload_json;                  // the payload as JSON text
    std::string metadata_json = "null";        // JSON text, "null" when absent
    std::optional<std::string> correlation_id; // nullopt when the column is NULL
    std::string created_at;                    // ISO 8601 UTC, microseconds
    int attempt = 1;                           // 1 on the first delivery
    // The event's ordering key (SPEC 2a), nullopt for an unordered event. Not part of json(),
    // whose fields SPEC 2 fixes; broker handlers use it as the record key.
    std::optional<std::string> ordering_key;

    // The whole event object as exec and http handlers receive it (SPEC 2 names and field order),
    // built from the members above on the first call by concatenation (payload and metadata
    // inserted verbatim, an empty one as null) and kept: set the members first and change none
    // afterwards. The first call is not safe from two threads at once; handlers are called from
    // one thread. C++ handlers that read the members never pay for it.
    const std::string& json() const;

  private:
    mutable std::string json_; // empty until json() builds it (common/json.cpp)
};

enum class Outcome {
    success,   // done: the event becomes COMPLETED (once every matching subscriber succeeded)
    retry,     // failed, try again after the backoff (or DLQ when the attempts are used up)
    permanent, // failed, retrying cannot help: straight to the dead-letter queue
};

struct Result {
    Outcome outcome = Outcome::success;
    std::string error;       // why it failed; stored in "lastError" / "failureReason"
    long retry_after_ms = 0; // a lower bound for the next retry's delay (0: backoff only)

    static Result ok() { return {}; }
    static Result retry(std::string why, long retry_after_ms = 0) {
        return {Outcome::retry, std::move(why), retry_after_ms};
    }
    static Result permanent(std::string why) { return {Outcome::permanent, std::move(why), 0}; }
};

// A handler runs in a handler process. Throwing is a retryable failure with the exception's
// message.
using Handler = std::function<Result(const Event&)>;

struct Subscription {
    Subscription(std::vector<std::string> event_types, Handler handler_fn, long timeout_ms = 0,
                 std::string subscriber_name = {})
        : eventTypes(std::move(event_types)), handler(std::move(handler_fn)), timeoutMs(timeout_ms),
          name(std::move(subscriber_name)) {}

    std::vector<std::string> eventTypes; // exact names or globs with '*': "shopify.*", "*"
    Handler handler;
    long timeoutMs = 0; // 0: OUTBOX_HANDLER_TIMEOUT_MS
    // The subscriber's identity, in logs and in an event's record of the subscribers that
    // succeeded for it: a retry of the event (from the DLQ too) skips those (SPEC 2, "Several
    // subscribers, one event"). Empty: "code#N", N the position among the subscribe() calls,
    // which changes when a subscriber is added before it. So set a name, unique among all
    // subscribers (the handlers file's included), on every subscriber that can match an event
    // type another subscriber can match too, and keep it: a renamed subscriber runs again for
    // events that were retrying or dead-lettered under the old name. A name should be valid
    // UTF-8 of at most 1024 bytes; a longer or invalid one is recorded shortened or repaired,
    // which still matches on the next attempt but reads differently in the database.
    std::string name;
};

// The service. Configuration comes from the environment (SPEC section 3); handlers from subscribe()
// calls and, when OUTBOX_HANDLERS is set, from the handlers file (after the code subscribers).
class Worker {
  public:
    Worker();
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // Subscribers run in registration order; an event succeeds when every matching one succeeds.
    Worker& subscribe(Subscription subscription);

    // The whole command line of `outbox-worker` (run, migrate, emit, dlq, ordering, stats,
    // health, check-config). Returns the process exit code (0, 1, 64 usage, 78 configuration).
    int main(int argc, char** argv);

    // `outbox-worker run`: serves until SIGTERM/SIGINT, returns the exit code.
    int run();

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
};

// Writing events from an application, inside its own transaction (SPEC 2, "Writing events").
struct NewEvent {
    std::string eventKey;
    std::string tenantId;
    std::string eventType;
    std::string payload = "{}"; // JSON text
    std::optional<std::string> projectId;
    std::optional<std::string> metadata; // JSON text
    std::optional<std::string> correlationId;
    std::optional<int> maxRetries; // default: the column default (5)
    // Events with the same ordering key are delivered one at a time, in the order in which their
    // transactions commit (SPEC 2a). nullopt: the database's ordering rule decides (`outbox-worker
    // ordering set`), and without a rule the event is unordered.
    std::optional<std::string> orderingKey;
};

struct WrittenEvent {
    std::string eventLogId;
    std::string outboxId;
    bool duplicate = false; // (eventKey, tenantId) existed: nothing was written
};

// Writes through the SQL function outbox_write_event() on the caller's connection, so it joins
// whatever transaction the caller has open. Blocking; not for the supervisor's loop.
// Throws outbox::WriteError on a database error or invalid JSON.
class EventWriter {
  public:
    explicit EventWriter(PGconn* connection) : conn_(connection) {}
    WrittenEvent write(const NewEvent& event);
    // Many events in one statement (one round trip); results in input order.
    std::vector<WrittenEvent> write_batch(const std::vector<NewEvent>& events);

  private:
    PGconn* conn_;
};

struct WriteError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

} // namespace outbox
