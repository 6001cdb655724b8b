// What the examples that cross processes through NATS share: a private nats-server, and a way to
// start this same program again as the other process. Not part of herald; only so that the
// examples run anywhere nats-server is installed (Debian: nats-server).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace examples {

/// Only so that the example runs anywhere: a nats-server of its own on a free loopback port.
/// `extra`: more arguments (e.g. {"-js", "-sd", dir} for JetStream).
class PrivateServer {
 public:
  explicit PrivateServer(std::vector<std::string> extra = {}) : extra_(std::move(extra)) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    port_ = std::to_string(ntohs(addr.sin_port));
    start();
  }
  ~PrivateServer() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  [[nodiscard]] bool started() const { return pid_ > 0; }
  [[nodiscard]] std::string url() const { return "nats://127.0.0.1:" + port_; }

  /// Kills it without warning (SIGKILL: a crash, not a shutdown) and starts it again on the
  /// same port with the same arguments.
  void crash_and_restart() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    start();
  }

 private:
  void start() {
    std::vector<std::string> args = {"/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", port_};
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (std::string& arg : args)
      argv.push_back(arg.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t quiet;
    posix_spawn_file_actions_init(&quiet);
    posix_spawn_file_actions_addopen(&quiet, 2, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid_, "nats-server", &quiet, nullptr, argv.data(), environ) != 0 &&
        posix_spawn(&pid_, argv[0], &quiet, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&quiet);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let it start listening
  }

  std::vector<std::string> extra_;
  pid_t pid_ = -1;
  std::string port_;
};

/// Starts this same program with `args`; returns its pid, or -1.
inline pid_t start_self(std::vector<std::string> args) {
  std::string self = "/proc/self/exe";
  std::vector<char*> argv{self.data()};
  for (std::string& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) return -1;
  return pid;
}

}  // namespace examples
