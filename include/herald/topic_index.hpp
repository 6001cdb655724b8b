// TopicIndex<V>: the subscription registry's engine, a trie of patterns keyed by token.
//
// Each node holds its literal children in a hash table and its '*' and '>' children apart (the
// shape of NATS's sublist), so matching a topic walks only the branches its tokens select: the
// cost grows with the topic's length and the number of wildcard branches on its way, never with
// the number of patterns elsewhere. Lookups hash the topic's tokens in place as string_views, so
// a match allocates nothing. There is no result cache: the broker keeps its own per-topic routes.
#pragma once

#include <herald/detail/hashing.hpp>
#include <herald/topic.hpp>

#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace herald {

namespace detail {

/// The literal children of a trie node: an owning open-addressing table of (hash, child) slots,
/// looked up by string_view. The key lives in the child itself, so a hit reads the slot and then
/// the child the walk needs next anyway: one cache miss per level fewer than a table of entries.
/// Linear probing at a load of at most 1/2, power-of-two capacity (no division), backward-shift
/// deletion (no tombstones), and the table shrinks as it empties, so churn cannot inflate it.
/// Child needs a `key` member convertible to std::string_view.
template <class Child>
class TokenMap {
 public:
  TokenMap() = default;
  TokenMap(const TokenMap&) = delete;
  TokenMap& operator=(const TokenMap&) = delete;
  ~TokenMap() {
    for (std::size_t i = 0; size_ != 0 && i <= mask_; ++i)
      delete slots_[i].child;
  }

  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

  /// The child under `key`, or nullptr.
  Child* find(std::string_view key) const noexcept {
    if (size_ == 0) return nullptr;
    const std::uint64_t h = TokenHash{}(key);
    for (std::size_t i = home(h);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.child == nullptr) return nullptr;
      if (s.hash == h && std::string_view(s.child->key) == key) return s.child;
    }
  }

  /// Takes ownership of `child`, whose key must not be present yet.
  /// Throws: std::bad_alloc, before anything changes (`child` then still owns the node).
  Child& adopt(std::unique_ptr<Child>& child) {
    if (2 * (size_ + 1) > capacity()) resize(std::max<std::size_t>(4, 2 * capacity()));
    Child* c = child.release();
    place({TokenHash{}(c->key), c});
    ++size_;
    return *c;
  }

  /// Removes and destroys `child`, which must be in this table.
  void erase(Child* child) noexcept {
    std::size_t i = home(TokenHash{}(child->key));
    while (slots_[i].child != child)
      i = (i + 1) & mask_;
    delete child;
    // Backward shift: later members of the probe run move up into the hole when their home
    // position allows it, so every run stays unbroken without tombstones.
    for (std::size_t j = (i + 1) & mask_; slots_[j].child != nullptr; j = (j + 1) & mask_) {
      if (((j - home(slots_[j].hash)) & mask_) >= ((j - i) & mask_)) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = Slot{};
    --size_;
    if (size_ == 0) {
      release_storage();
    } else if (capacity() > 16 && 8 * size_ < capacity()) {
      try {
        resize(capacity() / 4);
      } catch (const std::bad_alloc&) {  // keep the larger table: still correct
      }
    }
  }

  /// For tearing down only: removes some child and hands over its ownership, nullptr once
  /// empty. After the first call only release_any may be used until it returns nullptr (it scans
  /// downwards and keeps its place in mask_); the table is then empty and usable again.
  Child* release_any() noexcept {
    if (size_ == 0) return nullptr;
    std::size_t i = mask_;
    while (slots_[i].child == nullptr)
      --i;
    Child* child = slots_[i].child;
    slots_[i] = Slot{};
    mask_ = i;  // the scan resumes below; no lookup happens while tearing down
    if (--size_ == 0) release_storage();
    return child;
  }

  void swap(TokenMap& other) noexcept {
    slots_.swap(other.slots_);
    std::swap(mask_, other.mask_);
    std::swap(size_, other.size_);
  }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    Child* child = nullptr;  // owned; nullptr marks an empty slot
  };

  /// The high half of the hash, the bits its final multiply mixes best.
  [[nodiscard]] std::size_t home(std::uint64_t h) const noexcept { return (h >> 32) & mask_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return slots_ ? mask_ + 1 : 0; }

  void place(Slot s) noexcept {
    std::size_t i = home(s.hash);
    while (slots_[i].child != nullptr)
      i = (i + 1) & mask_;
    slots_[i] = s;
  }

  void resize(std::size_t cap) {
    auto old = std::exchange(slots_, std::make_unique<Slot[]>(cap));
    const std::size_t old_cap = old ? mask_ + 1 : 0;
    mask_ = cap - 1;
    for (std::size_t i = 0; i < old_cap; ++i) {
      if (old[i].child != nullptr) place(old[i]);
    }
  }

  void release_storage() noexcept {
    slots_.reset();
    mask_ = 0;
  }

