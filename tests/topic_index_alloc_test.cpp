// TopicIndex::match allocates nothing: this executable replaces the global operator new with a
// counting one (a per-program replacement, hence a file of its own).
#include <herald/topic_index.hpp>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "catch.hpp"

// clang links its TSan and ASan runtimes statically, operator new included, so a replacement
// collides at link time there; Release and g++ ASan builds count instead.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define HERALD_CANNOT_REPLACE_NEW 1
#endif
#endif

namespace {

std::atomic<long> g_allocations{0};

}  // namespace

#if !defined(HERALD_CANNOT_REPLACE_NEW)

namespace {

void* counted_alloc(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}

void* counted_aligned_alloc(std::size_t size, std::align_val_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const auto a = static_cast<std::size_t>(align);
  const std::size_t rounded = (size + a - 1) / a * a;  // aligned_alloc wants a multiple
  if (void* p = std::aligned_alloc(a, rounded == 0 ? a : rounded)) return p;
  throw std::bad_alloc();
}

}  // namespace

// Every form is replaced, nothrow ones included: a sanitizer runtime supplies its own defaults,
// and memory from one family must not reach the other's delete. The deletes pair with malloc.
void* operator new(std::size_t size) {
  return counted_alloc(size);
}
void* operator new[](std::size_t size) {
  return counted_alloc(size);
}
void* operator new(std::size_t size, std::align_val_t align) {
  return counted_aligned_alloc(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return counted_aligned_alloc(size, align);
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t& tag) noexcept {
  return operator new(size, tag);
}
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  try {
    return counted_aligned_alloc(size, align);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, std::align_val_t align, const std::nothrow_t& tag) noexcept {
  return operator new(size, align, tag);
}
#include "free_deletes.hpp"  // every operator delete: std::free

#endif  // !HERALD_CANNOT_REPLACE_NEW

namespace {

std::string topic_of(std::size_t i, std::size_t salt) {
  std::string s = "svc";
  s += std::to_string(i % 13);
  s += ".region";
  s += std::to_string((i / 13) % 7);
  s += ".k";
  s += std::to_string((i * salt) % 101);
  s += ".event";
  return s;
}

}  // namespace

TEST_CASE("the allocation counter sees a call to operator new", "[topic_index][alloc]") {
#if defined(HERALD_CANNOT_REPLACE_NEW)
  WARN("skipped: operator new cannot be replaced next to this sanitizer runtime");
  return;
#endif
  const long before = g_allocations.load();
  void* p = ::operator new(32);  // a direct call: unlike a new-expression it cannot be elided
  ::operator delete(p);
  CHECK(g_allocations.load() - before == 1);
}

TEST_CASE("match performs no heap allocation", "[topic_index][alloc]") {
#if defined(HERALD_CANNOT_REPLACE_NEW)
  WARN("skipped: operator new cannot be replaced next to this sanitizer runtime");
  return;
#endif
  herald::TopicIndex<std::shared_ptr<int>> index;
  const auto value = std::make_shared<int>(1);
  for (std::size_t i = 0; i < 2000; ++i) {
    std::string p = topic_of(i, 3);
    if (i % 10 == 1) p.replace(p.find(".region"), p.find(".k") - p.find(".region"), ".*");
    if (i % 10 == 2) p.replace(p.find(".k"), std::string::npos, ".>");
    if (i % 50 == 3) p = "*.*.*.*";
    index.insert(p, value);
  }
  index.insert(">", value);
  // Topics built up front: the strings themselves must not count. Long tokens defeat the small
  // string buffer, so a per-token std::string in the lookup would show up.
  std::vector<std::string> topics;
  for (std::size_t i = 0; i < 500; ++i)
    topics.push_back(topic_of(i, 7));
  topics.push_back("a-token-much-longer-than-any-small-string-buffer.region1.k1.event");
  topics.push_back("svc1.region1.k1.event.and.more.tokens.than.any.pattern.has");
  topics.push_back("invalid..topic");
  std::string long_topic;
  for (int i = 0; i < 150; ++i)
    long_topic += (i == 0 ? "svc1" : ".tok-with-a-long-name");
  topics.push_back(long_topic);

  std::size_t visits = 0;
  const long before = g_allocations.load();
  for (int round = 0; round < 20; ++round) {
    for (const auto& t : topics) {
      index.match(t,
                  [&](const std::shared_ptr<int>& v) { visits += static_cast<std::size_t>(*v); });
    }
  }
  const long allocations = g_allocations.load() - before;
  CHECK(visits > 20 * topics.size());  // every valid topic matches at least ">"
  CHECK(allocations == 0);
}
