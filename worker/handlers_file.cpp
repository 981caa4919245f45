#include "worker/handlers_file.h"

#include "common/fd.h"

#include "common/json.h"
#include "common/protocol.h"
#include "worker/exec_handler.h"
#include "worker/http_handler.h"
#include "worker/log_handler.h"
#include "worker/sink.h"

#include <librdkafka/rdkafka.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <map>
#include <set>

namespace outbox {

namespace {

// A validation failure inside one subscriber: the JSON field ("exec.command"; empty when the
// problem is the subscriber as a whole) and what is wrong with it.
struct FieldError {
    std::string field;
    std::string problem;
};
using Check = std::optional<FieldError>;

FieldError field_error(std::string field, std::string problem) {
    return {std::move(field), std::move(problem)};
}

std::string join_quoted(std::initializer_list<const char*> names) {
    std::string out;
    for (const char* name : names) {
        if (!out.empty()) {
            out += ", ";
        }
        out += '"';
        out += name;
        out += '"';
    }
    return out;
}

// Rejects keys outside `allowed` and keys that appear twice (cJSON keeps both and lookups would
// silently use the first), so that a typo in the file is an error rather than a default.
Check check_keys(const cJSON* object, const std::string& prefix,
                 std::initializer_list<const char*> allowed) {
    std::set<std::string> seen;
    for (const cJSON* item = object->child; item != nullptr; item = item->next) {
        const std::string key = item->string != nullptr ? item->string : "";
        if (std::none_of(allowed.begin(), allowed.end(),
                         [&](const char* name) { return key == name; })) {
            return field_error(prefix + key,
                               "unknown key; expected one of " + join_quoted(allowed));
        }
        if (!seen.insert(key).second) {
            return field_error(prefix + key, "appears more than once");
        }
    }
    return std::nullopt;
}

const cJSON* member(const cJSON* object, const char* key) {
    return cJSON_GetObjectItemCaseSensitive(object, key);
}

bool is_nonempty_string(const cJSON* item) {
    return cJSON_IsString(item) && item->valuestring != nullptr && item->valuestring[0] != '\0';
}

Check read_timeout(const cJSON* item, const std::string& field, std::optional<long>& out) {
    if (item == nullptr) {
        return std::nullopt;
    }
    const double value = cJSON_IsNumber(item) ? item->valuedouble : 0;
    if (!cJSON_IsNumber(item) || !std::isfinite(value) || value != std::floor(value) || value < 1 ||
        value > static_cast<double>(kMaxHandlerTimeoutMs)) {
        return field_error(field, "must be an integer from 1 to " +
                                      std::to_string(kMaxHandlerTimeoutMs) + " (milliseconds)");
    }
    out = static_cast<long>(value);
    return std::nullopt;
}

Check read_event_types(const cJSON* item, std::vector<std::string>& out) {
    if (item == nullptr) {
        return field_error("eventTypes", "is required (event types or globs such as \"shop.*\")");
    }
    if (!cJSON_IsArray(item) || item->child == nullptr) {
        return field_error("eventTypes", "must be a non-empty array of non-empty strings");
    }
    for (const cJSON* element = item->child; element != nullptr; element = element->next) {
        if (!is_nonempty_string(element)) {
            return field_error("eventTypes", "must be a non-empty array of non-empty strings");
        }
        out.emplace_back(element->valuestring);
    }
    return std::nullopt;
}

bool is_environment_name(std::string_view name) {
    return !name.empty() && name.find('=') == std::string_view::npos;
}

Check read_exec(const cJSON* exec, ExecHandlerOptions& options, std::optional<long>& timeout) {
    if (!cJSON_IsObject(exec)) {
        return field_error("exec", "must be an object with \"command\"");
    }
    if (auto problem = check_keys(exec, "exec.", {"command", "env", "timeoutMs"})) {
        return problem;
    }
    const cJSON* command = member(exec, "command");
    if (!cJSON_IsArray(command) || command->child == nullptr) {
        return field_error("exec.command", "must be a non-empty array of strings");
    }
    for (const cJSON* element = command->child; element != nullptr; element = element->next) {
        if (!cJSON_IsString(element) || element->valuestring == nullptr) {
            return field_error("exec.command", "must be a non-empty array of strings");
        }
        options.command.emplace_back(element->valuestring);
    }
    if (options.command.front().empty()) {
        return field_error("exec.command", "the first element (the program) must not be empty");
    }
    if (const cJSON* env = member(exec, "env")) {
        if (!cJSON_IsObject(env)) {
            return field_error("exec.env", "must be an object of strings");
        }
        std::set<std::string> seen;
        for (const cJSON* item = env->child; item != nullptr; item = item->next) {
            const std::string name = item->string != nullptr ? item->string : "";
            const std::string field = "exec.env." + name;
            if (!is_environment_name(name)) {
                return field_error(field,
                                   "is not a valid variable name (empty or containing \"=\")");
            }
            if (!seen.insert(name).second) {
                return field_error(field, "appears more than once");
            }
            if (name == "OUTBOX_EVENT_ID" || name == "OUTBOX_EVENT_TYPE" ||
                name == "OUTBOX_ATTEMPT" || name == "TRACEPARENT" || name == "TRACESTATE") {
                return field_error(field, "is set by the worker for each event");
            }
            if (!cJSON_IsString(item) || item->valuestring == nullptr) {
                return field_error(field, "must be a string");
            }
            options.env.emplace_back(name, item->valuestring);
        }
    }
    return read_timeout(member(exec, "timeoutMs"), "exec.timeoutMs", timeout);
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

// RFC 9110 token characters.
bool is_header_name(std::string_view name) {
    static constexpr std::string_view kSymbols = "!#$%&'*+-.^_`|~";
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) ||
               kSymbols.find(c) != std::string_view::npos;
    });
}

