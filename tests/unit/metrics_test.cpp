// The metrics registry. The Prometheus exposition is checked by parsing it back with a strict
// parser of the text format's line grammar, written here, rather than by comparing strings: what
// matters is that a scraper reads back the values that were recorded.
#include "supervisor/metrics.h"

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

using namespace outbox;

namespace {

// --- a strict parser of text exposition format 0.0.4 ---

using Labels = std::map<std::string, std::string>;

struct Sample {
    std::string name;
    Labels labels;
    double value = 0;
};

struct Family {
    std::string help;
    std::string type;
    std::vector<Sample> samples;
};

struct Exposition {
    std::vector<std::string> order; // family names in the order they appeared
    std::map<std::string, Family> families;

    const Family& family(const std::string& name) const {
        auto it = families.find(name);
        if (it == families.end()) {
            throw std::runtime_error("no family " + name);
        }
        return it->second;
    }

    // The value of the one sample with this name and exactly these labels.
    double value(const std::string& family_name, const std::string& sample_name,
                 const Labels& labels = {}) const {
        std::optional<double> found;
        for (const Sample& sample : family(family_name).samples) {
            if (sample.name == sample_name && sample.labels == labels) {
                if (found) {
                    throw std::runtime_error("duplicate sample " + sample_name);
                }
                found = sample.value;
            }
        }
        if (!found) {
            throw std::runtime_error("no sample " + sample_name);
        }
        return *found;
    }
};

[[noreturn]] void parse_error(std::size_t line_number, const std::string& what,
                              const std::string& line) {
    throw std::runtime_error("line " + std::to_string(line_number) + ": " + what + ": " + line);
}

bool is_name_char(char c, bool first, bool allow_colon) {
    bool letter =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    return letter || (!first && c >= '0' && c <= '9');
}

// Reads a metric or label name at `pos`; advances past it.
std::string read_name(const std::string& line, std::size_t& pos, bool allow_colon) {
    std::size_t start = pos;
    while (pos < line.size() && is_name_char(line[pos], pos == start, allow_colon)) {
        ++pos;
    }
    return line.substr(start, pos - start);
}

double parse_number(const std::string& text) {
    if (text == "NaN") {
        return std::nan("");
    }
    if (text == "+Inf") {
        return INFINITY;
    }
    if (text == "-Inf") {
        return -INFINITY;
    }
    if (text.empty()) {
        throw std::runtime_error("empty number");
    }
    // strtod would also take "inf", "nan" and hex floats, which the format does not allow.
    for (char c : text) {
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) {
            throw std::runtime_error("bad number " + text);
        }
    }
    char* end = nullptr;
    errno = 0;
    double value = std::strtod(text.c_str(), &end);
    if (end != text.c_str() + text.size() || errno != 0) {
        throw std::runtime_error("bad number " + text);
    }
    return value;
}

// Undoes the HELP escapes (\\ and \n); any other backslash sequence is an error.
std::string unescape_help(const std::string& text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '\\') {
            out += text[i];
            continue;
        }
        if (i + 1 >= text.size()) {
            throw std::runtime_error("dangling backslash in HELP");
        }
        char next = text[++i];
        if (next == '\\') {
            out += '\\';
        } else if (next == 'n') {
            out += '\n';
        } else {
            throw std::runtime_error("bad escape in HELP");
        }
    }
    return out;
}

