// Broker<T>: typed publish/subscribe with NATS-style wildcard topics, fan-out to per-subscriber
// bounded queues, per-subscriber overflow policies, queue groups and exact counters.
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/counters.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/detail/retained_store.hpp>
#include <herald/executor.hpp>
#include <herald/handler_state.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/subscription.hpp>
#include <herald/subscription_state.hpp>
#include <herald/topic.hpp>
#include <herald/topic_index.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace herald {

/// Tags a publish with where it came from, so that a bridge can recognise and skip what it
/// imported itself. Local publishes have origin 0.
struct Origin {
  std::uint64_t id = 0;
};

namespace detail {

/// Counts a delivery in progress on a publish site for as long as it lives.
struct DeliveryDepth {
  explicit DeliveryDepth(unsigned& depth) noexcept : depth_(depth) { ++depth_; }
  ~DeliveryDepth() { --depth_; }
  DeliveryDepth(const DeliveryDepth&) = delete;
  DeliveryDepth& operator=(const DeliveryDepth&) = delete;
  unsigned& depth_;
};

/// The routing state shared by a Broker, its subscriptions (weakly) and its Publishers.
template <class T>
class BrokerCore final : public Registry<T> {
 public:
  using State = SubscriptionState<T>;
  using StatePtr = std::shared_ptr<State>;

  /// The members of one queue group that match a topic, and the group's round-robin cursor.
  struct GroupRoute {
    std::vector<StatePtr> members;
    std::shared_ptr<std::atomic<std::uint32_t>> cursor;
  };

  /// The counters of one tracked topic pattern (track_topics): any publisher adds to them.
  struct TrackedTopic {
    explicit TrackedTopic(std::string p) : pattern(std::move(p)) {}
    enum Field : std::size_t { published, dropped, count };
    const std::string pattern;
    ShardedCounters<count> counters;
  };

  using RetainRule = typename RetainedStore<Message<T>>::Rule;
  /// A Broker::retain policy: the topics matching `pattern` retain every publish by `rule`.
  struct RetainedPattern {
    Pattern pattern;
    RetainRule rule;
  };

  /// Everything a publish to one topic delivers to: resolved once, then shared by publishers
  /// until the subscription set changes (the generation tells).
  struct Route {
    std::vector<StatePtr> plain;
    std::vector<GroupRoute> groups;
    /// A topic too long for std::string's inline buffer, shared by the messages published
    /// through this route instead of one allocation each (null for short topics).
    std::shared_ptr<const std::string> long_topic;
    /// The tracked pattern this topic counts for (track_topics), or null: one branch per
    /// publish when topics are not tracked.
    std::shared_ptr<TrackedTopic> tracked;
    /// The retain policy covering this topic (Broker::retain), or null: one branch per publish.
    std::shared_ptr<const RetainedPattern> retain;
    /// Where this topic's retained messages were stored last (guarded by the store's lock).
    mutable typename RetainedStore<Message<T>>::Hint retained_slot;
    std::uint64_t generation = 0;
    [[nodiscard]] bool empty() const noexcept { return plain.empty() && groups.empty(); }
  };

  /// What one publisher -- a thread publishing through Broker::publish, or a Publisher --
  /// counts and caches for this broker. Written by its owner only, with plain stores (no locked
  /// instruction per publish); stats() sums the sites.
  struct Site {
    OwnedCounter published, no_subscriber, delivered, dropped, evicted, replayed;
    /// A small direct-mapped cache of routes by topic, for Broker::publish (a Publisher keeps
    /// its one route itself): a hit costs a hash and a compare instead of the registry's lock,
    /// its map and a reference count. An entry keeps its route's subscriptions alive until it
    /// is refreshed; what they had queued is let go when their last handle goes.
    struct Entry {
      std::uint64_t hash = 0;
      std::string topic;
      std::shared_ptr<const Route> route;
    };
    static constexpr std::size_t kEntries = 8;
    std::array<Entry, kEntries> routes;
    /// Deliveries in progress on this site: an inline handler may publish again from inside
    /// one, and must not then replace a route the outer delivery is walking.
    unsigned depth = 0;
    std::atomic<bool> orphaned{false};  // the broker is gone: the owner may drop the site
  };
  using SitePtr = std::shared_ptr<Site>;

  explicit BrokerCore(const BrokerOptions& options = {})
      : retained_(options.max_retained_topics, options.max_retained_bytes),
        default_rule_{1, options.retained_max_age} {}
  BrokerCore(const BrokerCore&) = delete;
  BrokerCore& operator=(const BrokerCore&) = delete;
  ~BrokerCore() {
    for (const SitePtr& site : sites_)
      site->orphaned.store(true, std::memory_order_relaxed);
  }

  /// A new site, counted by stats() from now on.
  /// Throws: std::bad_alloc.
  SitePtr new_site() {
    auto site = std::make_shared<Site>();
    std::unique_lock lock(mutex_);
    if (sites_.size() == sites_.capacity()) retire_sites();  // amortised: before the list grows
    sites_.push_back(site);
    return site;
  }

  /// The calling thread's site for this broker (made on first use).
  Site& thread_site() {
    // One table per thread and broker type; a thread publishes to few brokers, so a short
    // vector searched by the brokers' never-reused ids.
    thread_local std::vector<std::pair<std::uint64_t, SitePtr>> table;
    for (auto& [id, site] : table) {
      if (id == id_) return *site;
    }
    std::erase_if(table, [](const auto& e) { return e.second->orphaned.load(); });
    table.emplace_back(id_, new_site());
    return *table.back().second;
  }

  /// The route for `topic` through `site`'s cache, refreshed from route() when missing or out of
  /// date. Throws: InvalidTopic (only valid topics are cached, so a hit needs no validation).
  const Route& cached_route(Site& site, std::string_view topic) {
    const std::uint64_t h = TokenHash{}(topic);
    typename Site::Entry& e = site.routes[(h >> 32) % Site::kEntries];
    if (e.route && e.hash == h && e.topic == topic && e.route->generation == generation()) {
      return *e.route;
    }
    auto r = route(topic);
    e.route.reset();  // until the topic below is stored: a throwing copy leaves no stale match
    // Built, then moved in: g++ 12 at -O3 warns wrongly (stringop-overflow) about assign() from
    // a short literal topic once publish is inlined into a caller. A cache miss: cold.
    e.topic = std::string(topic);
    e.hash = h;
    e.route = std::move(r);
    return *e.route;
  }

