// What the ordering tests (ordering_test.cpp, chaos_test.cpp's ordered case) read back and check:
// the example application's record of every attempt, the commit order of every event as
// PostgreSQL itself recorded it, and the per-key checks that put the two side by side.
//
// Commit order is taken from evidence independent of the service's mechanism: the commit time of
// the transaction that wrote the event's "EventLog" row (pg_xact_commit_timestamp of its xmin;
// the service never updates that row), which needs track_commit_timestamp = on in the cluster
// (tests/run_with_postgres.sh sets it). Events of one transaction share that time; among them the
// writer's own order counts, which the tests write into the payload as "j".
#pragma once

#include "tests/integration/engine_support.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace outbox::test {

// One line of examples/app.cpp record_attempt(): an attempt the handler saw through.
struct Attempt {
    std::string id;
    int attempt = 0;
    pid_t handler_pid = 0;
    pid_t instance_pid = 0;
    int64_t start_ns = 0; // CLOCK_MONOTONIC
    int64_t end_ns = 0;
    std::string outcome; // ok, fail, rejected, crash, hang
};

inline std::vector<Attempt> read_attempts(const std::string& path) {
    std::vector<Attempt> out;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        Attempt a;
        if (fields >> a.id >> a.attempt >> a.handler_pid >> a.instance_pid >> a.start_ns >>
            a.end_ns >> a.outcome) {
            out.push_back(a);
        }
    }
    return out;
}

// An event of an ordering key and its place in the key's commit order.
struct OrderedEvent {
    std::string id;
    std::string key;
    int64_t commit_us = 0; // pg_xact_commit_timestamp of the "EventLog" row's xmin
    int64_t xid = 0;       // that xmin: events of one transaction share it
    int j = 0;             // the writer's order within its transaction (payload "j")
    long seq = 0;          // the service's "orderingSeq", for diagnostics only
    // 0, 1, 2... along the key's commit order. Two events of different transactions committed in
    // the same microsecond cannot be ordered by the evidence: they share a rank.
    long rank = 0;
};

struct CommitOrder {
    std::map<std::string, OrderedEvent> by_id;
    std::map<std::string, std::vector<std::string>> ids_by_key; // in commit order
    long events_without_commit_time = 0;
    long same_microsecond_ties = 0;
    // Adjacent events (in commit order) whose "orderingSeq" is not increasing: the service's own
    // sequence disagrees with PostgreSQL's commit times.
    long seq_disagreements = 0;
    std::string seq_disagreement_examples;
};

// Reads every "Outbox" row with an ordering key. `type` restricts to one event type ("" for all).
inline CommitOrder read_commit_order(const TestDatabase& db, const std::string& type = "") {
    std::string sql = R"(
        SELECT o."id", o."orderingKey",
               (extract(epoch FROM pg_xact_commit_timestamp(e.xmin)) * 1000000)::bigint,
               e.xmin::text::bigint, COALESCE((e."payload"->>'j')::int, 0),
               COALESCE(o."orderingSeq", -1)
          FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId"
         WHERE o."orderingKey" IS NOT NULL)";
    if (!type.empty()) {
        sql += " AND o.\"eventType\" = '" + type + "'";
    }
    PgResult r = db.exec(sql);
    CommitOrder out;
    std::map<std::string, std::vector<OrderedEvent>> by_key;
    for (int i = 0; i < r.rows(); ++i) {
        OrderedEvent e;
        e.id = r.value(i, 0);
        e.key = r.value(i, 1);
        if (r.is_null(i, 2)) {
            ++out.events_without_commit_time;
        } else {
            e.commit_us = std::stoll(r.value(i, 2));
        }
        e.xid = std::stoll(r.value(i, 3));
        e.j = std::stoi(r.value(i, 4));
        e.seq = std::stol(r.value(i, 5));
        by_key[e.key].push_back(e);
    }
    for (auto& [key, events] : by_key) {
        std::sort(events.begin(), events.end(), [](const OrderedEvent& a, const OrderedEvent& b) {
            return std::tie(a.commit_us, a.xid, a.j) < std::tie(b.commit_us, b.xid, b.j);
        });
        for (size_t i = 0; i < events.size(); ++i) {
            if (i > 0) {
                const OrderedEvent& prev = events[i - 1];
                bool tie = events[i].commit_us == prev.commit_us && events[i].xid != prev.xid;
                events[i].rank = tie ? prev.rank : prev.rank + 1;
                out.same_microsecond_ties += tie ? 1 : 0;
                if (!tie && events[i].seq <= prev.seq) {
                    if (++out.seq_disagreements <= 5) {
                        out.seq_disagreement_examples +=
                            "  key " + key + ": " + prev.id + " (orderingSeq " +
                            std::to_string(prev.seq) + ") committed before " + events[i].id +
                            " (orderingSeq " + std::to_string(events[i].seq) + ")\n";
                    }
                }
            }
            out.ids_by_key[key].push_back(events[i].id);
            out.by_id[events[i].id] = events[i];
        }
    }
    return out;
}

