// Configuration from the environment (SPEC 3): every variable's default, its valid bounds, and its
// bad values, each rejected with one line that names the variable, repeats the value and says what
// is allowed. And the password of DATABASE_URL never shows, neither masked output nor errors.
#include "common/config.h"
#include "common/pg.h"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

using outbox::Config;
using outbox::ConfigResult;

constexpr const char* kUrl = "postgresql://app:s3cret-pw@db.internal:5432/calibr";

ConfigResult load(std::map<std::string, std::string> vars, bool require_database = true) {
    if (require_database && vars.find("DATABASE_URL") == vars.end()) {
        vars["DATABASE_URL"] = kUrl;
    }
    auto env = [vars = std::move(vars)](const char* name) -> std::optional<std::string> {
        auto it = vars.find(name);
        if (it == vars.end()) {
            return std::nullopt;
        }
        return it->second;
    };
    return outbox::load_config(env, require_database);
}

Config load_ok(std::map<std::string, std::string> vars) {
    ConfigResult result = load(std::move(vars));
    INFO(result.error);
    REQUIRE(result.config.has_value());
    CHECK(result.error.empty());
    return *result.config;
}

// The error for one bad value: REQUIREs a failure and checks its shape.
std::string load_error(const std::string& name, const std::string& value) {
    ConfigResult result = load({{name, value}});
    INFO(name << "=\"" << value << "\"");
    REQUIRE_FALSE(result.config.has_value());
    CHECK(result.error.find('\n') == std::string::npos);
    bool printable = std::none_of(value.begin(), value.end(),
                                  [](unsigned char c) { return c < 0x20 || c == 0x7f; });
    // A value with control characters may be shown escaped; any other is shown as it is.
    CHECK(result.error.rfind(name + "=\"" + (printable ? value + "\"" : std::string()), 0) == 0);
    CHECK(result.error.find("allowed: ") != std::string::npos);
    return result.error;
}

struct IntegerVariable {
    const char* name;
    long long min;
    long long max;
    long long default_value;
    std::function<long long(const Config&)> get;
    // Values inside [min, max] that are still refused, with the range the error then quotes.
    std::vector<long long> refused_inside = {};
    const char* refused_allowed = nullptr;
};

std::vector<IntegerVariable> integer_variables() {
    unsigned cpus = std::thread::hardware_concurrency();
    long long default_workers = cpus == 0 ? 1 : std::min(cpus, 256u);
    return {
        {"OUTBOX_POLL_INTERVAL_MS", 10, 3600000, 5000,
         [](const Config& c) {
             return c.poll_interval_ms;
         }},
        {"OUTBOX_MAX_RETRIES", 1, 1000, 5,
         [](const Config& c) {
             return c.max_retries;
         }},
        {"OUTBOX_INITIAL_DELAY_MS", 0, 86400000, 1000,
         [](const Config& c) {
             return c.initial_delay_ms;
         }},
        {"OUTBOX_MAX_DELAY_MS", 1, 604800000, 60000,
         [](const Config& c) {
             return c.max_delay_ms;
         }},
        {"OUTBOX_WORKERS", 1, 256, default_workers,
         [](const Config& c) {
             return c.workers;
         }},
        {"OUTBOX_BATCH_SIZE", 1, 10000, 100,
         [](const Config& c) {
             return c.batch_size;
         }},
        {"OUTBOX_LEASE_MS", 1000, 86400000, 30000,
         [](const Config& c) {
             return c.lease_ms;
         }},
        {"OUTBOX_HANDLER_TIMEOUT_MS", 1, 86400000, 30000,
         [](const Config& c) {
             return c.handler_timeout_ms;
         }},
        {"OUTBOX_SHUTDOWN_TIMEOUT_MS", 0, 3600000, 25000,
         [](const Config& c) {
             return c.shutdown_timeout_ms;
         }},
        {"OUTBOX_WORKER_MAX_EVENTS", 0, 1000000000, 0,
         [](const Config& c) {
             return c.worker_max_events;
         }},
        {"OUTBOX_WORKER_MEMORY_MB",
         0,
         1048576,
         0,
         [](const Config& c) { return c.worker_memory_mb; },
         {1, 15},
         "0 (no limit) or 16 to 1048576"},
        {"OUTBOX_RETENTION_HOURS", 0, 876000, 168,
         [](const Config& c) {
             return c.retention_hours;
         }},
        {"OUTBOX_HTTP_PORT", 0, 65535, 3001,
         [](const Config& c) {
             return c.http_port;
         }},
        {"OUTBOX_DLQ_ALERT_THRESHOLD", 0, 1000000000, 100,
         [](const Config& c) {
             return c.dlq_alert_threshold;
         }},
        {"OUTBOX_METRICS_LOG_INTERVAL_MS",
         0,
         86400000,
         60000,
         [](const Config& c) { return c.metrics_log_interval_ms; },
         {1, 999},
         "0 (off) or 1000 to 86400000"},
    };
}

