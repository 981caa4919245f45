// Prints one of the supervisor's statements (supervisor/queries.h) exactly as the service sends
// it, for bench/run.sh, which builds the ceiling's pgbench script from them:
//
//   g++ -std=c++20 -I . bench/print_sql.cpp -o print_sql && ./print_sql kClaim
//
// Some statements are assembled at compile time from shared parts (sql::join), so reading the
// header as text cannot recover them; compiling it can. A statement that is renamed or removed
// breaks this build, which is the loud failure the benchmark wants.
#include "supervisor/queries.h"

#include <cstdio>
#include <cstring>

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
};

} // namespace

int main(int argc, char** argv) {
    if (argc == 2) {
        for (const Statement& s : kStatements) {
            if (std::strcmp(argv[1], s.name) == 0) {
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
