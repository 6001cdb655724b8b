// herald::nats::ServiceBridge against a real nats-server (started per test on a free loopback
// port), with a peer that is not herald: a nats.go program (service_peer/main.go) as requester and
// as responder in another process. Also herald to herald across two connections, timeouts and
// late replies, many requests in flight from many threads, a server outage, and bad input.
#include <herald/nats.hpp>
#include <herald/request.hpp>
#include <herald/worker_pool.hpp>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "nats_server.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace std::chrono_literals;
using herald::Headers;
using herald::Reply;
using herald::Request;
using herald::RequestError;
using herald::Service;
using herald::nats::ServiceBridge;
using herald_test::eventually;  // the tests' only way to wait for the network
using herald_test::NatsServer;

namespace {

/// The nats.go peer built by CMake, or "" when there is no Go toolchain (those cases skip).
std::string go_peer() {
#ifdef HERALD_SERVICE_PEER
  return HERALD_SERVICE_PEER;
#else
  return "";
#endif
}

/// A process with its stdin and stdout on pipes.
class Process {
 public:
  explicit Process(std::vector<std::string> args) {
    int in[2];
    int out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
    if (rc != 0) {
      pid_ = -1;
      throw std::runtime_error("cannot run " + args[0]);
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process() {
    close_stdin();
    wait();
    close(stdout_);
  }

  /// The next line of its stdout ("" at its end, or after `limit`).
  std::string read_line(std::chrono::milliseconds limit = 20s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    for (;;) {
      if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      pollfd p{stdout_, POLLIN, 0};
      if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) return "";
      char chunk[4096];
      const ssize_t n = read(stdout_, chunk, sizeof chunk);
      if (n <= 0) return "";
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  void close_stdin() {
    if (stdin_ >= 0) close(stdin_);
    stdin_ = -1;
  }
  /// Its exit status (-1 when killed by a signal).
  int wait() {
    if (pid_ <= 0) return status_;
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return status_;
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
  int status_ = -1;
  std::string buffer_;
};

/// What one nats.go `nc.Request` printed: its first line, then its "header ..." lines.
std::vector<std::string> go_request(const NatsServer& server, const std::string& subject,
                                    const std::string& payload, int timeout_ms = 5000) {
  Process p({go_peer(), "request", server.url(), subject, payload, std::to_string(timeout_ms)});
  p.close_stdin();
  std::vector<std::string> lines;
  for (std::string line = p.read_line(); !line.empty(); line = p.read_line())
    lines.push_back(line);
  REQUIRE(p.wait() == 0);
  REQUIRE(!lines.empty());
  return lines;
}

bool contains(const std::vector<std::string>& lines, const std::string& line) {
  return std::find(lines.begin(), lines.end(), line) != lines.end();
}

/// A plain libnats connection, for the raw NATS side of a test.
struct RawConnection {
  explicit RawConnection(const std::string& url) {
    REQUIRE(natsConnection_ConnectTo(&nc, url.c_str()) == NATS_OK);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  ~RawConnection() { natsConnection_Destroy(nc); }
  natsConnection* nc = nullptr;
};

/// A NATS responder that keeps the requests it gets, to answer them when the test says so.
struct HeldRequests {
  HeldRequests(natsConnection* nc, const char* subject) {
    REQUIRE(natsConnection_SubscribeSync(&sub, nc, subject) == NATS_OK);
    REQUIRE(natsConnection_Flush(nc) == NATS_OK);
  }
  HeldRequests(const HeldRequests&) = delete;
  HeldRequests& operator=(const HeldRequests&) = delete;
  ~HeldRequests() { natsSubscription_Destroy(sub); }
  /// The next request (its reply subject), waiting at most 10 s.
  std::string next() {
    natsMsg* msg = nullptr;
    if (natsSubscription_NextMsg(&msg, sub, 10000) != NATS_OK) return "";
    std::string reply = natsMsg_GetReply(msg) ? natsMsg_GetReply(msg) : "";
    natsMsg_Destroy(msg);
    return reply;
  }
  natsSubscription* sub = nullptr;
};

std::int64_t sum_of(const std::string& text) {
  std::int64_t a = 0;
  std::int64_t b = 0;
  if (std::sscanf(text.c_str(), "%ld %ld", &a, &b) != 2) {
    throw std::invalid_argument("cannot add \"" + text + "\"");
  }
  return a + b;
}

using Text = Service<std::string, std::string>;

/// Opens a gate when the test leaves its scope, even by a failed REQUIRE, so that a responder
/// waiting at it lets its pool and its Responder handle go.
struct OpenOnExit {
  herald_test::Gate& gate;
  ~OpenOnExit() { gate.open(); }
};

struct Operands {
  std::int64_t a;
  std::int64_t b;
};

}  // namespace

// The answering side counts a reply once it has sent it -- possibly after the requester has it.
// Waits until every request it took is counted by how it ended (the identity in ServiceBridge).
template <class Bridge>
bool answers_settled(const Bridge& bridge) {
  return eventually([&] {
    const auto a = bridge.stats().answers;
    return a.requests ==
           a.answered + a.timeouts + a.no_responders + a.failed + a.bad_requests + a.unsent;
  });
}

TEST_CASE("a nats.go requester is answered by a herald responder, errors as service errors",
          "[nats][service]") {
  if (go_peer().empty()) {
    WARN("skipped: no Go toolchain; install golang-go and golang-github-nats-io-go-nats-dev");
    return;
  }
  NatsServer server;
  Text svc;
  herald::WorkerPool pool(2, 1024);
  herald_test::Gate slow_gate;
  auto add = svc.serve(
      "svc.add",
      [](const Request<std::string>& r) {
        if (*r == "boom") throw std::runtime_error("the adder broke\non two lines");
        return std::to_string(sum_of(*r));
      },
      pool);
  auto echo = svc.serve(
      "svc.echo",
      [](const Request<std::string>& r, herald::Replier<std::string> replier) {
        Headers h;
        h.set("Herald-Echo", r.headers().get("Herald-Trace").value_or("none"));
        replier.reply(*r, std::move(h));
      },
      herald::inline_executor);
  auto slow = svc.serve(
      "svc.slow",
      [&](const Request<std::string>& r) {
        slow_gate.wait();
        return *r;
      },
      pool);
  ServiceBridge<std::string, std::string> bridge(svc, {.url = server.url()});
  const OpenOnExit release{slow_gate};
  bridge.answer("svc.>", {.timeout = 300ms});

  CHECK(go_request(server, "svc.add", "2 40") == std::vector<std::string>{"ok 42"});
  const auto echoed = go_request(server, "svc.echo", "hello");
  CHECK(echoed.front() == "ok hello");
  CHECK(contains(echoed, "header Herald-Echo from-go"));  // NATS headers both ways
  // The responder's exception text, on one line, with NATS's service error headers.
  CHECK(go_request(server, "svc.add", "boom").front() ==
        "service-error 500 the adder broke on two lines");
  CHECK(go_request(server, "svc.add", "two").front() == "service-error 500 cannot add \"two\"");
  // No herald responder: nats.go reports "no responders", as it does for the server's status.
  CHECK(go_request(server, "svc.nobody", "1 2").front() == "no-responders");
  // The service takes longer than the answer timeout: a 504, well before Go's own timeout.
  CHECK(go_request(server, "svc.slow", "zzz", 5000).front().rfind("service-error 504 ", 0) == 0);
  slow_gate.open();

  CHECK(answers_settled(bridge));
  const auto s = bridge.stats();
  CHECK(s.answers.requests == 6);
  CHECK(s.answers.answered == 2);
  CHECK(s.answers.failed == 2);
  CHECK(s.answers.no_responders == 1);
  CHECK(s.answers.timeouts == 1);
  CHECK(s.answers.bad_requests == 0);
  CHECK(s.answers.unsent == 0);
}

TEST_CASE("herald requests reach a nats.go responder in another process", "[nats][service]") {
  if (go_peer().empty()) {
    WARN("skipped: no Go toolchain; install golang-go and golang-github-nats-io-go-nats-dev");
    return;
  }
  NatsServer server;
  Process responder({go_peer(), "respond", server.url(), "svc.mul"});
  REQUIRE(responder.read_line() == "ready");
  Text svc;
  ServiceBridge<std::string, std::string> bridge(svc, {.url = server.url()});
  bridge.forward("svc.>");

  const Reply<std::string> product = svc.request("svc.mul", "6 7", 5s);
  REQUIRE(product.ok());
  CHECK(*product == "42");

  const Reply<std::string> refused = svc.request("svc.mul", "fail", 5s);
  CHECK(refused.error() == RequestError::failed);
  CHECK(refused.error_text() == "multiplication refused");
  CHECK(refused.headers().get("Nats-Service-Error-Code") == "422");

  Headers trace{{"Herald-Trace", "4bf92f35"}};
  const Reply<std::string> echoed = svc.request("svc.mul", "echo-header", 5s, trace);
  REQUIRE(echoed.ok());
  CHECK(*echoed == "4bf92f35");

  // Nobody on NATS serves the subject: the server's no-responders status, at once.
  const auto start = std::chrono::steady_clock::now();
  const Reply<std::string> nobody = svc.request("svc.div", "6 7", 10s);
  CHECK(nobody.error() == RequestError::no_responders);
  CHECK(std::chrono::steady_clock::now() - start < 5s);

  // The async form, many in flight at once through the one inbox subscription.
  std::vector<std::future<Reply<std::string>>> futures;
  for (int i = 0; i < 200; ++i)
    futures.push_back(svc.request_async("svc.mul", std::to_string(i) + " 3", 10s));
  for (int i = 0; i < 200; ++i) {
    const auto r = futures[static_cast<std::size_t>(i)].get();
    REQUIRE(r.ok());
    CHECK(*r == std::to_string(i * 3));
  }

  responder.close_stdin();
  CHECK(responder.read_line() == "answered 203");
  const auto s = bridge.stats();
  CHECK(s.forwards.requests == 204);
  CHECK(s.forwards.sent == 204);
  CHECK(s.forwards.replied == 202);
  CHECK(s.forwards.service_errors == 1);
  CHECK(s.forwards.no_responders == 1);
  CHECK(s.forwards.in_flight == 0);
}

TEST_CASE("herald answers herald across two connections, errors mapped back", "[nats][service]") {
  NatsServer server;
  Service<Operands, std::int64_t> here;
  Service<Operands, std::int64_t> there;
  herald::WorkerPool pool(2, 1024);
  herald_test::Gate slow_gate;
  auto add = there.serve(
      "calc.add",
      [](const Request<Operands>& r) -> std::int64_t {
        if (r->b == 0) throw std::domain_error("adding zero is not allowed here");
        return r->a + r->b;
      },
      pool);
  auto slow = there.serve(
      "calc.slow",
      [&](const Request<Operands>& r) -> std::int64_t {
        slow_gate.wait();
        return r->a;
      },
      pool);
  auto tagged = there.serve(
      "calc.tag",
      [](const Request<Operands>& r, herald::Replier<std::int64_t> replier) {
        replier.reply(r->a, Headers{{"Herald-Seen",
                                     std::string(r.headers().get("Herald-Id").value_or("none"))}});
      },
      herald::inline_executor);
  ServiceBridge<Operands, std::int64_t> answering(there, {.url = server.url()});
  const OpenOnExit release{slow_gate};
  answering.answer("calc.*", {.queue_group = "calculators", .timeout = 200ms});
  ServiceBridge<Operands, std::int64_t> asking(here, {.url = server.url()});
  asking.forward("calc.>");

  const auto sum = here.request("calc.add", Operands{2, 3}, 5s);
  REQUIRE(sum.ok());
  CHECK(*sum == 5);

  const auto refused = here.request("calc.add", Operands{2, 0}, 5s);
  CHECK(refused.error() == RequestError::failed);
  CHECK(refused.error_text() == "adding zero is not allowed here");

  const auto tag = here.request("calc.tag", Operands{7, 0}, 5s, Headers{{"Herald-Id", "r-1"}});
  REQUIRE(tag.ok());
  CHECK(tag.headers().get("Herald-Seen") == "r-1");

  // No responder on the far side: the answering bridge says 503, read as no_responders.
  const auto nobody = here.request("calc.none", Operands{1, 1}, 5s);
  CHECK(nobody.error() == RequestError::no_responders);
  // The far service times out (200 ms): a 504, read as timeout, long before our 5 s.
  const auto start = std::chrono::steady_clock::now();
  const auto late = here.request("calc.slow", Operands{1, 1}, 5s);
  CHECK(late.error() == RequestError::timeout);
  CHECK(std::chrono::steady_clock::now() - start < 4s);
  slow_gate.open();

  CHECK(answers_settled(answering));
  const auto a = answering.stats();
  CHECK(a.answers.requests == 5);
  CHECK(a.answers.answered == 2);
  CHECK(a.answers.failed == 1);
  CHECK(a.answers.no_responders == 1);
  CHECK(a.answers.timeouts == 1);
  const auto f = asking.stats();
  CHECK(f.forwards.sent == 5);
  CHECK(f.forwards.replied == 2);
  CHECK(f.forwards.service_errors == 1);
  CHECK(f.forwards.no_responders == 1);
  CHECK(f.forwards.timeouts == 1);
}

TEST_CASE("forwarded requests end at their deadline, leave nothing behind, late replies counted",
          "[nats][service]") {
  NatsServer server;
  RawConnection raw(server.url());
  HeldRequests held(raw.nc, "slow.>");
  Text svc;
  ServiceBridge<std::string, std::string> bridge(svc, {.url = server.url()});
  bridge.forward("slow.>", {.max_wait = 150ms});

  // The requester's own deadline.
  const auto timed_out = svc.request("slow.a", "x", 100ms);
  CHECK(timed_out.error() == RequestError::timeout);
  const std::string reply_a = held.next();
  REQUIRE(!reply_a.empty());
  // max_wait, sooner than the requester's deadline: the bridge's timer ends it.
  auto pending = svc.request_async("slow.b", "y", 30s);
  const std::string reply_b = held.next();
  REQUIRE(!reply_b.empty());
  REQUIRE(pending.wait_for(10s) == std::future_status::ready);
  const auto r = pending.get();
  CHECK(r.error() == RequestError::timeout);
  CHECK(r.error_text() == "no reply from NATS within the timeout");
  CHECK(eventually([&] { return bridge.stats().forwards.in_flight == 0; }));

  // The replies come after all: dropped and counted, never given to another request.
  REQUIRE(natsConnection_PublishString(raw.nc, reply_a.c_str(), "late a") == NATS_OK);
  REQUIRE(natsConnection_PublishString(raw.nc, reply_b.c_str(), "late b") == NATS_OK);
  REQUIRE(natsConnection_Flush(raw.nc) == NATS_OK);
  CHECK(eventually([&] { return bridge.stats().forwards.late_replies == 2; }));
  const auto s = bridge.stats();
  CHECK(s.forwards.timeouts == 2);
  CHECK(s.forwards.replied == 0);
  CHECK(svc.stats().late_replies == 0);  // they never reached the service
}

TEST_CASE("8 threads x 500 requests over NATS each get their own reply", "[nats][service]") {
  NatsServer server;
  Text back;
  herald::WorkerPool pool(2, 1024);
  auto responder = back.serve(
      "work.*", [](const Request<std::string>& r) { return r.topic() + "/" + *r; }, pool);
  ServiceBridge<std::string, std::string> answering(back, {.url = server.url()});
  answering.answer("work.*");
  Text front;
  ServiceBridge<std::string, std::string> asking(front, {.url = server.url()});
  asking.forward("work.*");

  constexpr int kThreads = 8;
  constexpr int kEach = 500;
  std::vector<int> wrong(kThreads, 0);
  std::vector<std::string> first_error(kThreads);
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const std::string topic = "work.t" + std::to_string(t);
        for (int i = 0; i < kEach; ++i) {
          const std::string payload = std::to_string(i);
          const auto r = front.request(topic, payload, 20s);
          if (!r.ok() || *r != topic + "/" + payload) {
            if (wrong[static_cast<std::size_t>(t)]++ == 0) {
              first_error[static_cast<std::size_t>(t)] =
                  r.ok() ? "got " + *r : herald::to_string(r.error()) + (": " + r.error_text());
            }
          }
        }
      });
    }
  }
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t << ": " << first_error[static_cast<std::size_t>(t)]);
    CHECK(wrong[static_cast<std::size_t>(t)] == 0);
  }
  const auto f = asking.stats();
  CHECK(f.forwards.replied == kThreads * kEach);
  CHECK(f.forwards.in_flight == 0);
  CHECK(f.forwards.late_replies == 0);
  CHECK(answers_settled(answering));
  CHECK(answering.stats().answers.answered == kThreads * kEach);
}