  std::unique_ptr<Slot[]> slots_;  // nullptr while empty: most nodes have no literal child
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

/// A LIFO stack whose first N elements live inline: the common case never touches the heap.
template <class T, std::size_t N>
class InlineStack {
  static_assert(std::is_trivially_copyable_v<T>, "InlineStack holds trivially copyable frames");

 public:
  void push(const T& v) {
    if (size_ < N) {
      inline_[size_] = v;
    } else {
      spill_.push_back(v);
    }
    ++size_;
  }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  T pop() noexcept {
    --size_;
    if (size_ < N) return inline_[size_];
    const T v = spill_.back();
    spill_.pop_back();
    return v;
  }

 private:
  std::size_t size_ = 0;
  std::array<T, N> inline_;  // left uninitialised: zeroing it would cost every match
  std::vector<T> spill_;     // only for pathological tries; empty vectors own no memory
};

}  // namespace detail

/// A multiset of (pattern, value) entries that finds every entry whose pattern matches a topic.
///
///     herald::TopicIndex<int> index;
///     index.insert("orders.*.created", 1);
///     index.insert("orders.>", 2);
///     index.match("orders.eu.created", [](const int& v) { /* once with 1, once with 2 */ });
///
/// Thread-safety: concurrent const calls (match, size, ...) are safe; every other combination
/// needs external synchronisation (the broker guards its index with its own lock).
template <class V>
requires std::move_constructible<V> && std::equality_comparable<V>
class TopicIndex {
  static_assert(std::is_nothrow_destructible_v<V>, "V must be nothrow destructible");

 public:
  TopicIndex() = default;
  TopicIndex(const TopicIndex&) = delete;
  TopicIndex& operator=(const TopicIndex&) = delete;
  /// Takes over every entry of `other`, which is left empty.
  TopicIndex(TopicIndex&& other) noexcept { swap(other); }
  /// Replaces this index's entries by those of `other`, which is left empty.
  TopicIndex& operator=(TopicIndex&& other) noexcept {
    TopicIndex taken(std::move(other));
    swap(taken);
    return *this;
  }
  ~TopicIndex() { clear(); }

  /// Adds the entry (pattern, value); an equal entry may already be there (multiset).
  /// Throws: InvalidTopic for an invalid pattern, before any change; std::bad_alloc or what V's
  /// move constructor throws, leaving the index unchanged.
  /// Complexity: O(tokens in pattern).
  void insert(std::string_view pattern, V value) {
    validate_pattern(pattern);
    Node* n = &root_;
    try {
      detail::for_each_token(pattern, [&](std::string_view token) {
        n = &child_for_insert(*n, token);
        return true;
      });
      n->values.push_back(std::move(value));
    } catch (...) {
      prune(n);  // drop the nodes this call created
      throw;
    }
    ++size_;
  }

  /// Removes one entry equal to (pattern, value); false when there is none or the pattern is
  /// invalid. Nodes left without entries or children are freed.
  /// Throws: only what V's operator== throws or, for a V that is not nothrow move-assignable,
  /// std::bad_alloc or what copying V throws; the index is then unchanged.
  /// Complexity: O(tokens in pattern + entries with exactly this pattern).
  bool erase(std::string_view pattern, const V& value) {
    if (!is_valid_pattern(pattern)) return false;
    Node* n = &root_;
    const bool found = detail::for_each_token(pattern, [&](std::string_view token) noexcept {
      n = find_child(*n, token);
      return n != nullptr;
    });
    if (!found) return false;
    auto& values = n->values;
    for (std::size_t i = values.size(); i-- > 0;) {  // newest first: unsubscribing recent ones
      if (!(values[i] == value)) continue;
      remove_at(values, i);
      --size_;
      prune(n);
      return true;
    }
    return false;
  }

  /// Calls `visit(const V&)` once for every entry whose pattern matches `topic`, in no
  /// particular order; an invalid topic visits nothing. `visit` must not modify the index.
  /// Throws: what `visit` throws (the index is unchanged). Allocates only when more than 32
  /// wildcard branches are pending at once, which takes a deep, bushy trie.
  /// Complexity: O(nodes the topic reaches: its literal path plus every '*' branch on the way
  /// + entries visited); patterns off those paths cost nothing.
  template <class F>
  requires std::invocable<F&, const V&>
  void match(std::string_view topic, F&& visit) const {
    if (!is_valid_topic(topic)) return;
    // Depth-first walk: follow the literal child in place, keep '*' branches for later. An
    // explicit stack instead of recursion so a topic of a million tokens cannot overflow the
    // call stack.
    struct Frame {
      const Node* node;
      std::size_t pos;
    };
    detail::InlineStack<Frame, 32> pending;
    const Node* n = &root_;
    std::size_t pos = 0;  // n is reached by topic.substr(0, pos); at least one token remains
    for (;;) {
      std::size_t end = pos;  // tokens are short: a plain loop beats a call to memchr
      while (end != topic.size() && topic[end] != '.')
        ++end;
      const bool last = end == topic.size();
      if (n->full) visit_all(n->full->values, visit);  // '>' eats this token and all the rest
      if (n->star) {
        if (last) {
          visit_all(n->star->values, visit);
        } else {
          pending.push({n->star.get(), end + 1});
        }
      }
      if (!n->literals.empty()) {  // a hash of the token costs more than this test
        const Node* child = n->literals.find(std::string_view(topic.data() + pos, end - pos));
        if (child != nullptr) {
          if (!last) {
            n = child;
            pos = end + 1;
            continue;
          }
          visit_all(child->values, visit);
        }
      }
      if (pending.empty()) return;
      const Frame f = pending.pop();
      n = f.node;
      pos = f.pos;
    }
  }

