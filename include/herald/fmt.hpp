// fmt formatters for herald's values: every stats struct, the enums, Pattern, InvalidTopic, and
// Message<T> when T itself is formattable. Optional: the one header of herald that includes fmt
// (Debian: libfmt-dev); nothing else depends on it.
//
//     fmt::print("{}\n", broker.stats());   // BrokerStats{published: 3, delivered: 2, ...}
//     fmt::print("{}\n", *sub.receive());   // orders.eu #17: 42
#pragma once

#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/topic.hpp>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <cstddef>
#include <string_view>
#include <type_traits>

namespace herald::detail {

/// Shared by the struct formatters: no format spec, and "Name{a: 1, b: 2}" output.
struct FieldsFormatter {
  constexpr auto parse(fmt::format_parse_context& ctx) {
    auto it = ctx.begin();
    if (it != ctx.end() && *it != '}') throw fmt::format_error("herald values take no format spec");
    return it;
  }
};

/// Writes "name: value" pairs separated by ", ".
template <class Out>
class FieldWriter {
 public:
  explicit FieldWriter(Out out) : out_(out) {}
  template <class V>
  FieldWriter& operator()(std::string_view name, const V& value) {
    out_ = fmt::format_to(out_, "{}{}: {}", first_ ? "" : ", ", name, value);
    first_ = false;
    return *this;
  }
  Out out() const { return out_; }

 private:
  Out out_;
  bool first_ = true;
};

template <class Out, class Fields>
Out format_struct(Out out, std::string_view name, Fields&& fields) {
  out = fmt::format_to(out, "{}{{", name);
  FieldWriter<Out> w(out);
  fields(w);
  return fmt::format_to(w.out(), "}}");
}

template <class Out>
void subscription_fields(FieldWriter<Out>& w, const SubscriptionStats& s) {
  w("offered", s.offered)("delivered", s.delivered)("dropped", s.dropped)(
      "dropped_full", s.dropped_full)("dropped_timeout", s.dropped_timeout)("evicted", s.evicted)(
      "received", s.received)("expired", s.expired)("queue_depth", s.queue_depth)(
      "high_water_mark", s.high_water_mark)("close_reason", to_string(s.close_reason));
}

template <class Out>
void handler_fields(FieldWriter<Out>& w, const HandlerCounters& s) {
  w("invocations", s.invocations)("failures", s.failures)("retries", s.retries)(
      "dead_lettered", s.dead_lettered)("breaker_refused", s.breaker_refused)(
      "breaker_dead_lettered", s.breaker_dead_lettered)("deduplicated", s.deduplicated)(
      "retries_pending", s.retries_pending)("retries_cancelled", s.retries_cancelled)(
      "rate_limited", s.rate_limited)("in_flight", s.in_flight)(
      "handler_time_total", s.handler_time_total)("handler_time_max", s.handler_time_max);
}

/// Formats an enum through its to_string().
template <class E>
struct EnumFormatter : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(E e, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(to_string(e), ctx);
  }
};

}  // namespace herald::detail

template <>
struct fmt::formatter<herald::Overflow> : herald::detail::EnumFormatter<herald::Overflow> {};
template <>
struct fmt::formatter<herald::CloseReason> : herald::detail::EnumFormatter<herald::CloseReason> {};
template <>
struct fmt::formatter<herald::SubscriptionKind>
    : herald::detail::EnumFormatter<herald::SubscriptionKind> {};

template <>
struct fmt::formatter<herald::PublishResult> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::PublishResult& r, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "PublishResult", [&](auto& w) {
      w("matched", r.matched)("delivered", r.delivered)("dropped", r.dropped)("evicted", r.evicted)(
          "closed", r.closed);
    });
  }
};

template <>
struct fmt::formatter<herald::BrokerStats> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::BrokerStats& s, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "BrokerStats", [&](auto& w) {
      w("published", s.published)("delivered", s.delivered)("dropped", s.dropped)(
          "evicted", s.evicted)("no_subscriber", s.no_subscriber)("subscriptions", s.subscriptions)(
          "disconnects", s.disconnects)("replayed", s.replayed)(
          "retained_topics", s.retained_topics)("retained_messages", s.retained_messages)(
          "retained_bytes", s.retained_bytes)("retained_evicted", s.retained_evicted)(
          "retained_expired", s.retained_expired);
    });
  }
};

template <>
struct fmt::formatter<herald::SubscriptionStats> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::SubscriptionStats& s, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "SubscriptionStats", [&](auto& w) {
      herald::detail::subscription_fields(w, s);
    });
  }
};

template <>
struct fmt::formatter<herald::HandlerCounters> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::HandlerCounters& s, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "HandlerCounters",
                                         [&](auto& w) { herald::detail::handler_fields(w, s); });
  }
};

template <>
struct fmt::formatter<herald::HandlerStats> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::HandlerStats& s, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "HandlerStats", [&](auto& w) {
      herald::detail::subscription_fields(w, s);
      herald::detail::handler_fields(w, s);
    });
  }
};

