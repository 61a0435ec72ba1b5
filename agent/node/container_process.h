// ContainerProcess: one run of a container on a simulated node, as a local process. Spawn forks;
// the child starts a new session (its own process group, so signals reach everything it
// starts), asks to be SIGKILLed if the spawning thread goes away (the agent crashing leaves no
// orphans), enters a private mount namespace (unshare(CLONE_NEWNS), `/` made rprivate so nothing
// leaks back to the host), bind-mounts the pod's volume directories onto the container's
// mountPaths (creating the mount points; read-only mounts remounted read-only), sends
// stdout+stderr to the container's log file, and execs. A failure in any step before exec
// (unshare, mount, chdir, exec) comes back from Spawn as an error naming the step, the path and
// the errno, never as a silent fallback. Needs root (CAP_SYS_ADMIN) for the mount namespace.
// There is no container root filesystem: a mount point that does not exist is created (empty)
// on the host's filesystem, and the bind mount itself is seen only inside the container.
// Thread-compatible: one owner thread; Spawn from the thread that will own the process for its
// whole life (see PR_SET_PDEATHSIG).
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace pdpool::agent {

struct BindMount {
  std::string source;  // a directory or file on the host
  std::string target;  // where the container sees it (absolute)
  bool read_only = false;
};

struct ContainerLaunch {
  std::string path;               // executable
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // "NAME=value"
  std::string working_dir = "/";
  std::vector<BindMount> mounts;  // done parents first (sorted by target depth)
  std::string log_path;           // stdout and stderr, appended
};

struct ContainerExit {
  int exit_code = 0;  // 128 + signal when killed by a signal, as container runtimes report
  int signal = 0;     // 0 unless killed by a signal
};

class ContainerProcess {
 public:
  static StatusOr<std::unique_ptr<ContainerProcess>> Spawn(const ContainerLaunch& launch);
  ~ContainerProcess();  // kills the process group and reaps the process if still running
  ContainerProcess(const ContainerProcess&) = delete;
  ContainerProcess& operator=(const ContainerProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Non-blocking: how the process ended, once it has (and then always the same). The container
  // ends with its main process: what is left of its process group is SIGKILLed then.
  std::optional<ContainerExit> Poll();
  // Sends `sig` to the whole process group (no-op once exited and reaped).
  void Signal(int sig);

 private:
  explicit ContainerProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  std::optional<ContainerExit> exit_;
};

}  // namespace pdpool::agent
