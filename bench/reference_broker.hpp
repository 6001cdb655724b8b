// The "reference design" broker of DESIGN.md, the way such a broker is usually written by hand:
// a mutex-guarded map from topic to per-subscriber bounded queues (each a mutex + condition
// variable ring); publish copies the subscriber list under the lock, then delivers outside it;
// a full queue drops the message (or, for the blocking policy, the publisher waits on the queue's
// condition variable); wildcard patterns are kept split into tokens and every one of them is
// scanned on each publish.
//
// It is written to be a fair peer, not a straw man: literal subscriptions are found by one hash
// lookup (heterogeneous, no temporary string), the topic is split only when wildcard patterns
// exist, and the payload is built once and shared by every subscriber (as herald does), so the
// comparison measures the routing and queueing designs rather than extra copies.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace herald_bench {

/// What a subscriber of the reference broker receives: the topic, a sequence number, the value.
template <class T>
struct RefMessage {
  std::string topic;
  std::uint64_t sequence;
  T value;
};

enum class RefPolicy { block, drop };

/// One subscriber's bounded queue: a ring under a mutex, with two condition variables.
template <class T>
class RefQueue {
 public:
  using Ptr = std::shared_ptr<const RefMessage<T>>;

  RefQueue(std::size_t capacity, RefPolicy policy) : ring_(capacity), policy_(policy) {}

  /// Enqueues `m`; when full, waits (block) or drops it (drop). False when not enqueued.
  bool offer(const Ptr& m) {
    {
      std::unique_lock lock(mutex_);
      if (policy_ == RefPolicy::block) {
        not_full_.wait(lock, [&] { return size_ < ring_.size() || closed_; });
      }
      if (closed_) return false;
      if (size_ == ring_.size()) {
        ++dropped_;
        return false;
      }
      std::size_t tail = head_ + size_;
      if (tail >= ring_.size()) tail -= ring_.size();
      ring_[tail] = m;
      ++size_;
    }
    not_empty_.notify_one();
    return true;
  }

  /// Takes the oldest message, waiting for one; null once closed and drained.
  Ptr pop() {
    Ptr out;
    {
      std::unique_lock lock(mutex_);
      not_empty_.wait(lock, [&] { return size_ != 0 || closed_; });
      if (size_ == 0) return out;
      out = std::move(ring_[head_]);
      if (++head_ == ring_.size()) head_ = 0;
      --size_;
    }
    not_full_.notify_one();
    return out;
  }

  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  std::uint64_t dropped() {
    std::lock_guard lock(mutex_);
    return dropped_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::vector<Ptr> ring_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
  std::uint64_t dropped_ = 0;
  bool closed_ = false;
  const RefPolicy policy_;
};

/// The broker: topic -> subscriber queues, plus a list of split wildcard patterns.
template <class T>
class ReferenceBroker {
 public:
  using QueuePtr = std::shared_ptr<RefQueue<T>>;

  /// Subscribes to a NATS-style pattern (assumed valid) and returns the subscriber's queue.
  QueuePtr subscribe(std::string_view pattern, std::size_t capacity, RefPolicy policy) {
    auto q = std::make_shared<RefQueue<T>>(capacity, policy);
    std::vector<std::string> tokens;
    for (std::string_view t : split(pattern))
      tokens.emplace_back(t);
    bool literal = true;
    for (const std::string& t : tokens)
      literal = literal && t != "*" && t != ">";
    std::lock_guard lock(mutex_);
    if (literal) {
      exact_[std::string(pattern)].push_back(q);
    } else {
      wildcards_.push_back(Wildcard{std::move(tokens), q});
    }
    all_.push_back(q);
    return q;
  }

  /// Delivers `value` to every matching subscriber; returns how many queued it.
  std::size_t publish(std::string_view topic, const T& value) {
    std::vector<QueuePtr> targets;
    std::uint64_t seq = 0;
    {
      std::lock_guard lock(mutex_);
      seq = ++sequence_;
      if (const auto it = exact_.find(topic); it != exact_.end()) targets = it->second;
      if (!wildcards_.empty()) {
        const std::vector<std::string_view> tokens = split(topic);
        for (const Wildcard& w : wildcards_) {
          if (matches(tokens, w.tokens)) targets.push_back(w.queue);
        }
      }
    }
    if (targets.empty()) return 0;
    const auto m =
        std::make_shared<const RefMessage<T>>(RefMessage<T>{std::string(topic), seq, value});
    std::size_t delivered = 0;
    for (const QueuePtr& q : targets)
      delivered += q->offer(m) ? 1 : 0;
    return delivered;
  }

  /// Closes every queue: consumers drain what is queued, then pop() returns null.
  void close() {
    std::lock_guard lock(mutex_);
    for (const QueuePtr& q : all_)
      q->close();
  }

 private:
  struct Wildcard {
    std::vector<std::string> tokens;
    QueuePtr queue;
  };
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };

  static std::vector<std::string_view> split(std::string_view s) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    for (std::size_t dot; (dot = s.find('.', start)) != std::string_view::npos; start = dot + 1)
      out.push_back(s.substr(start, dot - start));
    out.push_back(s.substr(start));
    return out;
  }

  static bool matches(const std::vector<std::string_view>& topic,
                      const std::vector<std::string>& pattern) {
    for (std::size_t i = 0; i < pattern.size(); ++i) {
      if (pattern[i] == ">") return topic.size() > i;
      if (i >= topic.size()) return false;
      if (pattern[i] != "*" && pattern[i] != topic[i]) return false;
    }
    return topic.size() == pattern.size();
  }

  std::mutex mutex_;
  std::unordered_map<std::string, std::vector<QueuePtr>, Hash, std::equal_to<>> exact_;
  std::vector<Wildcard> wildcards_;
  std::vector<QueuePtr> all_;
  std::uint64_t sequence_ = 0;
};

}  // namespace herald_bench