// OUTBOX_MAX_DELAY_MS must not be below OUTBOX_INITIAL_DELAY_MS; single-variable checks keep the
// other one where the bound under test is valid.
std::map<std::string, std::string> with_companions(const std::string& name,
                                                   const std::string& value) {
    std::map<std::string, std::string> vars{{name, value}};
    if (name == "OUTBOX_INITIAL_DELAY_MS") {
        vars["OUTBOX_MAX_DELAY_MS"] = "604800000";
    }
    if (name == "OUTBOX_MAX_DELAY_MS") {
        vars["OUTBOX_INITIAL_DELAY_MS"] = "0";
    }
    return vars;
}

} // namespace

TEST_CASE("config: every default of SPEC 3 applies when nothing is set", "[config]") {
    Config c = load_ok({});
    CHECK(c.database_url == kUrl);
    for (const auto& v : integer_variables()) {
        INFO(v.name);
        CHECK(v.get(c) == v.default_value);
    }
    CHECK(c.backoff_multiplier == 2.0);
    CHECK(c.backoff_jitter == 0.1);
    CHECK(c.handlers_path.empty());
    CHECK(c.http_host == "127.0.0.1");
    CHECK_FALSE(c.instance_id.empty()); // host name and pid
    CHECK(c.instance_id.find(std::to_string(getpid())) != std::string::npos);
    CHECK(c.log_level == outbox::LogLevel::info);
    CHECK(c.log_format == outbox::LogFormat::text);
    CHECK_FALSE(c.log_format_explicit);
    CHECK(c.service_name == "calibr-outbox-worker");
}

TEST_CASE("config: an empty variable means its default", "[config]") {
    for (const auto& v : integer_variables()) {
        INFO(v.name);
        CHECK(v.get(load_ok({{v.name, ""}})) == v.default_value);
    }
    CHECK(load_ok({{"LOG_LEVEL", ""}}).log_level == outbox::LogLevel::info);
    CHECK(load_ok({{"OUTBOX_BACKOFF_MULTIPLIER", ""}}).backoff_multiplier == 2.0);
}

TEST_CASE("config: integer variables accept their bounds and refuse everything else", "[config]") {
    for (const auto& v : integer_variables()) {
        const std::string name = v.name;
        const std::string range = "from " + std::to_string(v.min) + " to " + std::to_string(v.max);
        SECTION(name) {
            // The bounds themselves are valid.
            for (long long ok : {v.min, v.max}) {
                INFO(name << "=" << ok);
                ConfigResult r = load(with_companions(name, std::to_string(ok)));
                INFO(r.error);
                REQUIRE(r.config.has_value());
                CHECK(v.get(*r.config) == ok);
            }
            // Not a number, trailing garbage, a decimal, spaces, a sign: "not an integer" with
            // the allowed range.
            for (const char* bad :
                 {"abc", "12abc", "5ms", "1.5", " 5", "5 ", "+5", "0x10", "1e3"}) {
                std::string error = load_error(name, bad);
                CHECK(error.find("not an integer") != std::string::npos);
                CHECK(error.find(range) != std::string::npos);
            }
            // Negative, below and above the range, beyond 64 bits: "out of range".
            std::vector<std::string> outside = {std::to_string(v.max + 1), "-1",
                                                "99999999999999999999999"};
            if (v.min > 0) {
                outside.push_back(std::to_string(v.min - 1));
            }
            for (const auto& bad : outside) {
                std::string error = load_error(name, bad);
                CHECK(error.find("out of range") != std::string::npos);
                CHECK(error.find(range) != std::string::npos);
            }
            for (long long bad : v.refused_inside) {
                std::string error = load_error(name, std::to_string(bad));
                CHECK(error.find(v.refused_allowed) != std::string::npos);
            }
        }
    }
}