  /// Registers a subscription. The caller has validated the pattern.
  /// Throws: std::bad_alloc, and then nothing is registered (strong guarantee).
  void add(const StatePtr& s) {
    std::unique_lock lock(mutex_);
    if (closed_.load(std::memory_order_relaxed)) {
      lock.unlock();
      s->close(CloseReason::broker_closed);
      return;
    }
    // Closed already (its executor had stopped): nothing to route to. A close racing with this
    // add still finds it: close_and_leave closes, then takes this lock to remove it.
    if (s->close_reason() != CloseReason::open) return;
    s->set_id(++next_id_);
    const auto live = live_.emplace(s.get(), s).first;
    bool grouped = false;
    try {
      if (!s->group_key().empty()) {
        join_group(s->group_key());
        grouped = true;
      }
      index_.insert(s->pattern(), s);
    } catch (...) {
      if (grouped) leave_group(s->group_key());
      live_.erase(live);
      throw;
    }
    changed();
  }

  void remove(State& s) noexcept override {
    std::unique_lock lock(mutex_);
    const auto it = live_.find(&s);
    if (it == live_.end()) return;
    if (s.close_reason() == CloseReason::slow_consumer) ++disconnects_;
    // A non-owning alias compares equal to the owning entry (shared_ptr == compares pointers).
    // Nothing here allocates: the group key was built at subscribe time.
    index_.erase(s.pattern(), StatePtr(StatePtr{}, &s));
    if (!s.group_key().empty()) leave_group(s.group_key());
    // Destroy our reference after unlocking: the last owner may run a handler subscription's
    // teardown, which must not happen under the registry lock.
    StatePtr last = std::move(it->second);
    live_.erase(it);
    changed();
    lock.unlock();
  }

  /// The current route for a topic: from the cache, or validated, resolved and cached. Only
  /// valid topics are ever cached, so a hit needs no validation.
  /// Throws: InvalidTopic when `topic` is not a valid literal topic.
  std::shared_ptr<const Route> route(std::string_view topic) {
    {
      std::shared_lock lock(mutex_);
      const auto it = cache_.find(topic);
      if (it != cache_.end()) return it->second;
    }
    validate_topic(topic);
    std::unique_lock lock(mutex_);
    const auto it = cache_.find(topic);
    if (it != cache_.end()) return it->second;
    auto r = std::make_shared<Route>();
    r->generation = generation_.load(std::memory_order_relaxed);
    if (topic.size() > kInlineTopicBytes)
      r->long_topic = std::make_shared<const std::string>(topic);
    for (const auto& t : tracked_) {
      if (match_valid(topic, t->pattern)) {
        r->tracked = t;
        break;
      }
    }
    for (const auto& p : retain_rules_) {
      if (match_valid(topic, p->pattern.str())) {
        r->retain = p;
        break;
      }
    }
    std::vector<std::pair<const std::string*, std::size_t>> group_slots;  // key -> index in groups
    index_.match(topic, [&](const StatePtr& owner) {
      State* s = owner.get();
      if (s->options().queue_group.empty()) {
        r->plain.push_back(owner);
        return;
      }
      const auto g = groups_.find(s->group_key());
      for (auto& [key, slot] : group_slots) {
        if (*key == g->first) {
          r->groups[slot].members.push_back(owner);
          return;
        }
      }
      group_slots.emplace_back(&g->first, r->groups.size());
      r->groups.push_back(GroupRoute{{owner}, g->second.cursor});
    });
    // Topics are unbounded (and may come from untrusted input); the cache is not, in entries
    // and in bytes. Starting over is cheap and rare.
    const std::size_t bytes = cached_bytes(topic, *r);
    if (cache_.size() >= kMaxCachedRoutes || cache_bytes_ + bytes > kMaxCachedRouteBytes) {
      clear_cache();
    }
    cache_.emplace(std::string(topic), r);
    cache_bytes_ += bytes;
    return r;
  }

