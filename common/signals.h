// Signal handling for long-running binaries: SIGTERM/SIGINT are blocked in every thread and
// delivered to one waiter thread that calls the given stop function once. Call
// BlockTerminationSignals() first thing in main(), before any thread starts.
#pragma once

#include <functional>
#include <thread>

namespace pdpool {

void BlockTerminationSignals();
// Starts a detached thread that waits for SIGTERM/SIGINT and calls on_signal (once; a second
// signal exits the process at once, as users expect of Ctrl-C twice).
void OnTerminationSignal(std::function<void()> on_signal);
// Blocks the calling thread until SIGTERM or SIGINT (a signal that arrived earlier, while the
// signals were blocked, counts). Call once per process.
void WaitForTerminationSignal();

}  // namespace pdpool