template <>
struct fmt::formatter<herald::SubscriptionInfo> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::SubscriptionInfo& i, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "SubscriptionInfo", [&](auto& w) {
      w("id", i.id)("kind", i.kind)("pattern", i.pattern)("capacity", i.options.capacity)(
          "overflow", i.options.overflow)("queue_group", i.options.queue_group);
      herald::detail::subscription_fields(w, i.stats);
      w("lag", i.lag);
      if (i.kind == herald::SubscriptionKind::handler) {
        herald::detail::handler_fields(w, i.handler);
        w("handler_durations", i.handler_durations);
      }
    });
  }
};

template <>
struct fmt::formatter<herald::WorkerPoolStats> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::WorkerPoolStats& s, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "WorkerPoolStats", [&](auto& w) {
      w("submitted", s.submitted)("completed", s.completed)("failed", s.failed)("queued", s.queued)(
          "threads", s.threads)("stolen", s.stolen)("parked", s.parked)(
          "timers_pending", s.timers_pending)("timers_fired", s.timers_fired)(
          "timers_cancelled", s.timers_cancelled)("timers_abandoned", s.timers_abandoned);
    });
  }
};

template <>
struct fmt::formatter<herald::BridgeStats> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::BridgeStats& s, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "BridgeStats", [&](auto& w) {
      w("exported", s.exported)("sent", s.sent)("dropped_overflow", s.dropped_overflow)(
          "dropped_subject", s.dropped_subject)("dropped_unsafe_subject", s.dropped_unsafe_subject)(
          "dropped_too_large", s.dropped_too_large)("dropped_encode", s.dropped_encode)(
          "dropped_failed", s.dropped_failed)("skipped_echo", s.skipped_echo)("queued", s.queued)(
          "received", s.received)("imported", s.imported)("rejected", s.rejected)(
          "dropped_decode", s.dropped_decode)("import_failed", s.import_failed)("echoes", s.echoes)(
          "dropped_slow", s.dropped_slow)("lost", s.lost)("seeded", s.seeded)(
          "js_acked", s.js_acked)("js_retried", s.js_retried)("js_failed", s.js_failed)(
          "js_in_flight", s.js_in_flight)("js_acked_in", s.js_acked_in)("js_nacked", s.js_nacked)(
          "js_dead_lettered", s.js_dead_lettered)("js_duplicates", s.js_duplicates)(
          "js_not_queued", s.js_not_queued)("js_ack_failed", s.js_ack_failed)(
          "js_pending_acks", s.js_pending_acks)("disconnects", s.disconnects)(
          "reconnects", s.reconnects)("errors", s.errors)("connected", s.connected);
    });
  }
};

/// A histogram formats as its count, sum and the non-empty buckets by upper bound:
/// "DurationHistogram{count: 3, sum: 5200ns, le 2048ns: 1, le 4096ns: 2}".
template <>
struct fmt::formatter<herald::DurationHistogram> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::DurationHistogram& h, Ctx& ctx) const {
    auto out = fmt::format_to(ctx.out(), "DurationHistogram{{count: {}, sum: {}", h.count(), h.sum);
    for (std::size_t i = 0; i < herald::DurationHistogram::buckets; ++i) {
      if (h.counts[i] == 0) continue;
      if (i < herald::DurationHistogram::finite_buckets) {
        out = fmt::format_to(out, ", le {}ns: {}", herald::DurationHistogram::upper_bound_ns(i),
                             h.counts[i]);
      } else {
        out = fmt::format_to(out, ", le +Inf: {}", h.counts[i]);
      }
    }
    return fmt::format_to(out, "}}");
  }
};

/// TopicStats: "TopicStats{pattern: orders.>, published: 3, dropped: 1}".
template <>
struct fmt::formatter<herald::TopicStats> : herald::detail::FieldsFormatter {
  template <class Ctx>
  auto format(const herald::TopicStats& t, Ctx& ctx) const {
    return herald::detail::format_struct(ctx.out(), "TopicStats", [&](auto& w) {
      w("pattern", t.pattern)("published", t.published)("dropped", t.dropped);
    });
  }
};

/// A Pattern formats as its text.
template <>
struct fmt::formatter<herald::Pattern> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const herald::Pattern& p, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(p.str(), ctx);
  }
};

/// An InvalidTopic formats as its message.
template <>
struct fmt::formatter<herald::InvalidTopic> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const herald::InvalidTopic& e, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(e.what(), ctx);
  }
};

/// A Message<T> formats as "topic #sequence: value" when T is formattable; the format spec
/// applies to the value: fmt::format("{:>8}", msg).
template <class T>
requires(fmt::is_formattable<T>::value) struct fmt::formatter<herald::Message<T>>
    : fmt::formatter<T> {
  template <class Ctx>
  auto format(const herald::Message<T>& m, Ctx& ctx) const {
    auto out = fmt::format_to(ctx.out(), "{} #{}: ", m.topic(), m.sequence());
    ctx.advance_to(out);
    return fmt::formatter<T>::format(m.value(), ctx);
  }
};