// The per-key checks on the record of attempts:
// - order: taken by start time, the attempts of a key must never go back in the key's commit
//   order (an event must not be attempted once a later event of its key has started; in
//   particular the first deliveries follow the commit order);
// - one at a time: an attempt of a key must not start before every earlier attempt of the key
//   has ended, unless `explain_overlap` (given the earlier attempt) names a reason, such as a
//   lease lost while its handler still ran. Without it, every overlap is unexplained.
struct KeyOrderReport {
    long keys = 0;
    long attempts = 0;
    long order_violations = 0;
    long overlaps_explained = 0;
    long overlaps_unexplained = 0;
    std::map<std::string, long> overlaps_by_reason;
    std::string details; // the first few of each problem, one per line
};

inline KeyOrderReport
check_key_order(const CommitOrder& order, const std::vector<Attempt>& attempts,
                const std::function<std::string(const Attempt&)>& explain_overlap = {}) {
    KeyOrderReport report;
    std::map<std::string, std::vector<const Attempt*>> by_key;
    for (const Attempt& a : attempts) {
        auto e = order.by_id.find(a.id);
        if (e != order.by_id.end()) {
            by_key[e->second.key].push_back(&a);
        }
    }
    long shown_order = 0, shown_overlap = 0;
    auto describe = [&](const Attempt& a) {
        const OrderedEvent& e = order.by_id.at(a.id);
        std::ostringstream out;
        out << a.id << " (commit rank " << e.rank << ", attempt " << a.attempt << ", " << a.outcome
            << ", handler " << a.handler_pid << " of instance pid " << a.instance_pid << ", "
            << a.start_ns << ".." << a.end_ns << " ns)";
        return out.str();
    };
    for (auto& [key, list] : by_key) {
        ++report.keys;
        report.attempts += static_cast<long>(list.size());
        std::sort(list.begin(), list.end(), [](const Attempt* a, const Attempt* b) {
            return std::tie(a->start_ns, a->end_ns) < std::tie(b->start_ns, b->end_ns);
        });
        const Attempt* highest = nullptr; // the attempt of the latest event started so far
        const Attempt* last_ending = nullptr;
        for (const Attempt* a : list) {
            long rank = order.by_id.at(a->id).rank;
            if (highest != nullptr && rank < order.by_id.at(highest->id).rank) {
                ++report.order_violations;
                if (++shown_order <= 10) {
                    report.details += "  key " + key + ": " + describe(*a) + " started after " +
                                      describe(*highest) + "\n";
                }
            }
            if (highest == nullptr || rank >= order.by_id.at(highest->id).rank) {
                highest = a;
            }
            if (last_ending != nullptr && a->start_ns < last_ending->end_ns) {
                std::string reason = explain_overlap ? explain_overlap(*last_ending) : "";
                if (reason.empty()) {
                    ++report.overlaps_unexplained;
                    if (++shown_overlap <= 10) {
                        report.details += "  key " + key + ": " + describe(*a) + " started while " +
                                          describe(*last_ending) + " still ran\n";
                    }
                } else {
                    ++report.overlaps_explained;
                    ++report.overlaps_by_reason[reason];
                }
            }
            if (last_ending == nullptr || a->end_ns > last_ending->end_ns) {
                last_ending = a;
            }
        }
    }
    return report;
}

inline std::string describe(const KeyOrderReport& r) {
    std::ostringstream out;
    out << r.keys << " keys, " << r.attempts << " attempts recorded: " << r.order_violations
        << " out of commit order, " << r.overlaps_unexplained << " unexplained overlaps, "
        << r.overlaps_explained << " explained";
    for (const auto& [reason, n] : r.overlaps_by_reason) {
        out << " (" << reason << ": " << n << ")";
    }
    out << "\n" << r.details;
    return out.str();
}

} // namespace outbox::test