  [[nodiscard]] std::uint64_t generation() const noexcept {
    return generation_.load(std::memory_order_acquire);
  }
  [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  /// Offers one message to everything on the route, applying each subscriber's policy.
  /// `headers`: moved into the message when one is built (null: none). `retain`: keep it as a
  /// retained message (also when the route's topic has a retain policy).
  // Inlined into the publisher, so that a publish nobody receives (and nothing retains) returns
  // without entering the large function below and saving its registers.
  template <class... Args>
  [[gnu::always_inline]] PublishResult deliver(const Route& route, Site& site,
                                               std::string_view topic, std::uint64_t origin,
                                               Headers* headers, bool retain, Args&&... args) {
    if (route.empty() && !retain && route.retain == nullptr) return nobody(route, site);
    return deliver_built(route, site, topic, origin, headers, retain, std::forward<Args>(args)...);
  }

  // deliver, once a message is to be built: one place builds it (a second one would make the
  // compiler outline its parts).
  template <class... Args>
  PublishResult deliver_built(const Route& route, Site& site, std::string_view topic,
                              std::uint64_t origin, Headers* headers, bool retain, Args&&... args) {
    const bool keep = retain || route.retain != nullptr;
    // The sequence number is drawn once the value is built: a throwing copy consumes none.
    auto m = Message<T>::make_drawn(topic, route.long_topic, next_sequence(), origin, headers,
                                    std::forward<Args>(args)...);
    if (keep) [[unlikely]]
      return deliver_retained(route, site, topic, std::move(m));
    return offer_all(route, site, std::move(m));
  }

  /// Registers nothing; reads what `s` (registered already, so that every route resolved from
  /// now on has it) is to be replayed, `n` messages per topic at most, and ends its join (see
  /// SubscriptionState::finish_join). The joint: a retained publish stores its message under
  /// the store's lock before it looks at the generation (deliver_retained); this reads the
  /// store under that lock after the registration bumped the generation. So either the store
  /// came first and the replay has the message (or a newer one of its topic), or the
  /// publisher's look at the generation came after the registration and its route has `s`:
  /// nothing missed, and what both bring is skipped by sequence number.
  /// Throws: std::bad_alloc.
  void join(State& s, std::size_t n) {
    std::vector<Message<T>> replay;
    const std::string& pattern = s.pattern();
    const std::uint64_t horizon = retained_.snapshot(
        literal_or_none(pattern), [&](std::string_view t) { return match_valid(t, pattern); }, n,
        [&](const Message<T>& m) { replay.push_back(m); }, std::chrono::steady_clock::now(),
        [&] { return sequence_.load(std::memory_order_relaxed); });
    ReplayedUpTo up_to;
    up_to.reserve(replay.size());
    for (Message<T>& m : replay) {  // per topic oldest first: the last one is the newest
      up_to.insert_or_assign(m.topic(), m.sequence());
      if constexpr (std::is_copy_constructible_v<T>) {  // else refused by the options' check
        m = detail::MessageAccess::replayed(m);         // before any offer: this may throw
      }
    }
    PublishResult r;
    std::uint64_t replayed = 0;
    s.finish_join(std::move(replay), std::move(up_to), horizon, [&](Offer o, bool was_replayed) {
      tally(r, o);
      if (was_replayed) ++replayed;
    });
    Site& site = thread_site();
    if (r.delivered) site.delivered.add(r.delivered);
    if (r.dropped) site.dropped.add(r.dropped);
    if (r.evicted) site.evicted.add(r.evicted);
    if (replayed) site.replayed.add(replayed);
  }

  /// Adds or replaces (same pattern) a retain policy; topics already retained follow it too.
  void retain(std::string_view pattern, const RetainRule& rule) {
    std::unique_lock lock(mutex_);
    auto next = std::make_shared<const RetainedPattern>(RetainedPattern{Pattern(pattern), rule});
    bool replaced = false;
    for (auto& p : retain_rules_) {
      if (p->pattern.str() == pattern) {
        p = next;
        replaced = true;
      }
    }
    if (!replaced) retain_rules_.push_back(std::move(next));
    rules_changed();
  }

  /// Removes the retain policy of `pattern` (valid); false when there was none.
  bool stop_retaining(std::string_view pattern) {
    std::unique_lock lock(mutex_);
    const auto it = std::find_if(retain_rules_.begin(), retain_rules_.end(),
                                 [&](const auto& p) { return p->pattern.str() == pattern; });
    if (it == retain_rules_.end()) return false;
    retain_rules_.erase(it);
    rules_changed();
    return true;
  }

  /// The newest retained message of `topic` (valid), if any.
  std::optional<Message<T>> retained(std::string_view topic) {
    return retained_.newest(topic, std::chrono::steady_clock::now());
  }

  /// Every retained message of the topics `pattern` (valid) matches, per topic oldest first.
  std::vector<Message<T>> retained_matching(std::string_view pattern) {
    std::vector<Message<T>> out;
    retained_.snapshot(
        literal_or_none(pattern), [&](std::string_view t) { return match_valid(t, pattern); },
        SIZE_MAX, [&](const Message<T>& m) { out.push_back(m); }, std::chrono::steady_clock::now(),
        [] { return 0; });
    return out;
  }

  /// Forgets the retained messages of the topics `pattern` (valid) matches; says how many.
  std::size_t clear_retained(std::string_view pattern) {
    return retained_.clear([&](std::string_view t) { return match_valid(t, pattern); });
  }

  /// Replaces the tracked topic patterns (validated by the caller); patterns tracked before
  /// keep their counters.
  void track(const std::vector<std::string>& patterns) {
    std::vector<std::shared_ptr<TrackedTopic>> next;
    next.reserve(patterns.size());
    std::unique_lock lock(mutex_);
    for (const std::string& p : patterns) {
      std::shared_ptr<TrackedTopic> t;
      for (const auto& old : tracked_) {
        if (old->pattern == p) t = old;
      }
      next.push_back(t ? std::move(t) : std::make_shared<TrackedTopic>(p));
    }
    tracked_.swap(next);
    changed();  // routes resolved before point at the old set
  }

  /// Calls `visit(const TopicStats&)` for each tracked pattern, in track() order.
  template <class Visitor>
  void for_each_topic(Visitor& visit) const {
    std::vector<std::shared_ptr<TrackedTopic>> all;
    {
      std::shared_lock lock(mutex_);
      all = tracked_;
    }
    for (const auto& t : all) {
      const TopicStats ts{t->pattern, t->counters.sum(TrackedTopic::published),
                          t->counters.sum(TrackedTopic::dropped)};
      visit(ts);
    }
  }

  /// Closes every subscription with CloseReason::broker_closed and refuses new ones. Allocates
  /// nothing: the registry's map is taken whole.
  void close() noexcept {
    std::unordered_map<State*, StatePtr> all;
    {
      std::unique_lock lock(mutex_);
      if (closed_.exchange(true, std::memory_order_acq_rel)) return;
      all.swap(live_);
      groups_.clear();
      index_.clear();
      changed();
    }
    for (const auto& [raw, owner] : all)
      owner->close(CloseReason::broker_closed);
  }

  /// Calls `visit(const SubscriptionInfo&)` for each live subscription, on a snapshot taken
  /// under the registry lock and visited outside it.
  template <class Visitor>
  void for_each(Visitor& visit) const {
    std::vector<StatePtr> all;
    {
      std::shared_lock lock(mutex_);
      all.reserve(live_.size());
      for (const auto& [raw, owner] : live_)
        all.push_back(owner);
    }
    const auto now = std::chrono::steady_clock::now();
    for (const StatePtr& s : all) {
      const SubscriptionInfo info{s->kind(),   s->pattern(),          s->options(),
                                  s->stats(),  s->handler_counters(), s->id(),
                                  s->lag(now), s->handler_durations()};
      visit(info);
    }
  }

  [[nodiscard]] BrokerStats stats() const {
    std::shared_lock lock(mutex_);
    BrokerStats s = retired_;
    for (const SitePtr& site : sites_)
      add_counts(s, *site);
    s.subscriptions = live_.size();
    s.disconnects = disconnects_;
    const auto kept = retained_.counts();
    s.retained_topics = kept.topics;
    s.retained_messages = kept.messages;
    s.retained_bytes = kept.bytes;
    s.retained_evicted = kept.evicted;
    s.retained_expired = kept.expired;
    return s;
  }

 private:
  struct GroupInfo {
    std::shared_ptr<std::atomic<std::uint32_t>> cursor;
    std::size_t members = 0;
  };

  // The route cache's bounds: entries, and bytes of what it holds (the topic twice, as key and
  // as a long route's shared topic, and the route's subscriber lists).
  static constexpr std::size_t kMaxCachedRoutes = 4096;
  static constexpr std::size_t kMaxCachedRouteBytes = std::size_t{4} << 20;

  static std::size_t cached_bytes(std::string_view topic, const Route& r) noexcept {
    std::size_t n = sizeof(Route) + 2 * topic.size() + r.plain.size() * sizeof(StatePtr);
    for (const GroupRoute& g : r.groups)
      n += sizeof(GroupRoute) + g.members.size() * sizeof(StatePtr);
    return n;
  }

  void clear_cache() noexcept {
    cache_.clear();
    cache_bytes_ = 0;
  }

  // Counts a member into its group (per (pattern, name), see State::group_key), creating the
  // group's round-robin cursor with its first member. Strong guarantee.
  void join_group(const std::string& key) {
    const auto [g, fresh] = groups_.try_emplace(key);
    if (!g->second.cursor) {
      try {
        g->second.cursor = std::make_shared<std::atomic<std::uint32_t>>(0);
      } catch (...) {
        if (fresh) groups_.erase(g);
        throw;
      }
    }
    ++g->second.members;
  }

  void leave_group(const std::string& key) noexcept {
    const auto g = groups_.find(key);
    if (g != groups_.end() && --g->second.members == 0) groups_.erase(g);
  }

  // Called under the exclusive lock whenever the subscription set changes.
  void changed() {
    clear_cache();
    generation_.fetch_add(1, std::memory_order_release);
  }

  static void count_tracked(TrackedTopic& t, const PublishResult& r) noexcept {
    t.counters.add(TrackedTopic::published, 1);
    if (r.dropped) t.counters.add(TrackedTopic::dropped, r.dropped);
  }

  static void tally(PublishResult& r, Offer o) noexcept {
    switch (o) {
      case Offer::delivered:
        ++r.matched;
        ++r.delivered;
        break;
      case Offer::evicted_and_delivered:
        ++r.matched;
        ++r.delivered;
        ++r.evicted;
        break;
      case Offer::dropped:
        ++r.matched;
        ++r.dropped;
        break;
      case Offer::deferred:  // joining with a replay: its subscribe call offers it
        ++r.matched;
        break;
      case Offer::closed:   // unsubscribed while we were publishing: not offered
      case Offer::skipped:  // it was in that subscriber's replay
        break;
    }
  }

  // Draws the next sequence number (Message::make_drawn calls it once the value is built).
  auto next_sequence() noexcept {
    return [this] { return sequence_.fetch_add(1, std::memory_order_relaxed) + 1; };
  }

  // Counts a publish to a route with no subscription.
  [[gnu::always_inline]] static PublishResult nobody(const Route& route, Site& site) noexcept {
    PublishResult r;
    site.published.add();
    site.no_subscriber.add();
    if (route.tracked) [[unlikely]]
      count_tracked(*route.tracked, r);
    return r;
  }

  // Offers `m` to everything on the route, and counts. Inlined: it is most of a publish, and the
  // call would cost a plain publish about a tenth more instructions.
  // `shared`: the retained store holds `m` too, so its count is added to, not set.
  [[gnu::always_inline]] PublishResult offer_all(const Route& route, Site& site, Message<T>&& m,
                                                 bool shared = false) {
    if (route.empty()) return nobody(route, site);
    PublishResult r;
    // One reference per offer, set with one store: an offer keeps its reference when it queues
    // the message and drops it otherwise; the last offer takes `m` itself.
    const std::size_t offers = route.plain.size() + route.groups.size();
    if (shared) [[unlikely]] {
      detail::MessageAccess::add_refs(m, static_cast<std::uint32_t>(offers - 1));
    } else {
      detail::MessageAccess::preset_refs(m, static_cast<std::uint32_t>(offers));
    }
    std::size_t left = offers;
    const auto take = [&] { return --left == 0 ? std::move(m) : detail::MessageAccess::alias(m); };
    for (const StatePtr& s : route.plain)
      tally(r, s->offer(take()));
    for (const GroupRoute& g : route.groups)
      offer_to_group(r, g, take());
    site.published.add();
    if (r.delivered) site.delivered.add(r.delivered);
    if (r.dropped) site.dropped.add(r.dropped);
    if (r.evicted) site.evicted.add(r.evicted);
    if (r.matched == 0) site.no_subscriber.add();
    if (route.tracked) [[unlikely]]
      count_tracked(*route.tracked, r);
    return r;
  }

  // A retained publish: `m` is stored (see join for why first), then the generation decides
  // whether `route` is still the one to deliver on (else the current one has every
  // registration that preceded the store). Out of line, with its own copy of offer_all: the
  // plain publish path stays as small as it was, and the compiler keeps inlining into it.
  [[gnu::noinline]] PublishResult deliver_retained(const Route& route, Site& site,
                                                   std::string_view topic, Message<T>&& m) {
    // The store takes a reference preset with m's own (one store, no atomic increment): nobody
    // else can see m yet.
    detail::MessageAccess::preset_refs(m, 2);
    retained_.store(detail::MessageAccess::alias(m),
                    route.retain ? route.retain->rule : default_rule_, retained_bytes(m),
                    &route.retained_slot);
    if (route.generation == generation()) return offer_all(route, site, std::move(m), true);
    const std::shared_ptr<const Route> now = this->route(topic);
    return offer_all(*now, site, std::move(m), true);
  }

  // A pattern without wildcards selects one topic: the store looks it up instead of scanning.
  static std::string_view literal_or_none(std::string_view pattern) noexcept {
    return is_valid_topic(pattern) ? pattern : std::string_view();
  }

  // A retained message's estimated size: see BrokerOptions.
  static std::size_t retained_bytes(const Message<T>& m) noexcept {
    std::size_t n = sizeof(T) + m.topic().size();
    for (const auto& [name, value] : m.headers())
      n += name.size() + value.size();
    return n;
  }

  // Under mutex_ (held exclusively), after retain_rules_ changed: routes resolved before have
  // the old policies, and topics retained already follow the new ones. (The store's lock nests
  // inside mutex_, never the other way round.)
  void rules_changed() {
    changed();
    retained_.set_rules([&](std::string_view topic) {
      for (const auto& p : retain_rules_) {
        if (match_valid(topic, p->pattern.str())) return p->rule;
      }
      return default_rule_;
    });
  }

  // One member per group: the first with room starting at the round-robin cursor; when all are
  // full, the policy of the member at the cursor decides (wait, drop, evict, disconnect).
  // `m` is this group's reference: a failed try_offer leaves it, a successful one takes it.
  void offer_to_group(PublishResult& r, const GroupRoute& g, Message<T> m) {
    const std::size_t n = g.members.size();
    const std::size_t start = g.cursor->fetch_add(1, std::memory_order_relaxed) % n;
    State* fallback = nullptr;
    for (std::size_t i = 0; i < n; ++i) {
      State& s = *g.members[(start + i) % n];
      if (s.close_reason() != CloseReason::open) continue;
      if (intercepted(r, s, m)) [[unlikely]]
        return;
      if (s.try_offer(std::move(m))) return tally(r, Offer::delivered);
      if (!fallback) fallback = &s;
    }
    if (fallback) tally(r, fallback->offer(std::move(m)));
  }

  // A member joining with a replay holds or skips what it is offered (see
  // SubscriptionState::intercept); the group's other members are not tried then.
  static bool intercepted(PublishResult& r, State& s, Message<T>& m) {
    if (!s.replays()) return false;
    const std::optional<Offer> o = s.intercept(std::move(m));
    if (o) tally(r, *o);
    return o.has_value();
  }

  mutable std::shared_mutex mutex_;  // guards index_, live_, groups_, cache_
  TopicIndex<StatePtr> index_;
  std::unordered_map<State*, StatePtr> live_;
  std::unordered_map<std::string, GroupInfo> groups_;
  std::unordered_map<std::string, std::shared_ptr<const Route>, TopicHash, std::equal_to<>> cache_;
  std::size_t cache_bytes_ = 0;                         // what cache_ holds, by cached_bytes()
  std::vector<std::shared_ptr<TrackedTopic>> tracked_;  // track_topics(), in order
  std::vector<std::shared_ptr<const RetainedPattern>> retain_rules_;  // retain(), in order
  RetainedStore<Message<T>> retained_;
  const RetainRule default_rule_;  // PublishOptions::retain on a topic no policy covers
  std::uint64_t next_id_ = 0;      // the last subscription id given
  std::uint64_t disconnects_ = 0;  // removed as slow consumers
  std::atomic<bool> closed_{false};
  alignas(cache_line_size) std::atomic<std::uint64_t> generation_{0};
  alignas(cache_line_size) std::atomic<std::uint64_t> sequence_{0};
  std::vector<SitePtr> sites_;          // guarded by mutex_
  BrokerStats retired_;                 // the counts of sites nobody else holds any more; mutex_
  const std::uint64_t id_ = next_id();  // never reused, unlike an address

  static std::uint64_t next_id() noexcept {
    static std::atomic<std::uint64_t> ids{0};
    return ids.fetch_add(1, std::memory_order_relaxed) + 1;
  }

  static void add_counts(BrokerStats& s, const Site& site) noexcept {
    s.published += site.published.get();
    s.no_subscriber += site.no_subscriber.get();
    s.delivered += site.delivered.get();
    s.dropped += site.dropped.get();
    s.evicted += site.evicted.get();
    s.replayed += site.replayed.get();
  }

  // Folds the sites only the core still holds (their Publisher or thread is gone) into
  // retired_. Under the exclusive lock.
  void retire_sites() noexcept {
    std::erase_if(sites_, [&](const SitePtr& site) {
      if (site.use_count() != 1) return false;
      add_counts(retired_, *site);
      return true;
    });
  }
};

}  // namespace detail

template <class T>
class Broker;

/// A publisher prepared for one topic: the topic is validated once and its subscribers are
/// resolved once, then reused until the subscription set changes.
///
/// Thread-safety: use one Publisher per thread (it caches the route without locking); any
/// number of Publishers and plain publish calls may run concurrently.
template <class T>
class Publisher {
 public:
  /// Publishes a copy of `value`. Same contract as Broker::publish.
  PublishResult publish(const T& value) { return emplace(value); }
  /// Publishes `value`, moved into the one shared payload.
  PublishResult publish(T&& value) { return emplace(std::move(value)); }
  /// Publishes a copy of `value` with `options` (headers, retain).
  PublishResult publish(const T& value, PublishOptions options) {
    return emplace_with(&options.headers, options.retain, value);
  }
  /// Publishes `value`, moved, with `options` (headers, retain).
  PublishResult publish(T&& value, PublishOptions options) {
    return emplace_with(&options.headers, options.retain, std::move(value));
  }
  /// Publishes a T constructed in place from `args` (only if someone will receive it, or the
  /// topic retains).
  template <class... Args>
  PublishResult emplace(Args&&... args) {
    return emplace_with(nullptr, false, std::forward<Args>(args)...);
  }

