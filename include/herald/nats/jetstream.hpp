// herald::nats JetStream options: what an export or import rule needs to carry messages at least
// once through a JetStream stream (ExportRule::jetstream, ImportRule::jetstream), and the helpers
// the bridge uses to find or create streams and consumers and to answer JetStream's messages.
// Optional like the rest of nats/: it needs the NATS C client.
#pragma once

#include <herald/nats/connection.hpp>
#include <herald/topic.hpp>

#include <nats/nats.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace herald::nats {

/// Where a stream keeps its messages.
enum class StreamStorage : std::uint8_t { file, memory };

/// When a stream lets go of its messages (JetStream's retention policies).
enum class StreamRetention : std::uint8_t { limits, interest, work_queue };

/// A JetStream stream an export publishes to or an import consumes from: bound by name, or
/// created when it does not exist and `create` is true (the other fields only matter then).
struct StreamSpec {
  std::string name;
  /// Create the stream when the server has none of this name; false: a missing stream is a
  /// NatsError from the bridge's constructor.
  bool create = false;
  /// The subjects the new stream captures; empty: the rule's subject (`prefix.pattern`).
  std::vector<std::string> subjects{};
  StreamStorage storage = StreamStorage::file;
  StreamRetention retention = StreamRetention::limits;
  /// How long the server remembers a Nats-Msg-Id to drop a republished duplicate. Retries of an
  /// unacknowledged export are duplicates only within this window: keep it above the longest
  /// outage an export should ride out (JetStream's default is 2 minutes).
  std::chrono::milliseconds duplicate_window{std::chrono::minutes(2)};
};

/// At-least-once export (ExportRule::jetstream): each message is published to the stream with a
/// `Nats-Msg-Id` header ("<bridge id>-<export index>-<broker sequence>"), its acknowledgement
/// awaited asynchronously, and resent (same id: the stream drops the copy it already has) after
/// a failure, a timeout or a reconnection, until the stream acknowledges it.
struct JetStreamExport {
  StreamSpec stream;
  /// At most this many messages published and not yet acknowledged (retries included). When it is
  /// reached, the rule's overflow policy (ExportRule::queue) applies to the next message: block
  /// waits for an acknowledgement (at most block_timeout), drop_incoming and drop_oldest drop the
  /// new message (counted in dropped_overflow; what is in flight is never given up).
  std::size_t max_in_flight = 1024;
  /// A message without acknowledgement after this long is resent.
  std::chrono::milliseconds ack_timeout{5000};
  /// Pause between rounds of retries that make no progress (doubling up to 32x, reset by an ack).
  std::chrono::milliseconds retry_backoff{20};
  /// Destroying the bridge waits this long for outstanding acknowledgements; what is still
  /// unacknowledged then is counted in js_failed and reported once.
  std::chrono::milliseconds drain_timeout{5000};
};

/// Who acknowledges an imported JetStream message.
enum class AckMode : std::uint8_t {
  /// The bridge, once Broker::publish returned with every matching subscriber having queued it.
  queued,
  /// The application, by calling Bridge::ack(message) (or nak) once its handler succeeded.
  manual,
};

/// At-least-once import (ImportRule::jetstream): a durable pull consumer on the stream, filtered
/// to the rule's subject, with explicit acknowledgements.
struct JetStreamImport {
  StreamSpec stream;
  /// The durable consumer's name (required): bridges using the same name share its messages,
  /// and a restarted bridge resumes where it stopped.
  std::string durable{};
  /// Create the consumer when the stream has none of this name; false: a missing consumer is a
  /// NatsError from the bridge's constructor.
  bool create_consumer = true;
  AckMode ack = AckMode::queued;
  /// The server redelivers a message not acknowledged within this time.
  std::chrono::milliseconds ack_wait{std::chrono::seconds(30)};
  /// A message that fails this many deliveries (not queued by every subscriber, or nak'ed by the
  /// application) goes to dead_letter_subject and is terminated.
  int max_deliver = 5;
  /// A nak'ed message is redelivered after initial x 2^(deliveries - 1), at most max.
  std::chrono::milliseconds nak_initial{100};
  std::chrono::milliseconds nak_max{std::chrono::seconds(5)};
  /// Where messages go that exceed max_deliver or can never be imported (an invalid topic, a
  /// payload the codec refuses): republished there (JetStream publish: a stream capturing the
  /// subject keeps them) with Herald-Dead-* headers saying why, then terminated. Empty: they are
  /// only terminated (and reported).
  std::string dead_letter_subject{};
  /// Imports remember the ids (Nats-Msg-Id, else stream and sequence) of this many messages they
  /// delivered and acknowledge a redelivery of one of them without publishing it again. 0: off.
  std::size_t dedup_window = 65536;
  /// Messages fetched per pull request, and the most the consumer hands out unacknowledged.
  int fetch_batch = 256;
  int max_ack_pending = 4096;
  /// How long one pull request waits for messages (the import's idle poll).
  std::chrono::milliseconds fetch_wait{500};
};

