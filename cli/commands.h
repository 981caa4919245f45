// The subcommands of `outbox-worker` (SPEC 5) other than `run`, which lives with outbox::Worker
// in cli/worker.cpp because it needs the subscribers registered in code.
//
// Each command takes the words after its name and returns the process exit code: 0 success,
// 1 failure, 64 usage error, 78 configuration error. Results go to stdout, diagnostics to stderr
// as one line starting with "outbox-worker <command>: ". Every database command first validates
// the whole environment (SPEC 3), then connects; the password of DATABASE_URL is never printed.
#pragma once

#include "common/config.h"
#include "common/pg.h"

#include <optional>
#include <string>
#include <vector>

namespace outbox::cli {

// The name every message starts with.
inline constexpr const char* kProgram = "outbox-worker";

struct CommandInfo {
    const char* name;
    const char* summary; // one line for the top-level help
    const char* usage;   // the command's --help text
    int (*run)(const std::vector<std::string>& args);
};

// Every subcommand but `run`, in the order of the top-level help.
const std::vector<CommandInfo>& commands();

int migrate_command(const std::vector<std::string>& args);
int emit_command(const std::vector<std::string>& args);
int dlq_command(const std::vector<std::string>& args);
int stats_command(const std::vector<std::string>& args);
int health_command(const std::vector<std::string>& args);
int check_config_command(const std::vector<std::string>& args);
int ordering_command(const std::vector<std::string>& args);

extern const char* const kMigrateUsage;
extern const char* const kEmitUsage;
extern const char* const kDlqUsage;
extern const char* const kStatsUsage;
extern const char* const kHealthUsage;
extern const char* const kCheckConfigUsage;
extern const char* const kOrderingUsage;

// Prints "outbox-worker <command>: <problem>", a blank line and the usage to stderr; returns 64.
int usage_error(const char* command, const std::string& problem, const char* usage);

// Prints "outbox-worker <command>: <message>" to stderr.
void print_error(const char* command, const std::string& message);

// The validated configuration, or nullopt after printing "outbox-worker: <error>" to stderr (the
// caller exits with kExitConfig). Also sets up logging for the command line.
std::optional<Config> load_cli_config(bool require_database = true);

// What a database command works with.
struct Session {
    Config config;
    PgConn conn;
};

enum class SchemaNeed {
    none,    // migrate: works on any database
    current, // the service's schema at the version this binary knows
};

// Loads the configuration and connects. On failure prints the reason (configuration errors,
// connection errors with the masked URL, a missing schema with "run `outbox-worker migrate`")
// and sets `exit_code`.
std::optional<Session> open_session(const char* command, SchemaNeed need, int& exit_code);

// libpq messages span lines (a tab-indented hint after the error); a diagnostic is one line.
std::string one_line(std::string text);

// Free text (a failure reason) for one cell of a table: line breaks and tabs become spaces, and
// text longer than `max_chars` characters is cut at a UTF-8 character boundary, ending in "...".
std::string shorten(const std::string& text, size_t max_chars);

// Prints `headers` and then `rows` to stdout as columns padded to their widest cell, two spaces
// apart. The last column is not padded: it holds free text, shortened by the caller.
void print_table(const std::vector<std::string>& headers,
                 const std::vector<std::vector<std::string>>& rows);

} // namespace outbox::cli