  /// Number of entries.
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  /// True when there is no entry.
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  /// Number of trie nodes below the root; 0 whenever the index is empty (nodes are pruned).
  [[nodiscard]] std::size_t node_count() const noexcept { return nodes_; }

  /// Removes and destroys every entry.
  /// Complexity: O(nodes + entries); iterative, so any depth of trie is fine.
  void clear() noexcept {
    // Descend to a leaf, free it, climb back through the parent pointers: no recursion and no
    // allocation, unlike letting the unique_ptr chain destroy itself recursively.
    Node* n = &root_;
    for (;;) {
      if (Node* child = detach_any_child(*n)) {
        n = child;
        continue;
      }
      if (n == &root_) break;
      Node* parent = n->parent != nullptr ? n->parent : &root_;
      delete n;
      n = parent;
    }
    root_.values.clear();
    size_ = 0;
    nodes_ = 0;
  }

  /// Exchanges the entries of two indexes.
  void swap(TopicIndex& other) noexcept {
    // Children of a root point to nullptr, not to the root, so the roots can trade contents.
    root_.literals.swap(other.root_.literals);
    root_.star.swap(other.root_.star);
    root_.full.swap(other.root_.full);
    root_.values.swap(other.root_.values);
    std::swap(size_, other.size_);
    std::swap(nodes_, other.nodes_);
  }

 private:
  struct Node {
    Node(Node* p, std::string_view k) : parent(p), key(k) {}
    Node* parent;     // nullptr for children of the root, so the root can move with the index
    std::string key;  // the literal token leading here; empty for '*' and '>' children
    detail::TokenMap<Node> literals;
    std::unique_ptr<Node> star;  // the '*' child
    std::unique_ptr<Node> full;  // the '>' child (always a leaf)
    std::vector<V> values;       // entries whose pattern ends at this node

    [[nodiscard]] bool bare() const noexcept {
      return values.empty() && literals.empty() && !star && !full;
    }
  };

  static bool is_star(std::string_view token) noexcept {
    return token.size() == 1 && token[0] == '*';
  }
  static bool is_full(std::string_view token) noexcept {
    return token.size() == 1 && token[0] == '>';
  }

  template <class F>
  static void visit_all(const std::vector<V>& values, F& visit) {
    for (const V& v : values)
      visit(v);
  }

  Node* parent_link(Node& n) noexcept { return &n == &root_ ? nullptr : &n; }

  Node& child_for_insert(Node& n, std::string_view token) {
    std::unique_ptr<Node>* wildcard =
        is_star(token) ? &n.star : (is_full(token) ? &n.full : nullptr);
    if (wildcard == nullptr) {
      if (Node* existing = n.literals.find(token)) return *existing;
      auto child = std::make_unique<Node>(parent_link(n), token);
      Node& made = n.literals.adopt(child);
      ++nodes_;
      return made;
    }
    if (!*wildcard) {
      *wildcard = std::make_unique<Node>(parent_link(n), std::string_view());
      ++nodes_;
    }
    return **wildcard;
  }

  static Node* find_child(Node& n, std::string_view token) noexcept {
    if (is_star(token)) return n.star.get();
    if (is_full(token)) return n.full.get();
    return n.literals.find(token);
  }

  /// Frees `n` and then its ancestors while they hold neither entries nor children.
  void prune(Node* n) noexcept {
    while (n != &root_ && n->bare()) {
      Node* parent = n->parent != nullptr ? n->parent : &root_;
      if (parent->star.get() == n) {
        parent->star.reset();
      } else if (parent->full.get() == n) {
        parent->full.reset();
      } else {
        parent->literals.erase(n);
      }
      --nodes_;
      n = parent;
    }
  }

  static Node* detach_any_child(Node& n) noexcept {
    if (n.star) return n.star.release();
    if (n.full) return n.full.release();
    return n.literals.release_any();
  }

  static void remove_at(std::vector<V>& values, std::size_t i) {
    if constexpr (std::is_nothrow_move_assignable_v<V>) {
      if (i + 1 != values.size()) values[i] = std::move(values.back());
      values.pop_back();
    } else {
      // V cannot be moved into the hole safely: rebuild without it (strong guarantee).
      std::vector<V> kept;
      kept.reserve(values.size() - 1);
      for (std::size_t j = 0; j < values.size(); ++j) {
        if (j != i) kept.push_back(std::move_if_noexcept(values[j]));
      }
      values.swap(kept);
    }
  }

  Node root_{nullptr, {}};
  std::size_t size_ = 0;
  std::size_t nodes_ = 0;
};

}  // namespace herald
