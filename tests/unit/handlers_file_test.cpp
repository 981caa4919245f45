// Loading and validating the handlers file: every rule is checked through the exact error it
// produces, so that an operator reading the message finds the field to fix.
#include "worker/handlers_file.h"
#include "worker/subscriber.h"

#include <catch2/catch.hpp>

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

namespace {

constexpr long kDefaultTimeoutMs = 30000;

outbox::EnvLookup fake_environment(std::map<std::string, std::string> variables = {}) {
    return [variables = std::move(variables)](const char* name) -> std::optional<std::string> {
        auto it = variables.find(name);
        if (it == variables.end()) {
            return std::nullopt;
        }
        return it->second;
    };
}

outbox::HandlersFileResult parse(const std::string& json,
                                 const outbox::EnvLookup& env = fake_environment()) {
    return outbox::parse_handlers_json(json, "conf/handlers.json", kDefaultTimeoutMs, env);
}

std::vector<outbox::Subscriber> parse_ok(const std::string& json,
                                         const outbox::EnvLookup& env = fake_environment()) {
    outbox::HandlersFileResult result = parse(json, env);
    INFO(result.error);
    REQUIRE(result.subscribers.has_value());
    CHECK(result.error.empty());
    return std::move(*result.subscribers);
}

std::string parse_error(const std::string& json,
                        const outbox::EnvLookup& env = fake_environment()) {
    outbox::HandlersFileResult result = parse(json, env);
    REQUIRE_FALSE(result.subscribers.has_value());
    REQUIRE_FALSE(result.error.empty());
    return result.error;
}

// The error for one subscriber `body` (the inside of its object) as the only list element, with
// the common prefix checked and removed: what remains is `"field": problem`.
std::string subscriber_error(const std::string& body,
                             const outbox::EnvLookup& env = fake_environment()) {
    const std::string error = parse_error("[{" + body + "}]", env);
    const std::string prefix = "conf/handlers.json: subscriber 0: ";
    REQUIRE(error.starts_with(prefix));
    return error.substr(prefix.size());
}

const std::string kTypes = R"("eventTypes": ["order.*"])";

outbox::Event make_event() {
    outbox::Event event;
    event.id = "ob_1";
    event.event_type = "order.created";
    event.payload_json = "{}";
    return event;
}

} // namespace

TEST_CASE("handlers file: a list of subscribers of every kind", "[handlers_file]") {
    const auto subscribers = parse_ok(R"([
        {"eventTypes": ["order.created", "shop.*"], "exec": {"command": ["/bin/true"]}},
        {"name": "billing", "eventTypes": ["billing.*"], "http": {"url": "https://example.com/hook"}},
        {"eventTypes": ["demo.a"], "log": true},
        {"eventTypes": ["demo.b"], "log": {}},
        {"eventTypes": ["demo.c"], "log": {"level": "debug"}}
    ])");
    REQUIRE(subscribers.size() == 5);
    CHECK(subscribers[0].name == "handlers.json#0 (exec)");
    CHECK(subscribers[0].patterns == std::vector<std::string>{"order.created", "shop.*"});
    CHECK(subscribers[0].matches("shop.updated"));
    CHECK_FALSE(subscribers[0].matches("order.deleted"));
    CHECK_FALSE(subscribers[0].name_given);
    CHECK(subscribers[1].name == "billing");
    CHECK(subscribers[1].name_given);
    CHECK(subscribers[2].name == "handlers.json#2 (log)");
    for (const auto& subscriber : subscribers) {
        CHECK(subscriber.timeout_ms == kDefaultTimeoutMs);
        CHECK(static_cast<bool>(subscriber.handler));
    }
}

TEST_CASE("handlers file: an object with a subscribers list", "[handlers_file]") {
    const auto subscribers =
        parse_ok(R"({"subscribers": [{"eventTypes": ["a"], "log": {"level": "warn"}}]})");
    REQUIRE(subscribers.size() == 1);
    CHECK(subscribers[0].name == "handlers.json#0 (log)");
}

TEST_CASE("handlers file: timeouts resolve subscriber, then kind, then default",
          "[handlers_file]") {
    const auto subscribers = parse_ok(R"([
        {"eventTypes": ["a"], "timeoutMs": 1000, "exec": {"command": ["true"], "timeoutMs": 2000}},
        {"eventTypes": ["b"], "exec": {"command": ["true"], "timeoutMs": 2000}},
        {"eventTypes": ["c"], "http": {"url": "http://localhost/", "timeoutMs": 4000}},
        {"eventTypes": ["d"], "timeoutMs": 3600000, "log": true},
        {"eventTypes": ["e"], "exec": {"command": ["true"]}}
    ])");
    REQUIRE(subscribers.size() == 5);
    CHECK(subscribers[0].timeout_ms == 1000);
    CHECK(subscribers[1].timeout_ms == 2000);
    CHECK(subscribers[2].timeout_ms == 4000);
    CHECK(subscribers[3].timeout_ms == 3600000);
    CHECK(subscribers[4].timeout_ms == kDefaultTimeoutMs);
}

