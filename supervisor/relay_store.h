// The relay's store on PostgreSQL: the claim runs on the claim connection, outcomes, lease
// renewals and releases on the result connection, so that a claim and the recording of the
// previous batch's outcomes overlap. Every statement is in supervisor/queries.h; this file only
// binds parameters and reads answers.
#pragma once

#include "common/config.h"
#include "supervisor/db_connection.h"
#include "supervisor/relay.h"

#include <optional>
#include <string>

namespace outbox {

class PgRelayStore final : public RelayStore {
  public:
    struct Options {
        std::string instance_id;
        long lease_ms = 30000;
        OnComplete on_complete = OnComplete::keep;
    };

    // `claim_db` and `result_db` must outlive the store. `like_patterns` is read at every claim
    // (it changes on SIGHUP): the LIKE patterns of the subscribed types as an array literal, or
    // nullopt when some subscriber takes every type.
    PgRelayStore(Options options, DbConnection& claim_db, DbConnection& result_db,
                 const std::optional<std::string>& like_patterns);

    bool can_record() const override { return result_db_.connected(); }
    bool can_claim() const override { return claim_db_.connected(); }
    void claim(int limit, int64_t token,
               std::function<void(StoreStatus, ClaimBatch)> done) override;
    void
    record(const std::vector<OutcomeRow>& rows,
           std::function<void(StoreStatus, std::vector<std::pair<size_t, bool>>)> done) override;
    void renew(const std::vector<LeaseRef>& leases,
               std::function<void(StoreStatus, std::vector<size_t>)> done) override;
    void release(const std::vector<LeaseRef>& leases,
                 std::function<void(StoreStatus, long released)> done) override;

  private:
    // The common case, all successes: a statement PostgreSQL plans in a fraction of the time.
    void
    record_successes(const std::vector<OutcomeRow>& rows,
                     std::function<void(StoreStatus, std::vector<std::pair<size_t, bool>>)> done);

    Options options_;
    DbConnection& claim_db_;
    DbConnection& result_db_;
    const std::optional<std::string>& like_patterns_;
};

} // namespace outbox