bool is_variable_name(std::string_view name) {
    if (name.empty() || std::isdigit(static_cast<unsigned char>(name.front()))) {
        return false;
    }
    return std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    });
}

// Replaces every ${NAME} with the variable's value. Only "${" is special; a lone '$' is kept.
Check expand_variables(std::string_view value, const std::string& field, const EnvLookup& env,
                       std::string& out) {
    std::size_t position = 0;
    while (position < value.size()) {
        const std::size_t start = value.find("${", position);
        if (start == std::string_view::npos) {
            out.append(value.substr(position));
            break;
        }
        out.append(value.substr(position, start - position));
        const std::size_t end = value.find('}', start + 2);
        const std::string_view name = end == std::string_view::npos
                                          ? std::string_view()
                                          : value.substr(start + 2, end - start - 2);
        if (!is_variable_name(name)) {
            return field_error(field, "has a malformed ${...} reference (expected ${NAME} with "
                                      "letters, digits and underscores)");
        }
        std::optional<std::string> variable = env(std::string(name).c_str());
        if (!variable) {
            return field_error(field, "environment variable " + std::string(name) + " is not set");
        }
        out.append(*variable);
        position = end + 1;
    }
    return std::nullopt;
}

Check read_http(const cJSON* http, const EnvLookup& env, HttpHandlerOptions& options,
                std::optional<long>& timeout) {
    if (!cJSON_IsObject(http)) {
        return field_error("http", "must be an object with \"url\"");
    }
    if (auto problem = check_keys(http, "http.", {"url", "method", "headers", "timeoutMs"})) {
        return problem;
    }
    const cJSON* url = member(http, "url");
    if (url == nullptr) {
        return field_error("http.url", "is required");
    }
    if (!is_nonempty_string(url)) {
        return field_error("http.url", "must be a non-empty string");
    }
    options.url = url->valuestring;
    if (auto problem = http_url_problem(options.url)) {
        return field_error("http.url", *problem);
    }
    if (const cJSON* method = member(http, "method")) {
        const std::string value = cJSON_IsString(method) && method->valuestring != nullptr
                                      ? method->valuestring
                                      : std::string();
        if (value != "POST" && value != "PUT" && value != "PATCH") {
            return field_error("http.method", "must be one of \"POST\", \"PUT\", \"PATCH\"");
        }
        options.method = value;
    }
    if (const cJSON* headers = member(http, "headers")) {
        if (!cJSON_IsObject(headers)) {
            return field_error("http.headers", "must be an object of strings");
        }
        for (const cJSON* item = headers->child; item != nullptr; item = item->next) {
            const std::string name = item->string != nullptr ? item->string : "";
            const std::string field = "http.headers." + name;
            if (!is_header_name(name)) {
                return field_error(field, "is not a valid header name");
            }
            for (const auto& [earlier, ignored] : options.headers) {
                if (iequals(earlier, name)) {
                    return field_error(field, "appears more than once (header names ignore case)");
                }
            }
            for (const char* reserved :
                 {"Idempotency-Key", "X-Outbox-Event-Type", "X-Outbox-Attempt", "Content-Length",
                  "Transfer-Encoding", "traceparent", "tracestate"}) {
                if (iequals(name, reserved)) {
                    return field_error(field, "is set by the worker");
                }
            }
            if (!cJSON_IsString(item) || item->valuestring == nullptr) {
                return field_error(field, "must be a string");
            }
            std::string value;
            if (auto problem = expand_variables(item->valuestring, field, env, value)) {
                return problem;
            }
            // Checked after expansion: a variable's value must not be able to add header lines.
            if (value.find_first_of("\r\n") != std::string::npos) {
                return field_error(field, "must not contain line breaks");
            }
            options.headers.emplace_back(name, std::move(value));
        }
    }
    return read_timeout(member(http, "timeoutMs"), "http.timeoutMs", timeout);
}