TEST_CASE("handlers file: the handler enforces the resolved timeout", "[handlers_file]") {
    const auto subscribers = parse_ok(R"([
        {"eventTypes": ["a"], "timeoutMs": 200, "exec": {"command": ["sleep", "30"], "timeoutMs": 20000}}
    ])");
    const outbox::Result result = subscribers.at(0).handler(make_event());
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error == "timed out after 200 ms");
}

TEST_CASE("handlers file: exec handlers run with their configured env", "[handlers_file]") {
    const auto subscribers = parse_ok(R"([
        {"eventTypes": ["a"], "exec": {"command": ["sh", "-c", "test \"$MODE\" = strict || exit 9"],
                                       "env": {"MODE": "strict"}}},
        {"eventTypes": ["b"], "exec": {"command": ["sh", "-c", "exit 65"]}}
    ])");
    CHECK(subscribers.at(0).handler(make_event()).outcome == outbox::Outcome::success);
    CHECK(subscribers.at(1).handler(make_event()).outcome == outbox::Outcome::permanent);
}

TEST_CASE("handlers file: log handlers succeed", "[handlers_file]") {
    const auto subscribers = parse_ok(R"([{"eventTypes": ["a"], "log": {"level": "error"}}])");
    CHECK(subscribers.at(0).handler(make_event()).outcome == outbox::Outcome::success);
}

TEST_CASE("handlers file: the error names file, index, name, field and problem",
          "[handlers_file]") {
    const std::string error = parse_error(R"([
        {"eventTypes": ["a"], "log": true},
        {"eventTypes": ["a"], "log": true},
        {"name": "billing", "eventTypes": ["a"], "exec": {"command": []}}
    ])");
    CHECK(
        error ==
        R"(conf/handlers.json: subscriber 2 (billing): "exec.command": must be a non-empty array of strings)");
}

TEST_CASE("handlers file: document-level errors", "[handlers_file]") {
    SECTION("invalid JSON names the line and column") {
        CHECK(parse_error("[\n  {\"eventTypes\": [\"a\"],\n   \"log\": tru }\n]") ==
              "conf/handlers.json: invalid JSON at line 3, column 11 (byte offset 36)");
    }
    SECTION("text after the document") {
        CHECK(parse_error(R"([{"eventTypes": ["a"], "log": true}] x)") ==
              "conf/handlers.json: invalid JSON: unexpected text after the end of the document "
              "at line 1, column 38 (byte offset 37)");
    }
    SECTION("empty text") {
        CHECK(parse_error("").starts_with("conf/handlers.json: invalid JSON"));
    }
    SECTION("neither a list nor an object") {
        CHECK(parse_error("42") == "conf/handlers.json: must be a JSON array of subscribers or an "
                                   "object with \"subscribers\"");
    }
    SECTION("an empty list") {
        CHECK(parse_error("[]") == "conf/handlers.json: no subscribers: the list is empty");
        CHECK(parse_error(R"({"subscribers": []})") ==
              "conf/handlers.json: no subscribers: the list is empty");
    }
    SECTION("an object without subscribers") {
        CHECK(parse_error("{}") == "conf/handlers.json: \"subscribers\": is required");
    }
    SECTION("subscribers is not a list") {
        CHECK(parse_error(R"({"subscribers": {}})") ==
              "conf/handlers.json: \"subscribers\": must be an array of subscribers");
    }
    SECTION("an unknown top-level key") {
        CHECK(parse_error(R"({"subscribers": [], "subscriber": []})") ==
              "conf/handlers.json: \"subscriber\": unknown key; expected one of \"subscribers\"");
    }
    SECTION("a repeated top-level key") {
        CHECK(parse_error(R"({"subscribers": [], "subscribers": []})") ==
              "conf/handlers.json: \"subscribers\": appears more than once");
    }
}