Sample parse_sample(const std::string& line, std::size_t line_number) {
    Sample sample;
    std::size_t pos = 0;
    sample.name = read_name(line, pos, true);
    if (sample.name.empty()) {
        parse_error(line_number, "sample without a name", line);
    }
    if (pos < line.size() && line[pos] == '{') {
        ++pos;
        while (true) {
            if (pos < line.size() && line[pos] == '}') {
                ++pos;
                break;
            }
            std::string label = read_name(line, pos, false);
            if (label.empty() || pos >= line.size() || line[pos] != '=') {
                parse_error(line_number, "bad label name", line);
            }
            if (label.starts_with("__")) {
                parse_error(line_number, "reserved label name", line);
            }
            ++pos;
            if (pos >= line.size() || line[pos] != '"') {
                parse_error(line_number, "label value not quoted", line);
            }
            ++pos;
            std::string value;
            bool closed = false;
            while (pos < line.size()) {
                char c = line[pos++];
                if (c == '"') {
                    closed = true;
                    break;
                }
                if (c == '\\') {
                    if (pos >= line.size()) {
                        parse_error(line_number, "dangling backslash", line);
                    }
                    char next = line[pos++];
                    if (next == '\\') {
                        value += '\\';
                    } else if (next == '"') {
                        value += '"';
                    } else if (next == 'n') {
                        value += '\n';
                    } else {
                        parse_error(line_number, "bad escape in label value", line);
                    }
                    continue;
                }
                value += c;
            }
            if (!closed) {
                parse_error(line_number, "unterminated label value", line);
            }
            if (!sample.labels.emplace(label, value).second) {
                parse_error(line_number, "duplicate label", line);
            }
            if (pos < line.size() && line[pos] == ',') {
                ++pos;
            } else if (pos >= line.size() || line[pos] != '}') {
                parse_error(line_number, "expected , or }", line);
            }
        }
    }
    if (pos >= line.size() || line[pos] != ' ') {
        parse_error(line_number, "expected a space before the value", line);
    }
    ++pos;
    std::string rest = line.substr(pos);
    // An optional timestamp may follow; this registry never writes one.
    if (rest.find(' ') != std::string::npos) {
        parse_error(line_number, "unexpected text after the value", line);
    }
    try {
        sample.value = parse_number(rest);
    } catch (const std::exception& e) {
        parse_error(line_number, e.what(), line);
    }
    return sample;
}

// Which family a sample belongs to, given the family whose TYPE came last.
bool belongs_to(const std::string& sample_name, const std::string& family_name,
                const std::string& type) {
    if (type == "histogram") {
        return sample_name == family_name + "_bucket" || sample_name == family_name + "_sum" ||
               sample_name == family_name + "_count";
    }
    return sample_name == family_name;
}

void check_histogram(const std::string& name, const Family& family) {
    struct Series {
        std::vector<std::pair<double, double>> buckets;
        std::optional<double> sum;
        std::optional<double> count;
    };
    std::map<Labels, Series> series;
    for (const Sample& sample : family.samples) {
        Labels labels = sample.labels;
        if (sample.name == name + "_bucket") {
            auto le = labels.find("le");
            if (le == labels.end()) {
                throw std::runtime_error(name + ": bucket without le");
            }
            double bound = parse_number(le->second);
            labels.erase(le);
            series[labels].buckets.emplace_back(bound, sample.value);
        } else if (sample.name == name + "_sum") {
            series[labels].sum = sample.value;
        } else {
            series[labels].count = sample.value;
        }
    }
    for (const auto& [labels, s] : series) {
        if (s.buckets.empty() || !std::isinf(s.buckets.back().first)) {
            throw std::runtime_error(name + ": buckets do not end with +Inf");
        }
        for (std::size_t i = 1; i < s.buckets.size(); ++i) {
            if (!(s.buckets[i - 1].first < s.buckets[i].first)) {
                throw std::runtime_error(name + ": bucket bounds not increasing");
            }
            if (s.buckets[i].second < s.buckets[i - 1].second) {
                throw std::runtime_error(name + ": bucket counts not cumulative");
            }
        }
        if (!s.sum || !s.count) {
            throw std::runtime_error(name + ": missing _sum or _count");
        }
        if (s.buckets.back().second != *s.count) {
            throw std::runtime_error(name + ": +Inf bucket differs from _count");
        }
    }
}