constexpr std::string_view kKinds = R"("exec", "http", "log", "kafka", "nats", "amqp" or "redis")";

// A broker subscriber called as a plain Handler (by dispatch_event, or an application's own
// code): one publication at a time on a sink of its own, made on the first call, so in the
// process that calls it. The handler process does not use it: it publishes through
// Subscriber::broker with many publications in flight.
Handler make_broker_handler(std::shared_ptr<const BrokerSpec> spec) {
    auto sink = std::make_shared<std::unique_ptr<Sink>>();
    return [spec = std::move(spec), sink](const Event& event) -> Result {
        std::string error;
        std::optional<BrokerMessage> message = build_broker_message(spec->message, event, error);
        if (!message) {
            return Result::permanent(spec->kind + ": " + error);
        }
        if (!*sink) {
            *sink = spec->make_sink();
        }
        return publish_and_wait(**sink, *message);
    };
}

// What every broker kind shares: "body", "source", "timeoutMs", and its destination field.
struct BrokerCommon {
    MessageOptions message;
    std::optional<long> timeout;
};

// A required non-empty string field of a broker kind, with ${ENV_VAR} expanded (URLs and
// properties carry credentials, which belong in the environment rather than in the file).
Check read_expanded_string(const cJSON* object, const std::string& kind, const char* key,
                           const EnvLookup& env, std::string& out, bool required = true) {
    const std::string field = kind + "." + key;
    const cJSON* item = member(object, key);
    if (item == nullptr) {
        return required ? Check(field_error(field, "is required")) : std::nullopt;
    }
    if (!is_nonempty_string(item)) {
        return field_error(field, "must be a non-empty string");
    }
    return expand_variables(item->valuestring, field, env, out);
}

// The destination field (topic, subject, routingKey, stream): literal text with ${eventType},
// ${tenantId} and ${orderingKey}. `allow_empty` for AMQP's routing key, which may be "".
Check read_destination(const cJSON* object, const std::string& kind, const char* key,
                       bool allow_empty, DestinationTemplate& out) {
    const std::string field = kind + "." + key;
    const cJSON* item = member(object, key);
    if (item == nullptr) {
        if (allow_empty) {
            return std::nullopt;
        }
        return field_error(field, "is required");
    }
    if (!cJSON_IsString(item) || item->valuestring == nullptr ||
        (!allow_empty && item->valuestring[0] == '\0')) {
        return field_error(field, allow_empty ? "must be a string" : "must be a non-empty string");
    }
    const std::string_view text = item->valuestring;
    if (text.find_first_of(" \t\r\n") != std::string_view::npos) {
        return field_error(field, "must not contain white space");
    }
    std::string error;
    std::optional<DestinationTemplate> parsed = DestinationTemplate::parse(text, error);
    if (!parsed) {
        return field_error(field, error);
    }
    out = std::move(*parsed);
    return std::nullopt;
}

Check read_broker_common(const cJSON* object, const std::string& kind, const EnvLookup& env,
                         BrokerCommon& common) {
    if (const cJSON* body = member(object, "body")) {
        std::optional<BodyMode> mode;
        if (cJSON_IsString(body) && body->valuestring != nullptr) {
            mode = parse_body_mode(body->valuestring);
        }
        if (!mode) {
            return field_error(kind + ".body",
                               "must be one of \"event\", \"payload\", \"cloudevents\"");
        }
        common.message.body = *mode;
    }
    if (const cJSON* source = member(object, "source")) {
        if (!is_nonempty_string(source)) {
            return field_error(kind + ".source", "must be a non-empty string");
        }
        common.message.source = source->valuestring;
    } else {
        // CloudEvents' source names the producer: the service, unless the file says otherwise.
        common.message.source = env("SERVICE_NAME").value_or("calibr-outbox-worker");
        if (common.message.source.empty()) {
            common.message.source = "calibr-outbox-worker";
        }
    }
    return read_timeout(member(object, "timeoutMs"), kind + ".timeoutMs", common.timeout);
}

