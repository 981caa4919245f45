// Prints one of the supervisor's statements (supervisor/queries.h) exactly as the service sends
// it, for bench/run.sh, which builds the ceiling's pgbench script from them:
//
//   g++ -std=c++20 -I . bench/print_sql.cpp -o print_sql && ./print_sql kClaim
//
// Exit 0 with the statement on stdout; 3 if the statement is one this version of the header does
// not have; 64 for an unknown name.
//
// Some statements are assembled at compile time from shared parts (sql::join), so reading the
// header as text cannot recover them; compiling it can. A statement that is renamed or removed
// breaks this build, which is the loud failure the benchmark wants.
#include "supervisor/queries.h"

#include <cstdio>
#include <cstring>

// Statements that only some versions of supervisor/queries.h have: the success-only result
// statements, which the service sends for a batch of outcomes that are all successes (the whole of
// a no-op burn-down) where they exist. Qualified lookup of outbox::sql::NAME looks into a namespace
// that outbox::sql nominates with a using-directive only when outbox::sql itself declares no NAME
// ([namespace.qual]), so these null stand-ins count only where the header lacks the statement.
namespace outbox::sql {
namespace print_sql_absent {
inline constexpr const char* kRecordSuccesses = nullptr;
inline constexpr const char* kDeleteSuccesses = nullptr;
} // namespace print_sql_absent
using namespace print_sql_absent;
} // namespace outbox::sql

namespace {

struct Statement {
    const char* name;
    const char* text;
};

// The statements the benchmark runs outside the service.
constexpr Statement kStatements[] = {
    {"kClaim", outbox::sql::kClaim},
    {"kRecordResults", outbox::sql::kRecordResults},
    {"kRecordResultsDelete", outbox::sql::kRecordResultsDelete},
    {"kRecordSuccesses", outbox::sql::kRecordSuccesses},
    {"kDeleteSuccesses", outbox::sql::kDeleteSuccesses},
};

} // namespace

int main(int argc, char** argv) {
    if (argc == 2) {
        for (const Statement& s : kStatements) {
            if (std::strcmp(argv[1], s.name) == 0) {
                if (s.text == nullptr) {
                    std::fprintf(stderr, "print_sql: %s is not in this supervisor/queries.h\n",
                                 s.name);
                    return 3;
                }
                std::fputs(s.text, stdout);
                return std::fflush(stdout) == 0 ? 0 : 1;
            }
        }
    }
    std::fprintf(stderr, "usage: print_sql NAME, where NAME is one of:");
    for (const Statement& s : kStatements) {
        std::fprintf(stderr, " %s", s.name);
    }
    std::fprintf(stderr, "\n");
    return 64;
}