// Parses a whole exposition and checks what the format requires of its structure: each family
// introduced by HELP and TYPE once, its samples contiguous after them, no duplicate series,
// consistent histograms, and (this registry's promise) families sorted by name.
Exposition parse_exposition(const std::string& text) {
    if (!text.empty() && text.back() != '\n') {
        throw std::runtime_error("exposition does not end with a newline");
    }
    Exposition exposition;
    std::string current;
    std::set<std::pair<std::string, Labels>> seen_series;
    std::size_t line_number = 0;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        std::string line = text.substr(start, end - start);
        start = end + 1;
        ++line_number;
        if (line.empty()) {
            parse_error(line_number, "empty line", line);
        }
        if (line.starts_with("# HELP ")) {
            std::size_t pos = 7;
            std::string name = read_name(line, pos, true);
            if (name.empty() || pos >= line.size() || line[pos] != ' ') {
                parse_error(line_number, "bad HELP", line);
            }
            if (exposition.families.contains(name)) {
                parse_error(line_number, "family repeated", line);
            }
            Family& family = exposition.families[name];
            family.help = unescape_help(line.substr(pos + 1));
            exposition.order.push_back(name);
            current = name;
            continue;
        }
        if (line.starts_with("# TYPE ")) {
            std::size_t pos = 7;
            std::string name = read_name(line, pos, true);
            if (name != current || pos >= line.size() || line[pos] != ' ') {
                parse_error(line_number, "TYPE without its HELP", line);
            }
            Family& family = exposition.families[name];
            if (!family.type.empty() || !family.samples.empty()) {
                parse_error(line_number, "TYPE repeated or after samples", line);
            }
            family.type = line.substr(pos + 1);
            static const std::set<std::string> types = {"counter", "gauge", "histogram", "summary",
                                                        "untyped"};
            if (!types.contains(family.type)) {
                parse_error(line_number, "unknown type", line);
            }
            continue;
        }
        if (line.starts_with("#")) {
            parse_error(line_number, "unexpected comment", line);
        }
        Sample sample = parse_sample(line, line_number);
        if (current.empty() || exposition.families[current].type.empty() ||
            !belongs_to(sample.name, current, exposition.families[current].type)) {
            parse_error(line_number, "sample outside its family", line);
        }
        if (!seen_series.emplace(sample.name, sample.labels).second) {
            parse_error(line_number, "duplicate series", line);
        }
        exposition.families[current].samples.push_back(std::move(sample));
    }
    for (const auto& [name, family] : exposition.families) {
        if (family.type.empty()) {
            throw std::runtime_error(name + ": HELP without TYPE");
        }
        if (family.type == "histogram") {
            check_histogram(name, family);
        }
    }
    for (std::size_t i = 1; i < exposition.order.size(); ++i) {
        if (!(exposition.order[i - 1] < exposition.order[i])) {
            throw std::runtime_error("families not sorted by name");
        }
    }
    return exposition;
}

// Runs the reference parser (tests/unit/prometheus_parse.py, prometheus_client) on `text`;
// nullopt when it is not installed here. `quiet` hides its complaint for input meant to fail.
std::optional<int> reference_parser_status(const std::string& text, bool quiet = false) {
    if (std::system("/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1") != 0) {
        return std::nullopt;
    }
    std::filesystem::path script =
        std::filesystem::path(__FILE__).parent_path() / "prometheus_parse.py";
    if (!std::filesystem::exists(script)) {
        return std::nullopt;
    }
    std::string command = "/usr/bin/python3 '" + script.string() + "' >/dev/null";
    if (quiet) {
        command += " 2>/dev/null";
    }
    FILE* pipe = popen(command.c_str(), "w");
    if (pipe == nullptr) {
        return std::nullopt;
    }
    std::fwrite(text.data(), 1, text.size(), pipe);
    int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The catalogue from metrics.h, with some data in it.
void fill_catalogue(MetricsRegistry& registry) {
    auto& completed = registry.counter("outbox_events_completed_total",
                                       "Events that reached COMPLETED.", {"event_type"});
    completed.with({"order.created"}).inc();
    completed.with({"order.created"}).inc(2);
    completed.with({"shopify.product"}).inc();
    registry.counter("outbox_events_retried_total", "Failed attempts sent back to PENDING.",
                     {"event_type"});
    registry
        .counter("outbox_events_dead_lettered_total", "Events moved to the DLQ.", {"event_type"})
        .with({"order.created"})
        .inc();
    auto& latency =
        registry.histogram("outbox_event_latency_seconds", "Time from createdAt to completion.");
    latency.observe(0.0004);
    latency.observe(0.003);
    latency.observe(0.7);
    latency.observe(120);
    registry
        .histogram("outbox_handler_duration_seconds", "One attempt in a handler process.",
                   {"event_type"})
        .with({"order.created"})
        .observe(0.02);
    registry.gauge("outbox_events_in_flight", "Claimed events not yet finished.").set(3);
    auto& rows = registry.gauge("outbox_rows", "Outbox rows by status.", {"status"});
    for (const char* status : {"PENDING", "PROCESSING", "COMPLETED", "FAILED"}) {
        rows.with({status}).set(static_cast<double>(std::string(status).size()));
    }
    registry.gauge("outbox_dlq_rows", "DlqEventLog rows.").set_function([] { return 7.0; });
    registry.counter("outbox_worker_restarts_total", "Handler processes replaced.", {"reason"})
        .with({"crash"})
        .inc();
    registry.gauge("outbox_database_up", "1 while the database answers.").set(1);
    registry.counter("outbox_leases_lost_total", "Leases found taken or expired.");
    registry
        .gauge("outbox_unsubscribed_events", "Due events no subscriber matches.", {"event_type"})
        .with({"nobody.listens"})
        .set(12);
    registry.counter("outbox_retention_deleted_total", "Completed rows deleted by retention.")
        .inc(500);
}

} // namespace

