// What the JetStream tests share: a nats-server with JetStream on, storing in a temporary
// directory of its own, and a plain libnats client with a JetStream context for "the other side".
#pragma once

#include <nats/nats.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>

#include "catch.hpp"
#include "nats_server.hpp"

namespace herald_test {

/// A temporary directory for the server's JetStream files, removed at the end.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "herald-js-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = templ;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// A nats-server with JetStream on, storing in its own temporary directory (kept across its
/// restarts: NatsServer::stop is a SIGKILL, start runs it again on the same port and directory).
struct JetStreamServer {
  TempDir dir;
  NatsServer server{{"-js", "-sd", dir.path.string()}};
};

/// A plain libnats connection with a JetStream context.
struct JsClient {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  explicit JsClient(const std::string& url) {
    REQUIRE(natsConnection_ConnectTo(&nc, url.c_str()) == NATS_OK);
    REQUIRE(natsConnection_JetStream(&js, nc, nullptr) == NATS_OK);
  }
  JsClient(const JsClient&) = delete;
  JsClient& operator=(const JsClient&) = delete;
  ~JsClient() {
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
  }
  /// A file-storage stream `name` capturing `subject`.
  void add_stream(const char* name, const char* subject) {
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    const char* subjects[] = {subject};
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    jsStreamInfo* si = nullptr;
    jsErrCode jerr{};
    REQUIRE(js_AddStream(&si, js, &cfg, nullptr, &jerr) == NATS_OK);
    jsStreamInfo_Destroy(si);
  }
  /// Publishes `v`'s bytes (what TrivialCodec decodes) to `subject`, acknowledged by the stream.
  /// The type is named by the caller (`publish<int>`): the bridge's codec expects its size.
  template <class V>
  void publish(const std::string& subject, std::type_identity_t<V> v) {
    static_assert(std::is_trivially_copyable_v<V>);
    jsPubAck* ack = nullptr;
    jsErrCode jerr{};
    REQUIRE(js_Publish(&ack, js, subject.c_str(), &v, sizeof v, nullptr, &jerr) == NATS_OK);
    jsPubAck_Destroy(ack);
  }
  /// How many messages stream `name` holds (0 when it cannot say).
  std::uint64_t stream_messages(const char* name) {
    jsStreamInfo* si = nullptr;
    jsErrCode jerr{};
    if (js_GetStreamInfo(&si, js, name, nullptr, &jerr) != NATS_OK) return 0;
    const std::uint64_t n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
  }
};

}  // namespace herald_test
