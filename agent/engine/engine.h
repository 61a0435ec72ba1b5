// Engine: runs a Backend under a Scheduler on one engine thread (schedule → step → commit, in a
// loop), and gives the worker's HTTP and transport threads a thread-safe door to it: submit and
// abort sequences, reserve KV for disaggregated decode, import/export KV blocks. With a backend
// that models time (sim), each step lasts its modeled time on the real clock. Thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "agent/engine/backend.h"
#include "agent/engine/kv_block_allocator.h"
#include "agent/engine/scheduler.h"
#include "common/clock.h"
#include "common/status.h"

namespace pdpool::agent {

struct EngineStats {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t reservations = 0;
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_free = 0;
  double kv_usage_ratio = 0;
  int64_t outstanding_prefill_tokens = 0;
  int64_t preemptions = 0;
};

// Called on the engine thread after each step (metrics).
struct StepReport {
  int32_t prefill_tokens = 0;
  int32_t decode_tokens = 0;
  int32_t sequences = 0;
  double seconds = 0;  // wall time of the step, modeled time included
  bool ok = true;
};

class Engine {
 public:
  // Called on the engine thread for each event of the sequence; must not block or call back
  // into the Engine.
  using EventSink = std::function<void(const SequenceEvent&)>;

  Engine(std::unique_ptr<Backend> backend, SchedulerConfig config, const Clock* clock);
  ~Engine();

  void Start();
  // Stops the engine thread; sequences still running get a kAborted event.
  void Stop();

  uint64_t NextSequenceId() { return next_id_.fetch_add(1); }
  Status Submit(SequenceRequest request, EventSink sink);
  void Abort(uint64_t id);

  StatusOr<Reservation> Reserve(int32_t num_tokens, Duration ttl);
  bool ReleaseReservation(uint64_t id);
  // Transport side of a reservation: check it exists and has `num_blocks` blocks (and keep it
  // alive for `hold` more), write one block, mark it complete, or drop it after a failure.
  Status BeginImport(uint64_t reservation, int32_t num_tokens, int32_t num_blocks, Duration hold);
  Status ImportBlock(uint64_t reservation, int32_t index, int32_t tokens, std::string_view data);
  Status FinishImport(uint64_t reservation);
  void AbortImport(uint64_t reservation);
  // The reservation's block ids, in order (GPU transports write them device to device).
  StatusOr<std::vector<int32_t>> ReservationBlocks(uint64_t reservation) const;

  // Prefill side: KV of a finished prefill_only sequence.
  std::vector<int32_t> TakeRetainedBlocks(uint64_t id);
  Status ExportBlock(int32_t block, int32_t tokens, std::string* out);
  void ReleaseBlocks(const std::vector<int32_t>& blocks);

  EngineStats Stats() const;
  const Backend& backend() const { return *backend_; }
  const SchedulerConfig& config() const { return config_; }
  void SetStepObserver(std::function<void(const StepReport&)> observer);

 private:
  void Loop();
  void Deliver(std::vector<SequenceEvent> events);

  std::unique_ptr<Backend> backend_;
  SchedulerConfig config_;
  const Clock* clock_;
  std::mutex backend_mu_;  // Step, Import and Export; taken after mu_ when both are held

  mutable std::mutex mu_;
  std::condition_variable cv_;
  KvBlockAllocator allocator_;
  Scheduler scheduler_;
  std::unordered_map<uint64_t, EventSink> sinks_;
  std::function<void(const StepReport&)> observer_;
  bool stop_ = false;
  std::thread thread_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace pdpool::agent
