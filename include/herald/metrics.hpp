// MetricsRegistry: brokers, worker pools and NATS bridges registered under a name, written as one
// Prometheus exposition (text format 0.0.4) or OpenMetrics 1.0 text, to a std::string or a
// std::ostream. Standard library only: serving it over HTTP is the application's business (see
// examples/metrics_endpoint.cpp).
//
//     herald::MetricsRegistry metrics;
//     metrics.add_broker("orders", broker, {{"service", "checkout"}});
//     metrics.add_pool("handlers", pool);
//     std::string body = metrics.exposition();  // serve with herald::prometheus_content_type
//
// Names follow Prometheus's conventions: herald_<thing>_<what>, counters end in _total,
// durations are _seconds histograms, everything in base units. Label values are escaped.
#pragma once

#include <herald/broker.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace herald {

/// The two text formats MetricsRegistry writes.
enum class ExpositionFormat : std::uint8_t {
  prometheus,   ///< Prometheus text format 0.0.4
  openmetrics,  ///< OpenMetrics 1.0 text (ends with "# EOF")
};

/// The Content-Type of each format, for an HTTP response.
inline constexpr std::string_view prometheus_content_type =
    "text/plain; version=0.0.4; charset=utf-8";
inline constexpr std::string_view openmetrics_content_type =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Content-Type to answer with in `format`.
[[nodiscard]] constexpr std::string_view content_type(ExpositionFormat format) noexcept {
  return format == ExpositionFormat::openmetrics ? openmetrics_content_type
                                                 : prometheus_content_type;
}

/// The format to answer an HTTP request whose Accept header is `accept` with: OpenMetrics when
/// the scraper asks for it (Prometheus does), the 0.0.4 text format otherwise.
[[nodiscard]] constexpr ExpositionFormat negotiate_format(std::string_view accept) noexcept {
  return accept.find("application/openmetrics-text") != std::string_view::npos
             ? ExpositionFormat::openmetrics
             : ExpositionFormat::prometheus;
}

/// Constant labels added to every sample of one registered source, e.g. {{"service", "checkout"}}.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