TEST_CASE("metrics render the catalogue as valid Prometheus text", "[metrics]") {
    MetricsRegistry registry;
    fill_catalogue(registry);
    std::string text = registry.render_prometheus();
    INFO(text);
    Exposition exposition = parse_exposition(text);

    CHECK(exposition.order.size() == 13);
    CHECK(exposition.family("outbox_events_completed_total").type == "counter");
    CHECK(exposition.family("outbox_events_completed_total").help ==
          "Events that reached COMPLETED.");
    CHECK(exposition.value("outbox_events_completed_total", "outbox_events_completed_total",
                           {{"event_type", "order.created"}}) == 3);
    CHECK(exposition.value("outbox_events_completed_total", "outbox_events_completed_total",
                           {{"event_type", "shopify.product"}}) == 1);
    // A labelled family with nothing recorded is announced but has no samples.
    CHECK(exposition.family("outbox_events_retried_total").samples.empty());
    // An unlabelled one is exported as 0 from the start.
    CHECK(exposition.value("outbox_leases_lost_total", "outbox_leases_lost_total") == 0);
    CHECK(exposition.value("outbox_retention_deleted_total", "outbox_retention_deleted_total") ==
          500);
    CHECK(exposition.value("outbox_dlq_rows", "outbox_dlq_rows") == 7);
    CHECK(exposition.value("outbox_rows", "outbox_rows", {{"status", "PROCESSING"}}) == 10);
    CHECK(exposition.family("outbox_event_latency_seconds").type == "histogram");
    CHECK(exposition.value("outbox_event_latency_seconds", "outbox_event_latency_seconds_bucket",
                           {{"le", "0.001"}}) == 1);
    CHECK(exposition.value("outbox_event_latency_seconds", "outbox_event_latency_seconds_bucket",
                           {{"le", "0.005"}}) == 2);
    CHECK(exposition.value("outbox_event_latency_seconds", "outbox_event_latency_seconds_bucket",
                           {{"le", "60"}}) == 3);
    CHECK(exposition.value("outbox_event_latency_seconds", "outbox_event_latency_seconds_bucket",
                           {{"le", "+Inf"}}) == 4);
    CHECK(exposition.value("outbox_event_latency_seconds", "outbox_event_latency_seconds_count") ==
          4);
    CHECK(exposition.value("outbox_event_latency_seconds", "outbox_event_latency_seconds_sum") ==
          Approx(120.7034));
    CHECK(exposition.value("outbox_handler_duration_seconds",
                           "outbox_handler_duration_seconds_bucket",
                           {{"event_type", "order.created"}, {"le", "0.025"}}) == 1);

    // Equal data renders equally.
    CHECK(registry.render_prometheus() == text);
}

TEST_CASE("metrics escape label values and help text", "[metrics]") {
    MetricsRegistry registry;
    std::string nasty = "back\\slash \"quoted\"\nnew line } , =";
    auto& counter = registry.counter("test_escapes_total", "Help with \\ and\nnewline \"quotes\".",
                                     {"event_type", "other_label"});
    counter.with({nasty, ""}).inc(4);
    std::string text = registry.render_prometheus();
    INFO(text);

    // The raw characters never reach the output unescaped.
    CHECK(text.find("\"quoted\"") == std::string::npos);
    CHECK(text.find("event_type=\"back\\\\slash \\\"quoted\\\"\\nnew line } , =\"") !=
          std::string::npos);
    Exposition exposition = parse_exposition(text);
    CHECK(exposition.family("test_escapes_total").help == "Help with \\ and\nnewline \"quotes\".");
    CHECK(exposition.value("test_escapes_total", "test_escapes_total",
                           {{"event_type", nasty}, {"other_label", ""}}) == 4);
}

