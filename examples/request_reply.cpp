// Request-reply: a typed price service. Two responders share the requests as a queue group,
// a requester asks with a timeout, a failing lookup comes back as an error text, a topic nobody
// serves answers "no responders" at once, a slow answer times out, and request_many gathers a
// quote from every desk. Then (where libnats is installed) the same service reaches a desk in
// another process over NATS: herald::nats::ServiceBridge forwards "remote.>" requests to NATS,
// and the other process answers them with its own herald responder -- any NATS client could
// answer or ask instead (`nats req remote.prices.eu "3 ACME"`).
//
//   request_reply [nats://host:port]     without a URL it starts a private nats-server
//   request_reply --remote-desk URL       the other process (what the first one starts)
#include <herald/request.hpp>
#include <herald/worker_pool.hpp>
#if defined(HERALD_EXAMPLE_NATS)
#include <herald/nats.hpp>

#include "nats_support.hpp"
#endif

#include <fmt/core.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

using namespace std::chrono_literals;

struct Quote {
  std::string symbol;
  int quantity = 1;
};
struct Price {
  std::string desk;
  double amount = 0;
};

#if defined(HERALD_EXAMPLE_NATS)
// On the wire, as text: "<quantity> <symbol>" and "<amount> <desk>".
struct QuoteCodec {
  std::string_view encode(const Quote& q, std::string& scratch) const {
    scratch = std::to_string(q.quantity) + " " + q.symbol;
    return scratch;
  }
  Quote decode(std::string_view bytes) const {
    Quote q;
    const auto [end, ec] = std::from_chars(bytes.data(), bytes.data() + bytes.size(), q.quantity);
    if (ec != std::errc{} || end == bytes.data() + bytes.size() || *end != ' ') {
      throw herald::nats::DecodeError("a quote is \"<quantity> <symbol>\"");
    }
    q.symbol.assign(end + 1, bytes.data() + bytes.size());
    return q;
  }
};
struct PriceCodec {
  std::string_view encode(const Price& p, std::string& scratch) const {
    scratch = fmt::format("{} {}", p.amount, p.desk);
    return scratch;
  }
  Price decode(std::string_view bytes) const {
    Price p;
    const auto space = bytes.find(' ');
    p.amount = std::stod(std::string(bytes.substr(0, space)));
    if (space != std::string_view::npos) p.desk.assign(bytes.substr(space + 1));
    return p;
  }
};
using PriceBridge = herald::nats::ServiceBridge<Quote, Price, QuoteCodec, PriceCodec>;

// --- The other process: a pricing desk that answers over NATS until asked to quit. ---
int remote_desk(const std::string& url) {
  herald::Service<Quote, Price> prices;
  const std::string name = fmt::format("remote desk (process {})", getpid());
  auto desk = prices.serve(
      "remote.prices.*",
      [&](const herald::Request<Quote>& r) {
        return Price{name, 11.0 * r->quantity};
      },
      herald::inline_executor);
  std::promise<void> quit;
  auto quitter = prices.serve(
      "remote.quit",
      [&](const herald::Request<Quote>&) {
        quit.set_value();
        return Price{name, 0};
      },
      herald::inline_executor);
  PriceBridge bridge(prices, {.url = url});
  bridge.answer("remote.>");  // NATS requests on remote.> are answered by this service
  const bool asked =
      quit.get_future().wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  std::this_thread::sleep_for(100ms);  // let the last reply leave
  return asked ? 0 : 1;
}

// --- This process asks the remote desk through its own Service. ---
int over_nats(herald::Service<Quote, Price>& prices, const std::string& given_url) {
  std::unique_ptr<examples::PrivateServer> server;
  std::string url = given_url;
  if (url.empty()) {
    server = std::make_unique<examples::PrivateServer>();
    if (!server->started()) {
      fmt::print(stderr, "request_reply: cannot start nats-server; pass a NATS URL instead\n");
      return 1;
    }
    url = server->url();
  }
  PriceBridge bridge(prices, {.url = url});
  bridge.forward("remote.>");  // herald requests on remote.> go to NATS
  const pid_t child = examples::start_self({"--remote-desk", url});
  if (child < 0) return 1;
  int failures = 0;
  // The desk answers once it is up; until then NATS says "no responders" at once.
  herald::Reply<Price> p = herald::Reply<Price>::failure(herald::RequestError::no_responders, "");
  for (int i = 0; i < 200 && p.error() == herald::RequestError::no_responders; ++i) {
    if (i > 0) std::this_thread::sleep_for(50ms);
    p = prices.request("remote.prices.eu", Quote{"ACME", 3}, 2s);
  }
  fmt::print("{} over NATS: 3 ACME cost {} (answered by {})\n", p ? "ok  " : "FAIL",
             p ? p->amount : 0.0, p ? p->desk : p.error_text());
  failures += p && p->amount == 33.0 ? 0 : 1;
  const auto none = prices.request("remote.nobody", Quote{"ACME", 1}, 5s);
  fmt::print("{} over NATS: remote.nobody: {}\n",
             none.error() == herald::RequestError::no_responders ? "ok  " : "FAIL",
             to_string(none.error()));
  failures += none.error() == herald::RequestError::no_responders ? 0 : 1;
  const auto bye = prices.request("remote.quit", Quote{"-", 0}, 5s);
  int status = 0;
  waitpid(child, &status, 0);
  const bool child_ok = bye.ok() && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  fmt::print("{} the remote desk answered and exited\n", child_ok ? "ok  " : "FAIL");
  return failures + (child_ok ? 0 : 1);
}
#endif

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // two processes may share the terminal
#if defined(HERALD_EXAMPLE_NATS)
  if (argc == 3 && std::string(argv[1]) == "--remote-desk") return remote_desk(argv[2]);