TEST_CASE("requests in flight when the server goes away end with an error, not at the timeout",
          "[nats][service]") {
  NatsServer server;
  RawConnection raw(server.url());
  HeldRequests held(raw.nc, "hold.>");
  Text svc;
  ServiceBridge<std::string, std::string> bridge(svc, {.url = server.url()});
  bridge.forward("hold.>");

  auto in_flight = svc.request_async("hold.a", "x", 60s);
  REQUIRE(!held.next().empty());
  server.stop();
  REQUIRE(in_flight.wait_for(20s) == std::future_status::ready);
  const auto r = in_flight.get();
  CHECK(r.error() == RequestError::failed);
  CHECK(r.error_text().find("connection was lost") != std::string::npos);
  // While disconnected, a request fails at once rather than waiting in a buffer.
  const auto refused = svc.request("hold.b", "y", 60s);
  CHECK(refused.error() == RequestError::failed);
  CHECK(bridge.stats().forwards.connection_lost == 1);

  server.start();
  CHECK(eventually([&] { return bridge.is_connected(); }, 20s));
}

TEST_CASE("destroying the bridge ends its forwarded requests with closed", "[nats][service]") {
  NatsServer server;
  RawConnection raw(server.url());
  HeldRequests held(raw.nc, "hold.>");
  Text svc;
  std::future<Reply<std::string>> in_flight;
  {
    ServiceBridge<std::string, std::string> bridge(svc, {.url = server.url()});
    bridge.forward("hold.>");
    in_flight = svc.request_async("hold.a", "x", 60s);
    REQUIRE(!held.next().empty());
  }
  REQUIRE(in_flight.wait_for(0s) == std::future_status::ready);
  CHECK(in_flight.get().error() == RequestError::closed);
  // The forwarding responder is gone with the bridge.
  CHECK(svc.request("hold.b", "y", 1s).error() == RequestError::no_responders);
}

