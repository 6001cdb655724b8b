// herald::nats codecs: how a Bridge<T> turns a T into bytes for NATS and back. Needs nothing
// but the standard library; the bridge (nats/bridge.hpp) takes any type that models Codec.
#pragma once

#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace herald::nats {

/// A codec could not turn received bytes into a T.
class DecodeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// What a Bridge needs to carry T over the wire. `encode` returns the bytes of `value`: a view of
/// `value` itself when its bytes can be sent as they are, or of `scratch` (a buffer the bridge
/// reuses) after writing them there. `decode` builds a T from received bytes or throws.
/// Both are called concurrently from the bridge's threads, so they must be thread-safe.
template <class C, class T>
concept Codec = requires(const C& c, const T& value, std::string& scratch, std::string_view bytes) {
  { c.encode(value, scratch) } -> std::convertible_to<std::string_view>;
  { c.decode(bytes) } -> std::convertible_to<T>;
};

/// std::string travels as its bytes, without a copy on the way out.
struct StringCodec {
  std::string_view encode(const std::string& value, std::string& /*scratch*/) const noexcept {
    return value;
  }
  std::string decode(std::string_view bytes) const { return std::string(bytes); }
};

/// std::vector<std::byte> travels as its bytes, without a copy on the way out.
struct BytesCodec {
  std::string_view encode(const std::vector<std::byte>& value, std::string& /*scratch*/) const {
    return {reinterpret_cast<const char*>(value.data()), value.size()};
  }
  std::vector<std::byte> decode(std::string_view bytes) const {
    const auto* p = reinterpret_cast<const std::byte*>(bytes.data());
    return std::vector<std::byte>(p, p + bytes.size());
  }
};

/// A trivially copyable T travels as its object representation: both ends must agree on its
/// layout (same type definition, same byte order, same ABI).
template <class T>
struct TrivialCodec {
  static_assert(
      std::is_trivially_copyable_v<T>,
      "TrivialCodec<T> needs a trivially copyable T; give the Bridge a codec for this type");
  std::string_view encode(const T& value, std::string& /*scratch*/) const noexcept {
    return {reinterpret_cast<const char*>(&value), sizeof(T)};
  }
  T decode(std::string_view bytes) const {
    if (bytes.size() != sizeof(T)) {
      throw DecodeError("herald::nats: expected " + std::to_string(sizeof(T)) + " bytes, got " +
                        std::to_string(bytes.size()));
    }
    std::array<char, sizeof(T)> raw;
    std::memcpy(raw.data(), bytes.data(), sizeof(T));
    return std::bit_cast<T>(raw);
  }
};

/// The codec a Bridge<T> uses unless given one: StringCodec, BytesCodec or TrivialCodec<T>.
template <class T>
struct DefaultCodec : TrivialCodec<T> {};
template <>
struct DefaultCodec<std::string> : StringCodec {};
template <>
struct DefaultCodec<std::vector<std::byte>> : BytesCodec {};

}  // namespace herald::nats
