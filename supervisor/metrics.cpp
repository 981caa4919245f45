#include "supervisor/metrics.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <new>
#include <utility>

namespace outbox {

namespace {

constexpr std::size_t kMaxLabelValueBytes = 256;
constexpr const char* kOverflowLabelValue = "other";

[[noreturn]] void metrics_invariant_failed(std::string_view what, std::string_view detail) {
    spdlog::critical("metrics: {}: {}", what, detail);
    std::abort();
}

bool is_valid_metric_name(std::string_view name) {
    if (name.empty()) {
        return false;
    }
    for (std::size_t i = 0; i < name.size(); ++i) {
        char c = name[i];
        bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        bool digit = c >= '0' && c <= '9';
        if (!letter && !(digit && i > 0)) {
            return false;
        }
    }
    return true;
}

// Label names follow the metric name grammar without ':'; names starting with "__" are
// reserved for Prometheus itself.
bool is_valid_label_name(std::string_view name) {
    if (name.empty() || name.starts_with("__")) {
        return false;
    }
    for (std::size_t i = 0; i < name.size(); ++i) {
        char c = name[i];
        bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        bool digit = c >= '0' && c <= '9';
        if (!letter && !(digit && i > 0)) {
            return false;
        }
    }
    return true;
}

// Cuts `value` to at most kMaxLabelValueBytes without splitting a UTF-8 sequence, because the
// exposition format requires label values to be valid UTF-8.
void truncate_label_value(std::string& value) {
    if (value.size() <= kMaxLabelValueBytes) {
        return;
    }
    std::size_t end = kMaxLabelValueBytes;
    while (end > 0 && (static_cast<unsigned char>(value[end]) & 0xC0) == 0x80) {
        --end;
    }
    value.resize(end);
}

// The shortest text that reads back as the same double, in the spelling the exposition format
// uses for the special values.
std::string format_value(double value) {
    if (std::isnan(value)) {
        return "NaN";
    }
    if (std::isinf(value)) {
        return value > 0 ? "+Inf" : "-Inf";
    }
    char buffer[64];
    auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
    return std::string(buffer, result.ptr);
}

void append_escaped_help(std::string& out, std::string_view help) {
    for (char c : help) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
}

void append_escaped_label_value(std::string& out, std::string_view value) {
    for (char c : value) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
}

std::string_view type_name(MetricType type) {
    switch (type) {
    case MetricType::counter:
        return "counter";
    case MetricType::gauge:
        return "gauge";
    case MetricType::histogram:
        return "histogram";
    }
    return "untyped";
}

void check_json(const void* item) {
    if (item == nullptr) {
        throw std::bad_alloc();
    }
}

Json new_json_object() {
    Json object(cJSON_CreateObject());
    check_json(object.get());
    return object;
}

void add_number(cJSON* object, const char* key, double value) {
    check_json(cJSON_AddNumberToObject(object, key, value));
}

// Moves `item` into `object` under `key`; the object owns it from then on.
void add_item(cJSON* object, const char* key, Json item) {
    if (!cJSON_AddItemToObject(object, key, item.get())) {
        throw std::bad_alloc();
    }
    item.release();
}

void add_to_array(cJSON* array, Json item) {
    if (!cJSON_AddItemToArray(array, item.get())) {
        throw std::bad_alloc();
    }
    item.release();
}

} // namespace

const std::vector<double>& default_latency_buckets() {
    static const std::vector<double> buckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5,   1,      2.5,   5,    10,    30,   60};
    return buckets;
}

// --- series ---

void CounterSeries::inc(double amount) {
    if (!(amount >= 0) || std::isinf(amount)) {
        metrics_invariant_failed("counter increment must be finite and non-negative",
                                 format_value(amount));
    }
    value_ += amount;
}

void GaugeSeries::set(double value) {
    function_ = nullptr;
    value_ = value;
}

void GaugeSeries::inc(double amount) {
    if (function_) {
        value_ = value();
        function_ = nullptr;
    }
    value_ += amount;
}

void GaugeSeries::dec(double amount) {
    inc(-amount);
}

void GaugeSeries::set_function(std::function<double()> function) {
    function_ = std::move(function);
}

double GaugeSeries::value() const {
    if (!function_) {
        return value_;
    }
    try {
        return function_();
    } catch (const std::exception& e) {
        spdlog::debug("metrics: gauge function failed: {}", e.what());
    } catch (...) {
        spdlog::debug("metrics: gauge function failed with an unknown exception");
    }
    return std::nan("");
}

