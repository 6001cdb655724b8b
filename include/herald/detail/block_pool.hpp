// Recycling of message envelopes between the threads that free them and the threads that
// allocate them.
//
// Every publish allocates one envelope (payload + topic + reference counts) and the last
// subscriber to drop it frees it, on another thread. With glibc that pattern is the slow path on
// both sides: the consumer's per-thread cache fills up, so its frees go back to the publisher's
// arena under that arena's lock, while the publisher, whose cache is always empty, allocates from
// the same arena under the same lock. BlockPool puts a lock-free ring of free blocks between
// them: a free pushes the block into the ring, an allocation pops one, and only when the ring is
// empty (start-up, bursts) or full (a burst of frees) does malloc see the traffic.
//
//   BlockPool<Size, Align>::instance()   one process-wide pool per block size and alignment
#pragma once

#include <herald/detail/ring.hpp>

#include <cstddef>
#include <memory>
#include <new>
#include <optional>

#if defined(__SANITIZE_ADDRESS__)
#define HERALD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HERALD_ASAN 1
#endif
#endif
#if defined(HERALD_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace herald::detail {

template <std::size_t Size, std::size_t Align>
class BlockPool {
 public:
  /// Blocks kept for reuse at most; beyond that frees go to the system allocator. Enough to
  /// absorb a subscriber's queue draining at once, small enough to be noise in memory (a few
  /// hundred KiB per block size that is actually used).
  static constexpr std::size_t kCapacity = 2048;

  /// The pool for this size. Deliberately never destroyed: messages may be freed by threads that
  /// outlive static destruction, and the blocks it holds stay reachable (not a leak).
  static BlockPool& instance() {
    static BlockPool* const pool = new BlockPool;
    return *pool;
  }

  void* allocate() {
    std::optional<void*> block;
    if (free_.try_pop(block)) {
#if defined(HERALD_ASAN)
      ASAN_UNPOISON_MEMORY_REGION(*block, Size);
#endif
      return *block;
    }
    return system_allocate();
  }

  void deallocate(void* block) noexcept {
#if defined(HERALD_ASAN)
    // A use after free must still be caught while the block waits in the ring.
    ASAN_POISON_MEMORY_REGION(block, Size);
#endif
    if (free_.try_emplace(block) == Claim::pushed) return;
#if defined(HERALD_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(block, Size);
#endif
    system_deallocate(block);
  }

 private:
  BlockPool() = default;

  static constexpr bool kOverAligned = Align > __STDCPP_DEFAULT_NEW_ALIGNMENT__;
  static void* system_allocate() {
    if constexpr (kOverAligned) return ::operator new (Size, std::align_val_t{Align});
    return ::operator new(Size);
  }
  static void system_deallocate(void* block) noexcept {
    if constexpr (kOverAligned) {
      ::operator delete (block, std::align_val_t{Align});
    } else {
      ::operator delete(block);
    }
  }

  Ring<void*> free_{kCapacity};
};

}  // namespace herald::detail