 private:
  template <class... Args>
  PublishResult emplace_with(Headers* headers, bool retain, Args&&... args) {
    if (core_->closed()) return PublishResult{.closed = true};
    using Site = typename detail::BrokerCore<T>::Site;
    Site& site = *site_;
    if (site.depth != 0) {  // from an inline handler of our own delivery: keep that route alive
      auto route =
          route_ && route_->generation == core_->generation() ? route_ : core_->route(topic_);
      const detail::DeliveryDepth nested(site.depth);
      return core_->deliver(*route, site, topic_, origin_, headers, retain,
                            std::forward<Args>(args)...);
    }
    if (!route_ || route_->generation != core_->generation()) route_ = core_->route(topic_);
    const detail::DeliveryDepth outer(site.depth);
    return core_->deliver(*route_, site, topic_, origin_, headers, retain,
                          std::forward<Args>(args)...);
  }

 public:
  /// The topic it publishes to.
  [[nodiscard]] const std::string& topic() const noexcept { return topic_; }

 private:
  friend class Broker<T>;
  Publisher(std::shared_ptr<detail::BrokerCore<T>> core, std::string topic, std::uint64_t origin)
      : core_(std::move(core)),
        topic_(std::move(topic)),
        origin_(origin),
        site_(core_->new_site()) {}