HistogramSeries::HistogramSeries(const std::vector<double>* upper_bounds)
    : upper_bounds_(upper_bounds), bucket_counts_(upper_bounds->size() + 1, 0) {}

void HistogramSeries::observe(double value) {
    if (std::isnan(value)) {
        spdlog::debug("metrics: NaN observation dropped");
        return;
    }
    // The first bound >= value: buckets are "less than or equal" (le).
    auto bound = std::lower_bound(upper_bounds_->begin(), upper_bounds_->end(), value);
    ++bucket_counts_[static_cast<std::size_t>(bound - upper_bounds_->begin())];
    ++count_;
    sum_ += value;
}

std::vector<std::uint64_t> HistogramSeries::cumulative_counts() const {
    std::vector<std::uint64_t> cumulative(bucket_counts_.size());
    std::uint64_t running = 0;
    for (std::size_t i = 0; i < bucket_counts_.size(); ++i) {
        running += bucket_counts_[i];
        cumulative[i] = running;
    }
    return cumulative;
}

// --- families ---

MetricFamily::MetricFamily(std::string name, std::string help, MetricType type,
                           std::vector<std::string> label_names, std::size_t max_series)
    : name_(std::move(name)), help_(std::move(help)), type_(type),
      label_names_(std::move(label_names)), max_series_(max_series) {
    if (!is_valid_metric_name(name_)) {
        metrics_invariant_failed("invalid metric name", name_);
    }
    for (std::size_t i = 0; i < label_names_.size(); ++i) {
        const std::string& label = label_names_[i];
        if (!is_valid_label_name(label)) {
            metrics_invariant_failed("invalid label name", name_ + " " + label);
        }
        // A histogram's buckets are told apart by "le"; a label of that name would collide.
        if (type_ == MetricType::histogram && label == "le") {
            metrics_invariant_failed("histogram label named le", name_);
        }
        if (std::find(label_names_.begin(), label_names_.begin() + static_cast<long>(i), label) !=
            label_names_.begin() + static_cast<long>(i)) {
            metrics_invariant_failed("duplicate label name", name_ + " " + label);
        }
    }
    if (max_series_ == 0) {
        metrics_invariant_failed("series limit must be positive", name_);
    }
}

LabelValues MetricFamily::admit(LabelValues values, std::size_t current_series,
                                const std::function<bool(const LabelValues&)>& known) {
    if (values.size() != label_names_.size()) {
        metrics_invariant_failed("wrong number of label values",
                                 name_ + " expects " + std::to_string(label_names_.size()) +
                                     ", got " + std::to_string(values.size()));
    }
    for (std::string& value : values) {
        truncate_label_value(value);
    }
    if (current_series < max_series_ || known(values)) {
        return values;
    }
    if (!overflow_logged_) {
        overflow_logged_ = true;
        spdlog::warn("metric {} reached its limit of {} label combinations; further ones are "
                     "recorded with the label value \"{}\"",
                     name_, max_series_, kOverflowLabelValue);
    }
    return LabelValues(label_names_.size(), kOverflowLabelValue);
}

void MetricFamily::render_header(std::string& out) const {
    out += "# HELP ";
    out += name_;
    out += ' ';
    append_escaped_help(out, help_);
    out += "\n# TYPE ";
    out += name_;
    out += ' ';
    out += type_name(type_);
    out += '\n';
}

std::string MetricFamily::render_labels(const LabelValues& values, std::string_view extra_name,
                                        std::string_view extra_value) const {
    if (values.empty() && extra_name.empty()) {
        return {};
    }
    std::string out = "{";
    for (std::size_t i = 0; i < values.size(); ++i) {
        if (i > 0) {
            out += ',';
        }
        out += label_names_[i];
        out += "=\"";
        append_escaped_label_value(out, values[i]);
        out += '"';
    }
    if (!extra_name.empty()) {
        if (!values.empty()) {
            out += ',';
        }
        out += extra_name;
        out += "=\"";
        append_escaped_label_value(out, extra_value);
        out += '"';
    }
    out += '}';
    return out;
}

Json MetricFamily::labels_json(const LabelValues& values) const {
    Json labels = new_json_object();
    for (std::size_t i = 0; i < values.size(); ++i) {
        check_json(
            cJSON_AddStringToObject(labels.get(), label_names_[i].c_str(), values[i].c_str()));
    }
    return labels;
}

