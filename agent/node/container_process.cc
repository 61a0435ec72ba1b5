// ContainerProcess: see container_process.h. Between fork and exec the child only makes
// system calls on memory prepared before the fork (another thread may have held the allocator's
// lock at the fork), and reports a failure as {step, errno, index} through a close-on-exec pipe.
#include "agent/node/container_process.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace pdpool::agent {
namespace {

enum Step : int {
  kSetsid = 1,
  kPdeathsig,
  kUnshare,
  kMakePrivate,
  kMkdir,
  kMountFile,
  kBind,
  kRemountReadOnly,
  kDup,
  kChdir,
  kExec,
};

struct ChildError {
  int step = 0;
  int err = 0;
  int index = 0;  // which mount / which directory
};

struct PreparedMount {
  std::string source;
  std::string target;
  bool read_only = false;
  bool file = false;                // a file bind mount needs a file as its mount point
  std::vector<std::string> mkdirs;  // parents (and, for directories, the target) to create
};

[[noreturn]] void Fail(int fd, int step, int index) {
  ChildError e{step, errno, index};
  ssize_t ignored = ::write(fd, &e, sizeof e);
  (void)ignored;
  _exit(127);
}

std::vector<std::string> Prefixes(const std::string& path, bool include_self) {
  std::vector<std::string> out;
  for (size_t i = 1; i < path.size(); ++i) {
    if (path[i] == '/') out.push_back(path.substr(0, i));
  }
  if (include_self) out.push_back(path);
  return out;
}

int Depth(const std::string& path) {
  return static_cast<int>(std::count(path.begin(), path.end(), '/'));
}

std::string Describe(const ChildError& e, const std::vector<PreparedMount>& mounts,
                     const ContainerLaunch& launch) {
  auto mount = [&]() -> const PreparedMount* {
    return e.index >= 0 && e.index < static_cast<int>(mounts.size()) ? &mounts[e.index] : nullptr;
  };
  std::string what;
  switch (e.step) {
    case kSetsid:
      what = "setsid";
      break;
    case kPdeathsig:
      what = "prctl(PR_SET_PDEATHSIG)";
      break;
    case kUnshare:
      what =
          "unshare(CLONE_NEWNS) for the container's private mount namespace (the node agent "
          "must run as root)";
      break;
    case kMakePrivate:
      what = "making / rprivate in the container's mount namespace";
      break;
    case kMkdir:
      what = "creating mount point for " + (mount() ? mount()->target : std::string("?"));
      break;
    case kMountFile:
      what = "creating file mount point " + (mount() ? mount()->target : std::string("?"));
      break;
    case kBind:
      what = mount() ? "bind-mounting " + mount()->source + " on " + mount()->target : "mount";
      break;
    case kRemountReadOnly:
      what = "remounting " + (mount() ? mount()->target : std::string("?")) + " read-only";
      break;
    case kDup:
      what = "redirecting output to " + launch.log_path;
      break;
    case kChdir:
      what = "chdir " + launch.working_dir;
      break;
    case kExec:
      what = "exec " + launch.path;
      break;
    default:
      what = "starting the container";
  }
  return what + ": " + std::strerror(e.err);
}

}  // namespace

