// A private nats-server for tests and benchmarks: started on a free loopback port, killed and
// restarted on demand (to simulate an outage), killed for good by the destructor.
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
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace herald_test {

class NatsServer {
 public:
  /// Starts the server; `extra` are more command-line arguments (e.g. {"-c", "file.conf"}).
  explicit NatsServer(std::vector<std::string> extra = {})
      : extra_(std::move(extra)), port_(free_port()) {
    start();
  }
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;
  ~NatsServer() { stop(); }

  [[nodiscard]] int port() const noexcept { return port_; }
  [[nodiscard]] std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] bool running() const noexcept { return pid_ > 0; }
  /// The server's process id (-1 while stopped).
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  /// Starts it (again) on the same port and returns once it accepts connections.
  void start() {
    if (pid_ > 0) return;
    std::vector<std::string> args = {binary(), "-a", "127.0.0.1", "-p", std::to_string(port_)};
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const char* log = std::getenv("HERALD_NATS_LOG");  // set to a file name to keep the log
    posix_spawn_file_actions_addopen(&actions, 1, log ? log : "/dev/null",
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("cannot start " + args[0] + " (set HERALD_NATS_SERVER)");
    pid_ = pid;

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!accepts()) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("nats-server exited at start (port " + std::to_string(port_) +
                                 " taken?)");
      }
      if (std::chrono::steady_clock::now() > deadline) {
        stop();
        throw std::runtime_error("nats-server did not accept connections within 10 s");
      }
      // Polls another process, which announces nothing: not a hand-off between threads.
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  /// Kills it (SIGKILL: an outage, not a graceful shutdown) and reaps it.
  void stop() noexcept {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  static std::string binary() {
    if (const char* env = std::getenv("HERALD_NATS_SERVER")) return env;
#ifdef HERALD_NATS_SERVER
    return HERALD_NATS_SERVER;
#else
    return "/usr/sbin/nats-server";
#endif
  }

  static int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      if (fd >= 0) close(fd);
      throw std::runtime_error("cannot find a free loopback port");
    }
    close(fd);
    return ntohs(addr.sin_port);
  }

  [[nodiscard]] bool accepts() const {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port_));
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    close(fd);
    return ok;
  }

  std::vector<std::string> extra_;
  int port_;
  pid_t pid_ = -1;
};

}  // namespace herald_test
