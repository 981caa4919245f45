#include "supervisor/relay_store.h"

#include "common/pg.h"
#include "supervisor/queries.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>

namespace outbox {

namespace {

// A column that PostgreSQL produced as an integer; nullopt when it is not one (which would be a
// bug in a statement, reported as an error value rather than thrown from a libuv callback).
template <typename Int>
std::optional<Int> parse_int(std::string_view text) {
    Int value{};
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

StoreStatus status_of(const QueryResult& r) {
    if (r.lost) {
        return StoreStatus::connection_lost();
    }
    if (!r.result.ok()) {
        return StoreStatus::failed(r.result.error());
    }
    return {};
}

std::string ids_of(const std::vector<LeaseRef>& leases) {
    std::vector<std::string> ids;
    ids.reserve(leases.size());
    for (const auto& l : leases) {
        ids.push_back(*l.id);
    }
    return pg_text_array(ids);
}

std::string tokens_of(const std::vector<LeaseRef>& leases) {
    std::vector<std::string> tokens;
    tokens.reserve(leases.size());
    for (const auto& l : leases) {
        tokens.push_back(std::to_string(l.token));
    }
    return pg_text_array(tokens);
}

} // namespace

PgRelayStore::PgRelayStore(Options options, DbConnection& claim_db, DbConnection& result_db,
                           const std::optional<std::string>& like_patterns)
    : options_(std::move(options)), claim_db_(claim_db), result_db_(result_db),
      like_patterns_(like_patterns) {}

void PgRelayStore::claim(int limit, int64_t token,
                         std::function<void(StoreStatus, ClaimBatch)> done) {
    claim_db_.query_prepared("outbox_claim", sql::kClaim,
                             {options_.instance_id, std::to_string(limit), like_patterns_,
                              std::to_string(token), std::to_string(options_.lease_ms)},
                             [done = std::move(done)](QueryResult&& r) {
                                 StoreStatus status = status_of(r);
                                 ClaimBatch batch;
                                 if (!status.ok) {
                                     done(std::move(status), {});
                                     return;
                                 }
                                 int rows = r.result.rows();
                                 batch.events.reserve(static_cast<size_t>(rows));
                                 for (int i = 0; i < rows; ++i) {
                                     if (r.result.view(i, kClaimColumns) == "f") {
                                         // Parked behind the earlier event of its key, not claimed
                                         // (sql::kClaim).
                                         ++batch.passed_over;
                                         continue;
                                     }
                                     Decoded<ClaimedEvent> e = claimed_event_from_row(r.result, i);
                                     if (!e.ok()) {
                                         // Claimed but unreadable (a bug, never data): the other
                                         // rows go on; this one is retried, charged one attempt,
                                         // once its lease expires.
                                         spdlog::error("claimed row {} cannot be read: {}",
                                                       r.result.value(i, 0), e.error());
                                         continue;
                                     }
                                     batch.events.push_back(std::move(e.value()));
                                 }
                                 done({}, std::move(batch));
                             });
}

void PgRelayStore::record_successes(
    const std::vector<OutcomeRow>& rows,
    std::function<void(StoreStatus, std::vector<std::pair<size_t, bool>>)> done) {
    std::vector<std::string> ids, tokens;
    ids.reserve(rows.size());
    tokens.reserve(rows.size());
    for (const auto& row : rows) {
        ids.push_back(*row.id);
        tokens.push_back(std::to_string(row.token));
    }
    bool remove = options_.on_complete == OnComplete::remove;
    // Built before the callback takes the vectors: argument evaluation order is unspecified.
    std::vector<std::optional<std::string>> params{pg_text_array(ids), pg_text_array(tokens)};
    result_db_.query_prepared(
        remove ? "outbox_delete_successes" : "outbox_record_successes",
        remove ? sql::kDeleteSuccesses : sql::kRecordSuccesses, std::move(params),
        [this, done = std::move(done), ids = std::move(ids),
         tokens = std::move(tokens)](QueryResult&& r) mutable {
            StoreStatus status = status_of(r);
            if (!status.ok) {
                done(std::move(status), {});
                return;
            }
            std::vector<bool> applied(ids.size(), false);
            for (int i = 0; i < r.result.rows(); ++i) {
                auto n = parse_int<size_t>(r.result.view(i, 0));
                if (n && *n >= 1 && *n <= applied.size()) {
                    applied[*n - 1] = true;
                }
            }
            std::vector<size_t> missing;
            std::vector<std::string> missing_ids, missing_tokens;
            for (size_t i = 0; i < applied.size(); ++i) {
                if (!applied[i]) {
                    missing.push_back(i);
                    missing_ids.push_back(std::move(ids[i]));
                    missing_tokens.push_back(std::move(tokens[i]));
                }
            }
            if (missing.empty()) {
                done({}, {});
                return;
            }
            // The outcomes are recorded (the statement committed); this only tells a lost lease
            // from an earlier recording, for the log and the metrics. If it fails, they count
            // as lost leases.
            result_db_.query_prepared(
                "outbox_recorded_before", sql::kRecordedBefore,
                {pg_text_array(missing_ids), pg_text_array(missing_tokens)},
                [done = std::move(done), missing = std::move(missing)](QueryResult&& before) {
                    std::vector<std::pair<size_t, bool>> not_applied;
                    std::vector<bool> already(missing.size(), false);
                    if (before.ok()) {
                        for (int i = 0; i < before.result.rows(); ++i) {
                            auto n = parse_int<size_t>(before.result.view(i, 0));
                            if (n && *n >= 1 && *n <= missing.size()) {
                                already[*n - 1] = before.result.view(i, 1) == "t";
                            }
                        }
                    }
                    for (size_t k = 0; k < missing.size(); ++k) {
                        not_applied.emplace_back(missing[k], already[k]);
                    }
                    done({}, std::move(not_applied));
                });
        });
}

void PgRelayStore::record(
    const std::vector<OutcomeRow>& rows,
    std::function<void(StoreStatus, std::vector<std::pair<size_t, bool>>)> done) {
    if (std::all_of(rows.begin(), rows.end(),
                    [](const OutcomeRow& r) { return r.kind == OutcomeKind::success; })) {
        record_successes(rows, std::move(done));
        return;
    }
    // `order[k]` is the input row that the statement numbers k + 1.
    std::vector<size_t> order;
    order.reserve(rows.size());
    std::vector<std::string> ok_ids, ok_tokens, ids, tokens, kinds, delays;
    std::vector<std::optional<std::string>> errors, done_names;
    auto add_full = [&](size_t i) {
        const OutcomeRow& row = rows[i];
        ids.push_back(*row.id);
        tokens.push_back(std::to_string(row.token));
        kinds.push_back(std::to_string(static_cast<int>(row.kind)));
        errors.push_back(row.error ? std::optional<std::string>(*row.error) : std::nullopt);
        delays.push_back(std::to_string(row.delay_ms));
        done_names.push_back(row.subscribers_done_json != nullptr
                                 ? std::optional<std::string>(*row.subscribers_done_json)
                                 : std::nullopt);
        order.push_back(i);
    };
    const char* name;
    const char* statement;
    std::vector<std::optional<std::string>> params;
    if (options_.on_complete == OnComplete::remove) {
        // Successes first, in arrays of their own (kRecordResultsDelete), then the failures.
        for (size_t i = 0; i < rows.size(); ++i) {
            if (rows[i].kind == OutcomeKind::success) {
                ok_ids.push_back(*rows[i].id);
                ok_tokens.push_back(std::to_string(rows[i].token));
                order.push_back(i);
            }
        }
        for (size_t i = 0; i < rows.size(); ++i) {
            if (rows[i].kind != OutcomeKind::success) {
                add_full(i);
            }
        }
        name = "outbox_record_delete";
        statement = sql::kRecordResultsDelete;
        params = {pg_text_array(ok_ids), pg_text_array(ok_tokens), pg_text_array(ids),
                  pg_text_array(tokens), pg_text_array(kinds),     pg_text_array(errors),
                  pg_text_array(delays), pg_text_array(done_names)};
    } else {
        for (size_t i = 0; i < rows.size(); ++i) {
            add_full(i);
        }
        name = "outbox_record";
        statement = sql::kRecordResults;
        params = {pg_text_array(ids),    pg_text_array(tokens), pg_text_array(kinds),
                  pg_text_array(errors), pg_text_array(delays), pg_text_array(done_names)};
    }
    result_db_.query_prepared(
        name, statement, std::move(params),
        [done = std::move(done), order = std::move(order)](QueryResult&& r) {
            StoreStatus status = status_of(r);
            std::vector<std::pair<size_t, bool>> not_applied;
            if (status.ok) {
                for (int i = 0; i < r.result.rows(); ++i) {
                    auto n = parse_int<size_t>(r.result.view(i, 0));
                    if (!n || *n < 1 || *n > order.size()) {
                        status = StoreStatus::failed("the record statement answered with row " +
                                                     r.result.value(i, 0));
                        break;
                    }
                    not_applied.emplace_back(order[*n - 1], r.result.view(i, 1) == "t");
                }
            }
            done(std::move(status), std::move(not_applied));
        });
}

void PgRelayStore::renew(const std::vector<LeaseRef>& leases,
                         std::function<void(StoreStatus, std::vector<size_t>)> done) {
    result_db_.query_prepared(
        "outbox_renew", sql::kRenewLeases,
        {ids_of(leases), tokens_of(leases), std::to_string(options_.lease_ms)},
        [done = std::move(done), count = leases.size()](QueryResult&& r) {
            StoreStatus status = status_of(r);
            std::vector<size_t> renewed;
            if (status.ok) {
                for (int i = 0; i < r.result.rows(); ++i) {
                    auto n = parse_int<size_t>(r.result.view(i, 0));
                    if (n && *n >= 1 && *n <= count) {
                        renewed.push_back(*n - 1);
                    }
                }
            }
            done(std::move(status), std::move(renewed));
        });
}

void PgRelayStore::release(const std::vector<LeaseRef>& leases,
                           std::function<void(StoreStatus, long)> done) {
    result_db_.query(sql::kRelease, {ids_of(leases), tokens_of(leases)},
                     [done = std::move(done)](QueryResult&& r) {
                         StoreStatus status = status_of(r);
                         long released = 0;
                         if (status.ok) {
                             released = parse_int<long>(r.result.view(0, 0)).value_or(0);
                         }
                         done(std::move(status), released);
                     });
}

} // namespace outbox