TEST_CASE("bad requests get a 400, messages without a reply subject are counted and ignored",
          "[nats][service]") {
  NatsServer server;
  Service<Operands, std::int64_t> svc;
  auto add = svc.serve(
      "calc.add", [](const Request<Operands>& r) { return r->a + r->b; }, herald::inline_executor);
  ServiceBridge<Operands, std::int64_t> bridge(svc, {.url = server.url()});
  bridge.answer("calc.>");
  RawConnection raw(server.url());

  natsMsg* reply = nullptr;
  REQUIRE(natsConnection_RequestString(&reply, raw.nc, "calc.add", "three bytes?", 5000) ==
          NATS_OK);
  CHECK(natsMsg_GetDataLength(reply) == 0);
  const char* code = nullptr;
  const char* text = nullptr;
  REQUIRE(natsMsgHeader_Get(reply, "Nats-Service-Error-Code", &code) == NATS_OK);
  REQUIRE(natsMsgHeader_Get(reply, "Nats-Service-Error", &text) == NATS_OK);
  CHECK(std::string(code) == "400");
  CHECK(std::string(text).find("expected 16 bytes, got 12") != std::string::npos);
  natsMsg_Destroy(reply);

  REQUIRE(natsConnection_PublishString(raw.nc, "calc.add", "no reply subject") == NATS_OK);
  REQUIRE(natsConnection_Flush(raw.nc) == NATS_OK);
  CHECK(eventually([&] { return bridge.stats().answers.no_reply_subject == 1; }));
  const auto s = bridge.stats();
  CHECK(s.answers.requests == 1);
  CHECK(s.answers.bad_requests == 1);
  CHECK(s.errors == 1);  // the decode failure, reported to on_error
}