namespace detail {

inline constexpr const char* kMsgIdHeader = "Nats-Msg-Id";
/// Manual acks: "<bridge id hex>.<import index>.<stream sequence>" on every imported message.
inline constexpr const char* kAckHeader = "Herald-Ack";

/// JetStream names (streams, consumers) are single NATS tokens of printable characters.
inline void check_js_name(std::string_view what, std::string_view rule, const std::string& name) {
  if (name.empty()) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) + ": " + std::string(what) +
                                " is empty");
  }
  for (const char c : name) {
    if (c == '.' || c == '*' || c == '>' || c == '/' || c == '\\' ||
        static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      throw std::invalid_argument("herald::nats: " + std::string(rule) + ": " + std::string(what) +
                                  " '" + name +
                                  "' may not hold '.', '*', '>', '/', '\\', whitespace or control "
                                  "bytes");
    }
  }
}

inline void check_positive(std::string_view rule, std::string_view field,
                           std::chrono::milliseconds v) {
  if (v <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) + ": " + std::string(field) +
                                " must be > 0 (got " + std::to_string(v.count()) + " ms)");
  }
}

inline void validate_stream(std::string_view rule, const StreamSpec& s) {
  check_js_name("stream.name", rule, s.name);
  if (s.duplicate_window < std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": stream.duplicate_window must be >= 0");
  }
  for (const std::string& subject : s.subjects) {
    if (!is_valid_pattern(subject)) {
      throw std::invalid_argument("herald::nats: " + std::string(rule) + ": stream subject '" +
                                  subject + "' is not a valid pattern");
    }
  }
}

inline void validate(std::string_view rule, const JetStreamExport& o) {
  validate_stream(rule, o.stream);
  if (o.max_in_flight == 0) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": jetstream.max_in_flight must be >= 1");
  }
  check_positive(rule, "jetstream.ack_timeout", o.ack_timeout);
  check_positive(rule, "jetstream.retry_backoff", o.retry_backoff);
  if (o.drain_timeout < std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": jetstream.drain_timeout must be >= 0");
  }
}

inline void validate(std::string_view rule, const JetStreamImport& o) {
  validate_stream(rule, o.stream);
  check_js_name("jetstream.durable", rule, o.durable);
  check_positive(rule, "jetstream.ack_wait", o.ack_wait);
  check_positive(rule, "jetstream.fetch_wait", o.fetch_wait);
  if (o.nak_initial < std::chrono::milliseconds::zero() || o.nak_max < o.nak_initial) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": jetstream.nak_initial must be >= 0 and <= nak_max");
  }
  if (o.max_deliver < 1) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": jetstream.max_deliver must be >= 1 (got " +
                                std::to_string(o.max_deliver) + ")");
  }
  if (o.fetch_batch < 1 || o.max_ack_pending < o.fetch_batch) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": jetstream.fetch_batch must be >= 1 and <= max_ack_pending");
  }
  if (o.dedup_window > (std::size_t{1} << 31)) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": jetstream.dedup_window must be <= 2^31");
  }
  if (!o.dead_letter_subject.empty() && !is_valid_topic(o.dead_letter_subject)) {
    throw std::invalid_argument("herald::nats: " + std::string(rule) +
                                ": jetstream.dead_letter_subject '" + o.dead_letter_subject +
                                "' is not a valid literal subject");
  }
}

/// Throws NatsError for a failed JetStream call, with JetStream's own error code when there is one.
inline void js_check(natsStatus s, jsErrCode jerr, const std::string& what) {
  if (s == NATS_OK) return;
  throw NatsError(
      what + (jerr != 0 ? " (JetStream error " + std::to_string(int(jerr)) + ")" : std::string()),
      s);
}

using JsCtxPtr = std::unique_ptr<jsCtx, void (*)(jsCtx*)>;