TEST_CASE("handlers file: subscriber-level rules", "[handlers_file]") {
    SECTION("a subscriber must be an object") {
        CHECK(parse_error("[1]") == "conf/handlers.json: subscriber 0: must be an object");
    }
    SECTION("unknown keys are rejected") {
        CHECK(
            subscriber_error(R"("evenTypes": ["a"], "log": true)") ==
            R"("evenTypes": unknown key; expected one of "name", "eventTypes", "timeoutMs", "exec", "http", "log", "kafka", "nats", "amqp", "redis")");
    }
    SECTION("repeated keys are rejected") {
        CHECK(subscriber_error(kTypes + R"(, "log": true, "eventTypes": ["b"])") ==
              R"("eventTypes": appears more than once)");
    }
    SECTION("eventTypes is required") {
        CHECK(subscriber_error(R"("log": true)") ==
              R"("eventTypes": is required (event types or globs such as "shop.*"))");
    }
    SECTION("eventTypes must be a non-empty array of non-empty strings") {
        const std::string expected =
            R"("eventTypes": must be a non-empty array of non-empty strings)";
        CHECK(subscriber_error(R"("eventTypes": [], "log": true)") == expected);
        CHECK(subscriber_error(R"("eventTypes": "order.*", "log": true)") == expected);
        CHECK(subscriber_error(R"("eventTypes": ["a", ""], "log": true)") == expected);
        CHECK(subscriber_error(R"("eventTypes": ["a", 7], "log": true)") == expected);
    }
    SECTION("name must be a non-empty string") {
        CHECK(subscriber_error(kTypes + R"(, "name": "", "log": true)") ==
              R"("name": must be a non-empty string)");
        CHECK(subscriber_error(kTypes + R"(, "name": 3, "log": true)") ==
              R"("name": must be a non-empty string)");
    }
    SECTION("names are unique") {
        CHECK(parse_error(R"([{"name": "x", "eventTypes": ["a"], "log": true},
                              {"name": "x", "eventTypes": ["b"], "log": true}])") ==
              R"(conf/handlers.json: subscriber 1 (x): "name": is already used by subscriber 0)");
    }
    SECTION("timeoutMs must be an integer from 1 to 3600000") {
        const std::string expected =
            R"("timeoutMs": must be an integer from 1 to 3600000 (milliseconds))";
        for (const char* value : {"0", "-5", "1.5", "\"100\"", "3600001", "1e400", "true"}) {
            INFO(value);
            CHECK(subscriber_error(kTypes + R"(, "log": true, "timeoutMs": )" + value) == expected);
        }
    }
    SECTION("a kind is required") {
        CHECK(subscriber_error(kTypes) ==
              R"(needs one of "exec", "http", "log", "kafka", "nats", "amqp" or "redis")");
    }
    SECTION("only one kind is allowed") {
        CHECK(
            subscriber_error(kTypes + R"(, "exec": {"command": ["true"]}, "log": true)") ==
            R"("log": only one of "exec", "http", "log", "kafka", "nats", "amqp" or "redis" may be given (this subscriber already has "exec"))");
    }
    SECTION("a named subscriber is named in its errors") {
        CHECK(
            parse_error(R"([{"name": "audit", "eventTypes": []}])") ==
            R"(conf/handlers.json: subscriber 0 (audit): "eventTypes": must be a non-empty array of non-empty strings)");
    }
}

