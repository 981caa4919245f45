// outbox::EventWriter (include/outbox/outbox.h): the C++ face of the SQL function
// outbox_write_event() of sql/migrations/002_outbox_worker.sql (its ordering key argument from
// 004_ordering.sql). Both paths run the same function,
// so the C++ API and an application calling the function from its own SQL have the same semantics
// by construction: one "EventLog" row plus one "Outbox" row, or the existing ids for a repeated
// (eventKey, tenantId).
#include "common/json.h"
#include "common/pg.h"
#include <outbox/outbox.h>

#include <string>
#include <vector>

namespace outbox {

namespace {

constexpr const char* kWriteOne = R"sql(
SELECT w.event_log_id, w.outbox_id, w.duplicate
  FROM outbox_write_event($1, $2, $3, $4::jsonb, $5, $6::jsonb, $7, $8::int, $9) AS w
)sql";

// The whole batch in one statement and one round trip. unnest() of parallel arrays yields the
// events in array order; the function runs once per event through LATERAL in that order, so a key
// repeated within the batch is written by its first occurrence and reported as a duplicate by the
// later ones, exactly as separate calls would. ORDER BY restores the input order for the results.
constexpr const char* kWriteBatch = R"sql(
SELECT w.event_log_id, w.outbox_id, w.duplicate
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::int[], $9::text[])
       WITH ORDINALITY AS e(event_key, tenant_id, event_type, payload, project_id, metadata,
                            correlation_id, max_retries, ordering_key, ord)
 CROSS JOIN LATERAL outbox_write_event(e.event_key, e.tenant_id, e.event_type, e.payload::jsonb,
                                       e.project_id, e.metadata::jsonb, e.correlation_id,
                                       e.max_retries, e.ordering_key) AS w
 ORDER BY e.ord
)sql";

std::string describe(const NewEvent& event, size_t index, bool in_batch) {
    std::string out = in_batch ? "event " + std::to_string(index) + " " : "event ";
    return out + "(eventKey \"" + event.eventKey + "\", tenantId \"" + event.tenantId + "\")";
}

// PostgreSQL checks the JSON too, but its error cannot say which event of a batch was wrong; this
// check can, and it spares a round trip that would abort the caller's transaction.
void check_event(const NewEvent& event, size_t index, bool in_batch) {
    if (!json_parse(event.payload)) {
        throw WriteError("outbox: " + describe(event, index, in_batch) +
                         ": payload is not valid JSON");
    }
    if (event.metadata && !json_parse(*event.metadata)) {
        throw WriteError("outbox: " + describe(event, index, in_batch) +
                         ": metadata is not valid JSON");
    }
}

std::optional<std::string> optional_int(const std::optional<int>& value) {
    if (!value) {
        return std::nullopt;
    }
    return std::to_string(*value);
}

WrittenEvent row_to_written(const PgResult& res, int row) {
    WrittenEvent out;
    out.eventLogId = res.value(row, 0);
    out.outboxId = res.is_null(row, 1) ? std::string() : res.value(row, 1);
    out.duplicate = res.value(row, 2) == "t";
    return out;
}

[[noreturn]] void throw_database_error(const PgResult& res, const std::string& what) {
    throw WriteError("outbox: " + what + " failed: " + res.error());
}

} // namespace

WrittenEvent EventWriter::write(const NewEvent& event) {
    check_event(event, 0, false);
    PgResult res = pg_exec_params(conn_, kWriteOne,
                                  {event.eventKey, event.tenantId, event.eventType, event.payload,
                                   event.projectId, event.metadata, event.correlationId,
                                   optional_int(event.maxRetries), event.orderingKey});
    if (!res.ok()) {
        throw_database_error(res, "writing " + describe(event, 0, false));
    }
    if (res.rows() != 1) {
        throw WriteError("outbox: outbox_write_event returned " + std::to_string(res.rows()) +
                         " rows for one event");
    }
    return row_to_written(res, 0);
}

std::vector<WrittenEvent> EventWriter::write_batch(const std::vector<NewEvent>& events) {
    if (events.empty()) {
        return {};
    }
    std::vector<std::string> keys, tenants, types, payloads;
    std::vector<std::optional<std::string>> projects, metadata, correlations, max_retries,
        ordering_keys;
    keys.reserve(events.size());
    tenants.reserve(events.size());
    types.reserve(events.size());
    payloads.reserve(events.size());
    projects.reserve(events.size());
    metadata.reserve(events.size());
    correlations.reserve(events.size());
    max_retries.reserve(events.size());
    ordering_keys.reserve(events.size());
    for (size_t i = 0; i < events.size(); ++i) {
        const NewEvent& e = events[i];
        check_event(e, i, true);
        keys.push_back(e.eventKey);
        tenants.push_back(e.tenantId);
        types.push_back(e.eventType);
        payloads.push_back(e.payload);
        projects.push_back(e.projectId);
        metadata.push_back(e.metadata);
        correlations.push_back(e.correlationId);
        max_retries.push_back(optional_int(e.maxRetries));
        ordering_keys.push_back(e.orderingKey);
    }
    PgResult res = pg_exec_params(
        conn_, kWriteBatch,
        {pg_text_array(keys), pg_text_array(tenants), pg_text_array(types), pg_text_array(payloads),
         pg_text_array(projects), pg_text_array(metadata), pg_text_array(correlations),
         pg_text_array(max_retries), pg_text_array(ordering_keys)});
    if (!res.ok()) {
        throw_database_error(res,
                             "writing a batch of " + std::to_string(events.size()) + " events");
    }
    if (static_cast<size_t>(res.rows()) != events.size()) {
        throw WriteError("outbox: outbox_write_event returned " + std::to_string(res.rows()) +
                         " rows for " + std::to_string(events.size()) + " events");
    }
    std::vector<WrittenEvent> out;
    out.reserve(events.size());
    for (int row = 0; row < res.rows(); ++row) {
        out.push_back(row_to_written(res, row));
    }
    return out;
}

} // namespace outbox