TEST_CASE("metrics bound the label combinations of a family", "[metrics]") {
    MetricsRegistry registry(5);
    auto& counter = registry.counter("test_flood_total", "A flood of event types.", {"event_type"});
    for (int i = 0; i < 100; ++i) {
        counter.with({"type-" + std::to_string(i)}).inc();
    }
    // A combination admitted before the family filled up keeps its own series.
    counter.with({"type-0"}).inc(10);
    CHECK(counter.series_count() == 6);

    Exposition exposition = parse_exposition(registry.render_prometheus());
    CHECK(exposition.family("test_flood_total").samples.size() == 6);
    for (int i = 0; i < 5; ++i) {
        CHECK(exposition.value("test_flood_total", "test_flood_total",
                               {{"event_type", "type-" + std::to_string(i)}}) == (i == 0 ? 11 : 1));
    }
    CHECK(exposition.value("test_flood_total", "test_flood_total", {{"event_type", "other"}}) ==
          95);

    // The same cap applies to histograms, with every label replaced.
    auto& histogram = registry.histogram("test_flood_seconds", "Durations.", {"a", "b"});
    for (int i = 0; i < 20; ++i) {
        histogram.with({"x" + std::to_string(i), "y"}).observe(0.1);
    }
    CHECK(histogram.series_count() == 6);
    CHECK(histogram.with({"other", "other"}).count() == 15);
}

TEST_CASE("metrics truncate long label values without splitting UTF-8", "[metrics]") {
    MetricsRegistry registry;
    auto& gauge = registry.gauge("test_long_labels", "Long values.", {"v"});
    // 255 ASCII bytes then a two-byte character straddling the 256-byte limit.
    std::string value = std::string(255, 'a') + "\xc3\xa9" + std::string(1000, 'b');
    gauge.with({value}).set(1);
    gauge.with({std::string(255, 'a') + "\xc3\xa9" + "different tail"}).set(2);
    CHECK(gauge.series_count() == 1);
    Exposition exposition = parse_exposition(registry.render_prometheus());
    REQUIRE(exposition.family("test_long_labels").samples.size() == 1);
    CHECK(exposition.family("test_long_labels").samples[0].labels.at("v") == std::string(255, 'a'));
    CHECK(exposition.family("test_long_labels").samples[0].value == 2);
}

TEST_CASE("metrics histograms put observations in le buckets", "[metrics]") {
    MetricsRegistry registry;
    auto& histogram = registry.histogram("test_buckets_seconds", "Buckets.", {}, {0.1, 1, 10});
    for (double v : {-1.0, 0.1, 0.10000001, 1.0, 9.99, 10.0, 10.5, 1e300}) {
        histogram.observe(v);
    }
    histogram.observe(std::nan("")); // dropped
    HistogramSeries& series = histogram.with({});
    CHECK(series.count() == 8);
    CHECK(series.cumulative_counts() == std::vector<std::uint64_t>{2, 4, 6, 8});

    Exposition exposition = parse_exposition(registry.render_prometheus());
    CHECK(exposition.value("test_buckets_seconds", "test_buckets_seconds_bucket",
                           {{"le", "0.1"}}) == 2);
    CHECK(exposition.value("test_buckets_seconds", "test_buckets_seconds_bucket", {{"le", "10"}}) ==
          6);
    CHECK(exposition.value("test_buckets_seconds", "test_buckets_seconds_bucket",
                           {{"le", "+Inf"}}) == 8);
    CHECK(exposition.value("test_buckets_seconds", "test_buckets_seconds_sum") == Approx(1e300));

    CHECK(default_latency_buckets().front() == 0.001);
    CHECK(default_latency_buckets().back() == 60);
}