TEST_CASE("config: OUTBOX_MAX_DELAY_MS below OUTBOX_INITIAL_DELAY_MS is refused", "[config]") {
    ConfigResult r = load({{"OUTBOX_INITIAL_DELAY_MS", "5000"}, {"OUTBOX_MAX_DELAY_MS", "4000"}});
    REQUIRE_FALSE(r.config);
    CHECK(r.error.rfind("OUTBOX_MAX_DELAY_MS=\"4000\"", 0) == 0);
    CHECK(r.error.find("OUTBOX_INITIAL_DELAY_MS") != std::string::npos);
    CHECK(r.error.find("allowed: ") != std::string::npos);
    CHECK(load_ok({{"OUTBOX_INITIAL_DELAY_MS", "5000"}, {"OUTBOX_MAX_DELAY_MS", "5000"}})
              .max_delay_ms == 5000);
}

TEST_CASE("config: decimal variables", "[config]") {
    SECTION("OUTBOX_BACKOFF_MULTIPLIER: a decimal from 1 to 100") {
        CHECK(load_ok({{"OUTBOX_BACKOFF_MULTIPLIER", "1"}}).backoff_multiplier == 1.0);
        CHECK(load_ok({{"OUTBOX_BACKOFF_MULTIPLIER", "1.5"}}).backoff_multiplier == 1.5);
        CHECK(load_ok({{"OUTBOX_BACKOFF_MULTIPLIER", "100"}}).backoff_multiplier == 100.0);
        for (const char* bad : {"abc", "2x", "1,5", " 2", "nan", "inf"}) {
            std::string error = load_error("OUTBOX_BACKOFF_MULTIPLIER", bad);
            CHECK(error.find("a decimal from 1 to 100") != std::string::npos);
        }
        for (const char* bad : {"0.99", "0", "-2", "100.5", "1000"}) {
            std::string error = load_error("OUTBOX_BACKOFF_MULTIPLIER", bad);
            CHECK(error.find("out of range") != std::string::npos);
            CHECK(error.find("a decimal from 1 to 100") != std::string::npos);
        }
    }
    SECTION("OUTBOX_BACKOFF_JITTER: a decimal from 0 to 1") {
        CHECK(load_ok({{"OUTBOX_BACKOFF_JITTER", "0"}}).backoff_jitter == 0.0);
        CHECK(load_ok({{"OUTBOX_BACKOFF_JITTER", "0.25"}}).backoff_jitter == 0.25);
        CHECK(load_ok({{"OUTBOX_BACKOFF_JITTER", "1"}}).backoff_jitter == 1.0);
        for (const char* bad : {"abc", "0.1.2", "10%"}) {
            CHECK(load_error("OUTBOX_BACKOFF_JITTER", bad).find("a decimal from 0 to 1") !=
                  std::string::npos);
        }
        for (const char* bad : {"-0.1", "1.01", "2"}) {
            std::string error = load_error("OUTBOX_BACKOFF_JITTER", bad);
            CHECK(error.find("out of range") != std::string::npos);
            CHECK(error.find("a decimal from 0 to 1") != std::string::npos);
        }
    }
}