  std::shared_ptr<detail::BrokerCore<T>> core_;
  std::string topic_;
  std::uint64_t origin_;
  std::shared_ptr<const typename detail::BrokerCore<T>::Route> route_;
  typename detail::BrokerCore<T>::SitePtr site_;  // its counters, read by Broker::stats()
};

/// Typed in-process publish/subscribe with NATS-style topics.
///
///     herald::Broker<Order> broker;
///     auto sub = broker.subscribe("orders.*.created", {.capacity = 256});
///     broker.publish("orders.eu.created", Order{42});
///     for (const herald::Message<Order>& m : sub) handle(*m);
///
/// Publishing resolves the matching subscriptions (cached per topic) and then offers the message
/// to each without holding any lock, so a slow subscriber never stalls the registry or other
/// publishers; each subscriber's overflow policy decides what happens when its queue is full.
/// Every subscriber sees the messages of one publishing thread in publish order.
/// Thread-safety: every member function may be called concurrently, except the destructor.
/// Lifetime: as for any C++ object, no call may be in progress on another thread when the
/// broker is destroyed -- in particular a publish blocked by an Overflow::block subscriber
/// (destroying the broker would wake it into freed memory; debug builds abort with a message
/// instead). Subscriptions, Publishers and messages may outlive the broker: they stay valid,
/// closed (CloseReason::broker_closed), and Publisher::publish returns `closed`.
template <class T>
class Broker {
  static_assert(std::is_nothrow_destructible_v<T>, "T must be nothrow destructible");
  static_assert(!std::is_reference_v<T> && !std::is_const_v<T>,
                "T must be a plain object type (not a reference, not const)");