TEST_CASE("metrics gauges set, move and compute their values", "[metrics]") {
    MetricsRegistry registry;
    auto& gauge = registry.gauge("test_gauge", "A gauge.", {"k"});
    gauge.with({"a"}).set(5);
    gauge.with({"a"}).inc(2);
    gauge.with({"a"}).dec(10);
    double source = 1.5;
    gauge.with({"b"}).set_function([&source] { return source * 2; });
    gauge.with({"c"}).set_function([]() -> double { throw std::runtime_error("no data"); });
    source = 4;

    Exposition exposition = parse_exposition(registry.render_prometheus());
    CHECK(exposition.value("test_gauge", "test_gauge", {{"k", "a"}}) == -3);
    CHECK(exposition.value("test_gauge", "test_gauge", {{"k", "b"}}) == 8);
    CHECK(std::isnan(exposition.value("test_gauge", "test_gauge", {{"k", "c"}})));

    // inc() on a computed gauge continues from the computed value.
    gauge.with({"b"}).inc(1);
    source = 100;
    CHECK(gauge.with({"b"}).value() == 9);
}

TEST_CASE("metrics registration returns the existing family for the same name", "[metrics]") {
    MetricsRegistry registry;
    Counter& first = registry.counter("test_twice_total", "Help.", {"a"});
    Counter& second = registry.counter("test_twice_total", "Help.", {"a"});
    CHECK(&first == &second);
    first.with({"x"}).inc();
    CHECK(second.with({"x"}).value() == 1);
    Histogram& h1 = registry.histogram("test_twice_seconds", "Help.");
    Histogram& h2 = registry.histogram("test_twice_seconds", "Help.");
    CHECK(&h1 == &h2);
}

TEST_CASE("metrics render the same data as JSON", "[metrics]") {
    MetricsRegistry registry;
    fill_catalogue(registry);
    Json root = registry.render_json();
    REQUIRE(root);
    // Through text and back, as a client would see it.
    Json parsed = json_parse(json_print(root.get()));
    REQUIRE(parsed);

    const cJSON* completed =
        cJSON_GetObjectItemCaseSensitive(parsed.get(), "outbox_events_completed_total");
    REQUIRE(completed);
    CHECK(json_string(completed, "type") == "counter");
    const cJSON* series = cJSON_GetObjectItemCaseSensitive(completed, "series");
    REQUIRE(cJSON_IsArray(series));
    REQUIRE(cJSON_GetArraySize(series) == 2);
    const cJSON* first = cJSON_GetArrayItem(series, 0);
    CHECK(json_string(cJSON_GetObjectItemCaseSensitive(first, "labels"), "event_type") ==
          "order.created");
    CHECK(cJSON_GetObjectItemCaseSensitive(first, "value")->valuedouble == 3);

    const cJSON* latency =
        cJSON_GetObjectItemCaseSensitive(parsed.get(), "outbox_event_latency_seconds");
    REQUIRE(latency);
    CHECK(json_string(latency, "type") == "histogram");
    const cJSON* only = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(latency, "series"), 0);
    REQUIRE(only);
    CHECK(cJSON_GetObjectItemCaseSensitive(only, "count")->valuedouble == 4);
    const cJSON* buckets = cJSON_GetObjectItemCaseSensitive(only, "buckets");
    REQUIRE(cJSON_GetArraySize(buckets) == static_cast<int>(default_latency_buckets().size()) + 1);
    const cJSON* last = cJSON_GetArrayItem(buckets, cJSON_GetArraySize(buckets) - 1);
    CHECK(json_string(last, "le") == "+Inf");
    CHECK(cJSON_GetObjectItemCaseSensitive(last, "count")->valuedouble == 4);

    const cJSON* dlq = cJSON_GetObjectItemCaseSensitive(parsed.get(), "outbox_dlq_rows");
    REQUIRE(dlq);
    CHECK(cJSON_GetObjectItemCaseSensitive(
              cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(dlq, "series"), 0), "value")
              ->valuedouble == 7);
}

TEST_CASE("metrics text is accepted by the reference Prometheus parser", "[metrics]") {
    MetricsRegistry registry(3);
    fill_catalogue(registry);
    auto& escaped = registry.counter("test_escapes_total", "Help with \\ and\nnewline.", {"v"});
    escaped.with({"a\\b\"c\nd"}).inc();
    for (int i = 0; i < 10; ++i) {
        escaped.with({std::to_string(i)}).inc();
    }
    registry.gauge("test_special_values", "NaN and infinities.", {"k"}).with({"nan"}).set(NAN);
    registry.gauge("test_special_values", "NaN and infinities.", {"k"}).with({"inf"}).set(INFINITY);

    std::optional<int> status = reference_parser_status(registry.render_prometheus());
    if (!status) {
        WARN("prometheus_client for /usr/bin/python3 is not installed; reference check skipped");
        return;
    }
    CHECK(*status == 0);
    // The reference parser rejects broken input, so a pass above means something.
    CHECK(reference_parser_status("# TYPE x counter\nx{a=\"unterminated} 1\n", true) == 1);
}

