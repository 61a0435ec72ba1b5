// The pod's labels as a Kubernetes downward-API volume file (`--labels-file`): the parser of the
// kubelet's format (one `key="value"` per line, keys sorted, values quoted as Go's %q quotes
// them: \" \\ \n \t ... \xNN \uNNNN \UNNNNNNNN) and LabelsFileWatcher, which re-reads the file
// at an interval (the kubelet replaces it atomically by swapping a symlink, so each read sees
// one whole version) and reports when one label's value changes. The worker uses it to follow
// its `pdpool.dev/role` label when the planner moves it between prefill and decode.
// Thread-safety: the free functions are reentrant; LabelsFileWatcher's Start and Stop are called
// from one thread, its callback runs on the watcher's own thread (or the PollOnce caller's).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "common/status.h"

namespace pdpool::agent {

using PodLabels = std::map<std::string, std::string>;

// Parses the kubelet's labels file. Empty lines are skipped; an error names the line and what
// is wrong with it, and nothing is returned for a file with any bad line.
StatusOr<PodLabels> ParseLabelsFile(std::string_view text);
// Reads and parses `path`; errors name the path.
StatusOr<PodLabels> ReadLabelsFile(const std::string& path);

class LabelsFileWatcher {
 public:
  // Called with the label's new value. Returns true when the value is dealt with (applied, or
  // refused for good); false to be called again at the next poll (a transient refusal).
  using Callback = std::function<bool(const std::string& value)>;

  LabelsFileWatcher(std::string path, std::string key, std::chrono::milliseconds interval,
                    Callback on_change);
  ~LabelsFileWatcher();  // Stop()

  // `current`: the value already in effect (read at startup), which does not fire the callback.
  void Start(std::optional<std::string> current);
  void Stop();

  // One read of the file (the watcher thread's loop body; tests call it directly, without
  // Start).
  void PollOnce();

 private:
  const std::string path_;
  const std::string key_;
  const std::chrono::milliseconds interval_;
  const Callback on_change_;

  // Touched by PollOnce only (one caller at a time).
  std::optional<std::string> applied_;  // last value the callback dealt with
  std::optional<std::string> pending_;  // last value handed to the callback
  std::string last_problem_;            // logged once until it changes

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace pdpool::agent
