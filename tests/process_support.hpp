// Helpers for the hardening tests of issue 12: hang guards (a deadlock must fail a test within
// seconds, not hang the suite), fork isolation (std::terminate and sanitizer aborts end a child,
// not the test program) and a heap probe. Public API of herald only.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__unix__)
#include <cxxabi.h>
#include <execinfo.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HERALD_TEST_SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define HERALD_TEST_SANITIZER_HEAP 1
#endif
#endif
#if defined(HERALD_TEST_SANITIZER_HEAP)
// From <sanitizer/allocator_interface.h>, which g++ 12 does not ship; every sanitizer runtime
// with an allocator of its own exports it.
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#else
#include <malloc.h>
#endif

namespace herald_process {

/// Objects that a hung thread may still touch: never destroyed (and still reachable, so the leak
/// checker stays quiet). A test that detects a hang parks its context here and fails.
inline void keep_forever(std::shared_ptr<void> p) {
  static auto* kept = new std::vector<std::shared_ptr<void>>;  // deliberately never freed
  static std::mutex m;
  const std::lock_guard lock(m);
  kept->push_back(std::move(p));
}

/// Runs `fn` on a thread of its own and waits at most `limit` for it. True when it returned in
/// time (an exception it threw is rethrown here). On false the thread is still running: `fn` must
/// only use objects it co-owns (capture shared_ptrs), and the caller should keep_forever() them.
inline bool finishes_within(std::chrono::milliseconds limit, std::function<void()> fn) {
  struct Shared {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    std::exception_ptr error;
  };
  auto shared = std::make_shared<Shared>();
  std::thread([shared, fn = std::move(fn)] {
    std::exception_ptr error;
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
    const std::lock_guard lock(shared->m);
    shared->done = true;
    shared->error = error;
    shared->cv.notify_all();
  }).detach();
  std::unique_lock lock(shared->m);
  if (!shared->cv.wait_for(lock, limit, [&] { return shared->done; })) return false;
  if (shared->error) std::rethrow_exception(shared->error);
  return true;
}

/// Aborts the program with a message when a step takes longer than its limit: for tests whose
/// hung state cannot be abandoned (objects on the test's own stack).
class Watchdog {
 public:
  explicit Watchdog(std::chrono::milliseconds limit) : limit_(limit) {
    thread_ = std::thread([this] { run(); });
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      const std::lock_guard lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  /// Starts (or restarts) the clock for a step named `label`.
  void arm(std::string label) {
    const std::lock_guard lock(m_);
    label_ = std::move(label);
    deadline_ = std::chrono::steady_clock::now() + limit_;
    armed_ = true;
    cv_.notify_all();
  }
  void disarm() {
    const std::lock_guard lock(m_);
    armed_ = false;
  }

 private:
  void run() {
    std::unique_lock lock(m_);
    while (!stop_) {
      if (!armed_) {
        cv_.wait(lock);
        continue;
      }
      const auto deadline = deadline_;
      cv_.wait_until(lock, deadline);
      if (armed_ && !stop_ && std::chrono::steady_clock::now() >= deadline_) {
        std::fprintf(stderr, "\nWATCHDOG: '%s' did not finish within %lld ms: hang, aborting\n",
                     label_.c_str(), static_cast<long long>(limit_.count()));
        std::fflush(stderr);
        std::abort();
      }
    }
  }

  const std::chrono::milliseconds limit_;
  std::mutex m_;
  std::condition_variable cv_;
  std::string label_;
  std::chrono::steady_clock::time_point deadline_{};
  bool armed_ = false;
  bool stop_ = false;
  std::thread thread_;
};

/// Bytes currently allocated on the heap (sanitizer allocator statistics, or glibc's mallinfo2
/// over every arena).
inline std::size_t heap_in_use() {
#if defined(HERALD_TEST_SANITIZER_HEAP)
  return __sanitizer_get_current_allocated_bytes();
#else
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
#endif
}

#if defined(__unix__)

/// Makes std::terminate print where it was called from (the frames that mention herald,
/// demangled; link with -rdynamic for names) before aborting. For children of run_isolated().
inline void install_terminate_backtrace() {
  std::set_terminate([] {
    void* frames[64];
    const int n = ::backtrace(frames, 64);
    char** symbols = ::backtrace_symbols(frames, n);
    std::fprintf(stderr, "std::terminate called from:\n");
    for (int i = 0; symbols != nullptr && i < n; ++i) {
      std::string line = symbols[i];
      const auto open = line.find('(');
      const auto plus = line.find('+', open);
      if (open != std::string::npos && plus != std::string::npos) {
        const std::string mangled = line.substr(open + 1, plus - open - 1);
        int status = 0;
        char* demangled = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
        if (status == 0 && demangled != nullptr) line = demangled;
        std::free(demangled);
      }
      if (line.find("herald") == std::string::npos) continue;
      if (line.size() > 160) line = line.substr(0, 157) + "...";
      std::fprintf(stderr, "  #%d %s\n", i, line.c_str());
    }
    std::fflush(stderr);
    std::abort();
  });
}

/// What a child process made of a body run by run_isolated().
struct ChildResult {
  bool hung = false;    // killed after the time limit
  bool exited = false;  // exited normally (then `code` is meaningful)
  int code = 0;         // exit code: 0 all checks passed, 1 a check failed, 2 an exception
  int signal = 0;       // the signal that ended it (SIGABRT: std::terminate or a sanitizer)
  std::string output;   // everything it wrote: notes, failed checks, stderr (sanitizer reports)
  /// A sanitizer wrote a report (TSan, and ASan/UBSan without halt_on_error, carry on after
  /// one; the child's _exit would lose their exit code).
  [[nodiscard]] bool sanitizer_report() const {
    return output.find("ERROR: AddressSanitizer") != std::string::npos ||
           output.find("WARNING: ThreadSanitizer") != std::string::npos ||
           output.find("runtime error:") != std::string::npos;
  }
  [[nodiscard]] bool ok() const { return !hung && exited && code == 0 && !sanitizer_report(); }
  [[nodiscard]] std::string verdict() const {
    if (hung) return "HANG (killed after the time limit)";
    if (sanitizer_report()) {
      // The summary line names the error and where, without addresses: it groups well.
      for (const char* marker : {"SUMMARY: AddressSanitizer", "SUMMARY: ThreadSanitizer",
                                 "SUMMARY: UndefinedBehaviorSanitizer", "runtime error:",
                                 "ERROR: AddressSanitizer", "WARNING: ThreadSanitizer"}) {
        const auto at = output.find(marker);
        if (at == std::string::npos) continue;
        auto end = output.find('\n', at);
        const auto address = output.find(" on address", at);
        if (address < end) end = address;
        return "SANITIZER: " + output.substr(at, end == std::string::npos ? end : end - at);
      }
    }
    if (!exited) {
      return "CRASH: signal " + std::to_string(signal) +
             (signal == SIGABRT ? " (SIGABRT: std::terminate or a sanitizer report)" : "");
    }
    if (code == 0) return "ok";
    if (code == 1) return "checks failed";
    return "exit code " + std::to_string(code);
  }
  /// The first `lines` lines of the output, for a failure message, without the test
  /// framework's own report of the child's fatal signal.
  [[nodiscard]] std::string head(int lines = 12) const {
    static const char* const framework[] = {"~~~",
                                            "---",
                                            "...",
                                            "===",
                                            "Run with -?",
                                            "is a Catch",
                                            "due to a fatal error",
                                            "SIGSEGV - ",
                                            "SIGBUS - ",
                                            "test cases:",
                                            "assertions:",
                                            ": FAILED:"};
    std::string out;
    int n = 0;
    std::size_t begin = 0;
    while (begin < output.size() && n < lines) {
      std::size_t end = output.find('\n', begin);
      if (end == std::string::npos) end = output.size();
      const std::string line = output.substr(begin, end - begin);
      begin = end + 1;
      bool skip = line.empty();
      for (const char* f : framework)
        skip = skip || line.find(f) != std::string::npos;
      if (skip) continue;
      out += line + "\n";
      ++n;
    }
    return out;
  }
};

/// Inside a child: records notes and failed checks (written straight to the parent's pipe, so
/// that they survive a crash that follows).
class ChildLog {
 public:
  explicit ChildLog(int fd) : fd_(fd) {}
  void note(const std::string& s) const { write_line("note: " + s); }
  void fail(const std::string& s) {
    ++failures_;
    write_line("FAILED: " + s);
  }
  /// Checks `cond`; on false records `what`.
  void check(bool cond, const std::string& what) {
    if (!cond) fail(what);
  }
  [[nodiscard]] int failures() const { return failures_; }