namespace {

// {"type", "help", "series": []}; returns the object and a borrowed pointer to its array.
std::pair<Json, cJSON*> family_json(const MetricFamily& family) {
    Json object = new_json_object();
    check_json(cJSON_AddStringToObject(object.get(), "type",
                                       std::string(type_name(family.type())).c_str()));
    check_json(cJSON_AddStringToObject(object.get(), "help", family.help().c_str()));
    cJSON* series = cJSON_AddArrayToObject(object.get(), "series");
    check_json(series);
    return {std::move(object), series};
}

void render_sample(std::string& out, const std::string& name, std::string_view suffix,
                   const std::string& labels, double value) {
    out += name;
    out += suffix;
    out += labels;
    out += ' ';
    out += format_value(value);
    out += '\n';
}

} // namespace

Counter::Counter(std::string name, std::string help, std::vector<std::string> label_names,
                 std::size_t max_series)
    : MetricFamily(std::move(name), std::move(help), MetricType::counter, std::move(label_names),
                   max_series) {}

CounterSeries& Counter::with(LabelValues values) {
    LabelValues key = admit(std::move(values), series_.size(),
                            [this](const LabelValues& v) { return series_.contains(v); });
    return series_[std::move(key)];
}

void Counter::render_prometheus(std::string& out) const {
    render_header(out);
    for (const auto& [values, series] : series_) {
        render_sample(out, name(), "", render_labels(values), series.value());
    }
}

Json Counter::render_json() const {
    auto [object, array] = family_json(*this);
    for (const auto& [values, series] : series_) {
        Json item = new_json_object();
        add_item(item.get(), "labels", labels_json(values));
        add_number(item.get(), "value", series.value());
        add_to_array(array, std::move(item));
    }
    return std::move(object);
}

Gauge::Gauge(std::string name, std::string help, std::vector<std::string> label_names,
             std::size_t max_series)
    : MetricFamily(std::move(name), std::move(help), MetricType::gauge, std::move(label_names),
                   max_series) {}

GaugeSeries& Gauge::with(LabelValues values) {
    LabelValues key = admit(std::move(values), series_.size(),
                            [this](const LabelValues& v) { return series_.contains(v); });
    return series_[std::move(key)];
}

void Gauge::render_prometheus(std::string& out) const {
    render_header(out);
    for (const auto& [values, series] : series_) {
        render_sample(out, name(), "", render_labels(values), series.value());
    }
}

Json Gauge::render_json() const {
    auto [object, array] = family_json(*this);
    for (const auto& [values, series] : series_) {
        Json item = new_json_object();
        add_item(item.get(), "labels", labels_json(values));
        // cJSON writes NaN and infinities as null, which is what a JSON reader can take.
        add_number(item.get(), "value", series.value());
        add_to_array(array, std::move(item));
    }
    return std::move(object);
}

Histogram::Histogram(std::string name, std::string help, std::vector<std::string> label_names,
                     std::vector<double> upper_bounds, std::size_t max_series)
    : MetricFamily(std::move(name), std::move(help), MetricType::histogram, std::move(label_names),
                   max_series),
      upper_bounds_(std::move(upper_bounds)) {
    for (std::size_t i = 0; i < upper_bounds_.size(); ++i) {
        if (!std::isfinite(upper_bounds_[i]) ||
            (i > 0 && upper_bounds_[i] <= upper_bounds_[i - 1])) {
            metrics_invariant_failed("histogram buckets must be finite and strictly increasing",
                                     this->name());
        }
    }
}

HistogramSeries& Histogram::with(LabelValues values) {
    LabelValues key = admit(std::move(values), series_.size(),
                            [this](const LabelValues& v) { return series_.contains(v); });
    auto it = series_.find(key);
    if (it == series_.end()) {
        it = series_.emplace(std::move(key), HistogramSeries(&upper_bounds_)).first;
    }
    return it->second;
}

void Histogram::render_prometheus(std::string& out) const {
    render_header(out);
    for (const auto& [values, series] : series_) {
        std::vector<std::uint64_t> cumulative = series.cumulative_counts();
        for (std::size_t i = 0; i < upper_bounds_.size(); ++i) {
            render_sample(out, name(), "_bucket",
                          render_labels(values, "le", format_value(upper_bounds_[i])),
                          static_cast<double>(cumulative[i]));
        }
        render_sample(out, name(), "_bucket", render_labels(values, "le", "+Inf"),
                      static_cast<double>(series.count()));
        std::string labels = render_labels(values);
        render_sample(out, name(), "_sum", labels, series.sum());
        render_sample(out, name(), "_count", labels, static_cast<double>(series.count()));
    }
}

