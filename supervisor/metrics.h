// The supervisor's metrics: counters, gauges and histograms with labels, rendered as Prometheus
// text exposition format 0.0.4 (GET /metrics) and as JSON (GET /api/metrics/enhanced).
//
// Threading: everything here belongs to the supervisor's loop thread; there are no locks.
// Handler processes report through the channel and the supervisor records.
//
// Ownership: the registry owns its families and a family owns its series. The references that
// counter(), gauge(), histogram() and with() return stay valid for the registry's lifetime, so
// hot paths may look a series up once and keep the reference.
//
// Cardinality: label values come from data (event types are whatever the application writes),
// so each family admits at most `max_series_per_family` distinct label combinations. Values
// beyond that are recorded in one overflow series whose every label value is "other" (a warning
// is logged once per family), and label values longer than 256 bytes are truncated, so that a
// flood of distinct event types cannot grow memory or the exposition without bound.
//
// Misuse that only a bug can cause (an invalid metric or label name, a name registered twice with
// another type or other labels, the wrong number of label values, a negative counter increment,
// unsorted histogram buckets) aborts with a message: it would otherwise silently produce an
// exposition that Prometheus rejects.
//
// Suggested catalogue (what the supervisor registers; labels in braces):
//   outbox_events_completed_total{event_type}      counter: events that reached COMPLETED
//   outbox_events_retried_total{event_type}        counter: failed attempts sent back to PENDING
//   outbox_events_dead_lettered_total{event_type}  counter: events moved to the DLQ
//   outbox_event_latency_seconds                   histogram: "createdAt" to completion
//   outbox_handler_duration_seconds{event_type}    histogram: one attempt in a handler process
//   outbox_events_in_flight                        gauge: claimed events not yet finished
//   outbox_rows{status}                            gauge: "Outbox" rows by status (last count)
//   outbox_dlq_rows                                gauge: "DlqEventLog" rows (last count)
//   outbox_worker_restarts_total{reason}           counter: handler processes replaced
//   outbox_database_up                             gauge: 1 while the database answers, else 0
//   outbox_leases_lost_total                       counter: leases found taken or expired
//   outbox_unsubscribed_events{event_type}         gauge: due events no subscriber matches
//   outbox_retention_deleted_total                 counter: completed rows deleted by retention
//   outbox_sink_published_total{sink,kind}         counter: broker publications acknowledged
//   outbox_sink_failed_total{sink,kind}            counter: broker publications that failed
//   outbox_sink_connected{sink,kind}               gauge: handler processes whose sink is connected
#pragma once

#include "common/json.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox {

// The Content-Type of render_prometheus()'s output.
inline constexpr std::string_view kPrometheusContentType =
    "text/plain; version=0.0.4; charset=utf-8";

// Upper bounds in seconds for latencies from 1 ms to 60 s (an implicit +Inf bucket follows).
const std::vector<double>& default_latency_buckets();

using LabelValues = std::vector<std::string>;

enum class MetricType { counter, gauge, histogram };

class CounterSeries {
  public:
    // `amount` must be finite and >= 0: a counter only goes up.
    void inc(double amount = 1);
    double value() const { return value_; }

  private:
    double value_ = 0;
};

class GaugeSeries {
  public:
    void set(double value);
    void inc(double amount = 1);
    void dec(double amount = 1);
    // Computes the value when it is rendered (or read) instead; set(), inc() and dec() replace
    // the function with a stored value again. The function runs on the loop thread inside
    // render_*(); if it throws, the gauge renders as NaN.
    void set_function(std::function<double()> function);
    double value() const;

  private:
    double value_ = 0;
    std::function<double()> function_;
};

class HistogramSeries {
  public:
    explicit HistogramSeries(const std::vector<double>* upper_bounds);

    // A NaN observation is dropped (it would poison the sum); anything else lands in the first
    // bucket whose upper bound is >= it, or in +Inf.
    void observe(double value);
    std::uint64_t count() const { return count_; }
    double sum() const { return sum_; }
    const std::vector<double>& upper_bounds() const { return *upper_bounds_; }
    // Cumulative counts, one per upper bound and a last one for +Inf (equal to count()).
    std::vector<std::uint64_t> cumulative_counts() const;

  private:
    const std::vector<double>* upper_bounds_;
    std::vector<std::uint64_t> bucket_counts_; // per bucket, not cumulative; +Inf last
    std::uint64_t count_ = 0;
    double sum_ = 0;
};

// What every family shares: its name, help, type, label names and the cardinality cap.
class MetricFamily {
  public:
    MetricFamily(std::string name, std::string help, MetricType type,
                 std::vector<std::string> label_names, std::size_t max_series);
    virtual ~MetricFamily() = default;
    MetricFamily(const MetricFamily&) = delete;
    MetricFamily& operator=(const MetricFamily&) = delete;

    const std::string& name() const { return name_; }
    const std::string& help() const { return help_; }
    MetricType type() const { return type_; }
    const std::vector<std::string>& label_names() const { return label_names_; }
    virtual std::size_t series_count() const = 0;

    // Appends this family's # HELP, # TYPE and sample lines.
    virtual void render_prometheus(std::string& out) const = 0;
    // This family as a JSON object: {"type", "help", "series": [{"labels": {...}, ...}]}.
    virtual Json render_json() const = 0;

