// WeightedSemaphore: a counting semaphore whose acquirers take several permits at once and are
// served first come, first served, like Go's golang.org/x/sync/semaphore.
//
// Fast path: one 64-bit word holds the free permits and a "somebody waits" bit. While nobody
// waits, acquire and release are a load plus one CAS on that word each; nothing else is touched.
// Slow path: a waiter appends a node (on its own stack) to a FIFO list and sets the bit; from then
// on every acquire queues behind it and every release goes through the list, handing permits
// to the head waiter(s) directly, in order. A big request at the head therefore blocks later
// small ones instead of being starved by them.
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/parking.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>

namespace herald {

/// A semaphore of `capacity` permits where each acquire takes `n` of them, waiters served FIFO.
///
/// ```
/// herald::WeightedSemaphore memory{64 << 20};           // 64 MiB of buffers in flight
/// if (memory.acquire(size, stop)) { load(size); memory.release(size); }
/// ```
/// Permits are not owned by threads: any thread may release what another acquired. The
/// semaphore only checks that no more permits are released than are held in total.
/// Thread-safety: every member may be called concurrently.
class WeightedSemaphore {
 public:
  /// The largest capacity: the free count shares a 64-bit word with the waiter bit.
  static constexpr std::int64_t max_capacity = (std::int64_t{1} << 62) - 1;

  /// A semaphore with `capacity` free permits.
  /// Throws: std::invalid_argument when `capacity` <= 0 or > max_capacity.
  explicit WeightedSemaphore(std::int64_t capacity) : capacity_(checked_capacity(capacity)) {
    state_->store(static_cast<std::uint64_t>(capacity), std::memory_order_relaxed);
  }

  WeightedSemaphore(const WeightedSemaphore&) = delete;
  WeightedSemaphore& operator=(const WeightedSemaphore&) = delete;

  /// Destroying a semaphore while a thread waits on it is undefined behaviour, as for any
  /// synchronisation object.
  ~WeightedSemaphore() = default;

  /// Takes `n` permits if they are free and nobody is waiting (a waiter is never overtaken).
  /// Throws: std::invalid_argument when `n` <= 0 or `n` > capacity().
  /// Complexity: a load and one CAS when it succeeds without contention.
  [[nodiscard]] bool try_acquire(std::int64_t n) {
    const auto want = checked(n, "try_acquire");
    std::uint64_t s = state_->load(std::memory_order_relaxed);
    // acquire on success: what the releaser wrote before releasing is visible to us.
    while ((s & waiting_bit) == 0 && s >= want) {
      if (state_->compare_exchange_weak(s, s - want, std::memory_order_acquire,
                                        std::memory_order_relaxed))
        return true;
    }
    return false;
  }

  /// Takes `n` permits, waiting in line for them.
  /// Blocks: until the permits are granted. Throws: std::invalid_argument as try_acquire.
  void acquire(std::int64_t n) { (void)acquire_until(n, detail::Deadline::forever(), {}); }

  /// Takes `n` permits, waiting in line until they are granted or `stop` is requested (false;
  /// the waiter leaves the line and takes nothing). An already requested stop returns false at
  /// once, like BoundedQueue::push(v, stop).
  /// Blocks: until granted or stopped. Throws: std::invalid_argument as try_acquire.
  [[nodiscard]] bool acquire(std::int64_t n, std::stop_token stop) {
    (void)checked(n, "acquire");
    if (stop.stop_requested()) return false;
    return acquire_until(n, detail::Deadline::forever(), stop);
  }

  /// Takes `n` permits, waiting in line at most `timeout` (false: it took nothing). A timeout
  /// <= 0 tries once (as try_acquire); a huge one (duration::max()) waits forever.
  /// Blocks: until granted or the timeout. Throws: std::invalid_argument as try_acquire.
  template <class Rep, class Period>
  [[nodiscard]] bool acquire_for(std::int64_t n, std::chrono::duration<Rep, Period> timeout) {
    return acquire_until(n, detail::Deadline::after(timeout), {});
  }