TEST_CASE("a forwarded request whose topic NATS cannot carry intact fails at once, reported",
          "[nats][service]") {
  using namespace std::string_literals;
  NatsServer server;
  RawConnection raw(server.url());
  HeldRequests held(raw.nc, "fwd.>");  // would see "fwd.a" if the cut subject went out
  Text svc;
  std::mutex mutex;
  std::vector<herald::nats::BridgeError> errors;
  ServiceBridge<std::string, std::string> bridge(
      svc, {.url = server.url(), .on_error = [&](const herald::nats::BridgeError& e) {
              const std::lock_guard lock(mutex);
              errors.push_back(e);
            }});
  bridge.forward("fwd.>");
  const auto r = svc.request("fwd.a\0b"s, "x", 5s);
  CHECK(r.error() == RequestError::failed);
  CHECK_THAT(r.error_text(), Catch::Matchers::Contains("NUL byte at offset 5"));
  natsMsg* out = nullptr;
  CHECK(natsSubscription_NextMsg(&out, held.sub, 300) == NATS_TIMEOUT);  // nothing went out
  const std::lock_guard lock(mutex);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].kind == herald::nats::ErrorKind::subject_unsafe);
  CHECK(errors[0].subject == "fwd.a\0b"s);
}

TEST_CASE("invalid patterns and options are refused with a clear error", "[nats][service]") {
  NatsServer server;
  Text svc;
  ServiceBridge<std::string, std::string> bridge(svc, {.url = server.url()});
  CHECK_THROWS_AS(bridge.answer("a..b"), herald::InvalidTopic);
  CHECK_THROWS_AS(bridge.forward("a.>.b"), herald::InvalidTopic);
  CHECK_THROWS_AS(bridge.answer("a.b", {.queue_group = "two words"}), std::invalid_argument);
  CHECK_THROWS_AS(bridge.answer("a.b", {.timeout = 0s}), std::invalid_argument);
  CHECK_THROWS_AS(bridge.forward("a.b", {.max_wait = -1s}), std::invalid_argument);
  CHECK_THROWS_AS(bridge.answer(std::string(5000, 'x')), std::length_error);
  // A NUL is a valid herald topic byte that NATS cannot carry (the C client stops there).
  using namespace std::string_literals;
  CHECK_THROWS_WITH(bridge.answer("a.\0b"s),
                    Catch::Matchers::Contains("pattern 'a.\\x00b' holds a NUL byte at offset 2"));
  CHECK_THROWS_AS(bridge.forward("\0.>"s), std::invalid_argument);
  NatsServer gone;
  const std::string url = gone.url();
  gone.stop();
  CHECK_THROWS_AS((ServiceBridge<std::string, std::string>(svc, {.url = url})),
                  herald::nats::NatsError);
}