/// Finds the stream `spec.name`, creating it (capturing `spec.subjects`, or `rule_subject`) when
/// it is missing and spec.create is true. `what` names the rule for the error.
/// Throws: NatsError naming the rule and the stream.
inline void ensure_stream(jsCtx* js, const StreamSpec& spec, const std::string& rule_subject,
                          const std::string& what) {
  jsStreamInfo* si = nullptr;
  jsErrCode jerr{};
  natsStatus s = js_GetStreamInfo(&si, js, spec.name.c_str(), nullptr, &jerr);
  jsStreamInfo_Destroy(si);
  if (s == NATS_OK) return;
  const std::string stream = what + ": JetStream stream '" + spec.name + "'";
  if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr) {
    js_check(s, jerr, stream + ": JetStream is not enabled on the server (nats-server -js)");
  }
  if (s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr) js_check(s, jerr, stream);
  if (!spec.create) {
    js_check(s, jerr, stream + " does not exist and stream.create is false");
  }
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = spec.name.c_str();
  std::vector<const char*> subjects;
  for (const std::string& subject : spec.subjects)
    subjects.push_back(subject.c_str());
  if (subjects.empty()) subjects.push_back(rule_subject.c_str());
  cfg.Subjects = subjects.data();
  cfg.SubjectsLen = static_cast<int>(subjects.size());
  cfg.Storage = spec.storage == StreamStorage::memory ? js_MemoryStorage : js_FileStorage;
  cfg.Retention = spec.retention == StreamRetention::interest     ? js_InterestPolicy
                  : spec.retention == StreamRetention::work_queue ? js_WorkQueuePolicy
                                                                  : js_LimitsPolicy;
  cfg.Duplicates =
      std::chrono::duration_cast<std::chrono::nanoseconds>(spec.duplicate_window).count();
  jerr = {};
  s = js_AddStream(&si, js, &cfg, nullptr, &jerr);
  jsStreamInfo_Destroy(si);
  js_check(s, jerr, stream + ": cannot create it");
}

/// Finds the durable pull consumer `o.durable` of the stream, creating it (explicit acks, the
/// server's redelivery left unlimited: the bridge dead-letters after max_deliver) when it is
/// missing and o.create_consumer is true.
/// Throws: NatsError naming the rule, the stream and the consumer.
inline void ensure_consumer(jsCtx* js, const JetStreamImport& o, const std::string& filter,
                            const std::string& what) {
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr{};
  natsStatus s =
      js_GetConsumerInfo(&ci, js, o.stream.name.c_str(), o.durable.c_str(), nullptr, &jerr);
  jsConsumerInfo_Destroy(ci);
  if (s == NATS_OK) return;
  const std::string consumer =
      what + ": consumer '" + o.durable + "' of JetStream stream '" + o.stream.name + "'";
  if (s != NATS_NOT_FOUND && jerr != JSConsumerNotFoundErr) js_check(s, jerr, consumer);
  if (!o.create_consumer) {
    js_check(s, jerr, consumer + " does not exist and create_consumer is false");
  }
  jsConsumerConfig cfg;
  jsConsumerConfig_Init(&cfg);
  cfg.Durable = o.durable.c_str();
  cfg.AckPolicy = js_AckExplicit;
  cfg.DeliverPolicy = js_DeliverAll;
  cfg.AckWait = std::chrono::duration_cast<std::chrono::nanoseconds>(o.ack_wait).count();
  cfg.MaxDeliver = -1;
  cfg.MaxAckPending = o.max_ack_pending;
  cfg.FilterSubject = filter.c_str();
  jerr = {};
  s = js_AddConsumer(&ci, js, o.stream.name.c_str(), &cfg, nullptr, &jerr);
  jsConsumerInfo_Destroy(ci);
  js_check(s, jerr, consumer + ": cannot create it");
}

/// A publish acknowledgement error worth retrying: no answer, no stream answering yet (a server
/// restarting), the link down, or JetStream's own "try again later" errors. Anything else (the
/// stream refused the message: too large, limits with DiscardNew, sealed) is final.
inline bool retryable(natsStatus s, jsErrCode jerr) noexcept {
  switch (s) {
    case NATS_TIMEOUT:
    case NATS_NO_RESPONDERS:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_IO_ERROR:
    case NATS_INSUFFICIENT_BUFFER:
      return true;
    default:
      return jerr == JSClusterNotAvailErr || jerr == JSInsufficientResourcesErr ||
             jerr == JSNotEnabledErr || jerr == JSStreamNotFoundErr;
  }
}

/// The redelivery delay of a nak: initial x 2^(deliveries - 1), at most max.
inline std::chrono::milliseconds nak_delay(const JetStreamImport& o, std::uint64_t deliveries) {
  std::chrono::milliseconds d = o.nak_initial;
  for (std::uint64_t i = 1; i < deliveries && d < o.nak_max; ++i)
    d = d == d.zero() ? d : d * 2;
  return std::min(d, o.nak_max);
}

}  // namespace detail
}  // namespace herald::nats
