// The retained messages of a broker: per topic, the newest few messages, bounded in topics and
// estimated bytes (whole topics evicted least recently published first), with an optional age
// limit. Generic over the message type M (sequence(), topic(), published_at()), so that this
// floor needs nothing of the broker's.
#pragma once

#include <herald/detail/hashing.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace herald::detail {

template <class M>
class RetainedStore {
  struct Slot;

 public:
  /// Where the last store of one topic went: a broker route keeps one per topic, so that the
  /// next store of that topic skips the hash lookup (a few cache misses at 10k topics). Read and
  /// written under the store's lock only; a slot evicted or cleared meanwhile is never used.
  class Hint {
    friend class RetainedStore;
    std::shared_ptr<Slot> slot_;
  };
  /// How one topic retains: the newest `last` messages, each for at most `max_age` (zero: no
  /// limit).
  struct Rule {
    std::size_t last = 1;
    std::chrono::nanoseconds max_age{0};
  };
  struct Counts {
    std::size_t topics = 0;
    std::size_t messages = 0;
    std::size_t bytes = 0;
    std::uint64_t evicted = 0;
    std::uint64_t expired = 0;
  };

  RetainedStore(std::size_t max_topics, std::size_t max_bytes) noexcept
      : max_topics_(max_topics), max_bytes_(max_bytes) {}
  // Routes (through their Hints) may keep slots longer than the store: not their messages.
  ~RetainedStore() {
    for (auto& [topic, s] : slots_) {
      s->messages.clear();
      s->gone = true;
    }
  }
  RetainedStore(const RetainedStore&) = delete;
  RetainedStore& operator=(const RetainedStore&) = delete;

  /// Retains `m` (estimated at `bytes`) under `rule`, the topic's newest messages kept in
  /// sequence order: a message older than every one the topic keeps, when it keeps `last`
  /// already, is not kept. Then evicts whole topics, least recently stored first (never this
  /// one), while a bound is exceeded; a message bigger than the byte bound is still kept, alone.
  /// `hint` (may be null): where this topic was stored last; updated.
  /// Throws: std::bad_alloc, and then the store is unchanged.
  void store(M m, const Rule& rule, std::size_t bytes, Hint* hint = nullptr) {
    const std::lock_guard lock(mutex_);
    Slot& s = slot_of(m.topic(), hint);
    s.rule = rule;
    if (s.messages.size() == 1 && rule.last == 1 &&
        s.messages.front().message.sequence() < m.sequence()) {  // the last value, replaced
      Kept& k = s.messages.front();
      s.bytes += bytes - k.bytes;
      bytes_ += bytes - k.bytes;
      k = Kept{std::move(m), bytes};
      evict_beyond_bounds(s);
      return;
    }
    // Sequence order; the common case (one publisher per topic) appends.
    auto pos = s.messages.end();
    while (pos != s.messages.begin() && std::prev(pos)->message.sequence() > m.sequence())
      --pos;
    if (pos == s.messages.begin() && s.messages.size() >= rule.last) return;  // older than all
    try {
      s.messages.insert(pos, Kept{std::move(m), bytes});
    } catch (...) {
      if (s.messages.empty()) erase(slots_.find(*s.key));
      throw;
    }
    s.bytes += bytes;
    bytes_ += bytes;
    ++messages_;
    while (s.messages.size() > rule.last)
      pop_oldest(s);
    evict_beyond_bounds(s);
  }

  /// Under the store's lock: calls `take(const M&)` for the newest at most `n` messages not
  /// older than their topic's max_age (at `now`) of `literal`'s topic, or, when `literal` is
  /// empty, of every topic for which `match(topic)` holds, oldest first per topic; then returns
  /// `after()`, still under the lock. Expired messages met on the way are dropped (counted).
  template <class Match, class Take, class After>
  auto snapshot(std::string_view literal, Match&& match, std::size_t n, Take&& take,
                std::chrono::steady_clock::time_point now, After&& after) {
    const std::lock_guard lock(mutex_);
    const auto visit = [&](Slot& s) {
      const std::size_t skip = s.messages.size() > n ? s.messages.size() - n : 0;
      for (std::size_t i = skip; i < s.messages.size(); ++i)
        take(s.messages[i].message);
    };
    if (!literal.empty()) {
      const auto it = slots_.find(literal);
      if (it != slots_.end() && !expire(it, now)) visit(*it->second);
    } else {
      for (auto it = slots_.begin(); it != slots_.end();) {
        const auto next = std::next(it);
        if (match(std::string_view(it->first)) && !expire(it, now)) visit(*it->second);
        it = next;
      }
    }
    return after();
  }

  /// The newest retained message of `topic` not older than max_age at `now`.
  std::optional<M> newest(std::string_view topic, std::chrono::steady_clock::time_point now) {
    const std::lock_guard lock(mutex_);
    const auto it = slots_.find(topic);
    if (it == slots_.end() || expire(it, now)) return std::nullopt;
    return it->second->messages.back().message;
  }