// The librdkafka settings the kafka kind fixes itself (SPEC 4: idempotent producer, acks=all, the
// brokers and the timeout from their own fields), under every name librdkafka accepts for them.
bool is_fixed_kafka_property(std::string_view name) {
    for (const char* fixed :
         {"bootstrap.servers", "metadata.broker.list", "enable.idempotence", "acks",
          "request.required.acks", "message.timeout.ms", "delivery.timeout.ms",
          "max.in.flight.requests.per.connection", "max.in.flight"}) {
        if (name == fixed) {
            return true;
        }
    }
    return false;
}

Check read_kafka(const cJSON* kafka, const EnvLookup& env, KafkaSinkOptions& options,
                 BrokerCommon& common) {
    if (!cJSON_IsObject(kafka)) {
        return field_error("kafka", "must be an object with \"brokers\" and \"topic\"");
    }
    if (auto problem = check_keys(
            kafka, "kafka.", {"brokers", "topic", "properties", "body", "source", "timeoutMs"})) {
        return problem;
    }
    if (auto problem = read_expanded_string(kafka, "kafka", "brokers", env, options.brokers)) {
        return problem;
    }
    if (auto problem =
            read_destination(kafka, "kafka", "topic", false, common.message.destination)) {
        return problem;
    }
    if (const cJSON* properties = member(kafka, "properties")) {
        if (!cJSON_IsObject(properties)) {
            return field_error("kafka.properties", "must be an object of strings");
        }
        // Each setting is tried on a throw-away librdkafka configuration, which starts no thread
        // and opens nothing, so that a misspelt name or a bad value is an error now and not in
        // every handler process later.
        std::unique_ptr<rd_kafka_conf_t, decltype(&rd_kafka_conf_destroy)> conf(
            rd_kafka_conf_new(), &rd_kafka_conf_destroy);
        for (const cJSON* item = properties->child; item != nullptr; item = item->next) {
            const std::string name = item->string != nullptr ? item->string : "";
            const std::string field = "kafka.properties." + name;
            if (options.properties.contains(name)) {
                return field_error(field, "appears more than once");
            }
            if (is_fixed_kafka_property(name)) {
                return field_error(field, "is set by the worker (SPEC 4: an idempotent producer "
                                          "with acks=all; \"brokers\" and \"timeoutMs\" set the "
                                          "rest)");
            }
            if (!cJSON_IsString(item) || item->valuestring == nullptr) {
                return field_error(field, "must be a string");
            }
            std::string value;
            if (auto problem = expand_variables(item->valuestring, field, env, value)) {
                return problem;
            }
            char error[512] = "";
            if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), error, sizeof error) !=
                RD_KAFKA_CONF_OK) {
                return field_error(field, std::string("librdkafka refuses it: ") + error);
            }
            options.properties.emplace(name, std::move(value));
        }
    }
    return read_broker_common(kafka, "kafka", env, common);
}

Check read_nats(const cJSON* nats, const EnvLookup& env, NatsSinkOptions& options,
                BrokerCommon& common) {
    if (!cJSON_IsObject(nats)) {
        return field_error("nats", "must be an object with \"url\" and \"subject\"");
    }
    if (auto problem =
            check_keys(nats, "nats.", {"url", "subject", "body", "source", "timeoutMs"})) {
        return problem;
    }
    if (auto problem = read_expanded_string(nats, "nats", "url", env, options.url)) {
        return problem;
    }
    if (!options.url.starts_with("nats://") && !options.url.starts_with("tls://")) {
        return field_error("nats.url", "must start with nats:// or tls://");
    }
    if (auto problem =
            read_destination(nats, "nats", "subject", false, common.message.destination)) {
        return problem;
    }
    // A JetStream publication goes to one subject; wildcards only make sense to subscribers.
    const std::string& subject = common.message.destination.text();
    if (subject.find_first_of("*>") != std::string::npos) {
        return field_error("nats.subject", "must not contain the wildcards \"*\" or \">\"");
    }
    return read_broker_common(nats, "nats", env, common);
}