 public:
  using value_type = T;

  Broker() = default;
  /// A broker with `options` (the bounds of its retained messages).
  /// Throws: std::invalid_argument for an option out of range (see validate(BrokerOptions)).
  explicit Broker(const BrokerOptions& options)
      : core_(std::make_shared<detail::BrokerCore<T>>(validated(options))) {}
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;
  /// Closes the broker (see close()); subscriptions that outlive it stay valid and drain.
  /// No publish may be in progress on another thread (see the class comment).
  ~Broker() {
#if !defined(NDEBUG)
    if (publishing_.load(std::memory_order_seq_cst) != 0) {
      std::fputs(
          "herald: a Broker was destroyed while another thread was publishing on it "
          "(a publish blocked by Overflow::block?); the broker must outlive every call\n",
          stderr);
      std::abort();
    }
#endif
    core_->close();
  }

  /// Subscribes to `pattern` with a pull subscription.
  /// A stop request on `stop` unsubscribes it (CloseReason::stopped); if the stop was already
  /// requested, nothing is ever delivered. On a closed broker it returns a subscription that is
  /// already closed with CloseReason::broker_closed.
  /// With `options.replay`, the retained messages of the matching topics are offered before it
  /// returns (the subscription's policy applies; Overflow::block does not wait then, it tries
  /// once: a replay and what is published during the call that do not fit are dropped, counted
  /// as dropped_timeout), per topic oldest first, then every live message not in the replay.
  /// Throws: InvalidTopic for an invalid pattern, std::invalid_argument for capacity 0;
  /// nothing is registered then.
  /// Complexity: O(tokens in the pattern), independent of the number of subscriptions.
  [[nodiscard]] Subscription<T> subscribe(std::string_view pattern, SubscribeOptions options = {},
                                          std::stop_token stop = {}) {
    auto state = make_state<detail::SubscriptionState<T>>(pattern, std::move(options));
    return Subscription<T>(register_state(std::move(state), std::move(stop)));
  }

  /// Subscribes `handler(const Message<T>&)` to `pattern`, run by `executor`: a WorkerPool&,
  /// herald::inline_executor (inside publish, in the publisher's thread),
  /// herald::dedicated_thread, or any herald::Executor. Messages wait in the subscription's own
  /// queue (so `options` and its overflow policy apply as for pull subscriptions); at most one
  /// invocation runs at a time, in publish order. A handler that throws is counted, reported to
  /// `handler_options.on_error`, retried per `handler_options.retry`, then handed to
  /// `handler_options.dead_letters`. Unsubscribe is quiescent (see HandlerSubscription).
  /// Throws: InvalidTopic for an invalid pattern; std::invalid_argument for capacity 0.
  template <class Handler>
  requires(MessageHandler<Handler, T>)
      [[nodiscard]] HandlerSubscription<T> subscribe(std::string_view pattern, Handler&& handler,
                                                     ExecutorRef executor, SubscribeOptions options,
                                                     HandlerOptions<T> handler_options,
                                                     std::stop_token stop = {}) {
    auto state = make_state<detail::HandlerState<T>>(
        pattern, std::move(options),
        typename detail::HandlerState<T>::Handler(std::forward<Handler>(handler)), executor,
        std::move(handler_options));
    return HandlerSubscription<T>(register_state(std::move(state), std::move(stop)));
  }

