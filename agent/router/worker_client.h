// WorkerClient: the router's side of the internal worker protocol (agent/worker/worker_protocol.h)
// for one worker address: reserve, release, prefill, the NDJSON decode/generate streams and
// info, each with the pool's Bearer token. Keeps a small pool of keep-alive connections
// (TCP_NODELAY) so no call opens a TCP connection unless none is idle.
// Thread-safe: any number of calls may run at once (each borrows its own connection).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/router/openai_api.h"
#include "agent/worker/worker_role.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

// The kInfoPath reply.
struct WorkerInfoReply {
  std::optional<WorkerRole> role;  // absent or unknown: keep the discovered role
  bool ready = false;
  bool draining = false;
  // A role switch is draining the old role: no new work of either role until it is done.
  bool switching_role = false;
  int block_size = 16;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  double kv_usage_ratio = 0;
  int running = 0;
  int waiting = 0;
  int64_t outstanding_prefill_tokens = 0;
  int max_model_len = 0;
};
StatusOr<WorkerInfoReply> ParseWorkerInfo(const Json& body);

// The reserve reply: where the prefill worker pushes the KV.
struct KvReservation {
  int64_t reservation_id = 0;
  std::vector<int64_t> blocks;
  int block_size = 0;
  std::string kv_address;
  // The KV transports the decode worker can receive over ("transports" of the reply), passed
  // to the prefill worker unchanged: it picks one by the pool's setting.
  Json transports;
};

struct PrefillReply {
  int32_t first_token = 0;
  int prompt_tokens = 0;
};

struct WorkerClientOptions {
  std::string auth_token;  // sent as Bearer on every call; empty: none
  std::chrono::milliseconds connect_timeout{1000};
  // Read timeout of prefill and of each read of a stream (the worker's silence limit).
  std::chrono::milliseconds request_timeout{600'000};
  // Reserve, release and info are quick; a worker that does not answer them in this time is
  // treated as failing.
  std::chrono::milliseconds control_timeout{2000};
  size_t max_idle_connections = 64;
  // Idle connections older than this are closed rather than reused: the worker may have
  // closed its end (httplib's keep-alive timeout is 5 s), and a reused dead connection fails.
  std::chrono::milliseconds max_idle_age{2000};
};

// Outcome classes of a failed call, for the router's retry decisions: Status codes
//   kUnavailable       connection failure, timeout, or 5xx; a 503 (the worker is up but has
//                      no room or is draining) is told apart by IsWorkerBusy;
//   kInvalidArgument   4xx: the worker rejects the request itself (retrying elsewhere won't help);
//   kUnauthorized      401/403: wrong pool token;
//   kInternal          a malformed reply.
class WorkerClient {
 public:
  WorkerClient(std::string address, WorkerClientOptions options);
  ~WorkerClient();
  WorkerClient(const WorkerClient&) = delete;
  WorkerClient& operator=(const WorkerClient&) = delete;

  const std::string& address() const { return address_; }

  StatusOr<WorkerInfoReply> Info();
  StatusOr<KvReservation> Reserve(std::string_view request_id, int prompt_tokens, int max_tokens);
  Status Release(int64_t reservation_id);
  StatusOr<PrefillReply> Prefill(std::string_view request_id,
                                 const std::vector<int32_t>& prompt_token_ids,
                                 const RequestSampling& sampling, const KvReservation& destination);

  // Called per streamed token; returning false cancels the stream (the connection is closed,
  // which the worker takes as cancellation of the sequence).
  using TokenCallback = std::function<bool(int32_t token)>;
  struct StreamResult {
    Status status;              // ok when the worker sent a finish line
    std::string finish_reason;  // "length" | "stop" when ok
    bool cancelled = false;     // the callback stopped it
    int tokens = 0;             // tokens delivered to the callback
  };
  // POST kDecodePath: the tokens after the first. The prompt lets the decode worker recompute
  // the sequence if it ever has to preempt it for lack of KV blocks.
  StreamResult Decode(int64_t reservation_id, int32_t first_token,
                      const std::vector<int32_t>& prompt_token_ids, int max_tokens,
                      const RequestSampling& sampling, bool ignore_eos,
                      const TokenCallback& on_token);
  // POST kGeneratePath (aggregated): every token, the first included.
  StreamResult Generate(std::string_view request_id, const std::vector<int32_t>& prompt_token_ids,
                        int max_tokens, const RequestSampling& sampling, bool ignore_eos,
                        const TokenCallback& on_token);

  // Shuts down the connections of calls in progress (their calls fail at once). Shutdown path:
  // bounds how long a stalled stream can hold a thread.
  void AbortCalls();

  // Connections opened so far (tests: keep-alive reuse).
  int64_t connections_opened() const { return connections_opened_.load(); }

  struct Impl;  // the connection pool; defined and used in worker_client.cc only

 private:
  StreamResult Stream(const char* path, const std::string& body, const TokenCallback& on_token);

  std::string address_;
  WorkerClientOptions options_;
  std::unique_ptr<Impl> impl_;
  std::atomic<int64_t> connections_opened_{0};
};

// The worker answered 503: up, but out of KV blocks or draining. Not a health problem.
bool IsWorkerBusy(const Status& status);

// {"temperature", "top_p", "seed"?} as the protocol's "sampling" object.
Json SamplingJson(const RequestSampling& sampling);

// Splits "host:port" (or "[v6]:port"); errors name the address.
Status ParseHostPort(std::string_view address, std::string* host, int* port);

}  // namespace pdpool::agent
