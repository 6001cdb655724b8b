// Headers: a small ordered map of text fields carried beside a message's value (a correlation
// or trace id, a reply subject, an error text), set at publish and read by subscribers. The
// NATS bridge carries them as NATS headers, so the rules for names and values are NATS's.
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace herald {

/// Header names herald itself sets. They follow NATS's conventions where NATS has one, so that
/// clients written against NATS read them without herald's help.
namespace header {
/// The error text of a failed request (the responder threw); NATS services use the same name.
inline constexpr std::string_view service_error = "Nats-Service-Error";
/// A code for that error (NATS services send an HTTP-like status, herald sends "500").
inline constexpr std::string_view service_error_code = "Nats-Service-Error-Code";
}  // namespace header

/// A few name/value text fields in insertion order. A name may appear more than once (as in
/// NATS); get() returns the first value, set() replaces every value of a name.
/// Names: 1 to 256 printable ASCII characters, no ':' and no space. Values: at most 64 KiB, no
/// CR or LF. Names are case-sensitive (NATS compares them as written).
///
///     herald::Headers h{{"trace-id", "4bf92f3577b34da6"}};
///     broker.publish("orders.created", order, {.headers = std::move(h)});
///     ... m.headers().get("trace-id") -> "4bf92f3577b34da6"
///
/// Thread-safety: like a std::vector: const members may be called concurrently. A published
/// message's headers are immutable.
class Headers {
 public:
  using Field = std::pair<std::string, std::string>;

 private:
  // Matches the fields called `name`.
  struct named {
    std::string_view name;
    bool operator()(const Field& f) const noexcept { return f.first == name; }
  };

 public:
  using const_iterator = std::vector<Field>::const_iterator;

  static constexpr std::size_t max_name_bytes = 256;
  static constexpr std::size_t max_value_bytes = 64 * 1024;

  Headers() = default;
  /// Throws: std::invalid_argument for an invalid name or value (see the class comment).
  Headers(std::initializer_list<std::pair<std::string_view, std::string_view>> fields) {
    for (const auto& [name, value] : fields)
      add(name, value);
  }

  /// Appends a field (a name already present keeps its earlier values too).
  /// Throws: std::invalid_argument naming the problem; the headers are unchanged then.
  Headers& add(std::string_view name, std::string_view value) {
    check(name, value);
    fields_.emplace_back(std::string(name), std::string(value));
    return *this;
  }
  /// Sets `name` to the one value `value`, replacing the values it had.
  /// Throws: std::invalid_argument naming the problem; the headers are unchanged then.
  Headers& set(std::string_view name, std::string_view value) {
    check(name, value);
    const auto first = std::find_if(fields_.begin(), fields_.end(), named{name});
    if (first == fields_.end()) {
      fields_.emplace_back(std::string(name), std::string(value));
      return *this;
    }
    first->second.assign(value);
    fields_.erase(std::remove_if(std::next(first), fields_.end(), named{name}), fields_.end());
    return *this;
  }
  /// Removes every value of `name`; returns how many there were.
  std::size_t erase(std::string_view name) {
    const auto before = fields_.size();
    std::erase_if(fields_, named{name});
    return before - fields_.size();
  }

  /// The first value of `name`, if any.
  [[nodiscard]] std::optional<std::string_view> get(std::string_view name) const noexcept {
    const auto it = std::find_if(fields_.begin(), fields_.end(), named{name});
    if (it == fields_.end()) return std::nullopt;
    return std::string_view(it->second);
  }
  [[nodiscard]] bool contains(std::string_view name) const noexcept {
    return get(name).has_value();
  }
  /// Every value of `name`, in insertion order.
  [[nodiscard]] std::vector<std::string_view> get_all(std::string_view name) const {
    std::vector<std::string_view> out;
    for (const auto& [n, v] : fields_) {
      if (n == name) out.emplace_back(v);
    }
    return out;
  }

  [[nodiscard]] std::size_t size() const noexcept { return fields_.size(); }
  [[nodiscard]] bool empty() const noexcept { return fields_.empty(); }
  [[nodiscard]] const_iterator begin() const noexcept { return fields_.begin(); }
  [[nodiscard]] const_iterator end() const noexcept { return fields_.end(); }

  friend bool operator==(const Headers&, const Headers&) = default;

  /// Throws std::invalid_argument unless `name` and `value` may be a header field.
  static void check(std::string_view name, std::string_view value) {
    const auto fail = [&](const std::string& why) {
      throw std::invalid_argument("herald: header \"" + std::string(name.substr(0, 64)) + "\" " +
                                  why);
    };
    if (name.empty()) fail("has an empty name");
    if (name.size() > max_name_bytes) {
      fail("has a name of " + std::to_string(name.size()) + " bytes; at most " +
           std::to_string(max_name_bytes));
    }
    for (const char c : name) {
      const auto u = static_cast<unsigned char>(c);
      if (u <= 0x20 || u >= 0x7f || c == ':') {
        fail("has a name with a space, ':' or a character that is not printable ASCII");
      }
    }
    if (value.size() > max_value_bytes) {
      fail("has a value of " + std::to_string(value.size()) + " bytes; at most " +
           std::to_string(max_value_bytes));
    }
    // A plain loop: find_first_of with a set of two searches the set once per character (a
    // memchr call each), ~20x the cost; every header of every imported message passes here.
    for (const char c : value) {
      if (c == '\r' || c == '\n') fail("has a CR or LF in its value");
    }
  }

 private:
  std::vector<Field> fields_;
};

}  // namespace herald