StatusOr<std::unique_ptr<ContainerProcess>> ContainerProcess::Spawn(const ContainerLaunch& launch) {
  if (launch.argv.empty()) return Status::InvalidArgument("empty argv");
  // Everything the child touches, prepared now.
  std::vector<PreparedMount> mounts;
  for (const BindMount& m : launch.mounts) {
    if (m.target.empty() || m.target.front() != '/') {
      return Status::InvalidArgument("mountPath \"" + m.target + "\" must be absolute");
    }
    PreparedMount p;
    p.source = m.source;
    p.target = m.target;
    while (p.target.size() > 1 && p.target.back() == '/') p.target.pop_back();
    p.read_only = m.read_only;
    struct stat st {};
    if (::stat(m.source.c_str(), &st) != 0) {
      return Status::NotFound("volume path " + m.source + ": " + std::strerror(errno));
    }
    p.file = !S_ISDIR(st.st_mode);
    p.mkdirs = Prefixes(p.target, !p.file);
    mounts.push_back(std::move(p));
  }
  std::stable_sort(mounts.begin(), mounts.end(),
                   [](const PreparedMount& a, const PreparedMount& b) {
                     return Depth(a.target) < Depth(b.target);
                   });
  std::vector<char*> argv, envp;
  for (const std::string& a : launch.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const std::string& e : launch.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const std::string working_dir = launch.working_dir.empty() ? "/" : launch.working_dir;

  int log_fd = ::open(launch.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (log_fd < 0) {
    return Status::Internal("open container log " + launch.log_path + ": " + std::strerror(errno));
  }
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int pipe_fds[2];
  if (null_fd < 0 || ::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    return Status::Internal(std::string("pipe: ") + std::strerror(err));
  }
  const pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(log_fd);
    ::close(null_fd);
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    return Status::Internal(std::string("fork: ") + std::strerror(err));
  }
  if (pid == 0) {
    const int err_fd = pipe_fds[1];
    if (::setsid() < 0) Fail(err_fd, kSetsid, 0);
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) Fail(err_fd, kPdeathsig, 0);
    if (::getppid() != parent) _exit(137);  // the agent is already gone
    // The agent blocks SIGTERM/SIGINT in every thread and libraries may ignore SIGPIPE; a
    // container starts with default dispositions and nothing blocked.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) ::signal(sig, SIG_DFL);
    if (::unshare(CLONE_NEWNS) != 0) Fail(err_fd, kUnshare, 0);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      Fail(err_fd, kMakePrivate, 0);
    }
    for (size_t i = 0; i < mounts.size(); ++i) {
      const PreparedMount& m = mounts[i];
      const int index = static_cast<int>(i);
      for (const std::string& dir : m.mkdirs) {
        if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) Fail(err_fd, kMkdir, index);
      }
      if (m.file) {
        int fd = ::open(m.target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EISDIR) Fail(err_fd, kMountFile, index);
        if (fd >= 0) ::close(fd);
      }
      if (::mount(m.source.c_str(), m.target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0) {
        Fail(err_fd, kBind, index);
      }
      if (m.read_only && ::mount(nullptr, m.target.c_str(), nullptr,
                                 MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
        Fail(err_fd, kRemountReadOnly, index);
      }
    }
    if (::dup2(null_fd, 0) < 0 || ::dup2(log_fd, 1) < 0 || ::dup2(log_fd, 2) < 0) {
      Fail(err_fd, kDup, 0);
    }
    // Nothing of the agent's (sockets, files) leaks into the container.
    ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
    if (::chdir(working_dir.c_str()) != 0) Fail(err_fd, kChdir, 0);
    ::execve(launch.path.c_str(), argv.data(), envp.data());
    Fail(err_fd, kExec, 0);
  }

  ::close(pipe_fds[1]);
  ::close(log_fd);
  ::close(null_fd);
  ChildError e;
  ssize_t n;
  do {
    n = ::read(pipe_fds[0], &e, sizeof e);
  } while (n < 0 && errno == EINTR);
  ::close(pipe_fds[0]);
  if (n == static_cast<ssize_t>(sizeof e)) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return Status::Internal(Describe(e, mounts, launch));
  }
  return std::unique_ptr<ContainerProcess>(new ContainerProcess(pid));
}

ContainerProcess::~ContainerProcess() {
  if (exit_) return;
  Signal(SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

std::optional<ContainerExit> ContainerProcess::Poll() {
  if (exit_) return exit_;
  // Looked at without reaping first: while the leader is an unreaped zombie its pid, and so its
  // process group id, cannot be reused, so killing what is left of the group hits nothing else.
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
      info.si_pid == 0) {
    return std::nullopt;
  }
  ::kill(-pid_, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  ContainerExit out;
  if (r == pid_ && WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
    out.exit_code = 128 + out.signal;
  } else if (r == pid_ && WIFEXITED(status)) {
    out.exit_code = WEXITSTATUS(status);
  } else {
    out.exit_code = 255;  // lost (someone else reaped it): count it as a failure
  }
  exit_ = out;
  return exit_;
}

void ContainerProcess::Signal(int sig) {
  if (exit_) return;
  ::kill(-pid_, sig);
}

}  // namespace pdpool::agent