TEST_CASE("handlers file: subscribers that can share an event type need names", "[handlers_file]") {
    const std::string prefix = "conf/handlers.json: ";
    const std::string why = ": the name is a subscriber's identity in an event's record of the "
                            "subscribers that succeeded for it";
    SECTION("neither named") {
        CHECK(parse_error(R"([{"eventTypes": ["order.*"], "log": true},
                              {"eventTypes": ["invoice.*"], "log": true},
                              {"eventTypes": ["*.created"], "log": true}])") ==
              prefix +
                  R"(subscriber 0 and subscriber 2 can both match event type "order.created" )"
                  R"((by "order.*" and "*.created"), so each needs a "name" (neither has one))" +
                  why);
    }
    SECTION("one named: the other is the one to fix") {
        CHECK(parse_error(R"([{"name": "search", "eventTypes": ["order.paid"], "log": true},
                              {"eventTypes": ["shop.*", "order.*"], "log": true}])") ==
              prefix +
                  R"(subscriber 0 (search) and subscriber 1 can both match event type )"
                  R"("order.paid" (by "order.paid" and "order.*"), so each needs a "name" )"
                  R"((subscriber 1 has none))" +
                  why);
        CHECK(parse_error(R"([{"eventTypes": ["order.paid"], "log": true},
                              {"name": "search", "eventTypes": ["order.paid"], "log": true}])") ==
              prefix +
                  R"(subscriber 0 and subscriber 1 (search) can both match event type )"
                  R"("order.paid" (by "order.paid" and "order.paid"), so each needs a "name" )"
                  R"((subscriber 0 has none))" +
                  why);
    }
    SECTION("two catch-alls") {
        CHECK(parse_error(R"([{"eventTypes": ["*"], "log": true},
                              {"eventTypes": ["**"], "log": true}])") ==
              prefix +
                  R"(subscriber 0 and subscriber 1 can both match every event type )"
                  R"((by "*" and "**"), so each needs a "name" (neither has one))" +
                  why);
    }
    SECTION("the example and the patterns are shown as JSON strings") {
        const std::string error = parse_error(R"([{"eventTypes": ["a\"b*"], "log": true},
                                                  {"eventTypes": ["*\\c"], "log": true}])");
        CHECK_THAT(error, Catch::Contains(R"(event type "a\"b\\c" (by "a\"b*" and "*\\c"))"));
    }
    SECTION("named subscribers may overlap") {
        const auto subscribers =
            parse_ok(R"([{"name": "search", "eventTypes": ["order.*"], "log": true},
                         {"name": "mail", "eventTypes": ["*.paid"], "log": true},
                         {"eventTypes": ["invoice.created"], "log": true}])");
        REQUIRE(subscribers.size() == 2 + 1);
        CHECK(subscribers[2].name == "handlers.json#2 (log)");
    }
    SECTION("unnamed subscribers that cannot share a type are fine") {
        const auto subscribers = parse_ok(R"([{"eventTypes": ["order.*"], "log": true},
                                              {"eventTypes": ["orders.*", "invoice.*"], "log": true},
                                              {"eventTypes": ["refund.created"], "log": true}])");
        CHECK(subscribers.size() == 3);
    }
    SECTION("a subscriber's own patterns may overlap") {
        CHECK(parse_ok(R"([{"eventTypes": ["order.*", "*"], "log": true}])").size() == 1);
    }
    SECTION("an error inside a subscriber comes first") {
        CHECK(
            parse_error(R"([{"eventTypes": ["a"], "log": true},
                              {"eventTypes": ["a"], "log": true},
                              {"eventTypes": ["a"]}])") ==
            R"(conf/handlers.json: subscriber 2: needs one of "exec", "http", "log", "kafka", "nats", "amqp" or "redis")");
    }
}

