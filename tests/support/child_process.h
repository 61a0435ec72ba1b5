// ChildProcess: a binary a test starts (controller, node agents, workers, routers), its output
// in a log file, stopped (SIGTERM, then SIGKILL) or killed when the test ends. Also
// FreeLoopbackPort for tests that must pass a port on a command line. Not thread-safe.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"

namespace pdpool::testing {

class ChildProcess {
 public:
  ChildProcess(std::string name, pid_t pid, std::string log_path)
      : name_(std::move(name)), pid_(pid), log_path_(std::move(log_path)) {}
  ~ChildProcess();
  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  bool Running();
  // SIGTERM, then SIGKILL after `grace`; returns the exit status (or -signal).
  int Stop(Duration grace = std::chrono::seconds(10));
  // Waits for the process to exit on its own; its exit status (or -signal), or nullopt when it
  // is still running after `timeout`.
  std::optional<int> Wait(Duration timeout);
  // SIGKILL: a crash.
  void Kill();

 private:
  std::string name_;
  pid_t pid_;
  std::string log_path_;
  bool reaped_ = false;
  int status_ = 0;
};

// Starts `binary args...` with stdout and stderr appended to log_path; null (and the reason in
// *error) if it cannot be started.
std::unique_ptr<ChildProcess> SpawnProcess(const std::string& name, const std::string& binary,
                                           const std::vector<std::string>& args,
                                           const std::string& log_path, std::string* error);

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
int FreeLoopbackPort();

}  // namespace pdpool::testing