namespace detail {

/// Appends `v` as a label value: backslash, double quote and newline escaped.
inline void append_label_value(std::string& out, std::string_view v) {
  for (const char c : v) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

/// Appends `name="value"` (escaped), with a comma first unless `out` is empty.
inline void append_label(std::string& out, std::string_view name, std::string_view value) {
  if (!out.empty()) out += ',';
  out += name;
  out += "=\"";
  append_label_value(out, value);
  out += '"';
}

// Appended as pointer and length: g++ 12 -O3 warned wrongly (-Wrestrict) about the iterator
// pair overload once write_scrape grew (the JetStream bridge families).
inline void append_number(std::string& out, std::uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

inline void append_number(std::string& out, double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

inline double to_seconds(std::chrono::nanoseconds d) noexcept {
  return static_cast<double>(d.count()) / 1e9;
}

/// Writes metric families: the HELP/TYPE (and UNIT) lines, then samples with a rendered label
/// set. Knows where the two formats differ (counter and info family names, UNIT, the end).
class ExpositionWriter {
 public:
  ExpositionWriter(std::string& out, ExpositionFormat format) : out_(out), format_(format) {}

  enum class Type { counter, gauge, histogram, info };

  /// Starts a family. `name` is the sample name's stem: counters without "_total", info
  /// families without "_info"; units already in the name (e.g. "_seconds") are passed as `unit`.
  void family(std::string_view name, Type type, std::string_view help, std::string_view unit = {}) {
    name_ = name;
    type_ = type;
    const bool om = format_ == ExpositionFormat::openmetrics;
    std::string_view family = name;
    std::string prom_name;
    if (!om) {
      // In 0.0.4 a family is named like its samples.
      prom_name = std::string(name);
      if (type == Type::counter) prom_name += "_total";
      if (type == Type::info) prom_name += "_info";
      family = prom_name;
    }
    out_ += "# HELP ";
    out_ += family;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += family;
    out_ += ' ';
    out_ += type_name(type, om);
    out_ += '\n';
    if (om && !unit.empty()) {
      out_ += "# UNIT ";
      out_ += family;
      out_ += ' ';
      out_ += unit;
      out_ += '\n';
    }
  }

  /// One sample of the current (non-histogram) family.
  template <class V>
  void sample(std::string_view labels, V value, std::string_view extra = {}) {
    out_ += name_;
    if (type_ == Type::counter) out_ += "_total";
    if (type_ == Type::info) out_ += "_info";
    write_labels(labels, extra);
    out_ += ' ';
    append_number(out_, value);
    out_ += '\n';
  }

  /// One histogram of the current family, in seconds.
  void histogram(std::string_view labels, const DurationHistogram& h) {
    std::uint64_t cumulative = 0;
    std::string le;
    for (std::size_t i = 0; i < DurationHistogram::buckets; ++i) {
      cumulative += h.counts[i];
      le = "le=\"";
      if (i < DurationHistogram::finite_buckets) {
        append_number(le, static_cast<double>(DurationHistogram::upper_bound_ns(i)) / 1e9);
      } else {
        le += "+Inf";
      }
      le += '"';
      out_ += name_;
      out_ += "_bucket";
      write_labels(labels, le);
      out_ += ' ';
      append_number(out_, cumulative);
      out_ += '\n';
    }
    out_ += name_;
    out_ += "_sum";
    write_labels(labels, {});
    out_ += ' ';
    append_number(out_, to_seconds(h.sum));
    out_ += '\n';
    out_ += name_;
    out_ += "_count";
    write_labels(labels, {});
    out_ += ' ';
    append_number(out_, cumulative);
    out_ += '\n';
  }

  void finish() {
    if (format_ == ExpositionFormat::openmetrics) out_ += "# EOF\n";
  }

 private:
  static std::string_view type_name(Type t, bool om) noexcept {
    switch (t) {
      case Type::counter:
        return "counter";
      case Type::gauge:
        return "gauge";
      case Type::histogram:
        return "histogram";
      case Type::info:
        return om ? "info" : "gauge";
    }
    return "untyped";
  }

  void write_labels(std::string_view labels, std::string_view extra) {
    if (labels.empty() && extra.empty()) return;
    out_ += '{';
    out_ += labels;
    if (!labels.empty() && !extra.empty()) out_ += ',';
    out_ += extra;
    out_ += '}';
  }

  std::string& out_;
  ExpositionFormat format_;
  std::string_view name_;
  Type type_ = Type::gauge;
};

/// What one scrape read from one subscription; `labels` identifies it (rendered, escaped).
struct SubscriptionSample {
  std::uint64_t id = 0;
  std::string labels;
  Overflow policy = Overflow::drop_incoming;
  std::size_t capacity = 0;
  SubscriptionKind kind = SubscriptionKind::pull;
  SubscriptionStats stats;
  HandlerCounters handler;
  std::chrono::nanoseconds lag{0};
  std::size_t histogram = 0;  // index into BrokerSample::histograms (handler subscriptions)
};

struct TopicSample {
  std::string labels;
  std::uint64_t published = 0, dropped = 0;
};

struct BrokerSample {
  std::string labels;
  BrokerStats stats;
  std::vector<SubscriptionSample> subscriptions;
  std::vector<DurationHistogram> histograms;
  std::vector<TopicSample> topics;
};

struct PoolSample {
  std::string labels;
  WorkerPoolStats stats;
};

struct BridgeSample {
  std::string labels;
  BridgeStats stats;
};

struct Scrape {
  std::vector<BrokerSample> brokers;
  std::vector<PoolSample> pools;
  std::vector<BridgeSample> bridges;
};

}  // namespace detail

/// Brokers, worker pools and NATS bridges, each registered under a name (its `broker`, `pool` or
/// `bridge` label) and optional constant labels, written as one exposition on request.
///
/// What each family means is listed in README.md, "Operating herald". Registered objects are
/// held by reference: each must outlive the registry or be removed first.
/// Thread-safety: every member may be called concurrently (a mutex serialises them); writing
/// an exposition reads counters while publishers run, so one exposition is not an atomic
/// snapshot (see SubscriptionStats).
/// Cost: nothing on any hot path; an exposition is O(subscriptions), about 2 us per subscription
/// (see bench_metrics).
class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  /// Registers `broker`: its totals, each live subscription (and its handler) and the topics it
  /// tracks (Broker::track_topics).
  /// Throws: std::invalid_argument when a broker is registered under `name` already, or a
  /// constant label's name is invalid or reserved; nothing is registered then.
  template <class T>
  void add_broker(std::string name, const Broker<T>& broker, MetricLabels labels = {}) {
    const Broker<T>* b = &broker;
    add(Kind::broker, std::move(name), std::move(labels),
        [b](const std::string& prefix, detail::Scrape& out) { collect(*b, prefix, out); });
  }

  /// Registers a worker pool. Throws: as add_broker.
  void add_pool(std::string name, const WorkerPool& pool, MetricLabels labels = {}) {
    const WorkerPool* p = &pool;
    add(Kind::pool, std::move(name), std::move(labels),
        [p](const std::string& prefix, detail::Scrape& out) {
          out.pools.push_back({prefix, p->stats()});
        });
  }

  /// Registers a NATS bridge (herald::nats::Bridge), or anything with `stats()` returning
  /// BridgeStats; this header does not need the NATS client. Throws: as add_broker.
  template <class B>
  requires(requires(const B& b) {
    { b.stats() } -> std::convertible_to<BridgeStats>;
  }) void add_bridge(std::string name, const B& bridge, MetricLabels labels = {}) {
    const B* p = &bridge;
    add_bridge(
        std::move(name), [p] { return BridgeStats(p->stats()); }, std::move(labels));
  }

  /// Registers a bridge through a function that reads its counters. Throws: as add_broker.
  void add_bridge(std::string name, std::function<BridgeStats()> stats, MetricLabels labels = {}) {
    add(Kind::bridge, std::move(name), std::move(labels),
        [f = std::move(stats)](const std::string& prefix, detail::Scrape& out) {
          out.bridges.push_back({prefix, f()});
        });
  }

  /// Unregisters what was registered under `name` (brokers, pools and bridges alike); true when
  /// something was.
  bool remove(std::string_view name) {
    const std::lock_guard lock(mutex_);
    const auto before = sources_.size();
    std::erase_if(sources_, [&](const Source& s) { return s.name == name; });
    return sources_.size() != before;
  }

  /// Writes one exposition of everything registered.
  void write(std::string& out, ExpositionFormat format = ExpositionFormat::prometheus) const {
    detail::Scrape scrape;
    {
      const std::lock_guard lock(mutex_);
      for (const Source& s : sources_)
        s.collect(s.prefix, scrape);
    }
    write_scrape(out, scrape, format);
  }

  /// As above, to a stream.
  void write(std::ostream& os, ExpositionFormat format = ExpositionFormat::prometheus) const {
    std::string out;
    write(out, format);
    os.write(out.data(), static_cast<std::streamsize>(out.size()));
  }

  /// One exposition as a string.
  [[nodiscard]] std::string exposition(
      ExpositionFormat format = ExpositionFormat::prometheus) const {
    std::string out;
    write(out, format);
    return out;
  }

 private:
  enum class Kind : std::uint8_t { broker, pool, bridge };
  using Collect = std::function<void(const std::string& prefix, detail::Scrape&)>;

  struct Source {
    Kind kind;
    std::string name;
    std::string prefix;  // the rendered labels: name and constant labels
    Collect collect;
  };

  static constexpr std::string_view kind_label(Kind k) noexcept {
    switch (k) {
      case Kind::broker:
        return "broker";
      case Kind::pool:
        return "pool";
      case Kind::bridge:
        return "bridge";
    }
    return "source";
  }

  static void validate_label_name(std::string_view n) {
    static constexpr std::string_view reserved[] = {
        "broker", "pool",   "bridge", "subscription", "pattern",      "queue_group",
        "kind",   "policy", "reason", "le",           "topic_pattern"};
    bool ok = !n.empty() && !(n.size() >= 2 && n[0] == '_' && n[1] == '_');
    for (std::size_t i = 0; ok && i < n.size(); ++i) {
      const char c = n[i];
      const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
      ok = alpha || (i > 0 && c >= '0' && c <= '9');
    }
    if (!ok) {
      throw std::invalid_argument("herald: metric label name '" + std::string(n) +
                                  "' is invalid ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)");
    }
    for (const std::string_view r : reserved) {
      if (n == r) {
        throw std::invalid_argument("herald: metric label name '" + std::string(n) +
                                    "' is reserved by herald's own labels");
      }
    }
  }

  void add(Kind kind, std::string name, MetricLabels labels, Collect collect) {
    std::string prefix;
    detail::append_label(prefix, kind_label(kind), name);
    for (const auto& [k, v] : labels) {
      validate_label_name(k);
      detail::append_label(prefix, k, v);
    }
    const std::lock_guard lock(mutex_);
    for (const Source& s : sources_) {
      if (s.kind == kind && s.name == name) {
        throw std::invalid_argument("herald: a " + std::string(kind_label(kind)) +
                                    " is registered as '" + name + "' already");
      }
    }
    sources_.push_back(Source{kind, std::move(name), std::move(prefix), std::move(collect)});
  }

  template <class T>
  static void collect(const Broker<T>& broker, const std::string& prefix, detail::Scrape& out) {
    detail::BrokerSample& b = out.brokers.emplace_back();
    b.labels = prefix;
    b.stats = broker.stats();
    b.subscriptions.reserve(b.stats.subscriptions);
    broker.for_each_subscription([&](const SubscriptionInfo& i) {
      detail::SubscriptionSample& s = b.subscriptions.emplace_back();
      s.id = i.id;
      s.labels = prefix;
      s.labels += ",subscription=\"";
      detail::append_number(s.labels, i.id);
      s.labels += '"';
      detail::append_label(s.labels, "pattern", i.pattern);
      detail::append_label(s.labels, "queue_group", i.options.queue_group);
      detail::append_label(s.labels, "kind", to_string(i.kind));
      s.policy = i.options.overflow;
      s.capacity = i.options.capacity;
      s.kind = i.kind;
      s.stats = i.stats;
      s.handler = i.handler;
      s.lag = i.lag;
      if (i.kind == SubscriptionKind::handler) {
        s.histogram = b.histograms.size();
        b.histograms.push_back(i.handler_durations);
      }
    });
    // In subscribe order (the broker lists them in no particular order).
    std::sort(b.subscriptions.begin(), b.subscriptions.end(),
              [](const auto& x, const auto& y) { return x.id < y.id; });
    broker.for_each_topic([&](const TopicStats& t) {
      detail::TopicSample& s = b.topics.emplace_back();
      s.labels = prefix;
      detail::append_label(s.labels, "topic_pattern", t.pattern);
      s.published = t.published;
      s.dropped = t.dropped;
    });
  }

  static void write_scrape(std::string& out, const detail::Scrape& sc, ExpositionFormat format) {
    using Type = detail::ExpositionWriter::Type;
    std::size_t subs = 0;
    for (const auto& b : sc.brokers)
      subs += b.subscriptions.size();
    out.reserve(out.size() + 4096 + subs * 2048);
    detail::ExpositionWriter w(out, format);

    // Each family lists every source's samples together, as both formats require.
    const auto broker_family = [&](std::string_view name, Type type, std::string_view help,
                                   auto field) {
      if (sc.brokers.empty()) return;
      w.family(name, type, help);
      for (const auto& b : sc.brokers)
        w.sample(b.labels, std::uint64_t(field(b.stats)));
    };
    const auto broker_counter = [&](std::string_view name, std::string_view help, auto field) {
      broker_family(name, Type::counter, help, field);
    };
    const auto broker_gauge = [&](std::string_view name, std::string_view help, auto field) {
      broker_family(name, Type::gauge, help, field);
    };
    broker_counter("herald_broker_published", "Publish calls on an open broker.",
                   [](const BrokerStats& s) { return s.published; });
    broker_counter("herald_broker_delivered", "Messages queued, summed over subscribers.",
                   [](const BrokerStats& s) { return s.delivered; });
    broker_counter("herald_broker_dropped", "Offers refused by a full subscriber queue.",
                   [](const BrokerStats& s) { return s.dropped; });
    broker_counter("herald_broker_evicted", "Offers that evicted an older message (drop_oldest).",
                   [](const BrokerStats& s) { return s.evicted; });
    broker_counter("herald_broker_no_subscriber", "Publishes that matched no subscription.",
                   [](const BrokerStats& s) { return s.no_subscriber; });
    broker_counter("herald_broker_disconnects", "Subscriptions closed as slow consumers.",
                   [](const BrokerStats& s) { return s.disconnects; });
    broker_counter("herald_broker_replayed", "Retained messages offered to joining subscribers.",
                   [](const BrokerStats& s) { return s.replayed; });
    broker_counter("herald_broker_retained_evicted",
                   "Retained messages evicted by a BrokerOptions bound.",
                   [](const BrokerStats& s) { return s.retained_evicted; });
    broker_counter("herald_broker_retained_expired",
                   "Retained messages dropped once older than their max_age.",
                   [](const BrokerStats& s) { return s.retained_expired; });
    broker_gauge("herald_broker_subscriptions", "Live subscriptions.",
                 [](const BrokerStats& s) { return s.subscriptions; });
    broker_gauge("herald_broker_retained_topics", "Topics with retained messages.",
                 [](const BrokerStats& s) { return s.retained_topics; });
    broker_gauge("herald_broker_retained_messages", "Retained messages.",
                 [](const BrokerStats& s) { return s.retained_messages; });
    broker_gauge("herald_broker_retained_bytes", "Estimated size of the retained messages.",
                 [](const BrokerStats& s) { return s.retained_bytes; });

    // Subscriptions.
    const auto each_sub = [&](auto f) {
      for (const auto& b : sc.brokers)
        for (const auto& s : b.subscriptions)
          f(b, s);
    };
    const auto sub_family = [&](std::string_view name, Type type, std::string_view help,
                                auto field) {
      if (subs == 0) return;
      w.family(name, type, help);
      each_sub([&](const auto&, const detail::SubscriptionSample& s) {
        w.sample(s.labels, std::uint64_t(field(s)));
      });
    };
    if (subs != 0) {
      w.family("herald_subscription", Type::info,
               "One per live subscription: its overflow policy (value 1).");
      std::string extra;
      each_sub([&](const auto&, const detail::SubscriptionSample& s) {
        extra.clear();
        detail::append_label(extra, "policy", to_string(s.policy));
        w.sample(s.labels, std::uint64_t{1}, extra);
      });
    }
    using S = detail::SubscriptionSample;
    sub_family("herald_subscription_capacity", Type::gauge, "Queue capacity in messages.",
               [](const S& s) { return s.capacity; });
    sub_family("herald_subscription_queue_depth", Type::gauge, "Messages waiting in the queue.",
               [](const S& s) { return s.stats.queue_depth; });
    sub_family("herald_subscription_queue_high_water", Type::gauge,
               "The largest queue depth seen (sampled).",
               [](const S& s) { return s.stats.high_water_mark; });
    sub_family("herald_subscription_offered", Type::counter,
               "Messages published to a matching topic while it was open.",
               [](const S& s) { return s.stats.offered; });
    sub_family("herald_subscription_delivered", Type::counter, "Messages accepted into the queue.",
               [](const S& s) { return s.stats.delivered; });
    sub_family("herald_subscription_received", Type::counter,
               "Messages taken out of the queue by the consumer.",
               [](const S& s) { return s.stats.received; });
    if (subs != 0) {
      w.family("herald_subscription_dropped", Type::counter,
               "Messages refused, by reason: full (queue full) or timeout (block policy).");
      each_sub([&](const auto&, const S& s) {
        w.sample(s.labels, s.stats.dropped_full, "reason=\"full\"");
        w.sample(s.labels, s.stats.dropped_timeout, "reason=\"timeout\"");
      });
    }
    sub_family("herald_subscription_evicted", Type::counter,
               "Messages accepted, then evicted to make room (drop_oldest).",
               [](const S& s) { return s.stats.evicted; });
    sub_family("herald_subscription_expired", Type::counter,
               "Messages discarded as older than max_age when they would be handed over.",
               [](const S& s) { return s.stats.expired; });
    if (subs != 0) {
      w.family("herald_subscription_lag_seconds", Type::gauge,
               "Age of the oldest queued message (an upper bound; 0 when the queue is empty).",
               "seconds");
      each_sub([&](const auto&, const S& s) { w.sample(s.labels, detail::to_seconds(s.lag)); });
    }

    // Handler subscriptions.
    std::size_t handlers = 0;
    each_sub([&](const auto&, const S& s) { handlers += s.kind == SubscriptionKind::handler; });
    const auto handler_family = [&](std::string_view name, std::string_view help, auto field) {
      if (handlers == 0) return;
      w.family(name, Type::counter, help);
      each_sub([&](const auto&, const S& s) {
        if (s.kind == SubscriptionKind::handler) w.sample(s.labels, std::uint64_t(field(s)));
      });
    };
    handler_family("herald_handler_invocations", "Handler calls, retries included.",
                   [](const S& s) { return s.handler.invocations; });
    handler_family("herald_handler_errors", "Handler calls that threw.",
                   [](const S& s) { return s.handler.failures; });
    handler_family("herald_handler_retries", "Handler calls that retried a failed message.",
                   [](const S& s) { return s.handler.retries; });
    handler_family("herald_handler_dead_letters",
                   "Messages that failed every attempt and were accepted by the dead-letter sink.",
                   [](const S& s) { return s.handler.dead_lettered; });
    handler_family("herald_handler_breaker_refused",
                   "Handler calls the circuit breaker refused (each wait-and-ask-again counts).",
                   [](const S& s) { return s.handler.breaker_refused; });
    handler_family("herald_handler_breaker_dead_letters",
                   "Messages given up because the circuit breaker refused them.",
                   [](const S& s) { return s.handler.breaker_dead_lettered; });
    handler_family("herald_handler_deduplicated",
                   "Messages skipped because one with the same key was handled recently.",
                   [](const S& s) { return s.handler.deduplicated; });
    handler_family("herald_handler_retries_cancelled",
                   "Retries that never ran: unsubscribed, or the executor shut down.",
                   [](const S& s) { return s.handler.retries_cancelled; });
    handler_family("herald_handler_rate_limited",
                   "Times the handler waited on a timer for a token of its rate limiter.",
                   [](const S& s) { return s.handler.rate_limited; });
    const auto handler_gauge = [&](std::string_view name, std::string_view help, auto field) {
      if (handlers == 0) return;
      w.family(name, Type::gauge, help);
      each_sub([&](const auto&, const S& s) {
        if (s.kind == SubscriptionKind::handler) w.sample(s.labels, std::uint64_t(field(s)));
      });
    };
    handler_gauge("herald_handler_retries_pending",
                  "Failed messages waiting on a timer for their next attempt.",
                  [](const S& s) { return s.handler.retries_pending; });
    handler_gauge("herald_handler_in_flight", "Strands of the subscription running now.",
                  [](const S& s) { return s.handler.in_flight; });
    if (handlers != 0) {
      w.family("herald_handler_duration_seconds", Type::histogram,
               "Duration of each handler call (log-linear buckets).", "seconds");
      for (const auto& b : sc.brokers) {
        for (const auto& s : b.subscriptions) {
          if (s.kind == SubscriptionKind::handler) w.histogram(s.labels, b.histograms[s.histogram]);
        }
      }
    }

    // Tracked topics.
    std::size_t topics = 0;
    for (const auto& b : sc.brokers)
      topics += b.topics.size();
    const auto topic_family = [&](std::string_view name, std::string_view help, auto field) {
      if (topics == 0) return;
      w.family(name, Type::counter, help);
      for (const auto& b : sc.brokers)
        for (const auto& t : b.topics)
          w.sample(t.labels, std::uint64_t(field(t)));
    };
    using TS = detail::TopicSample;
    topic_family("herald_topic_published", "Publishes to the topics a tracked pattern matches.",
                 [](const TS& t) { return t.published; });
    topic_family("herald_topic_dropped", "Offers of those publishes that were refused.",
                 [](const TS& t) { return t.dropped; });

    // Worker pools.
    using P = WorkerPoolStats;
    const auto pool_family = [&](std::string_view name, Type type, std::string_view help,
                                 auto field) {
      if (sc.pools.empty()) return;
      w.family(name, type, help);
      for (const auto& p : sc.pools)
        w.sample(p.labels, std::uint64_t(field(p.stats)));
    };
    pool_family("herald_pool_tasks_submitted", Type::counter, "Tasks accepted.",
                [](const P& p) { return p.submitted; });
    pool_family("herald_pool_tasks_completed", Type::counter, "Tasks that returned normally.",
                [](const P& p) { return p.completed; });
    pool_family("herald_pool_tasks_failed", Type::counter, "Tasks that threw.",
                [](const P& p) { return p.failed; });
    pool_family("herald_pool_tasks_stolen", Type::counter,
                "Tasks a worker took from another worker's queue.",
                [](const P& p) { return p.stolen; });
    pool_family("herald_pool_queued_tasks", Type::gauge, "Tasks accepted and not yet started.",
                [](const P& p) { return p.queued; });
    pool_family("herald_pool_threads", Type::gauge, "Worker threads.",
                [](const P& p) { return p.threads; });
    pool_family("herald_pool_parked_threads", Type::gauge, "Workers asleep for want of work.",
                [](const P& p) { return p.parked; });
    pool_family("herald_pool_timers_pending", Type::gauge, "Timers waiting for their deadline.",
                [](const P& p) { return p.timers_pending; });
    pool_family("herald_pool_timers_fired", Type::counter, "Timers whose task ran.",
                [](const P& p) { return p.timers_fired; });
    pool_family("herald_pool_timers_cancelled", Type::counter,
                "Timers cancelled before their deadline.",
                [](const P& p) { return p.timers_cancelled; });
    pool_family("herald_pool_timers_abandoned", Type::counter,
                "Timers pending when the pool shut down (their tasks never ran).",
                [](const P& p) { return p.timers_abandoned; });

    // NATS bridges.
    using BS = BridgeStats;
    const auto bridge_family = [&](std::string_view name, Type type, std::string_view help,
                                   auto field) {
      if (sc.bridges.empty()) return;
      w.family(name, type, help);
      for (const auto& b : sc.bridges)
        w.sample(b.labels, std::uint64_t(field(b.stats)));
    };
    bridge_family("herald_bridge_exported", Type::counter, "Local messages that matched an export.",
                  [](const BS& s) { return s.exported; });
    bridge_family("herald_bridge_sent", Type::counter, "Messages accepted by the NATS connection.",
                  [](const BS& s) { return s.sent; });
    if (!sc.bridges.empty()) {
      w.family("herald_bridge_export_dropped", Type::counter,
               "Messages dropped on the way to NATS, by reason.");
      for (const auto& b : sc.bridges) {
        w.sample(b.labels, b.stats.dropped_overflow, "reason=\"overflow\"");
        w.sample(b.labels, b.stats.dropped_subject, "reason=\"subject\"");
        w.sample(b.labels, b.stats.dropped_unsafe_subject, "reason=\"unsafe_subject\"");
        w.sample(b.labels, b.stats.dropped_too_large, "reason=\"too_large\"");
        w.sample(b.labels, b.stats.dropped_encode, "reason=\"encode\"");
        w.sample(b.labels, b.stats.dropped_failed, "reason=\"failed\"");
      }
      w.family("herald_bridge_import_dropped", Type::counter,
               "Messages from NATS not imported, by reason.");
      for (const auto& b : sc.bridges) {
        w.sample(b.labels, b.stats.rejected, "reason=\"rejected\"");
        w.sample(b.labels, b.stats.dropped_decode, "reason=\"decode\"");
        w.sample(b.labels, b.stats.import_failed, "reason=\"failed\"");
        w.sample(b.labels, b.stats.dropped_slow, "reason=\"slow\"");
      }
    }
    bridge_family("herald_bridge_skipped_echoes", Type::counter,
                  "Imported messages an export did not send back.",
                  [](const BS& s) { return s.skipped_echo; });
    bridge_family("herald_bridge_export_queued", Type::gauge, "Messages waiting in export queues.",
                  [](const BS& s) { return s.queued; });
    bridge_family("herald_bridge_received", Type::counter, "Messages NATS delivered to imports.",
                  [](const BS& s) { return s.received; });
    bridge_family("herald_bridge_imported", Type::counter, "Messages published into the broker.",
                  [](const BS& s) { return s.imported; });
    bridge_family("herald_bridge_echoes", Type::counter,
                  "This bridge's own messages that came back (track_loss).",
                  [](const BS& s) { return s.echoes; });
    bridge_family("herald_bridge_lost", Type::counter,
                  "Gaps in the sequence of the messages received (track_loss).",
                  [](const BS& s) { return s.lost; });
    bridge_family(
        "herald_bridge_seeded", Type::counter,
        "Retained messages seeded from a JetStream stream (ImportRule::seed_from_stream).",
        [](const BS& s) { return s.seeded; });
    bridge_family("herald_bridge_js_acked", Type::counter,
                  "JetStream exports: messages the stream acknowledged.",
                  [](const BS& s) { return s.js_acked; });
    bridge_family("herald_bridge_js_retried", Type::counter,
                  "JetStream exports: resends after a failure, timeout or reconnection.",
                  [](const BS& s) { return s.js_retried; });
    bridge_family("herald_bridge_js_failed", Type::counter,
                  "JetStream exports: messages given up (refused, or unacknowledged at shutdown).",
                  [](const BS& s) { return s.js_failed; });
    bridge_family("herald_bridge_js_in_flight", Type::gauge,
                  "JetStream exports: messages published and not yet acknowledged.",
                  [](const BS& s) { return s.js_in_flight; });
    bridge_family("herald_bridge_js_acked_in", Type::counter,
                  "JetStream imports: deliveries acknowledged to the consumer.",
                  [](const BS& s) { return s.js_acked_in; });
    bridge_family("herald_bridge_js_nacked", Type::counter,
                  "JetStream imports: deliveries nak'ed for redelivery.",
                  [](const BS& s) { return s.js_nacked; });
    bridge_family("herald_bridge_js_dead_lettered", Type::counter,
                  "JetStream imports: messages terminated and sent to the dead-letter subject.",
                  [](const BS& s) { return s.js_dead_lettered; });
    bridge_family("herald_bridge_js_duplicates", Type::counter,
                  "JetStream imports: redeliveries suppressed by the dedup window.",
                  [](const BS& s) { return s.js_duplicates; });
    bridge_family("herald_bridge_js_not_queued", Type::counter,
                  "JetStream imports: deliveries a matching subscriber did not queue.",
                  [](const BS& s) { return s.js_not_queued; });
    bridge_family("herald_bridge_js_ack_failed", Type::counter,
                  "JetStream imports: acks, naks or terms the client could not send.",
                  [](const BS& s) { return s.js_ack_failed; });
    bridge_family("herald_bridge_js_pending_acks", Type::gauge,
                  "JetStream imports (manual acks): messages awaiting the application's ack.",
                  [](const BS& s) { return s.js_pending_acks; });
    bridge_family("herald_bridge_disconnects", Type::counter, "Connection losses.",
                  [](const BS& s) { return s.disconnects; });
    bridge_family("herald_bridge_reconnects", Type::counter, "Reconnections.",
                  [](const BS& s) { return s.reconnects; });
    bridge_family("herald_bridge_errors", Type::counter, "Failures reported.",
                  [](const BS& s) { return s.errors; });
    bridge_family("herald_bridge_connected", Type::gauge, "1 while connected to NATS.",
                  [](const BS& s) { return std::uint64_t{s.connected ? 1u : 0u}; });
    w.finish();
  }

  mutable std::mutex mutex_;
  std::vector<Source> sources_;
};

}  // namespace herald
