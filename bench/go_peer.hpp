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

}  // namespace herald_bench