Check read_amqp(const cJSON* amqp, const EnvLookup& env, AmqpSinkOptions& options,
                BrokerCommon& common) {
    if (!cJSON_IsObject(amqp)) {
        return field_error("amqp", "must be an object with \"url\" and \"exchange\"");
    }
    if (auto problem = check_keys(
            amqp, "amqp.", {"url", "exchange", "routingKey", "body", "source", "timeoutMs"})) {
        return problem;
    }
    if (auto problem = read_expanded_string(amqp, "amqp", "url", env, options.url)) {
        return problem;
    }
    if (options.url.starts_with("amqps://")) {
        // The sink speaks AMQP over plain TCP only; refusing here beats failing every event.
        return field_error("amqp.url", "amqps:// (TLS) is not supported: use amqp://, through a "
                                       "TLS tunnel or on a trusted network");
    }
    if (!options.url.starts_with("amqp://")) {
        return field_error("amqp.url", "must start with amqp://");
    }
    const cJSON* exchange = member(amqp, "exchange");
    if (exchange == nullptr) {
        return field_error("amqp.exchange", "is required (\"\" publishes to the default exchange)");
    }
    if (!cJSON_IsString(exchange) || exchange->valuestring == nullptr) {
        return field_error("amqp.exchange", "must be a string");
    }
    options.exchange = exchange->valuestring;
    if (options.exchange.size() > 255) {
        return field_error("amqp.exchange", "must be at most 255 bytes (AMQP's limit)");
    }
    if (auto problem =
            read_destination(amqp, "amqp", "routingKey", true, common.message.destination)) {
        return problem;
    }
    return read_broker_common(amqp, "amqp", env, common);
}

Check read_redis(const cJSON* redis, const EnvLookup& env, RedisSinkOptions& options,
                 BrokerCommon& common) {
    if (!cJSON_IsObject(redis)) {
        return field_error("redis", "must be an object with \"url\" and \"stream\"");
    }
    if (auto problem = check_keys(redis, "redis.",
                                  {"url", "stream", "maxLen", "body", "source", "timeoutMs"})) {
        return problem;
    }
    if (auto problem = read_expanded_string(redis, "redis", "url", env, options.url)) {
        return problem;
    }
    if (!options.url.starts_with("redis://")) {
        return field_error("redis.url", "must start with redis://");
    }
    if (auto problem =
            read_destination(redis, "redis", "stream", false, common.message.destination)) {
        return problem;
    }
    if (const cJSON* max_len = member(redis, "maxLen")) {
        const double value = cJSON_IsNumber(max_len) ? max_len->valuedouble : 0;
        if (!cJSON_IsNumber(max_len) || !std::isfinite(value) || value != std::floor(value) ||
            value < 1 || value > 1e15) {
            return field_error("redis.maxLen", "must be a positive integer");
        }
        options.max_len = static_cast<long>(value);
    }
    return read_broker_common(redis, "redis", env, common);
}

// A URL as it may appear in descriptions and logs: without the user and password.
std::string without_userinfo(const std::string& url) {
    std::string out;
    size_t start = 0;
    // nats:// may list several servers separated by commas.
    while (start <= url.size()) {
        size_t end = url.find(',', start);
        if (end == std::string::npos) {
            end = url.size();
        }
        std::string one = url.substr(start, end - start);
        const size_t scheme = one.find("://");
        const size_t host = scheme == std::string::npos ? 0 : scheme + 3;
        const size_t path = one.find('/', host);
        const size_t at = one.rfind('@', path == std::string::npos ? std::string::npos : path);
        if (at != std::string::npos && at >= host) {
            one.erase(host, at + 1 - host);
        }
        out += (out.empty() ? "" : ",") + one;
        start = end + 1;
    }
    return out;
}

Check read_log(const cJSON* log, LogLevel& level) {
    if (cJSON_IsTrue(log)) {
        return std::nullopt;
    }
    if (!cJSON_IsObject(log)) {
        return field_error("log", "must be true or an object");
    }
    if (auto problem = check_keys(log, "log.", {"level"})) {
        return problem;
    }
    if (const cJSON* item = member(log, "level")) {
        const std::string value =
            cJSON_IsString(item) && item->valuestring != nullptr ? item->valuestring : "";
        if (value == "debug") {
            level = LogLevel::debug;
        } else if (value == "info") {
            level = LogLevel::info;
        } else if (value == "warn") {
            level = LogLevel::warn;
        } else if (value == "error") {
            level = LogLevel::error;
        } else {
            return field_error("log.level",
                               "must be one of \"debug\", \"info\", \"warn\", \"error\"");
        }
    }
    return std::nullopt;
}

class HandlersParser {
  public:
    HandlersParser(const std::string& origin, long default_timeout_ms, const EnvLookup& env)
        : origin_(origin), default_timeout_ms_(default_timeout_ms), env_(env) {
        const std::size_t slash = origin.find_last_of('/');
        basename_ = slash == std::string::npos ? origin : origin.substr(slash + 1);
        if (basename_.empty()) {
            basename_ = "handlers";
        }
    }

