// What every subcommand shares: messages, configuration and the database connection.
#include "cli/commands.h"
#include "common/log.h"
#include "common/migrations.h"

#include <algorithm>
#include <cstdio>

namespace outbox::cli {

const std::vector<CommandInfo>& commands() {
    static const std::vector<CommandInfo> all = {
        {"migrate", "create or upgrade the database schema", kMigrateUsage, migrate_command},
        {"emit", "write synthetic events through the writer API", kEmitUsage, emit_command},
        {"dlq", "list, retry, skip or purge dead-lettered events", kDlqUsage, dlq_command},
        {"ordering", "set or show the ordering rule, list blocked ordering keys", kOrderingUsage,
         ordering_command},
        {"stats", "counts by status, DLQ size, oldest due event", kStatsUsage, stats_command},
        {"health", "ask the running instance's /health (for health checks)", kHealthUsage,
         health_command},
        {"check-config", "validate the environment and the handlers file", kCheckConfigUsage,
         check_config_command},
    };
    return all;
}

int usage_error(const char* command, const std::string& problem, const char* usage) {
    std::fprintf(stderr, "%s %s: %s\n\n%s", kProgram, command, problem.c_str(), usage);
    return kExitUsage;
}

void print_error(const char* command, const std::string& message) {
    std::fprintf(stderr, "%s %s: %s\n", kProgram, command, one_line(message).c_str());
}

std::string one_line(std::string text) {
    std::string out;
    bool pending_space = false;
    for (char c : text) {
        if (c == '\n' || c == '\r' || c == '\t') {
            pending_space = !out.empty();
            continue;
        }
        if (pending_space && c != ' ') {
            out += ' ';
        }
        pending_space = false;
        out += c;
    }
    return out;
}

std::string shorten(const std::string& text, size_t max_chars) {
    std::string flat;
    for (char c : text) {
        flat += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
    }
    size_t chars = 0;
    for (size_t i = 0; i < flat.size(); ++i) {
        if ((static_cast<unsigned char>(flat[i]) & 0xC0) != 0x80) {
            if (chars == max_chars) {
                return flat.substr(0, i) + "...";
            }
            ++chars;
        }
    }
    return flat;
}

void print_table(const std::vector<std::string>& headers,
                 const std::vector<std::vector<std::string>>& rows) {
    // Column widths follow the widest value, so that ids of any length line up.
    std::vector<size_t> width(headers.size());
    for (size_t col = 0; col < headers.size(); ++col) {
        width[col] = headers[col].size();
        for (const auto& row : rows) {
            width[col] = std::max(width[col], row.at(col).size());
        }
    }
    auto print_row = [&](const std::vector<std::string>& cells) {
        for (size_t col = 0; col + 1 < cells.size(); ++col) {
            std::printf("%-*s  ", static_cast<int>(width[col]), cells[col].c_str());
        }
        std::printf("%s\n", cells.empty() ? "" : cells.back().c_str());
    };
    print_row(headers);
    for (const auto& row : rows) {
        print_row(row);
    }
}

std::optional<Config> load_cli_config(bool require_database) {
    ConfigResult loaded = load_config(process_environment(), require_database);
    if (!loaded.config) {
        std::fprintf(stderr, "%s: %s\n", kProgram, loaded.error.c_str());
        return std::nullopt;
    }
    setup_logging(log_settings_for(*loaded.config));
    set_log_process_name("cli");
    return loaded.config;
}

std::optional<Session> open_session(const char* command, SchemaNeed need, int& exit_code) {
    std::optional<Config> config = load_cli_config();
    if (!config) {
        exit_code = kExitConfig;
        return std::nullopt;
    }
    std::string error;
    PgConn conn = pg_connect(config->database_url, error);
    if (!conn) {
        print_error(command,
                    "cannot connect to " + mask_conninfo(config->database_url) + ": " + error);
        exit_code = kExitFailure;
        return std::nullopt;
    }
    if (need == SchemaNeed::current) {
        int version = schema_version(conn.get(), error);
        if (!error.empty()) {
            print_error(command, "cannot read the schema version: " + error);
            exit_code = kExitFailure;
            return std::nullopt;
        }
        int latest = latest_migration_version();
        if (version < latest) {
            std::string state = version < 0
                                    ? "has no outbox-worker schema"
                                    : "has schema version " + std::to_string(version) +
                                          ", this outbox-worker needs " + std::to_string(latest);
            print_error(command, "the database " + mask_conninfo(config->database_url) + " " +
                                     state + ": run `outbox-worker migrate`");
            exit_code = kExitFailure;
            return std::nullopt;
        }
    }
    return Session{std::move(*config), std::move(conn)};
}

} // namespace outbox::cli