  /// Subscribes a batch handler, `handler(std::span<const Message<T>>)`, run by `executor`: it
  /// is called with up to `handler_options.batch.max_size` messages, in publish order, once that
  /// many wait or once the oldest of them was published `batch.max_wait` ago (a timer of the
  /// executor, no thread waiting). The span is valid during the call only. Unsubscribe is
  /// quiescent; a partial batch is let go with what is queued (close the broker and wait_idle()
  /// to have it handled).
  /// Throws: as the per-message overload; std::invalid_argument for retries, breaker, dedup,
  /// per_key ordering or concurrency, which batches do not take.
  template <class Handler>
  requires(BatchHandler<Handler, T>)
      [[nodiscard]] HandlerSubscription<T> subscribe(std::string_view pattern, Handler&& handler,
                                                     ExecutorRef executor,
                                                     SubscribeOptions options = {},
                                                     HandlerOptions<T> handler_options = {},
                                                     std::stop_token stop = {}) {
    auto state = make_state<detail::HandlerState<T>>(
        pattern, std::move(options),
        typename detail::HandlerState<T>::BatchFn(std::forward<Handler>(handler)), executor,
        std::move(handler_options));
    return HandlerSubscription<T>(register_state(std::move(state), std::move(stop)));
  }

  /// As above, without failure-handling options.
  template <class Handler>
  requires(MessageHandler<Handler, T>)
      [[nodiscard]] HandlerSubscription<T> subscribe(std::string_view pattern, Handler&& handler,
                                                     ExecutorRef executor,
                                                     SubscribeOptions options = {},
                                                     std::stop_token stop = {}) {
    return subscribe(pattern, std::forward<Handler>(handler), executor, std::move(options),
                     HandlerOptions<T>{}, std::move(stop));
  }

  /// Publishes a copy of `value` to `topic`.
  /// Blocks: only if a matching subscriber uses Overflow::block and its queue is full.
  /// Throws: InvalidTopic when `topic` is not a valid literal topic (nothing is delivered).
  PublishResult publish(std::string_view topic, const T& value) {
    return publish_from(Origin{}, topic, value);
  }
  /// Publishes `value`, moved into the one payload all subscribers share.
  PublishResult publish(std::string_view topic, T&& value) {
    return publish_from(Origin{}, topic, std::move(value));
  }
  /// Publishes a copy of `value` to `topic` with `options`: headers, and `retain` to keep it as
  /// the topic's retained message (see retain()).
  PublishResult publish(std::string_view topic, const T& value, PublishOptions options) {
    return publish_from(Origin{}, std::move(options), topic, value);
  }
  /// Publishes `value`, moved, to `topic` with `options` (headers).
  PublishResult publish(std::string_view topic, T&& value, PublishOptions options) {
    return publish_from(Origin{}, std::move(options), topic, std::move(value));
  }
  /// Publishes a T constructed in place from `args`, tagged with `origin` (for bridges).
  template <class... Args>
  PublishResult publish_from(Origin origin, std::string_view topic, Args&&... args) {
    return publish_impl(origin, nullptr, false, topic, std::forward<Args>(args)...);
  }
  /// As above, with `options` (headers, retain).
  template <class... Args>
  PublishResult publish_from(Origin origin, PublishOptions options, std::string_view topic,
                             Args&&... args) {
    return publish_impl(origin, &options.headers, options.retain, topic,
                        std::forward<Args>(args)...);
  }

  /// A Publisher for `topic` that skips validation and routing on each publish.
  /// Throws: InvalidTopic for an invalid topic.
  [[nodiscard]] Publisher<T> publisher(std::string_view topic, Origin origin = {}) {
    validate_topic(topic);
    return Publisher<T>(core_, std::string(topic), origin.id);
  }

 private:
  template <class... Args>
  PublishResult publish_impl(Origin origin, Headers* headers, bool retain, std::string_view topic,
                             Args&&... args) {
    if (core_->closed()) return PublishResult{.closed = true};
#if !defined(NDEBUG)
    const InFlight in_flight(publishing_);  // debug builds check the lifetime rule
#endif
    auto& site = core_->thread_site();
    if (site.depth != 0) {  // from an inline handler: the outer delivery's route must live on
      const auto route = core_->route(topic);
      const detail::DeliveryDepth nested(site.depth);
      return core_->deliver(*route, site, topic, origin.id, headers, retain,
                            std::forward<Args>(args)...);
    }
    const auto& route = core_->cached_route(site, topic);
    const detail::DeliveryDepth outer(site.depth);
    return core_->deliver(route, site, topic, origin.id, headers, retain,
                          std::forward<Args>(args)...);
  }

 public:
  /// Closes every subscription with CloseReason::broker_closed (consumers still drain what is
  /// queued) and makes later publishes return `closed` at once. Idempotent.
  void close() noexcept {
    core_->close();
  }
  [[nodiscard]] bool is_closed() const noexcept {
    return core_->closed();
  }

  /// Totals since construction.
  [[nodiscard]] BrokerStats stats() const {
    return core_->stats();
  }

  /// Counts publishes per topic pattern, for the topics matching one of `patterns` (a topic
  /// counts for the first it matches); see for_each_topic. Opt-in and bounded: the label set an
  /// exporter builds from it is `patterns`, never the topics themselves (which may come from
  /// untrusted input). Replaces the previous set; patterns kept keep their counters. Costs a
  /// sharded atomic increment per publish to a tracked topic (two when it drops), one branch
  /// otherwise. Throws: InvalidTopic for an invalid pattern, std::invalid_argument for more than
  /// max_tracked_topics patterns; nothing changes then.
  void track_topics(const std::vector<std::string>& patterns) {
    if (patterns.size() > max_tracked_topics) {
      throw std::invalid_argument("herald: track_topics got " + std::to_string(patterns.size()) +
                                  " patterns; at most " + std::to_string(max_tracked_topics));
    }
    for (const std::string& p : patterns)
      validate_pattern(p);
    core_->track(patterns);
  }

  /// The most patterns track_topics accepts.
  static constexpr std::size_t max_tracked_topics = 256;

  /// Calls `visit(const herald::TopicStats&)` for each pattern given to track_topics, in order.
  template <class Visitor>
  requires(std::invocable<Visitor&, const TopicStats&>) void for_each_topic(Visitor&& visit) const {
    core_->for_each_topic(visit);
  }

