// Fuzzes TopicIndex: the input bytes become a sequence of insert/erase/match/clear operations over
// a small token alphabet, checked step by step against a brute-force list scanned with
// herald::matches. Any disagreement aborts.
#include <herald/topic_index.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

struct Entry {
  std::string pattern;
  int tag = 0;
  friend bool operator==(const Entry&, const Entry&) = default;
  friend bool operator<(const Entry& a, const Entry& b) {
    return a.pattern != b.pattern ? a.pattern < b.pattern : a.tag < b.tag;
  }
};

/// Hands out input bytes; zeros once the input is used up.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  [[nodiscard]] bool done() const { return pos_ >= size_; }
  std::uint8_t next() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// Mostly small, so that shared prefixes, duplicates and matches are the rule. The last three make
// invalid strings ('>' in the middle is invalid too, and any wildcard in a topic).
constexpr std::string_view kTokens[] = {"a", "b", "c", "*", ">", "ab", "", "x y"};

std::string decode(Reader& in) {
  const std::size_t n = 1 + in.next() % 6;
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i != 0) s += '.';
    const std::uint8_t b = in.next();
    if (b < 160) {
      s += kTokens[b % std::size(kTokens)];
    } else {  // 24 more literals, enough for a node's table to outgrow its linear scan
      s += 'w';
      s += static_cast<char>('a' + (b - 160) % 24);
    }
  }
  return s;
}

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in(data, size);
  herald::TopicIndex<Entry> index;
  std::vector<Entry> oracle;
  for (int step = 0; step < 4096 && !in.done(); ++step) {
    const std::uint8_t op = in.next() % 16;
    if (op < 7) {  // insert
      Entry e{decode(in), in.next() % 4};
      if (herald::is_valid_pattern(e.pattern)) {
        index.insert(e.pattern, e);
        oracle.push_back(e);
      } else {
        const std::size_t nodes = index.node_count();
        bool threw = false;
        try {
          index.insert(e.pattern, e);
        } catch (const herald::InvalidTopic&) {
          threw = true;
        }
        check(threw && index.node_count() == nodes);
      }
    } else if (op < 11) {  // erase: an existing entry half of the time, else anything
      const std::uint8_t how = in.next();
      Entry e = (how & 1) != 0 && !oracle.empty() ? oracle[how % oracle.size()]
                                                  : Entry{decode(in), in.next() % 4};
      const auto it = std::find(oracle.begin(), oracle.end(), e);
      const bool there = it != oracle.end();
      if (there) oracle.erase(it);
      check(index.erase(e.pattern, e) == there);
    } else if (op < 15) {  // match
      const std::string topic = decode(in);
      std::vector<Entry> got;
      index.match(topic, [&](const Entry& e) { got.push_back(e); });
      std::vector<Entry> want;
      for (const Entry& e : oracle) {
        if (herald::matches(topic, e.pattern)) want.push_back(e);
      }
      std::sort(got.begin(), got.end());
      std::sort(want.begin(), want.end());
      check(got == want);
    } else {
      index.clear();
      oracle.clear();
    }
    check(index.size() == oracle.size());
    check(oracle.empty() == (index.node_count() == 0));
  }
  for (const Entry& e : oracle)
    check(index.erase(e.pattern, e));
  check(index.empty() && index.node_count() == 0);
  return 0;
}