    HandlersFileResult parse(std::string_view text) {
        const char* end = nullptr;
        Json root(cJSON_ParseWithLengthOpts(text.data(), text.size(), &end, 0));
        if (!root) {
            return fail(invalid_json(text, end, "invalid JSON"));
        }
        // cJSON stops after the first value; anything but whitespace behind it is an error too.
        std::size_t offset =
            end != nullptr ? static_cast<std::size_t>(end - text.data()) : text.size();
        while (offset < text.size() && (text[offset] == ' ' || text[offset] == '\t' ||
                                        text[offset] == '\r' || text[offset] == '\n')) {
            ++offset;
        }
        if (offset < text.size()) {
            return fail(
                invalid_json(text, text.data() + offset,
                             "invalid JSON: unexpected text after the end of the document"));
        }

        const cJSON* list = root.get();
        if (cJSON_IsObject(list)) {
            if (auto problem = check_keys(list, "", {"subscribers"})) {
                return fail("\"" + problem->field + "\": " + problem->problem);
            }
            list = member(list, "subscribers");
            if (list == nullptr) {
                return fail("\"subscribers\": is required");
            }
            if (!cJSON_IsArray(list)) {
                return fail("\"subscribers\": must be an array of subscribers");
            }
        } else if (!cJSON_IsArray(list)) {
            return fail("must be a JSON array of subscribers or an object with \"subscribers\"");
        }
        if (list->child == nullptr) {
            return fail("no subscribers: the list is empty");
        }

        std::vector<Subscriber> subscribers;
        int index = 0;
        for (const cJSON* item = list->child; item != nullptr; item = item->next, ++index) {
            std::string name;
            Subscriber subscriber;
            if (auto problem = read_subscriber(item, index, subscriber, name)) {
                std::string message = "subscriber " + std::to_string(index);
                if (!name.empty()) {
                    message += " (" + name + ")";
                }
                message += ": ";
                if (!problem->field.empty()) {
                    message += "\"" + problem->field + "\": ";
                }
                return fail(message + problem->problem);
            }
            subscribers.push_back(std::move(subscriber));
        }
        if (const std::optional<SubscriberOverlap> overlap = find_unnamed_overlap(subscribers)) {
            return fail(overlap_problem(*overlap, subscribers));
        }
        return {std::move(subscribers), {}};
    }

  private:
    // Keys, names and variable names from the file end up in the message; a control character
    // among them (a "\n" in a key) would split the one-line error, so each is shown as \xNN.
    HandlersFileResult fail(const std::string& problem) const {
        std::string message;
        for (const char c : origin_ + ": " + problem) {
            const auto byte = static_cast<unsigned char>(c);
            if (byte < 0x20 || byte == 0x7f) {
                static constexpr char kHex[] = "0123456789abcdef";
                message += "\\x";
                message += kHex[byte >> 4];
                message += kHex[byte & 0xf];
            } else {
                message += c;
            }
        }
        return {std::nullopt, std::move(message)};
    }

    // Subscribers without a given name are shown by index only: their made-up names would only
    // repeat the index.
    static std::string overlap_problem(const SubscriberOverlap& overlap,
                                       const std::vector<Subscriber>& subscribers) {
        const Subscriber& first = subscribers[overlap.first];
        const Subscriber& second = subscribers[overlap.second];
        const auto label = [](size_t index, const Subscriber& subscriber) {
            std::string text = "subscriber " + std::to_string(index);
            if (subscriber.name_given) {
                text += " (" + subscriber.name + ")";
            }
            return text;
        };
        std::string problem = label(overlap.first, first) + " and " +
                              label(overlap.second, second) + " can both match ";
        // Only two all-star patterns have the empty text as their shortest common match.
        problem += overlap.example.empty() ? "every event type"
                                           : "event type " + json_quote(overlap.example);
        problem += " (by " + json_quote(overlap.first_pattern) + " and " +
                   json_quote(overlap.second_pattern) + "), so each needs a \"name\" (";
        if (!first.name_given && !second.name_given) {
            problem += "neither has one";
        } else {
            problem += "subscriber " +
                       std::to_string(first.name_given ? overlap.second : overlap.first) +
                       " has none";
        }
        return problem + "): the name is a subscriber's identity in an event's record of the "
                         "subscribers that succeeded for it";
    }

    static std::string invalid_json(std::string_view text, const char* where, const char* what) {
        if (where == nullptr || where < text.data() || where > text.data() + text.size()) {
            return what;
        }
        const std::size_t offset = static_cast<std::size_t>(where - text.data());
        std::size_t line = 1, column = 1;
        for (std::size_t i = 0; i < offset; ++i) {
            if (text[i] == '\n') {
                ++line;
                column = 1;
            } else {
                ++column;
            }
        }
        return std::string(what) + " at line " + std::to_string(line) + ", column " +
               std::to_string(column) + " (byte offset " + std::to_string(offset) + ")";
    }