TEST_CASE("config: words", "[config]") {
    CHECK(load_ok({{"LOG_LEVEL", "debug"}}).log_level == outbox::LogLevel::debug);
    CHECK(load_ok({{"LOG_LEVEL", "warn"}}).log_level == outbox::LogLevel::warn);
    CHECK(load_ok({{"LOG_LEVEL", "error"}}).log_level == outbox::LogLevel::error);
    for (const char* bad : {"verbose", "INFO", "warning", "info "}) {
        std::string error = load_error("LOG_LEVEL", bad);
        CHECK(error.find("unknown value") != std::string::npos);
        CHECK(error.find("debug, info, warn, error") != std::string::npos);
    }
    Config json = load_ok({{"LOG_FORMAT", "json"}});
    CHECK(json.log_format == outbox::LogFormat::json);
    CHECK(json.log_format_explicit);
    CHECK(load_ok({{"LOG_FORMAT", "text"}}).log_format_explicit);
    for (const char* bad : {"yaml", "JSON", "logfmt"}) {
        CHECK(load_error("LOG_FORMAT", bad).find("text, json") != std::string::npos);
    }
    CHECK(load_ok({}).on_complete == outbox::OnComplete::keep);
    CHECK(load_ok({{"OUTBOX_ON_COMPLETE", "delete"}}).on_complete == outbox::OnComplete::remove);
    CHECK(load_ok({{"OUTBOX_ON_COMPLETE", "keep"}}).on_complete == outbox::OnComplete::keep);
    for (const char* bad : {"drop", "DELETE", "remove", "true"}) {
        CHECK(load_error("OUTBOX_ON_COMPLETE", bad).find("keep, delete") != std::string::npos);
    }
    CHECK(load_ok({}).synchronous_commit);
    CHECK_FALSE(load_ok({{"OUTBOX_SYNCHRONOUS_COMMIT", "off"}}).synchronous_commit);
    CHECK(load_ok({{"OUTBOX_SYNCHRONOUS_COMMIT", "on"}}).synchronous_commit);
    for (const char* bad : {"false", "0", "local", "OFF"}) {
        CHECK(load_error("OUTBOX_SYNCHRONOUS_COMMIT", bad).find("on, off") != std::string::npos);
    }
    using outbox::OrderingOnDeadLetter;
    CHECK(load_ok({}).ordering_on_dead_letter == OrderingOnDeadLetter::block);
    CHECK(load_ok({{"OUTBOX_ORDERING_ON_DEAD_LETTER", "skip"}}).ordering_on_dead_letter ==
          OrderingOnDeadLetter::skip);
    CHECK(load_ok({{"OUTBOX_ORDERING_ON_DEAD_LETTER", "block"}}).ordering_on_dead_letter ==
          OrderingOnDeadLetter::block);
    // Empty is unset, as for every variable: the default.
    CHECK(load_ok({{"OUTBOX_ORDERING_ON_DEAD_LETTER", ""}}).ordering_on_dead_letter ==
          OrderingOnDeadLetter::block);
    CHECK(std::string(outbox::to_string(OrderingOnDeadLetter::skip)) == "skip");
    CHECK(std::string(outbox::to_string(OrderingOnDeadLetter::block)) == "block");
    for (const char* bad : {"SKIP", "blocked", "continue", "true", " skip"}) {
        std::string error = load_error("OUTBOX_ORDERING_ON_DEAD_LETTER", bad);
        CHECK(error.find("unknown value") != std::string::npos);
        CHECK(error.find("allowed: block, skip") != std::string::npos);
    }
}

TEST_CASE("config: text variables", "[config]") {
    SECTION("OUTBOX_HANDLERS") {
        CHECK(load_ok({{"OUTBOX_HANDLERS", "/etc/outbox/handlers.json"}}).handlers_path ==
              "/etc/outbox/handlers.json");
        CHECK(load_error("OUTBOX_HANDLERS", "/etc/x\ty").find("control character") !=
              std::string::npos);
    }
    SECTION("OUTBOX_HTTP_HOST") {
        for (const char* ok : {"0.0.0.0", "::", "::1", "localhost", "worker-1.internal"}) {
            CHECK(load_ok({{"OUTBOX_HTTP_HOST", ok}}).http_host == ok);
        }
        for (const char* bad : {"not a host", "host/path", "300.1.1.1:80"}) {
            CHECK(load_error("OUTBOX_HTTP_HOST", bad).find("IPv4 or IPv6 address or a host name") !=
                  std::string::npos);
        }
    }
    SECTION("OUTBOX_INSTANCE_ID") {
        CHECK(load_ok({{"OUTBOX_INSTANCE_ID", "worker-a"}}).instance_id == "worker-a");
        ConfigResult r = load({{"OUTBOX_INSTANCE_ID", std::string(201, 'x')}});
        REQUIRE_FALSE(r.config);
        CHECK(r.error.rfind("OUTBOX_INSTANCE_ID=", 0) == 0);
        CHECK(r.error.find("at most 200 characters") != std::string::npos);
        CHECK(load_error("OUTBOX_INSTANCE_ID", "a\x01b").find("control character") !=
              std::string::npos);
        // The error stays one line even when the value does not.
        CHECK(load_error("OUTBOX_INSTANCE_ID", "a\nb").find("control character") !=
              std::string::npos);
    }
    SECTION("SERVICE_NAME") {
        CHECK(load_ok({{"SERVICE_NAME", "billing-outbox"}}).service_name == "billing-outbox");
        ConfigResult r = load({{"SERVICE_NAME", std::string(101, 's')}});
        REQUIRE_FALSE(r.config);
        CHECK(r.error.rfind("SERVICE_NAME=", 0) == 0);
        CHECK(r.error.find("at most 100 characters") != std::string::npos);
    }
}

