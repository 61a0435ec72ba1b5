// Which KV transport a prefill worker uses for one handoff, from the pool's setting
// (spec.kvTransfer.transport, the worker's --kv-transport) and what both workers' KV caches are:
//   tcp        always tcp;
//   cuda-ipc   both KV caches on one physical GPU (same device UUID, so the same node);
//   nccl       KV caches on two GPUs that are not known to sit in different NVLink domains
//              (two NCCL ranks cannot share one GPU);
//   auto       cuda-ipc if it can, else nccl if both are on one node or in one known NVLink
//              domain, else tcp.
// A worker whose KV cache is in host memory (cpu, sim backends) uses tcp whatever the setting
// (the sim backend models the configured link's time). An explicit cuda-ipc or nccl that the
// pair cannot do is an error naming why (both GPUs, both domains), never a silent fallback.
// Also the "transports" object of the reservation reply (worker_protocol.h) both ways.
// Pure functions: thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "agent/transport/kv_transport.h"
#include "common/json.h"
#include "common/status.h"

namespace pdpool::agent {

inline constexpr const char* kKvTransportTcp = "tcp";
inline constexpr const char* kKvTransportCudaIpc = "cuda-ipc";
inline constexpr const char* kKvTransportNccl = "nccl";
inline constexpr const char* kKvTransportAuto = "auto";

// `self`: the prefill worker's KV cache; `peer`: the decode worker's (from its reservation).
// Errors: InvalidArgument for an unknown setting; Internal when the pair cannot use the
// transport the pool asks for (a deployment problem, not a bad request), naming why.
StatusOr<std::string> SelectKvTransport(std::string_view setting, const KvEndpoint& self,
                                        const KvEndpoint& peer);

// {"tcp": {}, "cuda-ipc": {...}, "nccl": {...}}: the transports `endpoint` can receive over.
Json KvTransportsJson(const KvEndpoint& endpoint);
// The inverse; a missing or malformed object gives an endpoint offering tcp only.
KvEndpoint ParseKvTransports(const Json* transports);

}  // namespace pdpool::agent