  /// Gives back `n` permits and hands them to the waiters at the head of the line that they
  /// now satisfy, in order.
  /// Throws: std::invalid_argument when `n` <= 0 or when more permits would be free than the
  /// capacity (a release without a matching acquire); nothing is released then.
  /// Complexity: a load and one CAS while nobody waits; otherwise O(waiters granted).
  void release(std::int64_t n) {
    if (n <= 0) throw std::invalid_argument(message("release", "n must be positive", n));
    const auto give = static_cast<std::uint64_t>(n);
    std::uint64_t s = state_->load(std::memory_order_relaxed);
    while ((s & waiting_bit) == 0) {
      check_over_release(s, give);
      // release: our writes under the permits happen-before the next acquirer's.
      if (state_->compare_exchange_weak(s, s + give, std::memory_order_release,
                                        std::memory_order_relaxed))
        return;
    }
    release_slow(give);
  }

  /// The number of permits.
  [[nodiscard]] std::int64_t capacity() const noexcept { return capacity_; }

  /// Free permits right now (changes as soon as it is read).
  [[nodiscard]] std::int64_t approx_available() const noexcept {
    return static_cast<std::int64_t>(state_->load(std::memory_order_relaxed) & count_mask);
  }

  /// Threads waiting in line right now.
  [[nodiscard]] std::size_t approx_waiters() const noexcept {
    return waiters_.load(std::memory_order_relaxed);
  }

 private:
  static constexpr std::uint64_t waiting_bit = std::uint64_t{1} << 63;
  static constexpr std::uint64_t count_mask = waiting_bit - 1;

  /// A thread waiting in line; lives on that thread's stack while it waits.
  struct Waiter {
    std::uint64_t n = 0;
    Waiter* prev = nullptr;
    Waiter* next = nullptr;
    std::atomic<bool> granted{false};  // set (seq_cst) by the granting thread, under mutex_
    detail::EventCount ec;             // the waiter sleeps here, alone
  };

  static std::int64_t checked_capacity(std::int64_t capacity) {
    if (capacity <= 0 || capacity > max_capacity)
      throw std::invalid_argument(
          "herald::WeightedSemaphore: capacity must be in [1, 2^62 - 1], got " +
          std::to_string(capacity));
    return capacity;
  }

  static std::string message(const char* what, const char* why, std::int64_t n) {
    return std::string("herald::WeightedSemaphore::") + what + ": " + why + ", got " +
           std::to_string(n);
  }

  std::uint64_t checked(std::int64_t n, const char* what) const {
    if (n <= 0) throw std::invalid_argument(message(what, "n must be positive", n));
    // Such a request could never be granted; with FIFO it would also block everyone behind it.
    if (n > capacity_)
      throw std::invalid_argument(message(what, "n exceeds the capacity", n) + " (capacity " +
                                  std::to_string(capacity_) + ")");
    return static_cast<std::uint64_t>(n);
  }

  void check_over_release(std::uint64_t s, std::uint64_t give) const {
    if ((s & count_mask) + give > static_cast<std::uint64_t>(capacity_))
      throw std::invalid_argument(
          "herald::WeightedSemaphore::release: releasing " + std::to_string(give) +
          " permits but only " +
          std::to_string(static_cast<std::uint64_t>(capacity_) - (s & count_mask)) + " are held");
  }

  bool acquire_until(std::int64_t n, const detail::Deadline& deadline,
                     const std::stop_token& stop) {
    if (try_acquire(n)) return true;  // validates n too
    if (deadline.passed()) return false;
    Waiter me;
    me.n = static_cast<std::uint64_t>(n);
    if (!enqueue(me)) return true;  // the permits came free meanwhile
    const auto status = detail::wait_until(
        me.ec, [&me] { return me.granted.load(std::memory_order_seq_cst); }, deadline, stop);
    // Whatever the status, take the lock once more: a grant sets `granted` and then notifies
    // me.ec under the lock, so after this the granting thread no longer touches `me`, which is
    // about to go out of scope. It also orders the check below against a late grant.
    const std::lock_guard lock(mutex_);
    if (status == detail::WaitStatus::done || me.granted.load(std::memory_order_relaxed))
      return true;
    unlink(me);
    grant_locked();  // `me` may have been the head that held the others back
    return false;
  }

