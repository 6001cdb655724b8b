// Observability: a small service that publishes orders, handles them on a worker pool and serves
// its metrics at /metrics for Prometheus (herald::MetricsRegistry, cpp-httplib for the HTTP).
//
//   metrics_endpoint --print                  one short workload, one exposition on stdout, exit
//   metrics_endpoint [--port 9464] [--rate 200] [--work-us 200] [--seconds 0]
//                                             serve /metrics on 127.0.0.1 while publishing --rate
//                                             orders a second, each handled for --work-us
//                                             microseconds (busy), for --seconds (0: until killed)
//
// The workload: every order goes to a handler subscription on the pool (its durations make the
// herald_handler_duration_seconds histogram), to a queue group of two pull consumers, and to an
// audit subscription nobody reads (it fills up and drops: herald_subscription_dropped_total).
// The topics are tracked per region pattern (herald_topic_published_total).
#include <herald/broker.hpp>
#include <herald/metrics.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <thread>

using namespace std::chrono_literals;

namespace {

struct Order {
  std::uint64_t id;
  double amount;
};

struct Options {
  bool print = false;
  int port = 9464;
  double rate = 200;
  int work_us = 200;
  double seconds = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const auto value = [&] {
      if (i + 1 >= argc) {
        fmt::print(stderr, "metrics_endpoint: {} needs a value\n", a);
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (a == "--print") {
      o.print = true;
    } else if (a == "--port") {
      o.port = std::stoi(value());
    } else if (a == "--rate") {
      o.rate = std::stod(value());
    } else if (a == "--work-us") {
      o.work_us = std::stoi(value());
    } else if (a == "--seconds") {
      o.seconds = std::stod(value());
    } else {
      fmt::print(stderr, "metrics_endpoint: unknown option {}\n", a);
      std::exit(2);
    }
  }
  return o;
}

// Busy for `us` microseconds: a handler whose duration we know.
void work(int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);

  herald::Broker<Order> broker;
  herald::WorkerPool pool(2, 1024);
  broker.track_topics({"orders.eu.>", "orders.us.>"});

  std::atomic<std::uint64_t> handled{0};
  auto billing = broker.subscribe("orders.>",
                                  [&](const herald::Message<Order>&) {
                                    work(opt.work_us);
                                    handled.fetch_add(1, std::memory_order_relaxed);
                                  },
                                  pool, {.capacity = 4096});
  auto shipper_a = broker.subscribe("orders.>", {.capacity = 256, .queue_group = "shipping"});
  auto shipper_b = broker.subscribe("orders.>", {.capacity = 256, .queue_group = "shipping"});
  auto audit = broker.subscribe("orders.eu.>", {.capacity = 64});  // never read: it drops

  herald::MetricsRegistry metrics;
  metrics.add_broker("orders", broker, {{"service", "metrics_endpoint"}});
  metrics.add_pool("handlers", pool);

  // The shipping group's consumers drain their queues.
  std::jthread shipping([&](std::stop_token stop) {
    while (!stop.stop_requested()) {
      bool any = false;
      while (shipper_a.try_receive())
        any = true;
      while (shipper_b.try_receive())
        any = true;
      if (!any) std::this_thread::sleep_for(5ms);
    }
  });

  if (opt.print) {
    for (std::uint64_t i = 1; i <= 100; ++i)
      broker.publish(i % 2 ? "orders.eu.created" : "orders.us.created", Order{i, 10.0});
    billing.wait_idle(10s);
    metrics.write(std::cout);
    return 0;
  }

  httplib::Server server;
  server.Get("/metrics", [&](const httplib::Request& req, httplib::Response& res) {
    const herald::ExpositionFormat format =
        herald::negotiate_format(req.get_header_value("Accept"));
    res.set_content(metrics.exposition(format), std::string(herald::content_type(format)));
  });
  const int port = opt.port == 0 ? server.bind_to_any_port("127.0.0.1")
                                 : (server.bind_to_port("127.0.0.1", opt.port) ? opt.port : -1);
  if (port <= 0) {
    fmt::print(stderr, "metrics_endpoint: cannot listen on 127.0.0.1:{}\n", opt.port);
    return 1;
  }
  std::jthread http([&] { server.listen_after_bind(); });
  fmt::print("listening on 127.0.0.1:{}; publishing {} orders/s, handled in {} us each\n", port,
             opt.rate, opt.work_us);
  std::fflush(stdout);

  // Publish at a steady rate (absolute deadlines: no drift), alternating regions.
  const auto start = std::chrono::steady_clock::now();
  const auto period = std::chrono::duration<double>(1.0 / opt.rate);
  std::uint64_t published = 0;
  while (opt.seconds <= 0 ||
         std::chrono::steady_clock::now() - start < std::chrono::duration<double>(opt.seconds)) {
    ++published;
    broker.publish(published % 2 ? "orders.eu.created" : "orders.us.created",
                   Order{published, 10.0});
    std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::nanoseconds>(
                                              period * static_cast<double>(published)));
  }
  billing.wait_idle(10s);
  server.stop();
  fmt::print("published {} orders, handled {}\n", published, handled.load());
  return 0;
}
