// Request-reply: a typed price service. Two responders share the requests as a queue group,
// a requester asks with a timeout, a failing lookup comes back as an error text, a topic nobody
// serves answers "no responders" at once, a slow answer times out, and request_many gathers a
// quote from every desk.
#include <herald/request.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <chrono>
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

int main() {
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
  return failures == 0 ? 0 : 1;
}