  /// Forgets the topics for which `match(topic)` holds; returns how many messages went.
  template <class Match>
  std::size_t clear(Match&& match) {
    const std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (auto it = slots_.begin(); it != slots_.end();) {
      const auto next = std::next(it);
      if (match(std::string_view(it->first))) {
        n += it->second->messages.size();
        erase(it);
      }
      it = next;
    }
    return n;
  }

  /// Gives every topic the rule `rule_of(topic)` returns, and trims what it keeps to it.
  template <class RuleOf>
  void set_rules(RuleOf&& rule_of) {
    const std::lock_guard lock(mutex_);
    for (auto& [topic, s] : slots_) {
      s->rule = rule_of(std::string_view(topic));
      while (s->messages.size() > s->rule.last)
        pop_oldest(*s);
    }
  }

  [[nodiscard]] Counts counts() const {
    const std::lock_guard lock(mutex_);
    return Counts{slots_.size(), messages_, bytes_, evicted_, expired_};
  }

 private:
  struct Kept {
    M message;
    std::size_t bytes;
  };
  struct Slot {
    std::vector<Kept> messages;  // sequence order, oldest first (few: a vector)
    std::size_t bytes = 0;
    Rule rule;
    const std::string* key = nullptr;  // its key in slots_ (node-based: stable)
    Slot* older = nullptr;             // least recently stored order
    Slot* newer = nullptr;
    bool gone = false;  // no longer in slots_ (a Hint may still hold it)
  };
  // Slots are shared with Hints, which may outlive them in the map.
  using Map = std::unordered_map<std::string, std::shared_ptr<Slot>, TopicHash, std::equal_to<>>;

  // The slot of `topic`, made the most recently stored: the hint's, if it is still in the map,
  // else looked up or made (and the hint set to it).
  Slot& slot_of(std::string_view topic, Hint* hint) {
    if (hint != nullptr && hint->slot_ && !hint->slot_->gone) {
      Slot& s = *hint->slot_;
      if (&s != newest_) {
        unlink(s);
        link_newest(s);
      }
      return s;
    }
    auto [it, fresh] = slots_.try_emplace(std::string(topic));
    if (fresh) {
      try {
        it->second = std::make_shared<Slot>();
      } catch (...) {
        slots_.erase(it);
        throw;
      }
      it->second->key = &it->first;
      link_newest(*it->second);
    } else if (it->second.get() != newest_) {
      unlink(*it->second);
      link_newest(*it->second);
    }
    if (hint != nullptr) hint->slot_ = it->second;
    return *it->second;
  }

  // Evicts whole topics, least recently stored first, never `kept`, while a bound is exceeded.
  void evict_beyond_bounds(const Slot& kept) noexcept {
    while ((slots_.size() > max_topics_ || bytes_ > max_bytes_) && oldest_ != &kept) {
      evicted_ += oldest_->messages.size();
      erase(slots_.find(*oldest_->key));
    }
  }

  void link_newest(Slot& s) noexcept {
    s.older = newest_;
    s.newer = nullptr;
    if (newest_ != nullptr) newest_->newer = &s;
    newest_ = &s;
    if (oldest_ == nullptr) oldest_ = &s;
  }

  void unlink(Slot& s) noexcept {
    (s.older != nullptr ? s.older->newer : oldest_) = s.newer;
    (s.newer != nullptr ? s.newer->older : newest_) = s.older;
  }

  void pop_oldest(Slot& s) noexcept {
    s.bytes -= s.messages.front().bytes;
    bytes_ -= s.messages.front().bytes;
    --messages_;
    s.messages.erase(s.messages.begin());
  }

  // Drops the topic's messages older than its max_age at `now`, and the topic when none is
  // left; true when it went.
  bool expire(typename Map::iterator it, std::chrono::steady_clock::time_point now) noexcept {
    Slot& s = *it->second;
    if (s.rule.max_age == std::chrono::nanoseconds::zero()) return false;
    while (!s.messages.empty() &&
           now - s.messages.front().message.published_at() > s.rule.max_age) {
      pop_oldest(s);
      ++expired_;
    }
    if (!s.messages.empty()) return false;
    erase(it);
    return true;
  }

  void erase(typename Map::iterator it) noexcept {
    Slot& s = *it->second;
    unlink(s);
    bytes_ -= s.bytes;
    messages_ -= s.messages.size();
    s.messages.clear();  // a Hint may keep the slot: not its messages
    s.gone = true;
    slots_.erase(it);
  }

  mutable std::mutex mutex_;  // guards everything below
  Map slots_;
  Slot* oldest_ = nullptr;
  Slot* newest_ = nullptr;
  std::size_t messages_ = 0;
  std::size_t bytes_ = 0;
  std::uint64_t evicted_ = 0;
  std::uint64_t expired_ = 0;
  const std::size_t max_topics_;
  const std::size_t max_bytes_;
};

}  // namespace herald::detail