TEST_CASE("handlers file: names survive the record of an event unchanged", "[handlers_file]") {
    // An event records names as RESULT carried them (at most 1024 bytes, valid UTF-8); a name
    // that would be changed on the way could never be found in the record.
    const std::string longest(1024, 'n');
    CHECK(parse_ok(R"([{"name": ")" + longest + R"(", "eventTypes": ["a"], "log": true}])")
              .at(0)
              .name == longest);
    CHECK(parse_error(R"([{"name": ")" + longest + R"(n", "eventTypes": ["a"], "log": true}])")
              .ends_with(R"("name": must be at most 1024 bytes long)"));
    CHECK(parse_error("[{\"name\": \"caf\xc3\", \"eventTypes\": [\"a\"], \"log\": true}]")
              .ends_with(R"("name": must be valid UTF-8)"));
    CHECK(parse_ok(R"([{"name": "caf\u00e9 \ud83d\ude00", "eventTypes": ["a"], "log": true}])")
              .at(0)
              .name == "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

TEST_CASE("find_unnamed_overlap works on any list of subscribers", "[handlers_file]") {
    // Code subscribers (outbox::Subscription) and the handlers file's together, as the supervisor
    // combines them.
    const auto make = [](std::string name, bool given, std::vector<std::string> patterns) {
        outbox::Subscriber subscriber;
        subscriber.name = std::move(name);
        subscriber.name_given = given;
        subscriber.patterns = std::move(patterns);
        return subscriber;
    };
    std::vector<outbox::Subscriber> subscribers;
    subscribers.push_back(make("code#0", false, {"order.*"}));
    subscribers.push_back(make("search", true, {"invoice.*"}));
    subscribers.push_back(make("mail", true, {"order.paid", "invoice.paid"}));
    CHECK_FALSE(outbox::find_unnamed_overlap({subscribers[1], subscribers[2]}).has_value());
    const auto overlap = outbox::find_unnamed_overlap(subscribers);
    REQUIRE(overlap.has_value());
    CHECK(overlap->first == 0);
    CHECK(overlap->second == 2);
    CHECK(overlap->first_pattern == "order.*");
    CHECK(overlap->second_pattern == "order.paid");
    CHECK(overlap->example == "order.paid");

    subscribers[0].name_given = true;
    CHECK_FALSE(outbox::find_unnamed_overlap(subscribers).has_value());
    subscribers.push_back(make("handlers.json#0 (log)", false, {"*"}));
    const auto catch_all = outbox::find_unnamed_overlap(subscribers);
    REQUIRE(catch_all.has_value());
    CHECK(catch_all->first == 0);
    CHECK(catch_all->second == 3);
    CHECK(catch_all->example == "order.");
    CHECK_FALSE(outbox::find_unnamed_overlap({}).has_value());
}

TEST_CASE("handlers file: exec rules", "[handlers_file]") {
    auto exec_error = [](const std::string& exec) {
        return subscriber_error(kTypes + R"(, "exec": )" + exec);
    };
    CHECK(exec_error(R"(["true"])") == R"("exec": must be an object with "command")");
    CHECK(exec_error(R"({"cmd": ["true"]})") ==
          R"("exec.cmd": unknown key; expected one of "command", "env", "timeoutMs")");
    const std::string bad_command = R"("exec.command": must be a non-empty array of strings)";
    CHECK(exec_error(R"({})") == bad_command);
    CHECK(exec_error(R"({"command": []})") == bad_command);
    CHECK(exec_error(R"({"command": "/bin/true"})") == bad_command);
    CHECK(exec_error(R"({"command": ["/bin/echo", 1]})") == bad_command);
    CHECK(exec_error(R"({"command": ["", "x"]})") ==
          R"("exec.command": the first element (the program) must not be empty)");
    CHECK(exec_error(R"({"command": ["true"], "env": ["A=1"]})") ==
          R"("exec.env": must be an object of strings)");
    CHECK(exec_error(R"({"command": ["true"], "env": {"PORT": 8080}})") ==
          R"("exec.env.PORT": must be a string)");
    CHECK(exec_error(R"({"command": ["true"], "env": {"A=B": "1"}})") ==
          R"("exec.env.A=B": is not a valid variable name (empty or containing "="))");
    CHECK(exec_error(R"({"command": ["true"], "env": {"": "1"}})") ==
          R"("exec.env.": is not a valid variable name (empty or containing "="))");
    CHECK(exec_error(R"({"command": ["true"], "env": {"A": "1", "A": "2"}})") ==
          R"("exec.env.A": appears more than once)");
    CHECK(exec_error(R"({"command": ["true"], "env": {"OUTBOX_EVENT_ID": "x"}})") ==
          R"("exec.env.OUTBOX_EVENT_ID": is set by the worker for each event)");
    CHECK(exec_error(R"({"command": ["true"], "timeoutMs": 0})") ==
          R"("exec.timeoutMs": must be an integer from 1 to 3600000 (milliseconds))");
}

TEST_CASE("handlers file: http rules", "[handlers_file]") {
    auto http_error = [](const std::string& http,
                         const outbox::EnvLookup& env = fake_environment()) {
        return subscriber_error(kTypes + R"(, "http": )" + http, env);
    };
    CHECK(http_error(R"("https://example.com")") == R"("http": must be an object with "url")");
    CHECK(http_error(R"({"url": "https://example.com", "verb": "POST"})") ==
          R"("http.verb": unknown key; expected one of "url", "method", "headers", "timeoutMs")");
    CHECK(http_error(R"({})") == R"("http.url": is required)");
    CHECK(http_error(R"({"url": 5})") == R"("http.url": must be a non-empty string)");
    CHECK(http_error(R"({"url": "ftp://example.com/x"})") ==
          R"("http.url": must start with http:// or https://)");
    CHECK(http_error(R"({"url": "example.com/hook"})") == R"("http.url": is not a valid URL)");
    CHECK(http_error(R"({"url": "http://exa mple.com/"})") == R"("http.url": is not a valid URL)");
    CHECK(http_error(R"({"url": "https://example.com", "method": "GET"})") ==
          R"("http.method": must be one of "POST", "PUT", "PATCH")");
    CHECK(http_error(R"({"url": "https://example.com", "method": "post"})") ==
          R"("http.method": must be one of "POST", "PUT", "PATCH")");
    CHECK(http_error(R"({"url": "https://example.com", "headers": ["X: 1"]})") ==
          R"("http.headers": must be an object of strings)");
    CHECK(http_error(R"({"url": "https://example.com", "headers": {"X-Count": 1}})") ==
          R"("http.headers.X-Count": must be a string)");
    CHECK(http_error(R"({"url": "https://example.com", "headers": {"Bad Name": "1"}})") ==
          R"("http.headers.Bad Name": is not a valid header name)");
    CHECK(http_error(R"({"url": "https://example.com", "headers": {"X-A": "1", "x-a": "2"}})") ==
          R"("http.headers.x-a": appears more than once (header names ignore case))");
    CHECK(http_error(R"({"url": "https://example.com", "headers": {"idempotency-key": "k"}})") ==
          R"("http.headers.idempotency-key": is set by the worker)");
    CHECK(http_error(R"({"url": "https://example.com", "timeoutMs": 3600001})") ==
          R"("http.timeoutMs": must be an integer from 1 to 3600000 (milliseconds))");
}

TEST_CASE("handlers file: ${VAR} in http headers", "[handlers_file]") {
    auto http_error = [](const std::string& headers, const outbox::EnvLookup& env) {
        return subscriber_error(kTypes + R"(, "http": {"url": "https://example.com", "headers": )" +
                                    headers + "}",
                                env);
    };
    SECTION("an unset variable is an error naming it") {
        CHECK(http_error(R"({"Authorization": "Bearer ${API_TOKEN}"})", fake_environment()) ==
              R"("http.headers.Authorization": environment variable API_TOKEN is not set)");
    }
    SECTION("a malformed reference is an error") {
        const std::string expected =
            R"("http.headers.Authorization": has a malformed ${...} reference (expected ${NAME} with letters, digits and underscores))";
        CHECK(http_error(R"({"Authorization": "Bearer ${API_TOKEN"})", fake_environment()) ==
              expected);
        CHECK(http_error(R"({"Authorization": "Bearer ${}"})", fake_environment()) == expected);
        CHECK(http_error(R"({"Authorization": "Bearer ${1X}"})", fake_environment()) == expected);
    }
    SECTION("a value must not smuggle in header lines") {
        CHECK(http_error(R"({"X-Token": "${TOKEN}"})",
                         fake_environment({{"TOKEN", "a\r\nX-Evil: 1"}})) ==
              R"("http.headers.X-Token": must not contain line breaks)");
    }
    SECTION("set variables expand, a lone $ stays") {
        const auto subscribers = parse_ok(
            "[{" + kTypes +
                R"(, "http": {"url": "https://example.com", "headers": {"X-Price": "$5 ${A}${B}"}}}])",
            fake_environment({{"A", "x"}, {"B", ""}}));
        CHECK(subscribers.size() == 1);
    }
}

TEST_CASE("handlers file: the four broker kinds", "[handlers_file][broker]") {
    const auto subscribers = parse_ok(
        R"([{"name": "k", "eventTypes": ["a"], "kafka": {"brokers": "h1:9092,h2:9092",
             "topic": "orders.${eventType}", "properties": {"compression.type": "lz4",
             "sasl.password": "${KAFKA_PASSWORD}"}, "body": "cloudevents", "source": "/shop"}},
            {"name": "n", "eventTypes": ["b"], "timeoutMs": 5000,
             "nats": {"url": "nats://u:${NATS_PASSWORD}@h:4222", "subject": "orders.${tenantId}"}},
            {"name": "a", "eventTypes": ["c"], "amqp": {"url": "amqp://guest:guest@h:5672/",
             "exchange": "", "timeoutMs": 20000}},
            {"name": "r", "eventTypes": ["d"], "redis": {"url": "redis://:pw@h:6379/2",
             "stream": "s:${orderingKey}", "maxLen": 1000, "body": "payload"}}])",
        fake_environment(
            {{"KAFKA_PASSWORD", "kp"}, {"NATS_PASSWORD", "np"}, {"SERVICE_NAME", "svc"}}));
    REQUIRE(subscribers.size() == 4);
    for (const auto& subscriber : subscribers) {
        REQUIRE(subscriber.broker);
        CHECK(subscriber.handler); // a plain Handler too, for callers without a loop
        CHECK(subscriber.broker->make_sink);
    }
    const outbox::BrokerSpec& kafka = *subscribers[0].broker;
    CHECK(kafka.kind == "kafka");
    CHECK(kafka.description == "kafka h1:9092,h2:9092 topic orders.${eventType}");
    CHECK(kafka.message.body == outbox::BodyMode::cloudevents);
    CHECK(kafka.message.source == "/shop");
    CHECK(subscribers[0].timeout_ms == kDefaultTimeoutMs);
    const outbox::BrokerSpec& nats = *subscribers[1].broker;
    // The password never shows in a description, which logs and check-config print.
    CHECK(nats.description == "nats nats://h:4222 subject orders.${tenantId}");
    CHECK(nats.message.source == "svc"); // SERVICE_NAME
    CHECK(subscribers[1].timeout_ms == 5000);
    const outbox::BrokerSpec& amqp = *subscribers[2].broker;
    CHECK(amqp.description == "amqp amqp://h:5672/ exchange \"\" routing key \"\"");
    CHECK(subscribers[2].timeout_ms == 20000);
    const outbox::BrokerSpec& redis = *subscribers[3].broker;
    CHECK(redis.description == "redis redis://h:6379/2 stream s:${orderingKey}");
    CHECK(redis.message.body == outbox::BodyMode::payload);
    CHECK(subscribers[3].name == "r");
}

TEST_CASE("handlers file: broker rules", "[handlers_file][broker]") {
    auto error = [](const std::string& kind, const std::string& body,
                    const outbox::EnvLookup& env = fake_environment()) {
        return subscriber_error(kTypes + ", \"" + kind + "\": " + body, env);
    };
    CHECK(error("kafka", "true") == R"("kafka": must be an object with "brokers" and "topic")");
    CHECK(error("kafka", R"({"topic": "t"})") == R"("kafka.brokers": is required)");
    CHECK(error("kafka", R"({"brokers": "h:9092"})") == R"("kafka.topic": is required)");
    CHECK(error("kafka", R"({"brokers": "h:9092", "topic": ""})") ==
          R"("kafka.topic": must be a non-empty string)");
    CHECK(error("kafka", R"({"brokers": "h:9092", "topic": "a b"})") ==
          R"("kafka.topic": must not contain white space)");
    CHECK(
        error("kafka", R"({"brokers": "h:9092", "topic": "t.${event}"})") ==
        R"("kafka.topic": unknown placeholder "${event}" (known: ${eventType}, ${tenantId}, ${orderingKey}))");
    CHECK(
        error("kafka", R"({"brokers": "h:9092", "topic": "t", "properties": {"acks": "1"}})") ==
        R"("kafka.properties.acks": is set by the worker (SPEC 4: an idempotent producer with acks=all; "brokers" and "timeoutMs" set the rest))");
    CHECK(error("kafka", R"({"brokers": "h:9092", "topic": "t", "properties": {"no.such": "1"}})")
              .starts_with(R"("kafka.properties.no.such": librdkafka refuses it: )"));
    CHECK(error("kafka", R"({"brokers": "h:9092", "topic": "t", "properties": {"linger.ms": "x"}})")
              .starts_with(R"("kafka.properties.linger.ms": librdkafka refuses it: )"));
    CHECK(
        error("kafka", R"({"brokers": "h:9092", "topic": "t", "properties": {"linger.ms": 5}})") ==
        R"("kafka.properties.linger.ms": must be a string)");
    CHECK(error("kafka", R"({"brokers": "${NOPE}", "topic": "t"})") ==
          R"("kafka.brokers": environment variable NOPE is not set)");
    CHECK(error("kafka", R"({"brokers": "h:9092", "topic": "t", "body": "json"})") ==
          R"("kafka.body": must be one of "event", "payload", "cloudevents")");
    CHECK(error("kafka", R"({"brokers": "h:9092", "topic": "t", "source": ""})") ==
          R"("kafka.source": must be a non-empty string)");
    CHECK(error("kafka", R"({"brokers": "h:9092", "topic": "t", "timeoutMs": 0})") ==
          R"("kafka.timeoutMs": must be an integer from 1 to 3600000 (milliseconds))");
    CHECK(
        error("kafka", R"({"brokers": "h:9092", "topic": "t", "key": "k"})") ==
        R"("kafka.key": unknown key; expected one of "brokers", "topic", "properties", "body", "source", "timeoutMs")");

    CHECK(error("nats", R"({"url": "http://h", "subject": "s"})") ==
          R"("nats.url": must start with nats:// or tls://)");
    CHECK(error("nats", R"({"url": "nats://h", "subject": "s.*"})") ==
          R"("nats.subject": must not contain the wildcards "*" or ">")");
    CHECK(error("nats", R"({"url": "nats://h"})") == R"("nats.subject": is required)");

    CHECK(error("amqp", R"({"url": "amqp://h"})") ==
          R"("amqp.exchange": is required ("" publishes to the default exchange))");
    CHECK(error("amqp", R"({"url": "http://h", "exchange": "x"})") ==
          R"("amqp.url": must start with amqp://)");
    CHECK(
        error("amqp", R"({"url": "amqps://h", "exchange": "x"})") ==
        R"("amqp.url": amqps:// (TLS) is not supported: use amqp://, through a TLS tunnel or on a trusted network)");
    CHECK(error("amqp", R"({"url": "amqp://h", "exchange": 1})") ==
          R"("amqp.exchange": must be a string)");
    CHECK(error("amqp", R"({"url": "amqp://h", "exchange": "x", "routingKey": 1})") ==
          R"("amqp.routingKey": must be a string)");

    CHECK(error("redis", R"({"url": "redis://h", "stream": "s", "maxLen": 0})") ==
          R"("redis.maxLen": must be a positive integer)");
    CHECK(error("redis", R"({"url": "redis://h", "stream": "s", "maxLen": 1.5})") ==
          R"("redis.maxLen": must be a positive integer)");
    CHECK(error("redis", R"({"url": "rediss://h", "stream": "s"})") ==
          R"("redis.url": must start with redis://)");
}

TEST_CASE("handlers file: a broker subscriber's sink is made only when it first publishes",
          "[handlers_file][broker]") {
    // Loading builds no connection (the supervisor loads the file and forks); calling the
    // subscriber as a plain handler makes its sink, which fails quickly and retryably here
    // because nothing listens on port 1.
    const auto subscribers = parse_ok(
        "[{" + kTypes +
        R"(, "timeoutMs": 3000, "redis": {"url": "redis://127.0.0.1:1", "stream": "s"}}])");
    REQUIRE(subscribers.size() == 1);
    const outbox::Result result = subscribers[0].handler(make_event());
    CHECK(result.outcome == outbox::Outcome::retry);
    CHECK(result.error.find("redis") != std::string::npos);
    // A destination that cannot be expanded is permanent: the event never gets an ordering key.
    const auto keyed =
        parse_ok("[{" + kTypes +
                 R"(, "redis": {"url": "redis://127.0.0.1:1", "stream": "s:${orderingKey}"}}])");
    const outbox::Result unkeyed = keyed[0].handler(make_event());
    CHECK(unkeyed.outcome == outbox::Outcome::permanent);
    CHECK(unkeyed.error == "redis: \"s:${orderingKey}\" uses ${orderingKey}, and the event has no "
                           "ordering key");
}

TEST_CASE("handlers file: log rules", "[handlers_file]") {
    CHECK(subscriber_error(kTypes + R"(, "log": false)") == R"("log": must be true or an object)");
    CHECK(subscriber_error(kTypes + R"(, "log": "info")") == R"("log": must be true or an object)");
    CHECK(subscriber_error(kTypes + R"(, "log": {"level": "verbose"})") ==
          R"("log.level": must be one of "debug", "info", "warn", "error")");
    CHECK(subscriber_error(kTypes + R"(, "log": {"lvl": "info"})") ==
          R"("log.lvl": unknown key; expected one of "level")");
}

TEST_CASE("handlers file: reading the file", "[handlers_file]") {
    char pattern[] = "/tmp/handlers-file-test-XXXXXX";
    REQUIRE(::mkdtemp(pattern) != nullptr);
    const std::filesystem::path dir = pattern;
    struct Cleanup {
        std::filesystem::path dir;
        ~Cleanup() {
            std::error_code ignored;
            std::filesystem::remove_all(dir, ignored);
        }
    } cleanup{dir};

    SECTION("a valid file; default names use its basename") {
        const std::string path = (dir / "prod-handlers.json").string();
        std::ofstream(path) << R"({"subscribers": [{"eventTypes": ["a"], "log": true}]})";
        outbox::HandlersFileResult result = outbox::load_handlers_file(path, 1234);
        REQUIRE(result.subscribers.has_value());
        CHECK(result.subscribers->at(0).name == "prod-handlers.json#0 (log)");
        CHECK(result.subscribers->at(0).timeout_ms == 1234);
    }
    SECTION("a missing file") {
        const std::string path = (dir / "missing.json").string();
        outbox::HandlersFileResult result = outbox::load_handlers_file(path, 1000);
        CHECK_FALSE(result.subscribers.has_value());
        CHECK(result.error == path + ": cannot open: No such file or directory");
    }
    SECTION("a directory") {
        outbox::HandlersFileResult result = outbox::load_handlers_file(dir.string(), 1000);
        CHECK_FALSE(result.subscribers.has_value());
        CHECK(result.error == dir.string() + ": cannot read: is a directory");
    }
    SECTION("an empty file") {
        const std::string path = (dir / "empty.json").string();
        std::ofstream{path};
        outbox::HandlersFileResult result = outbox::load_handlers_file(path, 1000);
        CHECK_FALSE(result.subscribers.has_value());
        CHECK(result.error.starts_with(path + ": invalid JSON"));
    }
    SECTION("errors start with the path") {
        const std::string path = (dir / "bad.json").string();
        std::ofstream(path) << R"([{"eventTypes": ["a"]}])";
        outbox::HandlersFileResult result = outbox::load_handlers_file(path, 1000);
        CHECK(
            result.error ==
            path +
                R"(: subscriber 0: needs one of "exec", "http", "log", "kafka", "nats", "amqp" or "redis")");
    }
}