Json Histogram::render_json() const {
    auto [object, array] = family_json(*this);
    for (const auto& [values, series] : series_) {
        Json item = new_json_object();
        add_item(item.get(), "labels", labels_json(values));
        add_number(item.get(), "count", static_cast<double>(series.count()));
        add_number(item.get(), "sum", series.sum());
        cJSON* buckets = cJSON_AddArrayToObject(item.get(), "buckets");
        check_json(buckets);
        std::vector<std::uint64_t> cumulative = series.cumulative_counts();
        for (std::size_t i = 0; i <= upper_bounds_.size(); ++i) {
            Json bucket = new_json_object();
            if (i < upper_bounds_.size()) {
                add_number(bucket.get(), "le", upper_bounds_[i]);
            } else {
                // JSON has no infinity; the exposition format's spelling keeps it readable.
                check_json(cJSON_AddStringToObject(bucket.get(), "le", "+Inf"));
            }
            add_number(bucket.get(), "count", static_cast<double>(cumulative[i]));
            add_to_array(buckets, std::move(bucket));
        }
        add_to_array(array, std::move(item));
    }
    return std::move(object);
}

// --- registry ---

MetricsRegistry::MetricsRegistry(std::size_t max_series_per_family)
    : max_series_per_family_(max_series_per_family) {}

template <typename Family, typename... Extra>
Family& MetricsRegistry::register_family(const std::string& name, const std::string& help,
                                         MetricType type, std::vector<std::string> label_names,
                                         Extra&&... extra) {
    auto it = families_.find(name);
    if (it != families_.end()) {
        MetricFamily& existing = *it->second;
        if (existing.type() != type || existing.label_names() != label_names) {
            metrics_invariant_failed("metric registered twice with another type or labels", name);
        }
        return static_cast<Family&>(existing);
    }
    bool unlabelled = label_names.empty();
    auto family = std::make_unique<Family>(name, help, std::move(label_names),
                                           std::forward<Extra>(extra)..., max_series_per_family_);
    Family& result = *family;
    families_.emplace(name, std::move(family));
    if (unlabelled) {
        result.with({});
    }
    return result;
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                  std::vector<std::string> label_names) {
    return register_family<Counter>(name, help, MetricType::counter, std::move(label_names));
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names) {
    return register_family<Gauge>(name, help, MetricType::gauge, std::move(label_names));
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names,
                                      std::vector<double> upper_bounds) {
    auto it = families_.find(name);
    if (it != families_.end() && it->second->type() == MetricType::histogram &&
        static_cast<Histogram&>(*it->second).upper_bounds() != upper_bounds) {
        metrics_invariant_failed("histogram registered twice with other buckets", name);
    }
    return register_family<Histogram>(name, help, MetricType::histogram, std::move(label_names),
                                      std::move(upper_bounds));
}

std::string MetricsRegistry::render_prometheus() const {
    std::string out;
    for (const auto& [name, family] : families_) {
        family->render_prometheus(out);
    }
    return out;
}

Json MetricsRegistry::render_json() const {
    Json root = new_json_object();
    for (const auto& [name, family] : families_) {
        add_item(root.get(), name.c_str(), family->render_json());
    }
    return root;
}

// --- sinks ---

SinkMetrics::SinkMetrics(MetricsRegistry& registry)
    : published_(registry.counter("outbox_sink_published_total",
                                  "Broker publications the broker acknowledged, by sink.",
                                  {"sink", "kind"})),
      failed_(registry.counter("outbox_sink_failed_total",
                               "Broker publications that failed (retryable or permanent), by sink.",
                               {"sink", "kind"})),
      connected_(registry.gauge("outbox_sink_connected",
                                "Handler processes whose connection to the sink's broker is up.",
                                {"sink", "kind"})) {}

SinkMetrics::Series& SinkMetrics::series(std::string_view sink, std::string_view kind) {
    auto it = series_.find(std::pair<std::string_view, std::string_view>(kind, sink));
    if (it == series_.end()) {
        LabelValues labels{std::string(sink), std::string(kind)};
        Series found{&published_.with(labels), &failed_.with(labels), &connected_.with(labels)};
        it = series_.emplace(std::pair<std::string, std::string>(kind, sink), found).first;
    }
    return it->second;
}

void SinkMetrics::declare(std::string_view sink, std::string_view kind) {
    static_cast<void>(series(sink, kind));
}

void SinkMetrics::published(std::string_view sink, std::string_view kind) {
    series(sink, kind).published->inc();
}

void SinkMetrics::failed(std::string_view sink, std::string_view kind) {
    series(sink, kind).failed->inc();
}

void SinkMetrics::connected(std::string_view sink, std::string_view kind, int delta) {
    series(sink, kind).connected->inc(delta);
}

} // namespace outbox