    // Fills `subscriber`; `name` is set as soon as the subscriber's own name is known to be valid,
    // so that an error about a later field can name the subscriber.
    Check read_subscriber(const cJSON* item, int index, Subscriber& subscriber, std::string& name) {
        if (!cJSON_IsObject(item)) {
            return field_error("", "must be an object");
        }
        if (const cJSON* given = member(item, "name"); is_nonempty_string(given)) {
            name = given->valuestring;
        }
        if (auto problem = check_keys(item, "",
                                      {"name", "eventTypes", "timeoutMs", "exec", "http", "log",
                                       "kafka", "nats", "amqp", "redis"})) {
            return problem;
        }
        if (const cJSON* given = member(item, "name")) {
            if (!is_nonempty_string(given)) {
                return field_error("name", "must be a non-empty string");
            }
            // An event records the names of the subscribers that succeeded as the RESULT carried
            // them, bounded and sanitised (encode_result): a name that did not survive that
            // unchanged would never be found in the record, and its subscriber would run again.
            if (name.size() > kMaxSubscriberNameBytes) {
                return field_error("name", "must be at most " +
                                               std::to_string(kMaxSubscriberNameBytes) +
                                               " bytes long");
            }
            if (!is_valid_utf8(name)) {
                return field_error("name", "must be valid UTF-8");
            }
            if (auto [it, inserted] = names_.try_emplace(name, index); !inserted) {
                return field_error("name",
                                   "is already used by subscriber " + std::to_string(it->second));
            }
        }
        if (auto problem = read_event_types(member(item, "eventTypes"), subscriber.patterns)) {
            return problem;
        }
        std::optional<long> subscriber_timeout;
        if (auto problem =
                read_timeout(member(item, "timeoutMs"), "timeoutMs", subscriber_timeout)) {
            return problem;
        }

        const char* kind = nullptr;
        for (const char* candidate : {"exec", "http", "log", "kafka", "nats", "amqp", "redis"}) {
            if (member(item, candidate) == nullptr) {
                continue;
            }
            if (kind != nullptr) {
                return field_error(candidate, "only one of " + std::string(kKinds) +
                                                  " may be given (this subscriber already has \"" +
                                                  std::string(kind) + "\")");
            }
            kind = candidate;
        }
        if (kind == nullptr) {
            return field_error("", "needs one of " + std::string(kKinds));
        }

        // The kind's timeout is read before the handler is built, because the handler enforces
        // the resolved timeout itself.
        std::optional<long> kind_timeout;
        const std::string kind_name = kind;
        if (kind_name == "exec") {
            ExecHandlerOptions options;
            if (auto problem = read_exec(member(item, "exec"), options, kind_timeout)) {
                return problem;
            }
            options.timeout_ms = resolve_timeout(subscriber_timeout, kind_timeout);
            subscriber.timeout_ms = options.timeout_ms;
            subscriber.handler = make_exec_handler(std::move(options));
        } else if (kind_name == "http") {
            HttpHandlerOptions options;
            if (auto problem = read_http(member(item, "http"), env_, options, kind_timeout)) {
                return problem;
            }
            options.timeout_ms = resolve_timeout(subscriber_timeout, kind_timeout);
            subscriber.timeout_ms = options.timeout_ms;
            subscriber.handler = make_http_handler(std::move(options));
        } else if (kind_name == "log") {
            LogLevel level = LogLevel::info;
            if (auto problem = read_log(member(item, "log"), level)) {
                return problem;
            }
            subscriber.timeout_ms = resolve_timeout(subscriber_timeout, std::nullopt);
            subscriber.handler = make_log_handler(level);
        } else if (auto problem = read_broker(item, kind_name, subscriber_timeout, subscriber)) {
            return problem;
        }
        if (!name.empty()) {
            subscriber.name = name;
            subscriber.name_given = true;
            return std::nullopt;
        }
        subscriber.name = basename_ + "#" + std::to_string(index) + " (" + kind_name + ")";
        // A default name names the subscriber in logs as much as a given one does, so it must be
        // unique too: a given name may spell another subscriber's default.
        if (auto [it, inserted] = names_.try_emplace(subscriber.name, index); !inserted) {
            return field_error("name", "is needed: the default \"" + subscriber.name +
                                           "\" is already used by subscriber " +
                                           std::to_string(it->second));
        }
        return std::nullopt;
    }