  protected:
    // The key under which `values` are recorded: checked for arity, truncated, and replaced by
    // the overflow key when the family is full and does not know them yet.
    LabelValues admit(LabelValues values, std::size_t current_series,
                      const std::function<bool(const LabelValues&)>& known);
    void render_header(std::string& out) const;
    // `{a="x",b="y"` without the closing brace (empty when there are no labels and no extra).
    std::string render_labels(const LabelValues& values, std::string_view extra_name = {},
                              std::string_view extra_value = {}) const;
    Json labels_json(const LabelValues& values) const;

  private:
    std::string name_;
    std::string help_;
    MetricType type_;
    std::vector<std::string> label_names_;
    std::size_t max_series_;
    bool overflow_logged_ = false;
};

class Counter final : public MetricFamily {
  public:
    Counter(std::string name, std::string help, std::vector<std::string> label_names,
            std::size_t max_series);

    CounterSeries& with(LabelValues values);
    // For a family without labels.
    void inc(double amount = 1) { with({}).inc(amount); }
    std::size_t series_count() const override { return series_.size(); }
    void render_prometheus(std::string& out) const override;
    Json render_json() const override;

  private:
    std::map<LabelValues, CounterSeries> series_;
};

class Gauge final : public MetricFamily {
  public:
    Gauge(std::string name, std::string help, std::vector<std::string> label_names,
          std::size_t max_series);

    GaugeSeries& with(LabelValues values);
    // For a family without labels.
    void set(double value) { with({}).set(value); }
    void set_function(std::function<double()> function) {
        with({}).set_function(std::move(function));
    }
    std::size_t series_count() const override { return series_.size(); }
    void render_prometheus(std::string& out) const override;
    Json render_json() const override;

  private:
    std::map<LabelValues, GaugeSeries> series_;
};

class Histogram final : public MetricFamily {
  public:
    Histogram(std::string name, std::string help, std::vector<std::string> label_names,
              std::vector<double> upper_bounds, std::size_t max_series);

    HistogramSeries& with(LabelValues values);
    // For a family without labels.
    void observe(double value) { with({}).observe(value); }
    const std::vector<double>& upper_bounds() const { return upper_bounds_; }
    std::size_t series_count() const override { return series_.size(); }
    void render_prometheus(std::string& out) const override;
    Json render_json() const override;

  private:
    std::vector<double> upper_bounds_;
    std::map<LabelValues, HistogramSeries> series_;
};

class MetricsRegistry {
  public:
    static constexpr std::size_t kDefaultMaxSeriesPerFamily = 1000;

    explicit MetricsRegistry(std::size_t max_series_per_family = kDefaultMaxSeriesPerFamily);
    MetricsRegistry(const MetricsRegistry&) = delete;
    MetricsRegistry& operator=(const MetricsRegistry&) = delete;

    // Registers a family, or returns the one already registered under `name` when its type and
    // label names are the same. A family without labels has its single series from the start,
    // so it is exported (as 0) before anything is recorded.
    Counter& counter(const std::string& name, const std::string& help,
                     std::vector<std::string> label_names = {});
    Gauge& gauge(const std::string& name, const std::string& help,
                 std::vector<std::string> label_names = {});
    // `upper_bounds` must be finite and strictly increasing; +Inf is implicit.
    Histogram& histogram(const std::string& name, const std::string& help,
                         std::vector<std::string> label_names = {},
                         std::vector<double> upper_bounds = default_latency_buckets());

    // Families sorted by name, series by label values: the output is stable for equal data.
    std::string render_prometheus() const;
    // {"<family name>": <MetricFamily::render_json()>, ...}, in the same order.
    Json render_json() const;

  private:
    template <typename Family, typename... Extra>
    Family& register_family(const std::string& name, const std::string& help, MetricType type,
                            std::vector<std::string> label_names, Extra&&... extra);

    std::size_t max_series_per_family_;
    std::map<std::string, std::unique_ptr<MetricFamily>> families_;
};

// The per-sink metrics of the broker handler kinds (worker/sink.h), labelled with the subscriber's
// name (`sink`) and its kind (kafka, nats, amqp, redis). The handler-process pool feeds them: the
// per-subscriber outcomes of every RESULT for published and failed, and the STATUS frames, and
// the end of each process, for connected. Series are looked up once per sink and kept.
class SinkMetrics {
  public:
    explicit SinkMetrics(MetricsRegistry& registry);
    SinkMetrics(const SinkMetrics&) = delete;
    SinkMetrics& operator=(const SinkMetrics&) = delete;

    // Exports the sink's three series at 0 before anything happens to it, so that a sink that
    // never connects shows as outbox_sink_connected 0 rather than not at all.
    void declare(std::string_view sink, std::string_view kind);
    // One publication acknowledged by the broker, or failed (retryable or permanent).
    void published(std::string_view sink, std::string_view kind);
    void failed(std::string_view sink, std::string_view kind);
    // One more handler process whose sink is connected (+1), or one fewer (-1).
    void connected(std::string_view sink, std::string_view kind, int delta);

  private:
    struct Series {
        CounterSeries* published;
        CounterSeries* failed;
        GaugeSeries* connected;
    };
    // Keys are (kind, sink); looked up by string_view without building strings.
    struct KeyLess {
        using is_transparent = void;
        template <typename A, typename B>
        bool operator()(const A& a, const B& b) const {
            return std::pair<std::string_view, std::string_view>(a.first, a.second) <
                   std::pair<std::string_view, std::string_view>(b.first, b.second);
        }
    };
    Series& series(std::string_view sink, std::string_view kind);

    Counter& published_;
    Counter& failed_;
    Gauge& connected_;
    std::map<std::pair<std::string, std::string>, Series, KeyLess> series_;
};

} // namespace outbox