 private:
  void write_line(const std::string& s) const {
    const std::string line = s + "\n";
    std::size_t off = 0;
    while (off < line.size()) {
      const ssize_t w = ::write(fd_, line.data() + off, line.size() - off);
      if (w <= 0) return;
      off += static_cast<std::size_t>(w);
    }
  }
  int fd_;
  int failures_ = 0;
};

/// Runs `body` in a forked child process and reports how the child ended, so that a
/// std::terminate, a sanitizer abort or a hang ends the child and not the test program. Call it
/// only while the test program runs no other thread (fork copies only the caller). The child's
/// stdout and stderr go into the result.
inline ChildResult run_isolated(const std::function<void(ChildLog&)>& body,
                                std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  const pid_t pid = ::fork();
  if (pid < 0) std::abort();
  if (pid == 0) {  // the child: never returns into the test framework
    // The test framework's SIGABRT handler would print a second, misleading report (std::abort
    // is how the child reports a terminate or a sanitizer error); the parent reports instead.
    ::signal(SIGABRT, SIG_DFL);
    ::close(fds[0]);
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    ChildLog log(fds[1]);
    int code = 0;
    try {
      body(log);
      code = log.failures() == 0 ? 0 : 1;
    } catch (const std::exception& e) {
      log.fail(std::string("exception escaped: ") + e.what());
      code = 2;
    } catch (...) {
      log.fail("unknown exception escaped");
      code = 2;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  ::close(fds[1]);
  ChildResult r;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      r.hung = true;
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0) continue;  // EINTR
    if (ready == 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;  // EOF: the child (and every copy of the pipe) is gone
    if (r.output.size() < (1u << 16)) r.output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  if (!r.hung) {
    r.exited = WIFEXITED(status);
    if (r.exited) r.code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  }
  return r;
}

#endif  // __unix__

}  // namespace herald_process