    // One of the broker kinds: its options, its message options and a BrokerSpec whose sink is
    // made in the handler process.
    Check read_broker(const cJSON* item, const std::string& kind,
                      std::optional<long> subscriber_timeout, Subscriber& subscriber) {
        const cJSON* object = member(item, kind.c_str());
        BrokerCommon common;
        auto spec = std::make_shared<BrokerSpec>();
        spec->kind = kind;
        // The sink reports a publication that is not acknowledged in time as a retryable failure
        // of its own, a little before the supervisor would kill the process for overrunning the
        // handler timeout: a tenth of the timeout earlier, at most a second.
        auto publication_timeout = [](long handler_timeout_ms) {
            return handler_timeout_ms - std::min(1000L, handler_timeout_ms / 10);
        };
        if (kind == "kafka") {
            KafkaSinkOptions options;
            if (auto problem = read_kafka(object, env_, options, common)) {
                return problem;
            }
            subscriber.timeout_ms = resolve_timeout(subscriber_timeout, common.timeout);
            options.timeout_ms = publication_timeout(subscriber.timeout_ms);
            spec->description = "kafka " + without_userinfo(options.brokers) + " topic " +
                                common.message.destination.text();
            spec->make_sink = [options] {
                return make_kafka_sink(options);
            };
        } else if (kind == "nats") {
            NatsSinkOptions options;
            if (auto problem = read_nats(object, env_, options, common)) {
                return problem;
            }
            subscriber.timeout_ms = resolve_timeout(subscriber_timeout, common.timeout);
            options.timeout_ms = publication_timeout(subscriber.timeout_ms);
            spec->description = "nats " + without_userinfo(options.url) + " subject " +
                                common.message.destination.text();
            spec->make_sink = [options] {
                return make_nats_sink(options);
            };
        } else if (kind == "amqp") {
            AmqpSinkOptions options;
            if (auto problem = read_amqp(object, env_, options, common)) {
                return problem;
            }
            subscriber.timeout_ms = resolve_timeout(subscriber_timeout, common.timeout);
            options.timeout_ms = publication_timeout(subscriber.timeout_ms);
            spec->description = "amqp " + without_userinfo(options.url) + " exchange \"" +
                                options.exchange + "\" routing key \"" +
                                common.message.destination.text() + "\"";
            spec->make_sink = [options] {
                return make_amqp_sink(options);
            };
        } else {
            RedisSinkOptions options;
            if (auto problem = read_redis(object, env_, options, common)) {
                return problem;
            }
            subscriber.timeout_ms = resolve_timeout(subscriber_timeout, common.timeout);
            options.timeout_ms = publication_timeout(subscriber.timeout_ms);
            spec->description = "redis " + without_userinfo(options.url) + " stream " +
                                common.message.destination.text();
            spec->make_sink = [options] {
                return make_redis_sink(options);
            };
        }
        spec->message = std::move(common.message);
        subscriber.broker = spec;
        subscriber.handler = make_broker_handler(std::move(spec));
        return std::nullopt;
    }

    long resolve_timeout(std::optional<long> subscriber_timeout,
                         std::optional<long> kind_timeout) const {
        return subscriber_timeout.value_or(kind_timeout.value_or(default_timeout_ms_));
    }

    const std::string& origin_;
    long default_timeout_ms_;
    const EnvLookup& env_;
    std::string basename_;
    std::map<std::string, int> names_;
};

} // namespace

HandlersFileResult parse_handlers_json(std::string_view text, const std::string& origin_name,
                                       long default_timeout_ms, const EnvLookup& env) {
    return HandlersParser(origin_name, default_timeout_ms, env).parse(text);
}

HandlersFileResult load_handlers_file(const std::string& path, long default_timeout_ms) {
    auto failure = [&](const std::string& problem) {
        return HandlersFileResult{std::nullopt, path + ": " + problem};
    };
    UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!file.is_open()) {
        return failure(std::string("cannot open: ") + std::strerror(errno));
    }
    const int fd = file.get();
    std::string text;
    struct stat info {};
    if (::fstat(fd, &info) == 0 && S_ISDIR(info.st_mode)) {
        return failure("cannot read: is a directory");
    }
    char buffer[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return failure(std::string("cannot read: ") + std::strerror(errno));
        }
        if (n == 0) {
            break;
        }
        text.append(buffer, static_cast<std::size_t>(n));
        if (text.size() > static_cast<std::size_t>(kMaxHandlersFileBytes)) {
            return failure("is larger than " + std::to_string(kMaxHandlersFileBytes / 1024 / 1024) +
                           " MiB");
        }
    }
    return parse_handlers_json(text, path, default_timeout_ms);
}

} // namespace outbox