  /// Makes every publish to a topic matching `pattern` retained by `policy`: the topic keeps
  /// its newest `policy.last` messages (each for at most `policy.max_age`), with or without
  /// PublishOptions::retain, for subscribers that ask for a replay and for retained() and
  /// for_each_retained(). Calling it again with the same pattern replaces its policy; a topic
  /// follows the first pattern it matches, in the order they were first given (topics no
  /// pattern covers keep one message per PublishOptions::retain publish). Topics retained
  /// already follow the new policies at once. Bounded by BrokerOptions.
  ///
  ///     broker.retain("sensors.>", {.last = 10, .max_age = std::chrono::minutes(5)});
  ///
  /// Throws: InvalidTopic for an invalid pattern; std::invalid_argument when policy.last is 0 or
  /// above max_retained_per_topic, or max_age is negative. Nothing changes then.
  void retain(std::string_view pattern, RetainPolicy policy) {
    validate_pattern(pattern);
    if (policy.last == 0 || policy.last > max_retained_per_topic) {
      throw std::invalid_argument("herald: RetainPolicy::last is " + std::to_string(policy.last) +
                                  "; it must be in [1, " + std::to_string(max_retained_per_topic) +
                                  "]");
    }
    if (policy.max_age < std::chrono::nanoseconds::zero()) {
      throw std::invalid_argument("herald: RetainPolicy::max_age is negative (" +
                                  std::to_string(policy.max_age.count()) + " ns)");
    }
    core_->retain(pattern, {policy.last, policy.max_age});
  }

  /// Removes the retain policy given for exactly `pattern` (see retain()); later publishes to
  /// its topics are retained only with PublishOptions::retain or by another policy. What the
  /// topics retain already stays, trimmed to their new policy (without one: the last message,
  /// BrokerOptions::retained_max_age); clear_retained(pattern) forgets it. False when no policy
  /// had that pattern. Throws: InvalidTopic for an invalid pattern.
  bool stop_retaining(std::string_view pattern) {
    validate_pattern(pattern);
    return core_->stop_retaining(pattern);
  }

  /// The most messages a retain policy keeps per topic.
  static constexpr std::size_t max_retained_per_topic = 4096;

  /// The newest retained message of `topic` (a last-value read, without subscribing), or empty
  /// when it has none (never retained, cleared, evicted, or older than its max_age).
  /// Throws: InvalidTopic when `topic` is not a valid literal topic.
  [[nodiscard]] std::optional<Message<T>> retained(std::string_view topic) const {
    validate_topic(topic);
    return core_->retained(topic);
  }

  /// Calls `visit(const herald::Message<T>&)` for every retained message of the topics
  /// `pattern` matches (wildcards included), per topic oldest first, topics in no particular
  /// order. A snapshot: `visit` runs without any broker lock held, so it may publish or
  /// subscribe. Throws: InvalidTopic for an invalid pattern.
  template <class Visitor>
  requires(std::invocable<Visitor&, const Message<T>&>) void for_each_retained(
      std::string_view pattern, Visitor&& visit) const {
    validate_pattern(pattern);
    for (const Message<T>& m : core_->retained_matching(pattern))
      visit(m);
  }

  /// Forgets the retained messages of the topics `pattern` matches (later publishes retain
  /// again; policies stay); returns how many messages went.
  /// Throws: InvalidTopic for an invalid pattern.
  std::size_t clear_retained(std::string_view pattern) {
    validate_pattern(pattern);
    return core_->clear_retained(pattern);
  }

  /// Calls `visit(const herald::SubscriptionInfo&)` once for every live subscription: its kind,
  /// pattern, options and counters (what an exporter needs). The set is a snapshot taken when
  /// the call starts; `visit` runs without any broker lock held, so it may subscribe, unsubscribe
  /// or publish.
  /// Complexity: O(subscriptions).
  template <class Visitor>
  requires(std::invocable<Visitor&, const SubscriptionInfo&>) void for_each_subscription(
      Visitor&& visit) const {
    core_->for_each(visit);
  }

 private:
  /// Builds a subscription state of type S (pull or handler) after validating the pattern.
  template <class S, class... Extra>
  std::shared_ptr<S> make_state(std::string_view pattern, SubscribeOptions options,
                                Extra&&... extra) {
    validate_pattern(pattern);
    return std::make_shared<S>(std::string(pattern), std::move(options),
                               std::forward<Extra>(extra)...);
  }

  /// Registers a state and returns its owning handle (stop_token wired). All or nothing: if
  /// anything throws, nothing is registered and the state is destroyed unused.
  detail::SubscriptionHandle<T> register_state(std::shared_ptr<detail::SubscriptionState<T>> state,
                                               std::stop_token stop) {
    if (stop.stop_requested()) {
      state->close(CloseReason::stopped);
      return detail::SubscriptionHandle<T>(std::move(state), {}, nullptr);
    }
    auto slot = stop.stop_possible() ? std::make_unique<detail::StopSlot<T>>() : nullptr;
    state->set_registry(core_);  // before anything (an executor's listener) can close it
    state->attach();
    core_->add(state);  // the last step that can throw, but for a replay's
    if (state->replays()) {
      try {
        core_->join(*state, state->options().replay.count());
      } catch (...) {
        state->close_and_leave(CloseReason::unsubscribed);
        state->quiesce();
        throw;
      }
    }
    return detail::SubscriptionHandle<T>(std::move(state), std::move(stop), std::move(slot));
  }

  static const BrokerOptions& validated(const BrokerOptions& options) {
    validate(options);
    return options;
  }

  std::shared_ptr<detail::BrokerCore<T>> core_ = std::make_shared<detail::BrokerCore<T>>();
#if !defined(NDEBUG)
  // Publishes in progress, to catch a destructor running concurrently with one (debug only).
  struct InFlight {
    explicit InFlight(std::atomic<int>& n) noexcept : n_(n) { n_.fetch_add(1); }
    ~InFlight() { n_.fetch_sub(1); }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;
    std::atomic<int>& n_;
  };
  std::atomic<int> publishing_{0};
#endif
};

}  // namespace herald