TEST_CASE("sink metrics: published, failed and connected per sink and kind", "[metrics][sink]") {
    MetricsRegistry registry;
    SinkMetrics sinks(registry);
    // A subscriber name is whatever the handlers file says: quotes, backslashes, newlines.
    const std::string odd = "orders \"eu\"\\west\nline";
    sinks.declare("orders-to-kafka", "kafka");
    sinks.declare(odd, "nats");

    const auto parsed = [&] {
        const std::string text = registry.render_prometheus();
        INFO(text);
        return parse_exposition(text);
    };
    {
        // Declared sinks are exported at 0 before anything happens to them.
        const Exposition exposition = parsed();
        CHECK(exposition.family("outbox_sink_published_total").type == "counter");
        CHECK(exposition.family("outbox_sink_failed_total").type == "counter");
        CHECK(exposition.family("outbox_sink_connected").type == "gauge");
        for (const auto& [sink, kind] :
             {std::pair<std::string, std::string>{"orders-to-kafka", "kafka"}, {odd, "nats"}}) {
            const Labels labels{{"sink", sink}, {"kind", kind}};
            CHECK(exposition.value("outbox_sink_published_total", "outbox_sink_published_total",
                                   labels) == 0);
            CHECK(exposition.value("outbox_sink_failed_total", "outbox_sink_failed_total",
                                   labels) == 0);
            CHECK(exposition.value("outbox_sink_connected", "outbox_sink_connected", labels) == 0);
        }
    }

    for (int i = 0; i < 5; ++i) {
        sinks.published("orders-to-kafka", "kafka");
    }
    sinks.failed("orders-to-kafka", "kafka");
    sinks.published(odd, "nats");
    sinks.failed(odd, "nats");
    sinks.failed(odd, "nats");
    // Three processes connect, one loses its connection.
    sinks.connected("orders-to-kafka", "kafka", 1);
    sinks.connected("orders-to-kafka", "kafka", 1);
    sinks.connected("orders-to-kafka", "kafka", 1);
    sinks.connected("orders-to-kafka", "kafka", -1);
    sinks.connected(odd, "nats", 1);
    // The same name under another kind is another sink (a reload may change a subscriber's kind).
    sinks.published("orders-to-kafka", "amqp");

    const Exposition exposition = parsed();
    const Labels kafka{{"sink", "orders-to-kafka"}, {"kind", "kafka"}};
    const Labels nats{{"sink", odd}, {"kind", "nats"}};
    CHECK(exposition.value("outbox_sink_published_total", "outbox_sink_published_total", kafka) ==
          5);
    CHECK(exposition.value("outbox_sink_failed_total", "outbox_sink_failed_total", kafka) == 1);
    CHECK(exposition.value("outbox_sink_connected", "outbox_sink_connected", kafka) == 2);
    CHECK(exposition.value("outbox_sink_published_total", "outbox_sink_published_total", nats) ==
          1);
    CHECK(exposition.value("outbox_sink_failed_total", "outbox_sink_failed_total", nats) == 2);
    CHECK(exposition.value("outbox_sink_connected", "outbox_sink_connected", nats) == 1);
    CHECK(exposition.value("outbox_sink_published_total", "outbox_sink_published_total",
                           {{"sink", "orders-to-kafka"}, {"kind", "amqp"}}) == 1);
    // The odd name is escaped, never written raw.
    const std::string text = registry.render_prometheus();
    CHECK(text.find("sink=\"orders \\\"eu\\\"\\\\west\\nline\"") != std::string::npos);

    // Registering the families again (a second SinkMetrics on the same registry) shares them.
    SinkMetrics again(registry);
    again.published("orders-to-kafka", "kafka");
    CHECK(parse_exposition(registry.render_prometheus())
              .value("outbox_sink_published_total", "outbox_sink_published_total", kafka) == 6);

    std::optional<int> status = reference_parser_status(registry.render_prometheus());
    if (!status) {
        WARN("prometheus_client for /usr/bin/python3 is not installed; reference check skipped");
        return;
    }
    CHECK(*status == 0);
}