#endif
  herald::WorkerPool pool(2, 256);
  herald::Service<Quote, Price> prices;  // requests are Quotes, replies are Prices

  // Two pricing desks share "prices.<market>" requests (each request goes to one of them).
  const auto desk = [](std::string name) {
    return [name](const herald::Request<Quote>& r) -> Price {
      if (r->symbol.empty()) throw std::invalid_argument("no symbol given");
      const double unit = r.topic() == "prices.eu" ? 10.5 : 12.0;
      return Price{name, unit * r->quantity};
    };
  };
  auto a = prices.serve("prices.*", desk("desk-a"), pool, {.queue_group = "pricing"});
  auto b = prices.serve("prices.*", desk("desk-b"), pool, {.queue_group = "pricing"});

  int failures = 0;
  const auto expect = [&](bool ok, const std::string& what) {
    fmt::print("{} {}\n", ok ? "ok  " : "FAIL", what);
    if (!ok) ++failures;
  };

  // 1. A request and its typed reply.
  herald::Reply<Price> p = prices.request("prices.eu", Quote{"ACME", 4}, 500ms);
  expect(p.ok() && p->amount == 42.0, fmt::format("4 ACME in eu cost {} (answered by {})",
                                                  p ? p->amount : 0.0, p ? p->desk : "nobody"));

  // 2. The responder threw: the requester gets the error and its text, not an exception.
  herald::Reply<Price> bad = prices.request("prices.eu", Quote{"", 1}, 500ms);
  expect(bad.error() == herald::RequestError::failed,
         fmt::format("an empty symbol fails: {} ({})", to_string(bad.error()), bad.error_text()));

  // 3. Nobody serves "stock.eu": the answer comes at once, not after the 5 s timeout.
  const auto start = std::chrono::steady_clock::now();
  herald::Reply<Price> none = prices.request("stock.eu", Quote{"ACME", 1}, 5s);
  const auto waited = std::chrono::steady_clock::now() - start;
  expect(none.error() == herald::RequestError::no_responders && waited < 1s,
         fmt::format("stock.eu: {} after {} us", to_string(none.error()),
                     std::chrono::duration_cast<std::chrono::microseconds>(waited).count()));

  // 4. A slow responder: the request times out; its late answer is counted, never mixed up
  //    with a later request.
  auto slow = prices.serve(
      "slow.quote",
      [](const herald::Request<Quote>&) {
        std::this_thread::sleep_for(200ms);
        return Price{"slow-desk", 1};
      },
      pool);
  herald::Reply<Price> late = prices.request("slow.quote", Quote{"ACME", 1}, 20ms);
  expect(late.error() == herald::RequestError::timeout,
         fmt::format("slow.quote: {} after 20 ms", to_string(late.error())));

  // 5. Scatter-gather: every desk on "quotes.all" answers (no queue group); request_many
  //    returns when all of them have, well before its timeout.
  auto q1 = prices.serve("quotes.all", desk("desk-a"), pool);
  auto q2 = prices.serve("quotes.all", desk("desk-b"), pool);
  auto q3 = prices.serve("quotes.all", desk("desk-c"), pool);
  herald::Replies<Price> all = prices.request_many("quotes.all", Quote{"ACME", 1}, {.timeout = 2s});
  std::string desks;
  for (const auto& r : all)
    desks += " " + r->desk;
  expect(all.size() == 3 && all.ended == herald::ManyEnd::all_answered,
         fmt::format("quotes from{} ({} replies)", desks, all.size()));

  // 6. Asynchronously: a future, while this thread does something else.
  auto future = prices.request_async("prices.us", Quote{"ACME", 2}, 500ms);
  expect(future.get().value().amount == 24.0, "async: 2 ACME in us cost 24");

  slow.wait_idle(1s);  // let the late answer arrive, to show it counted
  const herald::ServiceStats s = prices.stats();
  fmt::print(
      "requests {}: replied {}, failed {}, no responders {}, timed out {}, late replies {}\n",
      s.requests, s.replied, s.failed, s.no_responders, s.timeouts, s.late_replies);
  expect(s.late_replies == 1, "the late reply was dropped and counted");
#if defined(HERALD_EXAMPLE_NATS)
  failures += over_nats(prices, argc > 1 ? argv[1] : "");
#else
  (void)argc;
  (void)argv;
  fmt::print("(built without libnats: the part over NATS is left out)\n");
#endif
  return failures == 0 ? 0 : 1;
}
