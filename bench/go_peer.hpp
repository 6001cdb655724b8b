// Runs one of the Go peers of bench/peers/ (built by bench/peers/build.sh) as a subprocess and
// reads its answer: one line of numbers on stdout. A harness calls it once per repetition of a
// workload, between its in-process contenders, so the Go rows share the run's interleaving. The
// peer measures itself (its start-up is not timed); its stderr goes to the harness's stderr, where
// a failing peer names itself and what went wrong.
#pragma once

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace herald_bench {

struct PeerAnswer {
  bool ok = false;
  std::string line;            ///< the first line of stdout
  std::vector<double> values;  ///< the numbers at the start of that line
  std::string error;           ///< why not ok
};

/// Runs `program` with `args`, waits for it and parses the first line of its stdout. Not ok when
/// it cannot start, exits non-zero or starts that line with fewer than `expected` numbers.
inline PeerAnswer run_peer(const std::string& program, const std::vector<std::string>& args,
                           std::size_t expected = 1) {
  PeerAnswer answer;
  int out[2];
  if (pipe(out) != 0) {
    answer.error = std::string("pipe: ") + std::strerror(errno);
    return answer;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  posix_spawn_file_actions_addclose(&actions, out[1]);
  std::vector<std::string> argv_storage;
  argv_storage.push_back(program);
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (spawned != 0) {
    close(out[0]);
    answer.error = "cannot run " + program + ": " + std::strerror(spawned);
    return answer;
  }
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(out[0], buf, sizeof buf);
    if (n > 0) {
      text.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    answer.error =
        program + (WIFEXITED(status) ? " exited with status " + std::to_string(WEXITSTATUS(status))
                                     : " was killed by signal " + std::to_string(WTERMSIG(status)));
    return answer;
  }
  answer.line = text.substr(0, text.find('\n'));
  const std::string& line = answer.line;
  const char* p = line.c_str();
  for (;;) {
    char* end = nullptr;
    const double v = std::strtod(p, &end);
    if (end == p) break;
    answer.values.push_back(v);
    p = end;
  }
  if (answer.values.size() < expected) {
    answer.error =
        program + " printed \"" + line + "\", expected " + std::to_string(expected) + " number(s)";
    return answer;
  }
  answer.ok = true;
  return answer;
}

/// What the Go request-reply peer measured (bench/peers/refbroker -workload=request).
struct RequestReplyFigures {
  bool ok = false;
  double p50_ns = 0;          ///< median round trip
  double p99_ns = 0;          ///< 99th percentile round trip
  double requests_per_s = 0;  ///< every requester's replies / wall time
  std::string error;          ///< why not ok
};

/// Runs request-reply over the Go reference broker: `requesters` concurrent requesters, each
/// making `requests` requests to one responder on "svc.add" (x -> x+1), each request with a
/// reply channel of its own and a timeout of `timeout_ms` (a timeout or a wrong reply fails the
/// run). `refbroker` is the program bench/peers/build.sh builds.
inline RequestReplyFigures go_request_reply(const std::string& refbroker, int requesters,
                                            std::uint64_t requests, int timeout_ms = 1000) {
  const PeerAnswer a = run_peer(
      refbroker,
      {"-workload=request", "-requesters=" + std::to_string(requesters),
       "-requests=" + std::to_string(requests), "-timeout-ms=" + std::to_string(timeout_ms)},
      3);
  RequestReplyFigures f;
  f.ok = a.ok;
  f.error = a.error;
  if (a.ok) {
    f.p50_ns = a.values[0];
    f.p99_ns = a.values[1];
    f.requests_per_s = a.values[2];
  }
  return f;
}

}  // namespace herald_bench
