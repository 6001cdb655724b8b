// Queue groups: competing consumers. The members of one queue group share the work: each
// message goes to exactly one of them (round-robin, skipping a member whose queue is full),
// while a plain subscription on the same pattern still sees every message.
#include <herald/broker.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Member {
  std::string_view name;
  herald::SubscribeOptions options;
  std::chrono::microseconds work;  // time spent per job
  std::vector<int> jobs{};         // what it got; written only by its own consumer thread
};

}  // namespace

int main() {
  constexpr int kJobs = 60;
  herald::Broker<int> broker;

  // Three workers in group "resizers"; carol is slow and has a short queue, so once her queue
  // is full the group hands her share to the others instead of dropping it.
  std::array<Member, 3> members = {{
      {"alice", {.capacity = 64, .queue_group = "resizers"}, 100us},
      {"bob", {.capacity = 64, .queue_group = "resizers"}, 100us},
      {"carol", {.capacity = 4, .queue_group = "resizers"}, 5ms},
  }};
  std::vector<herald::Subscription<int>> subs;
  for (const Member& m : members)
    subs.push_back(broker.subscribe("images.>", m.options));
  auto audit = broker.subscribe("images.>", {.capacity = 64});  // plain: gets a copy of each

  {
    std::vector<std::jthread> workers;
    for (std::size_t i = 0; i < members.size(); ++i) {
      workers.emplace_back([&member = members[i], &sub = subs[i]] {
        for (const herald::Message<int>& job : sub) {
          member.jobs.push_back(*job);
          std::this_thread::sleep_for(member.work);
        }
      });
    }
    for (int job = 0; job < kJobs; ++job) {
      const herald::PublishResult r = broker.publish("images.uploaded", job);
      if (r.matched != 2)
        fmt::print("job {}: matched {}, expected 2 (group + audit)\n", job, r.matched);
    }
    broker.close();  // the workers drain their queues, then their loops end
  }

  // Every job went to exactly one member, and none was lost.
  std::vector<int> all;
  for (const Member& m : members) {
    fmt::print("{:<6} handled {:>2} jobs:", m.name, m.jobs.size());
    for (const int job : m.jobs)
      fmt::print(" {}", job);
    fmt::print("\n");
    all.insert(all.end(), m.jobs.begin(), m.jobs.end());
  }
  std::sort(all.begin(), all.end());
  bool exactly_once = all.size() == kJobs;
  for (std::size_t i = 0; exactly_once && i < all.size(); ++i)
    exactly_once = all[i] == static_cast<int>(i);

  std::size_t audited = 0;
  while (audit.try_receive())
    ++audited;
  fmt::print("audit (plain subscriber) saw {} of {} jobs\n", audited, kJobs);
  fmt::print("each job handled by exactly one group member: {}\n", exactly_once ? "yes" : "NO");
  const bool ok = exactly_once && audited == kJobs && broker.stats().dropped == 0;
  return ok ? 0 : 1;
}