  /// Appends `me` to the line and sets the waiter bit; false when the permits were free after
  /// all (then they have been taken and `me` was not queued).
  bool enqueue(Waiter& me) {
    const std::lock_guard lock(mutex_);
    std::uint64_t s = state_->load(std::memory_order_relaxed);
    for (;;) {
      if ((s & waiting_bit) != 0) break;  // others already wait: join the end of the line
      if (s >= me.n) {
        if (state_->compare_exchange_weak(s, s - me.n, std::memory_order_acquire,
                                          std::memory_order_relaxed))
          return false;
        continue;
      }
      // From this CAS on, fast-path acquires and releases fail their CAS (they expect the bit
      // clear) and come here, under the lock: while the bit is set only lock holders write.
      if (state_->compare_exchange_weak(s, s | waiting_bit, std::memory_order_relaxed,
                                        std::memory_order_relaxed))
        break;
    }
    waiters_.store(waiters_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    me.prev = tail_;
    if (tail_ != nullptr) {
      tail_->next = &me;
    } else {
      head_ = &me;
    }
    tail_ = &me;
    return true;
  }

  void release_slow(std::uint64_t give) {
    const std::lock_guard lock(mutex_);
    std::uint64_t s = state_->load(std::memory_order_relaxed);
    // The line may have emptied (and the bit cleared) before we got the lock.
    while ((s & waiting_bit) == 0) {
      check_over_release(s, give);
      if (state_->compare_exchange_weak(s, s + give, std::memory_order_release,
                                        std::memory_order_relaxed))
        return;
    }
    check_over_release(s, give);
    state_->store(s + give, std::memory_order_release);  // only lock holders write: see enqueue
    grant_locked();
  }

  /// Hands free permits to the head of the line while it fits, then clears the waiter bit if
  /// the line is empty. Called with mutex_ held.
  void grant_locked() noexcept {
    std::uint64_t free = state_->load(std::memory_order_relaxed) & count_mask;
    while (head_ != nullptr && head_->n <= free) {
      Waiter* w = head_;
      free -= w->n;
      unlink(*w);
      // seq_cst store, then notify: the EventCount protocol (the waiter re-checks with a
      // seq_cst load). Done under the lock, so the waiter cannot leave before we are done.
      w->granted.store(true, std::memory_order_seq_cst);
      w->ec.notify_one();
    }
    // Granted waiters synchronise through mutex_ (they lock it before returning); release for
    // the fast-path acquirers that may CAS this word once the bit is clear.
    state_->store(head_ != nullptr ? (free | waiting_bit) : free, std::memory_order_release);
  }

  void unlink(Waiter& w) noexcept {
    if (w.prev != nullptr) {
      w.prev->next = w.next;
    } else {
      head_ = w.next;
    }
    if (w.next != nullptr) {
      w.next->prev = w.prev;
    } else {
      tail_ = w.prev;
    }
    w.prev = w.next = nullptr;
    waiters_.store(waiters_.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }

  // The free count (low 63 bits) and the waiter bit, alone on its line: it is the only word
  // the fast path touches.
  detail::CachePadded<std::atomic<std::uint64_t>> state_{std::in_place, std::uint64_t{0}};
  const std::int64_t capacity_;
  // FIFO hand-off needs an ordered line of waiters that a release walks and a timed-out or
  // stopped waiter can leave from the middle. A mutex guards that list for a few pointer moves
  // and is never held while sleeping; each waiter sleeps on its own EventCount (wait_until), the
  // project's one parking protocol. A lock-free list with removal from the middle would buy
  // nothing here: this path runs only when a thread is about to sleep anyway.
  std::mutex mutex_;
  Waiter* head_ = nullptr;
  Waiter* tail_ = nullptr;
  std::atomic<std::size_t> waiters_{0};  // written under mutex_, read by approx_waiters()
};

}  // namespace herald
