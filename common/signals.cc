// Termination signal handling.
#include "common/signals.h"

#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <mutex>

#include "common/log.h"

namespace pdpool {
namespace {
sigset_t TerminationSet() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}
}  // namespace

void BlockTerminationSignals() {
  sigset_t set = TerminationSet();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

void OnTerminationSignal(std::function<void()> on_signal) {
  std::thread([on_signal = std::move(on_signal)] {
    sigset_t set = TerminationSet();
    int sig = 0;
    sigwait(&set, &sig);
    LogInfo("signal received, stopping", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    on_signal();
    sigwait(&set, &sig);
    LogWarn("second signal, exiting now");
    std::_Exit(1);
  }).detach();
}

void WaitForTerminationSignal() {
  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool signalled = false;
  };
  // Leaked on purpose: the signal thread may outlive this call.
  static Waiter* waiter = new Waiter;
  OnTerminationSignal([] {
    std::lock_guard lock(waiter->mu);
    waiter->signalled = true;
    waiter->cv.notify_all();
  });
  std::unique_lock lock(waiter->mu);
  waiter->cv.wait(lock, [] { return waiter->signalled; });
}

}  // namespace pdpool