TEST_CASE("config: DATABASE_URL is required, parsed by libpq, and never shown with its password",
          "[config]") {
    SECTION("missing") {
        ConfigResult r = load({{"DATABASE_URL", ""}});
        REQUIRE_FALSE(r.config);
        CHECK(r.error.rfind("DATABASE_URL=", 0) == 0);
        CHECK(r.error.find("required") != std::string::npos);
        CHECK(r.error.find("allowed: ") != std::string::npos);
    }
    SECTION("not needed by commands that do not connect") {
        ConfigResult r = load({}, false);
        REQUIRE(r.config);
        CHECK(r.config->database_url.empty());
    }
    SECTION("any libpq form is accepted") {
        for (const char* ok : {kUrl, "postgres://localhost/db", "host=/run/postgresql dbname=x",
                               "host=db port=5433 user=app password='a b' dbname=calibr"}) {
            CHECK(load_ok({{"DATABASE_URL", ok}}).database_url == ok);
        }
    }
    SECTION("a bad one names the variable and hides the password") {
        for (const char* bad :
             {"postgresql://app:s3cret-pw@db/calibr?bogus=1", "host=db password=s3cret-pw bogus=1",
              "host=db password='s3cret-pw", "postgresql://app:s3cret-pw@[::1/calibr",
              "postgresql://app:s3cret-pw@[::1]x/calibr",
              "postgresql://app:s3cret-pw@db/calibr?host=%00",
              "postgresql://app:s3cret-pw%zz@db/calibr"}) {
            ConfigResult r = load({{"DATABASE_URL", bad}});
            INFO(bad);
            INFO(r.error);
            REQUIRE_FALSE(r.config);
            CHECK(r.error.rfind("DATABASE_URL=\"", 0) == 0);
            CHECK(r.error.find('\n') == std::string::npos);
            CHECK(r.error.find("allowed: a libpq connection string or URI") != std::string::npos);
            CHECK(r.error.find("s3cret") == std::string::npos);
        }
    }
}

TEST_CASE("config: the first bad variable is the one reported", "[config]") {
    ConfigResult r = load({{"OUTBOX_MAX_RETRIES", "0"}, {"LOG_LEVEL", "loud"}});
    REQUIRE_FALSE(r.config);
    CHECK(r.error.rfind("OUTBOX_MAX_RETRIES=\"0\"", 0) == 0);
}

TEST_CASE("mask_conninfo hides the password in every form libpq accepts", "[config][pg]") {
    using outbox::mask_conninfo;
    CHECK(mask_conninfo("postgresql://app:s3cret@db:5432/calibr") ==
          "postgresql://app:****@db:5432/calibr");
    CHECK(mask_conninfo("postgres://app:s3cret@db/calibr?sslmode=require") ==
          "postgres://app:****@db/calibr?sslmode=require");
    CHECK(mask_conninfo("postgresql://app@db/calibr?password=s3cret&sslmode=require") ==
          "postgresql://app@db/calibr?password=****&sslmode=require");
    CHECK(mask_conninfo("postgresql://db/calibr?sslmode=disable&password=s3cret") ==
          "postgresql://db/calibr?sslmode=disable&password=****");
    CHECK(mask_conninfo("host=db user=app password=s3cret dbname=calibr") ==
          "host=db user=app password=**** dbname=calibr");
    CHECK(mask_conninfo("host=db password = s3cret dbname=calibr").find("s3cret") ==
          std::string::npos);
    CHECK(mask_conninfo("host=db password='s3 cret' dbname=calibr") ==
          "host=db password=**** dbname=calibr");
    // Nothing to hide: unchanged.
    CHECK(mask_conninfo("postgresql://app@db/calibr") == "postgresql://app@db/calibr");
    CHECK(mask_conninfo("host=db dbname=calibr") == "host=db dbname=calibr");
    // A password with characters that have a meaning elsewhere in a URI.
    CHECK(mask_conninfo("postgresql://app:p%40ss%2Fw0rd@db/calibr") ==
          "postgresql://app:****@db/calibr");
}
